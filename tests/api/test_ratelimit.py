"""Rate limits (``api/ratelimit.py``): 429 with Retry-After, one limit shared by the workers
through Redis, and window counters that expire and survive a Redis restart."""

from __future__ import annotations

import importlib
import logging
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import redis
from flask.testing import FlaskClient
from sqlalchemy import Engine, create_engine, func, select, text

from retention.api import create_app
from retention.api.ratelimit import RateLimiter, RedisCounter
from retention.api.services import services_of
from retention.store import tables
from tests.api.test_serving_faults import write_config
from tests.conftest import Scored
from tests.support.apps import clock_on, copied_store, keyed_client, make_key
from tests.support.redis import PrivateRedis

PROBLEM = "application/problem+json"


def test_rate_limit_answers_429_with_retry_after(scored: Scored) -> None:
    app = create_app(scored.settings.with_overrides(api_rate_limit_per_minute=3),
                     clock=clock_on(scored.as_of))
    client: FlaskClient = keyed_client(app, make_key(scored.store, "admin"))
    statuses = [client.get("/v1/risk-list?limit=1").status_code for _ in range(4)]
    if statuses[-1] == 200:  # the minute turned over between requests; once more
        statuses = [client.get("/v1/risk-list?limit=1").status_code for _ in range(4)]
    assert statuses[-1] == 429
    response = client.get("/v1/risk-list?limit=1")
    assert response.status_code == 429 and response.mimetype == PROBLEM
    assert 1 <= int(response.headers["Retry-After"]) <= 60
    assert "items" not in response.get_json()


def test_the_limit_is_shared_across_workers_through_redis(scored: Scored,
                                                          redis_url: str) -> None:
    settings = scored.settings.with_overrides(api_rate_limit_per_minute=4,
                                              api_rate_limit_storage=redis_url)
    token = make_key(scored.store, "admin")
    # Two apps stand for two gunicorn workers: separate processes share only Redis.
    workers = [keyed_client(create_app(settings, clock=clock_on(scored.as_of)), token)
               for _ in range(2)]
    fixed = 1_000_000.0  # one window for the whole test, whatever the wall clock does
    for worker in workers:
        services_of(worker.application).limiter = RateLimiter(
            RedisCounter(redis_url, clock=lambda: fixed), 4, clock=lambda: fixed)
    statuses = [workers[n % 2].get("/v1/models").status_code for n in range(5)]
    assert statuses == [200, 200, 200, 200, 429]


def test_a_window_counter_expires_and_counts_atomically(redis_url: str) -> None:
    counter = RedisCounter(redis_url, clock=lambda: 2_000_000.0)
    key = f"ttl-{uuid.uuid4().hex}"
    assert [counter.hit(key, 60) for _ in range(3)] == [1, 2, 3]
    slot = f"retention:rl:{key}:{2_000_000 // 60}"
    assert 60 < redis.Redis.from_url(redis_url).ttl(slot) <= 120  # two windows, then gone


def test_the_counter_survives_a_dropped_connection_and_a_flushed_script(
    private_redis: PrivateRedis,
) -> None:
    """What a Redis restart does to a worker's connection: it counts on, once per hit.

    On a server of the test's own: flushing scripts and killing clients touch everyone.
    """
    counter = RedisCounter(private_redis.url, clock=lambda: 3_000_000.0)
    key = f"drop-{uuid.uuid4().hex}"
    admin = redis.Redis.from_url(private_redis.url)
    assert counter.hit(key, 60) == 1
    admin.script_flush()
    assert counter.hit(key, 60) == 2
    killed = admin.client_kill_filter(_type="normal", skipme=True)
    assert killed >= 1
    assert [counter.hit(key, 60) for _ in range(2)] == [3, 4]


def _written(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(tables.audit_log)).scalar_one())


def _counted(engine: Engine) -> Counter[tuple[Any, ...]]:
    """Denials counted, by (action, outcome, status, key)."""
    with engine.connect() as conn:
        rows = conn.execute(text(
            "SELECT action, outcome, status, key_id, sum(denials) FROM audit_denials "
            "GROUP BY action, outcome, status, key_id")).all()
    return Counter({tuple(r[:4]): int(r[4]) for r in rows})


def _counted_since(engine: Engine, before: Counter[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    """Denials counted since ``before`` (the copied store holds earlier tests' own)."""
    grown = _counted(engine) - before
    return sorted(((*k, n) for k, n in grown.items()), key=lambda r: (r[2], r[0]))


@pytest.mark.slow
def test_requests_without_a_key_are_throttled_by_address_and_their_audit_stays_bounded(
    scored: Scored, tmp_path: Path,
) -> None:
    """The issue's flood: no key at all, 600 requests from one address in one minute."""
    settings = copied_store(scored.settings, tmp_path)
    engine = create_engine(settings.store_url)
    client = create_app(settings, clock=clock_on(scored.as_of)).test_client()
    before, counted_before = _written(engine), _counted(engine)
    statuses = [client.get("/v1/risk-list").status_code for _ in range(600)]
    assert statuses[:120] == [401] * 120 and statuses[120:] == [429] * 480
    refused = client.get("/v1/clients/C000001/risk")  # one budget for every endpoint
    assert refused.status_code == 429 and refused.mimetype == PROBLEM
    assert 1 <= int(refused.headers["Retry-After"]) <= 60
    written, counted = _written(engine), _counted_since(engine, counted_before)
    per_minute = settings.audit_denials_per_minute
    assert written - before == per_minute  # the first denials of the minute, one row each
    # The rest are counted, none lost: 601 denials in all.
    assert counted == [("risk_list.read", "unauthenticated", 401, "", 120 - per_minute),
                       ("client_risk.read", "rate_limited", 429, "", 1),
                       ("risk_list.read", "rate_limited", 429, "", 480)]
    engine.dispose()


def test_a_key_over_its_limit_is_counted_not_written_each_time(scored: Scored,
                                                                tmp_path: Path) -> None:
    settings = copied_store(scored.settings, tmp_path).with_overrides(
        api_rate_limit_per_minute=3)
    engine = create_engine(settings.store_url)
    token = make_key(engine, "admin")
    client = keyed_client(create_app(settings, clock=clock_on(scored.as_of)), token)
    before, counted_before = _written(engine), _counted(engine)
    statuses = [client.get("/v1/models").status_code for _ in range(100)]
    assert statuses == [200] * 3 + [429] * 97
    per_minute = settings.audit_denials_per_minute
    assert _written(engine) - before == 3 + per_minute
    counted = _counted_since(engine, counted_before)
    assert counted == [("models.read", "rate_limited", 429, token.split("_")[1],
                        97 - per_minute)]
    engine.dispose()


def test_the_wsgi_entry_point_warns_that_memory_limits_count_per_process(
    scored: Scored, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Under a gunicorn started without `retention serve` the worker count is unknown."""
    config = write_config(tmp_path / "cfg.toml", scored, scored.settings.store_url)
    monkeypatch.setenv("RETENTION_CONFIG", str(config))
    wsgi = importlib.import_module("retention.api.wsgi")  # builds ``app`` from the config
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="retention.api.wsgi"):
        wsgi.build(scored.settings.with_overrides(api_rate_limit_storage="memory://"))
    [record] = [r for r in caplog.records if r.name == "retention.api.wsgi"]
    assert "each worker process counts on its own" in record.getMessage()
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="retention.api.wsgi"):
        wsgi.build(scored.settings.with_overrides(
            api_rate_limit_storage="redis://127.0.0.1:6379/15"))
    assert not [r for r in caplog.records if r.name == "retention.api.wsgi"]
