"""Health (``api/operations.py``): the served list when there is one, 503 without a store."""

from __future__ import annotations

from flask.testing import FlaskClient

from retention.api import create_app
from tests.conftest import Scored
from tests.support.apps import clock_on


def test_health_reports_the_served_list(client: FlaskClient, scored: Scored) -> None:
    body = client.get("/health").get_json()
    assert body["status"] == "ok"
    assert body["list"]["as_of"] == scored.as_of.isoformat()


def test_health_without_a_store_is_503(scored: Scored, tmp_path) -> None:
    settings = scored.settings.with_overrides(store_url=f"sqlite:///{tmp_path}/empty.db")
    response = create_app(settings, clock=clock_on(scored.as_of)).test_client().get("/health")
    assert response.status_code == 503
