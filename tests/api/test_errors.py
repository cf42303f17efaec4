"""Every error is problem JSON (``api/errors.py``): bad requests, unknown routes, wrong
methods, and failures inside a handler, never with a trace."""

from __future__ import annotations

from datetime import datetime

import pytest
from flask.testing import FlaskClient
from sqlalchemy import create_engine, text

from retention.api import create_app
from retention.store import tables
from tests.conftest import Scored
from tests.support.apps import clock_on, copy_list, keyed_client, make_key

PROBLEM = "application/problem+json"


@pytest.mark.parametrize(
    ("url", "status"),
    [
        ("/v1/clients/NOBODY/risk", 404),
        ("/v1/risk-list?limit=0", 400),
        ("/v1/risk-list?limit=many", 400),
        ("/v1/risk-list?as_of=2026-13-01", 400),
        ("/v1/risk-list?as_of=1999-01-01", 404),
        ("/v1/risk-list?colour=red", 400),
        ("/no/such/route", 404),
    ],
)
def test_errors_are_problem_json(client: FlaskClient, url: str, status: int) -> None:
    response = client.get(url)
    assert response.status_code == status
    assert response.mimetype == PROBLEM
    body = response.get_json()
    assert body["status"] == status and body["title"] and body["detail"]


def test_wrong_method_is_problem_json_with_allow(client: FlaskClient) -> None:
    response = client.post("/v1/risk-list")
    assert response.status_code == 405
    assert response.mimetype == PROBLEM
    assert "GET" in response.headers["Allow"]


def test_unexpected_failure_is_problem_json_without_a_trace(scored: Scored, tmp_path) -> None:
    settings = scored.settings.with_overrides(store_url=f"sqlite:///{tmp_path}/broken.db")
    engine = create_engine(settings.store_url)
    token = make_key(engine)
    with engine.begin() as conn:
        conn.execute(tables.publications.insert().values(
            as_of=scored.as_of, run_id=1, model_version="v",
            published_at=datetime(2026, 6, 1, 3, 0),
            n_scored=1))
        conn.execute(text("DROP TABLE scores"))
    # Keys and a publication but no scores table: the request fails inside the handler.
    response = keyed_client(create_app(settings, clock=clock_on(scored.as_of)),
                            token).get("/v1/risk-list")
    assert response.status_code == 500
    assert response.mimetype == PROBLEM
    assert "Traceback" not in response.get_data(as_text=True)


def test_a_store_that_does_not_answer_in_time_is_a_503_with_retry_after(
    scored: Scored, pg_url: str
) -> None:
    """A statement cancelled by the lock timeout is the store's fault, not a bug: 503."""
    copy_list(scored.store, pg_url)
    engine = create_engine(pg_url)
    token = make_key(engine)
    settings = scored.settings.with_overrides(store_url=pg_url, api_lock_timeout_seconds=0.2)
    client = keyed_client(create_app(settings, clock=clock_on(scored.as_of)), token)
    assert client.get("/v1/risk-list?limit=2").status_code == 200
    with engine.connect() as holder:
        holder.execute(text("LOCK TABLE scores IN ACCESS EXCLUSIVE MODE"))
        response = client.get("/v1/risk-list?limit=3")
        holder.rollback()
    assert response.status_code == 503 and response.mimetype == PROBLEM
    assert int(response.headers["Retry-After"]) > 0
    assert response.get_json()["title"] == "Store unavailable"
    assert client.get("/v1/risk-list?limit=3").status_code == 200
    engine.dispose()


def test_every_answer_says_nosniff_and_no_store(client: FlaskClient) -> None:
    for url in ("/v1/risk-list?limit=2", "/v1/risk-list?limit=2", "/v1/clients/NOBODY/risk",
                "/health", "/metrics", "/openapi.json", "/no/such/route"):
        response = client.get(url)
        assert response.headers["X-Content-Type-Options"] == "nosniff", url
        assert response.headers["Cache-Control"] == "no-store", url
    # The second list request was answered ahead of Flask, by the cached-list path.
    assert client.application.wsgi_app.served >= 1  # type: ignore[attr-defined]
