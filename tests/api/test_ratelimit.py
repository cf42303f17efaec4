"""Rate limits (``api/ratelimit.py``): 429 with Retry-After, one limit shared by the workers
through Redis, and window counters that expire and survive a Redis restart."""

from __future__ import annotations

import uuid

import redis
from flask.testing import FlaskClient

from retention.api import create_app
from retention.api.ratelimit import RateLimiter, RedisCounter
from retention.api.services import services_of
from tests.conftest import Scored
from tests.support.apps import clock_on, keyed_client, make_key
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
