"""The app most API tests use: the scored clinic's settings, a fixed clock, an admin key."""

from __future__ import annotations

import pytest
from flask import Flask
from flask.testing import FlaskClient

from retention.api import create_app
from tests.conftest import Scored
from tests.support.apps import clock_on, keyed_client, make_key


@pytest.fixture(scope="module")
def app(scored: Scored) -> Flask:
    """The API over the scored clinic, on the day its list was published."""
    return create_app(scored.settings, TESTING=True, clock=clock_on(scored.as_of))


@pytest.fixture(scope="module")
def admin_key(scored: Scored, request: pytest.FixtureRequest) -> str:
    return make_key(scored.store, "admin", label=request.module.__name__)


@pytest.fixture
def client(app: Flask, admin_key: str) -> FlaskClient:
    return keyed_client(app, admin_key)
