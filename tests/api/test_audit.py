"""The audit trail over the API: every read and denial recorded, and no record means no data."""

from __future__ import annotations

import json
import uuid
from datetime import date, datetime, timedelta
from pathlib import Path

from click.testing import CliRunner
from flask import Flask
from sqlalchemy import create_engine, text

from retention.access.audit import read_audit
from retention.access.keys import create_key
from retention.api import create_app
from retention.pipelines.cli import main
from retention.store import schema
from tests.conftest import REPO, Scored
from tests.support.apps import clock_on, copied_store, keyed_client, make_key


def records_for(scored: Scored, request_id: str) -> list[dict]:
    with scored.store.connect() as conn:
        return [r for r in read_audit(conn, datetime.min, datetime.max)
                if r["request_id"] == request_id]


def test_each_read_records_who_what_and_the_client_ids_returned(app: Flask,
                                                                scored: Scored) -> None:
    with scored.store.begin() as conn:
        schema.upgrade(conn)
        key_id, token = create_key(conn, "admin")
    client = keyed_client(app, token)
    rid = uuid.uuid4().hex
    body = client.get("/v1/risk-list?limit=7", headers={"X-Request-ID": rid}).get_json()
    [record] = records_for(scored, rid)
    assert record["client_ids"] == [i["client_id"] for i in body["items"]]
    assert (record["key_id"], record["role"], record["action"], record["outcome"],
            record["status"]) == (key_id, "admin", "risk_list.read", "ok", 200)
    assert record["source"] == "127.0.0.1"
    assert record["at"] == clock_on(scored.as_of).now()  # the app's clock, not the wall

    one = body["items"][0]["client_id"]
    for url, action in ((f"/v1/clients/{one}/risk", "client_risk.read"),
                        (f"/fhir/RiskAssessment?subject=Patient/{one}",
                         "fhir.risk_assessment.search")):
        rid = uuid.uuid4().hex
        response = client.get(url, headers={"X-Request-ID": rid})
        assert response.status_code == 200 and response.headers["X-Request-ID"] == rid
        [record] = records_for(scored, rid)
        assert (record["action"], record["client_ids"]) == (action, [one])


def test_no_audit_record_means_no_data(scored: Scored, tmp_path: Path) -> None:
    settings = copied_store(scored.settings, tmp_path)
    engine = create_engine(settings.store_url)
    token = make_key(engine, "admin")
    with engine.begin() as conn:  # the audit table refuses every insert from now on
        conn.execute(text("CREATE TRIGGER audit_down BEFORE INSERT ON audit_log "
                          "BEGIN SELECT RAISE(ABORT, 'disk full'); END"))
    client = keyed_client(create_app(settings, clock=clock_on(scored.as_of)), token)
    for url in ("/v1/risk-list?limit=5", "/v1/risk-list?colour=red", "/v1/clients/NOBODY/risk"):
        response = client.get(url)
        assert response.status_code == 503, url
        assert response.mimetype == "application/problem+json"
        assert "items" not in response.get_json() and "current" not in response.get_json()
    engine.dispose()


def test_audit_export_covers_the_requested_days(app: Flask, scored: Scored,
                                                tmp_path: Path) -> None:
    token = make_key(scored.store, "admin")
    rid = uuid.uuid4().hex
    keyed_client(app, token).get("/v1/risk-list?limit=2", headers={"X-Request-ID": rid})
    config = tmp_path / "cfg.toml"
    config.write_text(f'source_url = "{scored.settings.source_url}"\n'
                      f'store_url = "{scored.settings.store_url}"\n'
                      f'reasons_file = "{REPO / "config" / "reasons.toml"}"\n')
    today = scored.as_of  # the day the app's clock says it is
    out = tmp_path / "audit.jsonl"
    result = CliRunner().invoke(main, ["--config", str(config), "audit", "export",
                                       "--from", str(today), "--to", str(today), "-o", str(out)])
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    mine = [r for r in lines if r["request_id"] == rid]
    assert len(mine) == 1 and len(mine[0]["client_ids"]) == 2
    assert "exported" in result.output
    yesterday = today - timedelta(days=1)
    earlier = CliRunner().invoke(main, ["--config", str(config), "audit", "export", "--from",
                                        str(yesterday - timedelta(days=9)), "--to",
                                        str(yesterday)])
    assert earlier.exit_code == 0 and rid not in earlier.output
    assert date.fromisoformat(mine[0]["at"][:10]) == today


def test_reads_and_denials_are_audited_on_postgresql(
    scored: Scored, store_url: str,
) -> None:
    engine = create_engine(store_url)
    token = make_key(engine, "admin")
    app = create_app(scored.settings.with_overrides(store_url=store_url),
                     clock=clock_on(scored.as_of))
    rids = [uuid.uuid4().hex for _ in range(2)]
    assert keyed_client(app, token).get(
        "/v1/risk-list", headers={"X-Request-ID": rids[0]}).status_code == 404
    assert app.test_client().get(
        "/v1/risk-list", headers={"X-Request-ID": rids[1]}).status_code == 401
    with engine.connect() as conn:
        rows = {r["request_id"]: r["outcome"] for r in read_audit(conn, datetime.min, datetime.max)}
    assert [rows.get(r) for r in rids] == ["not_found", "unauthenticated"]
    engine.dispose()


def test_a_failed_audit_write_on_postgresql_returns_no_data_and_the_next_request_recovers(
    scored: Scored, pg_url: str,
) -> None:
    """The audit INSERT goes to psycopg directly: its errors still mean 503 and no data,
    and a connection that broke under it is replaced, not handed to the next request."""
    engine = create_engine(pg_url)
    token = make_key(engine, "admin")
    client = keyed_client(create_app(scored.settings.with_overrides(store_url=pg_url),
                                     clock=clock_on(scored.as_of)), token)
    assert client.get("/v1/risk-list").status_code == 404  # no list yet; audited
    with engine.begin() as conn:
        conn.execute(text("CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS "
                          "$$ BEGIN RAISE EXCEPTION 'disk full'; END $$"))
        conn.execute(text("CREATE TRIGGER audit_down BEFORE INSERT ON audit_log "
                          "FOR EACH ROW EXECUTE FUNCTION refuse()"))
    refused = client.get("/v1/risk-list")
    assert refused.status_code == 503
    assert refused.get_json()["title"] == "Audit unavailable"
    with engine.begin() as conn:
        conn.execute(text("DROP TRIGGER audit_down ON audit_log"))
        # The worker's held connection dies while it is busy (no idle pause to ping).
        conn.execute(text(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = "
            "current_database() AND pid <> pg_backend_pid() AND state = 'idle'"))
    broken = client.get("/v1/risk-list")  # fails on the dead connection, says so, shows nothing
    assert broken.status_code >= 500 and broken.mimetype == "application/problem+json"
    assert client.get("/v1/risk-list").status_code == 404
    engine.dispose()
