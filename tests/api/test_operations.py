"""Health and readiness (``api/operations.py``): the served list when there is one, 503
without a store, not ready and degraded without the rate-limit store."""

from __future__ import annotations

from datetime import datetime, time
from pathlib import Path

from flask.testing import FlaskClient
from sqlalchemy import create_engine

from retention.api import create_app
from retention.store.runs import finish_run, start_run
from tests.conftest import Scored
from tests.support.apps import clock_on, copied_store, keyed_client, make_key
from tests.support.redis import PrivateRedis


def test_health_reports_the_served_list(client: FlaskClient, scored: Scored) -> None:
    body = client.get("/health").get_json()
    assert body["status"] == "ok"
    assert body["list"]["as_of"] == scored.as_of.isoformat()


def test_health_without_a_store_is_503(scored: Scored, tmp_path) -> None:
    settings = scored.settings.with_overrides(store_url=f"sqlite:///{tmp_path}/empty.db")
    response = create_app(settings, clock=clock_on(scored.as_of)).test_client().get("/health")
    assert response.status_code == 503


def test_ready_needs_the_rate_limit_store_and_health_says_it_is_down(
    scored: Scored, private_redis: PrivateRedis
) -> None:
    """Redis down: every data request gets 503, so the service is not ready (503) and
    degraded (200, with the problem in words); up again, ready again."""
    settings = scored.settings.with_overrides(api_rate_limit_storage=private_redis.url)
    app = create_app(settings, clock=clock_on(scored.as_of))
    client = keyed_client(app, make_key(scored.store, "admin"))
    assert client.get("/ready").status_code == 200
    assert client.get("/health").get_json()["status"] == "ok"
    private_redis.stop()
    assert client.get("/v1/risk-list?limit=1").status_code == 503
    ready = client.get("/ready")
    assert ready.status_code == 503 and ready.mimetype == "application/problem+json"
    assert "rate-limit store" in ready.get_json()["detail"]
    assert int(ready.headers["Retry-After"]) > 0
    health = client.get("/health")
    assert health.status_code == 200 and health.get_json()["status"] == "degraded"
    assert any("rate-limit store" in p for p in health.get_json()["problems"])
    private_redis.start()
    assert client.get("/ready").status_code == 200
    assert client.get("/v1/risk-list?limit=1").status_code == 200


def test_ready_is_503_when_the_store_does_not_answer(scored: Scored) -> None:
    settings = scored.settings.with_overrides(
        store_url="postgresql://nobody@127.0.0.1:1/none"
    )  # nothing listens on port 1
    client = create_app(settings, clock=clock_on(scored.as_of)).test_client()
    for url in ("/ready", "/health"):
        response = client.get(url)
        assert response.status_code == 503 and response.mimetype == "application/problem+json"
        assert int(response.headers["Retry-After"]) > 0


def test_ready_and_health_report_a_dead_nightly_run_and_a_missing_optional_table(
    scored: Scored, tmp_path: Path
) -> None:
    """A run whose process is gone, and an optional table the last ETL found missing, are
    problems in words (ready still 200: the list is young enough to serve)."""
    settings = copied_store(scored.settings, tmp_path)
    engine = create_engine(settings.store_url)
    night = datetime.combine(scored.as_of, time(2, 30))
    with engine.begin() as conn:
        etl = start_run(conn, "etl", scored.as_of, night)
        finish_run(conn, etl, "failed", detail={"missing_tables": ["alliance_items"]}, at=night)
        dead = start_run(conn, "score", scored.as_of, night)  # no process holds its lock
    client = create_app(settings, clock=clock_on(scored.as_of)).test_client()
    for url in ("/ready", "/health"):
        response = client.get(url)
        assert response.status_code == 200, url
        body = response.get_json()
        assert body["status"] == "degraded"
        assert body["last_nightly_run"]["status"] == "died"
        assert body["missing_tables"] == ["alliance_items"]
        assert any(f"run {dead}" in p and "died" in p for p in body["problems"])
        assert any("alliance_items" in p for p in body["problems"])
    engine.dispose()
