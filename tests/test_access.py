"""Who gets in and what each caller sees: keys, roles, clinic and caseload scope, rate limits."""

from __future__ import annotations

import os
import uuid

import pytest
import redis
from flask import Flask
from flask.testing import FlaskClient

from retention.access.keys import AccessError, create_key, revoke_key
from retention.api import create_app
from retention.api.ratelimit import RateLimiter, RedisCounter
from retention.api.services import services_of
from retention.store import tables
from tests.api_keys import clock_on, keyed_client, make_key
from tests.conftest import Scored

PROBLEM = "application/problem+json"


@pytest.fixture(scope="module")
def app(scored: Scored) -> Flask:
    return create_app(scored.settings, TESTING=True, clock=clock_on(scored.as_of))


@pytest.fixture(scope="module")
def everyone(app: Flask, scored: Scored) -> list[dict]:
    token = make_key(scored.store, "admin")
    items = keyed_client(app, token).get("/v1/risk-list?limit=500").get_json()["items"]
    assert len(items) > 30
    return items


@pytest.fixture(scope="module")
def clinics(everyone: list[dict]) -> list[str]:
    found = sorted({i["clinic_id"] for i in everyone})
    assert len(found) >= 2
    return found


def audit_rows(scored: Scored, request_id: str) -> list[dict]:
    with scored.store.connect() as conn:
        rows = conn.execute(tables.audit_log.select()
                            .where(tables.audit_log.c.request_id == request_id)).fetchall()
    return [dict(r._mapping) for r in rows]


@pytest.mark.parametrize("header", [None, "Bearer", "Basic dXNlcjpwYXNz", "Bearer nonsense",
                                    "Bearer rk_0123456789ab_" + "x" * 43])
def test_without_a_valid_key_nothing_is_returned(app: Flask, scored: Scored,
                                                 header: str | None) -> None:
    rid = uuid.uuid4().hex
    headers = {"X-Request-ID": rid, **({"Authorization": header} if header else {})}
    for url in ("/v1/risk-list", "/v1/clients/C000001/risk",
                "/fhir/RiskAssessment?subject=Patient/C000001", "/v1/models"):
        response = app.test_client().get(url, headers=headers)
        assert response.status_code == 401
        assert response.mimetype == PROBLEM
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
        assert "items" not in response.get_json() and "entry" not in response.get_json()
    records = audit_rows(scored, rid)
    assert len(records) == 4
    assert {r["outcome"] for r in records} == {"unauthenticated"}


def test_a_revoked_key_gets_nothing(app: Flask, scored: Scored, clinics: list[str]) -> None:
    with scored.store.begin() as conn:
        key_id, token = create_key(conn, "ehr", [clinics[0]])
    client = keyed_client(app, token)
    assert client.get("/v1/risk-list?limit=1").status_code == 200
    with scored.store.begin() as conn:
        revoke_key(conn, key_id)
    response = client.get("/v1/risk-list?limit=1")
    assert response.status_code == 401
    assert "items" not in response.get_json()


def test_a_tampered_secret_with_a_real_key_id_is_refused(app: Flask, scored: Scored) -> None:
    token = make_key(scored.store, "admin")
    forged = token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB")
    assert keyed_client(app, forged).get("/v1/risk-list").status_code == 401


def test_keys_are_stored_only_as_hashes(scored: Scored) -> None:
    token = make_key(scored.store, "admin")
    with scored.store.connect() as conn:
        stored = [tuple(str(v) for v in r) for r in conn.execute(tables.api_keys.select())]
    assert not any(token in value or token.split("_")[-1] in value
                   for row in stored for value in row)


def test_a_clinic_key_lists_only_its_clinic(app: Flask, scored: Scored, everyone: list[dict],
                                            clinics: list[str]) -> None:
    token = make_key(scored.store, "case_manager", [clinics[0]])
    items = keyed_client(app, token).get("/v1/risk-list?limit=500").get_json()["items"]
    assert {i["clinic_id"] for i in items} == {clinics[0]}
    assert [i["episode_id"] for i in items] == [
        i["episode_id"] for i in everyone if i["clinic_id"] == clinics[0]]
    # Asking for another clinic by filter narrows the scope; it never widens it.
    other = keyed_client(app, token).get(f"/v1/risk-list?clinic_id={clinics[1]}").get_json()
    assert other["items"] == []


def test_foreign_ids_are_indistinguishable_from_unknown_ones_and_audited(
    app: Flask, scored: Scored, everyone: list[dict], clinics: list[str]
) -> None:
    token = make_key(scored.store, "ehr", [clinics[0]])
    client = keyed_client(app, token)
    unknown = client.get("/v1/clients/NOBODY/risk")
    assert unknown.status_code == 404
    foreign = sorted({i["client_id"] for i in everyone if i["clinic_id"] != clinics[0]})
    assert len(foreign) > 20
    for client_id in foreign:
        rid = uuid.uuid4().hex
        response = client.get(f"/v1/clients/{client_id}/risk", headers={"X-Request-ID": rid})
        assert response.status_code == 404
        body = response.get_json()
        assert body["title"] == unknown.get_json()["title"]
        assert body["detail"] == unknown.get_json()["detail"].replace("NOBODY", client_id)
        assert set(body) == set(unknown.get_json())
        fhir = client.get(f"/fhir/RiskAssessment?subject=Patient/{client_id}").get_json()
        assert fhir["total"] == 0 and fhir["entry"] == []
        [record] = audit_rows(scored, rid)
        assert record["outcome"] == "denied" and record["status"] == 404
        assert client_id in record["client_ids_json"]
    text = client.get("/v1/risk-list?limit=500").get_data(as_text=True)
    assert not any(client_id in text for client_id in foreign)


def test_a_caseload_key_sees_only_its_own_clients(app: Flask, scored: Scored,
                                                  everyone: list[dict]) -> None:
    mine = everyone[0]
    token = make_key(scored.store, "case_manager", [mine["clinic_id"]],
                     case_manager_id=mine["case_manager_id"])
    client = keyed_client(app, token)
    items = client.get("/v1/risk-list?limit=500").get_json()["items"]
    assert items and {i["case_manager_id"] for i in items} == {mine["case_manager_id"]}
    colleague = next(i for i in everyone if i["clinic_id"] == mine["clinic_id"]
                     and i["case_manager_id"] != mine["case_manager_id"])
    assert client.get(f"/v1/clients/{colleague['client_id']}/risk").status_code == 404
    assert client.get(f"/v1/clients/{mine['client_id']}/risk").status_code == 200


def test_roles_decide_the_endpoints(app: Flask, scored: Scored, clinics: list[str]) -> None:
    analyst = keyed_client(app, make_key(scored.store, "analyst", [clinics[0]]))
    assert analyst.get("/v1/risk-list").status_code == 403
    assert analyst.get("/v1/runs").status_code == 200
    assert analyst.get("/v1/models").status_code == 200
    granted = keyed_client(app, make_key(scored.store, "analyst", [clinics[0]],
                                         grants=["client_data"]))
    assert granted.get("/v1/risk-list?limit=2").status_code == 200
    manager = keyed_client(app, make_key(scored.store, "case_manager", [clinics[0]]))
    response = manager.get("/v1/runs")
    assert response.status_code == 403 and response.mimetype == PROBLEM


@pytest.mark.parametrize(("role", "clinics", "kwargs"), [
    ("superuser", ["c"], {}), ("ehr", [], {}), ("ehr", ["c"], {"case_manager_id": "cm"}),
    ("analyst", ["c"], {"grants": ["everything"]}),
])
def test_keys_that_make_no_sense_are_refused(scored: Scored, role: str, clinics: list[str],
                                             kwargs: dict) -> None:
    with pytest.raises(AccessError), scored.store.begin() as conn:
        create_key(conn, role, clinics, **kwargs)


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


REDIS_URL = os.environ.get("RETENTION_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")


@pytest.fixture
def redis_url() -> str:
    try:
        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=1).ping()
    except redis.RedisError as exc:
        message = f"Redis at {REDIS_URL} does not answer: {exc}"
        if os.environ.get("CI"):
            pytest.fail(message + " (CI requires it; .ci/run starts it)", pytrace=False)
        pytest.skip(message)
    return REDIS_URL


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


def test_the_counter_survives_a_dropped_connection_and_a_flushed_script(redis_url: str) -> None:
    """What a Redis restart does to a worker's connection: it counts on, once per hit."""
    counter = RedisCounter(redis_url, clock=lambda: 3_000_000.0)
    key = f"drop-{uuid.uuid4().hex}"
    admin = redis.Redis.from_url(redis_url)
    assert counter.hit(key, 60) == 1
    admin.script_flush()
    assert counter.hit(key, 60) == 2
    killed = admin.client_kill_filter(_type="normal", skipme=True)
    assert killed >= 1
    assert [counter.hit(key, 60) for _ in range(2)] == [3, 4]
