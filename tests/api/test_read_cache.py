"""The API's per-worker read cache: fast, and never the word on who may see what.

Each test warms the cache first, then changes what the cache remembers (a revoked
key, a replaced or newer list, another caller's scope, a broken audit trail) and
checks the next answer comes from the database's current state.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from flask import Flask
from sqlalchemy import Engine, create_engine, select, text

from retention.access.audit import read_audit
from retention.access.keys import create_key, revoke_key
from retention.api import create_app
from retention.api.cache import LRU
from retention.store import tables
from tests.conftest import Scored
from tests.support.apps import clock_on, copied_store, keyed_client, make_key, republish


@pytest.fixture
def own_store(scored: Scored, tmp_path: Path) -> Iterator[tuple[Flask, Engine]]:
    """An app over a copy of the scored store that tests may republish and break."""
    settings = copied_store(scored.settings, tmp_path)
    engine = create_engine(settings.store_url)
    yield create_app(settings, clock=clock_on(scored.as_of)), engine
    engine.dispose()


def audit_of(engine: Engine, request_id: str) -> list[dict]:
    with engine.connect() as conn:
        return [r for r in read_audit(conn, datetime.min, datetime.max)
                if r["request_id"] == request_id]


def test_a_revoked_key_gets_nothing_though_its_answers_are_cached(
    own_store: tuple[Flask, Engine], scored: Scored,
) -> None:
    app, engine = own_store
    with engine.begin() as conn:
        key_id, token = create_key(conn, "admin")
    client = keyed_client(app, token)
    first = client.get("/v1/risk-list?limit=5").get_json()["items"][0]["client_id"]
    urls = ("/v1/risk-list?limit=5", f"/v1/clients/{first}/risk",
            f"/fhir/RiskAssessment?subject=Patient/{first}")
    assert all(client.get(url).status_code == 200 for url in urls)  # all cached now
    with engine.begin() as conn:
        revoke_key(conn, key_id)
    for url in urls:
        rid = uuid.uuid4().hex
        response = client.get(url, headers={"X-Request-ID": rid})
        assert response.status_code == 401, url
        body = response.get_json()
        if url.startswith("/fhir/"):  # FHIR's error resource, for FHIR clients
            assert body["issue"][0]["code"] == "login"
        else:
            assert body["title"] == "Authentication required"
        assert not {"items", "current", "entry"} & set(response.get_json())
        # One record per request: the refused claim wrote nothing, the denial one row.
        [record] = audit_of(engine, rid)
        assert (record["outcome"], record["key_id"], record["client_ids"]) == (
            "unauthenticated", key_id, [])


def test_pages_are_never_shared_across_scopes(app_and_clinics: tuple[Flask, list[str]],
                                              scored: Scored) -> None:
    app, clinics = app_and_clinics
    url = "/v1/risk-list?limit=20"
    for clinic in clinics:
        items = keyed_client(app, make_key(scored.store, "case_manager", [clinic])
                             ).get(url).get_json()
        assert items["items"] and {i["clinic_id"] for i in items["items"]} == {clinic}
    mine = keyed_client(app, make_key(scored.store, "admin")).get(url).get_json()["items"][0]
    caseload = make_key(scored.store, "case_manager", [mine["clinic_id"]],
                        case_manager_id=mine["case_manager_id"])
    items = keyed_client(app, caseload).get(url).get_json()["items"]
    assert {i["case_manager_id"] for i in items} == {mine["case_manager_id"]}


@pytest.fixture
def app_and_clinics(scored: Scored) -> tuple[Flask, list[str]]:
    app = create_app(scored.settings, clock=clock_on(scored.as_of))
    admin = keyed_client(app, make_key(scored.store, "admin"))
    items = admin.get("/v1/risk-list?limit=500").get_json()["items"]
    return app, sorted({i["clinic_id"] for i in items})


def test_a_replaced_list_is_served_at_once(own_store: tuple[Flask, Engine],
                                           scored: Scored) -> None:
    app, engine = own_store
    client = keyed_client(app, make_key(engine, "admin"))
    before = client.get("/v1/risk-list?limit=3").get_json()
    republish(engine, scored.as_of)
    rid = uuid.uuid4().hex
    after = client.get("/v1/risk-list?limit=3", headers={"X-Request-ID": rid}).get_json()
    assert after["items"] != before["items"]
    assert [i["rank"] for i in after["items"]] == [1, 2, 3]
    with engine.connect() as conn:
        top = [r.client_id for r in conn.execute(
            select(tables.scores.c.client_id).where(tables.scores.c.as_of == scored.as_of)
            .order_by(tables.scores.c.rank).limit(3))]
    assert [i["client_id"] for i in after["items"]] == top
    assert [r["client_ids"] for r in audit_of(engine, rid)] == [top]


def test_a_newer_list_is_served_at_once(own_store: tuple[Flask, Engine], scored: Scored) -> None:
    app, engine = own_store
    client = keyed_client(app, make_key(engine, "admin"))
    assert client.get("/v1/risk-list?limit=3").get_json()["as_of"] == scored.as_of.isoformat()
    newer = scored.as_of + timedelta(days=1)
    republish(engine, newer, reverse=False)
    assert client.get("/v1/risk-list?limit=3").get_json()["as_of"] == newer.isoformat()
    # The older list is still there by date, and its cached pages still serve it.
    old = client.get(f"/v1/risk-list?limit=3&as_of={scored.as_of}").get_json()
    assert old["as_of"] == scored.as_of.isoformat()


def test_cached_pages_are_audited_with_the_ids_they_return(own_store: tuple[Flask, Engine]
                                                           ) -> None:
    app, engine = own_store
    client = keyed_client(app, make_key(engine, "admin"))
    for _ in range(3):
        rid = uuid.uuid4().hex
        body = client.get("/v1/risk-list?limit=4", headers={"X-Request-ID": rid}).get_json()
        [record] = audit_of(engine, rid)
        assert record["client_ids"] == [i["client_id"] for i in body["items"]]
        assert record["outcome"] == "ok"


def test_no_audit_record_means_no_data_even_from_the_cache(
    own_store: tuple[Flask, Engine],
) -> None:
    app, engine = own_store
    client = keyed_client(app, make_key(engine, "admin"))
    assert client.get("/v1/risk-list?limit=5").status_code == 200
    with engine.begin() as conn:
        conn.execute(text("CREATE TRIGGER audit_down BEFORE INSERT ON audit_log "
                          "BEGIN SELECT RAISE(ABORT, 'disk full'); END"))
    response = client.get("/v1/risk-list?limit=5")
    assert response.status_code == 503 and "items" not in response.get_json()


def test_the_lru_keeps_within_its_count_and_its_cost() -> None:
    lru: LRU[str] = LRU(max_items=3, max_cost=10)
    for key in "abc":
        lru.put(key, key.upper(), cost=3)
    assert lru.get("a") == "A"  # now the most recently used
    lru.put("d", "D", cost=3)  # 12 > 10: the least recently used ("b") goes
    assert (lru.get("b"), lru.get("a"), lru.get("c"), lru.get("d")) == (None, "A", "C", "D")
    lru.put("e", "E", cost=10)  # alone it fits; everything else goes
    assert len(lru) == 1 and lru.get("e") == "E"
    lru.pop("e")
    assert lru.get("e") is None and len(lru) == 0
