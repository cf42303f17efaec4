"""Prometheus metrics: request counts and latency by route template and status, run age."""

from __future__ import annotations

import logging
import re

import pytest

from retention.api import create_app
from retention.api.services import services_of
from tests.conftest import Scored
from tests.support.apps import clock_on, keyed_client, make_key


def test_requests_are_counted_by_route_not_by_client(scored: Scored) -> None:
    app = create_app(scored.settings, clock=clock_on(scored.as_of))
    client = keyed_client(app, make_key(scored.store, "admin"))
    items = client.get("/v1/risk-list?limit=3").get_json()["items"]
    for item in items:
        client.get(f"/v1/clients/{item['client_id']}/risk")
    client.get("/v1/clients/NOBODY/risk")
    app.test_client().get("/v1/risk-list")
    text = app.test_client().get("/metrics").get_data(as_text=True)
    assert ('retention_http_requests_total{method="GET",route="/v1/clients/<client_id>/risk",'
            'status="200"} 3.0') in text
    assert 'route="/v1/clients/<client_id>/risk",status="404"} 1.0' in text
    assert 'route="/v1/risk-list",status="401"} 1.0' in text
    assert "retention_http_request_duration_seconds_bucket" in text
    assert not any(item["client_id"] in text for item in items)
    age = re.search(r'retention_last_successful_run_age_seconds\{kind="score"\} ([0-9.e+]+)', text)
    assert age and float(age.group(1)) >= 0


def test_methods_a_client_makes_up_do_not_become_series(scored: Scored) -> None:
    app = create_app(scored.settings, clock=clock_on(scored.as_of))
    client = app.test_client()
    for n in range(3):
        assert client.open("/v1/risk-list", method=f"MADEUP{n}").status_code == 405
    text = client.get("/metrics").get_data(as_text=True)
    assert "MADEUP" not in text
    assert 'method="other",route="unmatched",status="405"} 3.0' in text


def test_a_sample_that_cannot_be_written_costs_no_request(
    scored: Scored, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """As when gunicorn's shared samples directory is gone: the request is still answered,
    and the failure logged once, not on every request."""
    app = create_app(scored.settings, clock=clock_on(scored.as_of))
    recorder = services_of(app).request_metrics

    def gone(*labels: str) -> None:
        raise FileNotFoundError("/tmp/retention-metrics-x/counter_1.db")

    monkeypatch.setattr(recorder._requests, "labels", gone)  # type: ignore[attr-defined]
    client = keyed_client(app, make_key(scored.store, "admin"))
    with caplog.at_level(logging.ERROR, logger="retention.api.metrics"):
        for url in ("/health", "/v1/risk-list?limit=1", "/v1/risk-list?limit=1"):
            assert client.get(url).status_code == 200, url
    assert [r.getMessage() for r in caplog.records if r.name == "retention.api.metrics"] == [
        "metrics cannot be recorded (FileNotFoundError); requests are still served"]
