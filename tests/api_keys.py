"""Helpers for API tests: keys made with the real key functions, clients that send them."""

from __future__ import annotations

from collections.abc import Sequence

from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import Engine

from retention import access


def make_key(store: Engine, role: str = "admin", clinics: Sequence[str] = (),
             **kwargs: object) -> str:
    """A fresh key in ``store`` (creating the access tables if needed); returns the token."""
    with store.begin() as conn:
        access.create_schema(conn)
        _, token = access.create_key(conn, role, clinics, **kwargs)  # type: ignore[arg-type]
    return token


def keyed_client(app: Flask, token: str) -> FlaskClient:
    """A test client that sends ``token`` as its bearer key on every request."""
    client = app.test_client()
    client.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {token}"
    return client
