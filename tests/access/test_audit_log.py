"""The audit log (``retention.access.audit``): append-only, one cursor per connection on
PostgreSQL, and a write that checks the key and the list in its own statement."""

from __future__ import annotations

import uuid
from dataclasses import replace
from datetime import datetime, timedelta

import pytest
from sqlalchemy import create_engine, delete, text, update
from sqlalchemy.exc import DBAPIError

from retention.access.audit import AuditRecord, key_still_valid, read_audit, write_audit
from retention.access.keys import create_key, revoke_key, token_digest
from retention.access.scope import still_published
from retention.store import schema, tables
from tests.conftest import Scored

NOW = datetime(2026, 6, 1, 9, 0)


def test_the_application_cannot_change_or_remove_audit_records(
    store_url: str,
) -> None:
    engine = create_engine(store_url)
    with engine.begin() as conn:
        schema.upgrade(conn)
        write_audit(conn, AuditRecord("risk_list.read", "ok", 200, "r1",
                                             client_ids=("C1",)))
    for statement in (update(tables.audit_log).values(outcome="edited"),
                      delete(tables.audit_log)):
        with pytest.raises(DBAPIError, match="append-only"), engine.begin() as conn:
            conn.execute(statement)
    if engine.dialect.name == "postgresql":
        with pytest.raises(DBAPIError, match="append-only"), engine.begin() as conn:
            conn.execute(text("TRUNCATE audit_log"))
    with engine.connect() as conn:
        rows = read_audit(conn, datetime.min, datetime.max)
    assert [(r["outcome"], r["client_ids"]) for r in rows] == [("ok", ["C1"])]
    engine.dispose()


def test_audit_writes_on_postgresql_keep_one_cursor_per_connection(pg_url: str) -> None:
    """Autocommit: each write durable on its own, one cursor reused; a replaced connection
    gets a new one; inside a transaction the write is the caller's to commit or roll back."""
    engine = create_engine(pg_url)
    with engine.begin() as conn:
        schema.upgrade(conn)
    record = AuditRecord(action="t.read", outcome="ok", status=200, request_id="kept",
                         client_ids=("C1", "C2"))
    only_if = [key_still_valid("nokey", "nohash", NOW)]

    def count() -> int:
        with engine.connect() as other:
            return int(other.execute(text(
                "SELECT count(*) FROM audit_log WHERE request_id = 'kept'")).scalar_one())

    auto = engine.connect().execution_options(isolation_level="AUTOCOMMIT")
    assert write_audit(auto, record, only_if) is False  # the key does not exist
    cursor = auto.connection.info["retention_audit_cursor"]
    with auto.begin():  # a key, so the condition holds
        create_key(auto, "admin")
    key_id, digest = auto.execute(text("SELECT key_id, token_sha256 FROM api_keys")).one()
    valid = [key_still_valid(key_id, digest, NOW)]
    assert write_audit(auto, record, valid) is True
    assert auto.connection.info["retention_audit_cursor"] is cursor
    assert count() == 1  # durable without a commit
    auto.invalidate()
    auto.rollback()  # the SELECT above began SQLAlchemy's (empty) transaction
    assert write_audit(auto, record, valid) is True  # on a new DBAPI connection
    assert auto.connection.info["retention_audit_cursor"] is not cursor
    auto.commit()  # the new connection is not in autocommit: the write joined a transaction
    auto.close()

    with engine.connect() as conn:
        assert write_audit(conn, record, valid) is True
        conn.rollback()
    assert count() == 2
    with engine.connect() as conn:
        assert write_audit(conn, record, valid) is True
        conn.commit()
    assert count() == 3
    assert [r["client_ids"] for r in _records_kept(engine)] == [["C1", "C2"]] * 3
    engine.dispose()


def _records_kept(engine: object) -> list[dict]:
    with engine.connect() as conn:  # type: ignore[attr-defined]
        return [r for r in read_audit(conn, datetime.min, datetime.max)
                if r["request_id"] == "kept"]


def test_the_audit_write_checks_the_key_and_the_list_in_its_own_statement(
    store_url: str, scored: Scored,
) -> None:
    """On SQLite and PostgreSQL: a failed condition writes nothing and says so."""
    engine = create_engine(store_url)
    with engine.begin() as conn:
        schema.upgrade(conn)
        key_id, token = create_key(conn, "admin")
    pub = {"as_of": scored.as_of, "run_id": 7, "published_at": datetime(2026, 6, 1, 3, 0),
           "model_version": "m", "n_scored": 0}
    with engine.begin() as conn:
        conn.execute(tables.publications.insert().values(**pub))
    record = AuditRecord("risk_list.read", "ok", 200, uuid.uuid4().hex, key_id=key_id,
                         client_ids=("C1",))
    key = key_still_valid(key_id, token_digest(token), NOW)
    with engine.begin() as conn:
        assert write_audit(conn, record, [key, still_published(pub, latest=True)])
        assert not write_audit(conn, replace(record, request_id="wrong-token"), [
            key_still_valid(key_id, token_digest(token + "x"), NOW)])
        assert not write_audit(conn, replace(record, request_id="replaced"), [
            key, still_published({**pub, "run_id": 8}, latest=False)])
    with engine.begin() as conn:
        conn.execute(tables.publications.insert().values(
            **{**pub, "as_of": scored.as_of + timedelta(days=1), "run_id": 9}))
        assert not write_audit(conn, replace(record, request_id="newer"), [
            key, still_published(pub, latest=True)])
        assert write_audit(conn, replace(record, request_id="by-date"), [
            key, still_published(pub, latest=False)])
        revoke_key(conn, key_id)
        assert not write_audit(conn, replace(record, request_id="revoked"), [key])
        # A key that expires at 10:00 is valid at 09:00 and refused from 10:00 on.
        expiring, its_token = create_key(conn, "admin", expires_at=NOW + timedelta(hours=1),
                                         now=NOW)
        assert write_audit(conn, replace(record, request_id="before-expiry"), [
            key_still_valid(expiring, token_digest(its_token), NOW)])
        assert not write_audit(conn, replace(record, request_id="expired"), [
            key_still_valid(expiring, token_digest(its_token), NOW + timedelta(hours=1))])
    with engine.connect() as conn:
        written = [r["request_id"] for r in read_audit(conn, datetime.min, datetime.max)]
    assert written == [record.request_id, "by-date", "before-expiry"]
    engine.dispose()
