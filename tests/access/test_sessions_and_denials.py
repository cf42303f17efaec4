"""Page sessions (``access.sessions``), key rotation and counted denials against SQLite
and PostgreSQL: what the store itself guarantees, whatever the web layer does."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest
from sqlalchemy import create_engine, delete, select, text, update
from sqlalchemy.exc import DBAPIError

from retention.access.audit import AuditRecord, count_denial, read_denials, window_start
from retention.access.keys import (
    AccessError,
    authenticate,
    check_key,
    create_key,
    revoke_key,
    rotate_key,
)
from retention.access.sessions import end_session, resume_session, start_session
from retention.store import schema, tables

NOW = datetime(2026, 6, 1, 9, 0)
IDLE, LIFETIME = timedelta(minutes=30), timedelta(hours=10)


def test_a_session_ends_at_sign_out_when_idle_when_old_and_when_its_key_is_revoked(
    store_url: str,
) -> None:
    engine = create_engine(store_url)
    with engine.begin() as conn:
        schema.upgrade(conn)
        key_id, _ = create_key(conn, "admin", now=NOW)
        signed_out, idle, old, revoked = (start_session(conn, key_id, NOW) for _ in range(4))
    with engine.begin() as conn:
        assert resume_session(conn, signed_out, NOW, IDLE, LIFETIME) == key_id
        assert end_session(conn, signed_out, NOW)
        assert not end_session(conn, signed_out, NOW)  # once
        assert resume_session(conn, signed_out, NOW, IDLE, LIFETIME) is None
        # Idle: seen at 09:00, not resumed at 09:30 or ever after.
        assert resume_session(conn, idle, NOW + IDLE, IDLE, LIFETIME) is None
        # Old: kept busy every 20 minutes, still ended 10 hours after sign-in.
        at = NOW
        while at + timedelta(minutes=20) < NOW + LIFETIME:
            at += timedelta(minutes=20)
            assert resume_session(conn, old, at, IDLE, LIFETIME) == key_id
        assert resume_session(conn, old, NOW + LIFETIME, IDLE, LIFETIME) is None
        revoke_key(conn, key_id, NOW)
        ended = conn.execute(select(tables.web_sessions.c.end_reason).where(
            tables.web_sessions.c.ended_at.is_not(None))).scalars().all()
        assert sorted(ended) == ["revoked", "revoked", "revoked", "sign_out"]
        assert resume_session(conn, revoked, NOW, IDLE, LIFETIME) is None
        stored = conn.execute(select(tables.web_sessions.c.session_sha256)).scalars().all()
    assert not {signed_out, idle, old, revoked} & set(stored)  # only digests kept
    engine.dispose()


def test_rotation_keeps_role_and_scope_and_ends_the_old_key_after_the_overlap(
    store_url: str,
) -> None:
    engine = create_engine(store_url)
    with engine.begin() as conn:
        schema.upgrade(conn)
        old_id, old = create_key(conn, "case_manager", ["clinic-east"], case_manager_id="cm-1",
                                 label="Dana", expires_at=NOW + timedelta(days=90), now=NOW)
        later = NOW + timedelta(days=80)
        new_id, new = rotate_key(conn, old_id, timedelta(days=7), now=later)
        before, after = later + timedelta(days=7, seconds=-1), later + timedelta(days=7)
        kept = authenticate(conn, old, before)
        fresh = authenticate(conn, new, after)
        assert kept is not None and fresh is not None
        assert (fresh.role, fresh.clinics, fresh.case_manager_id) == (
            "case_manager", ("clinic-east",), "cm-1")
        assert fresh.expires_at == later + timedelta(days=90)  # as long a life as the old
        assert check_key(conn, old, after).outcome == "expired"
        assert check_key(conn, old + "x", after).outcome == "unauthenticated"
        # An overlap past the old key's own expiry does not lengthen its life.
        short_id, _ = create_key(conn, "admin", expires_at=NOW + timedelta(days=1), now=NOW)
        rotate_key(conn, short_id, timedelta(days=30), now=NOW)
        assert conn.execute(select(tables.api_keys.c.expires_at).where(
            tables.api_keys.c.key_id == short_id)).scalar_one() == NOW + timedelta(days=1)
        with pytest.raises(AccessError, match="create a new key"):
            rotate_key(conn, old_id, timedelta(0), now=after)
        with pytest.raises(AccessError, match="future"):
            create_key(conn, "admin", expires_at=NOW, now=NOW)
        with pytest.raises(AccessError, match="negative"):
            rotate_key(conn, new_id, timedelta(days=-1), now=NOW)
    engine.dispose()


def test_counted_denials_only_count_up(store_url: str) -> None:
    """A flood's denials are one row per minute and kind; nothing can lower or remove it."""
    engine = create_engine(store_url)
    with engine.begin() as conn:
        schema.upgrade(conn)
        for second in range(0, 90, 3):  # 30 denials over two minutes, one address
            count_denial(conn, AuditRecord("risk_list.read", "unauthenticated", 401,
                                           f"r{second}", source="10.0.0.9",
                                           at=NOW + timedelta(seconds=second)))
        count_denial(conn, AuditRecord("risk_list.read", "rate_limited", 429, "r-429",
                                       source="10.0.0.9", at=NOW))
    with engine.connect() as conn:
        rows = read_denials(conn, NOW, NOW + timedelta(minutes=2))
    assert [(r["window_start"], r["outcome"], r["denials"], r["last_request_id"])
            for r in rows] == [(NOW, "rate_limited", 1, "r-429"),
                               (NOW, "unauthenticated", 20, "r57"),
                               (NOW + timedelta(minutes=1), "unauthenticated", 10, "r87")]
    d = tables.audit_denials
    for statement in (update(d).values(denials=1), update(d).values(denials=d.c.denials - 1),
                      update(d).values(denials=d.c.denials + 1, source="elsewhere"),
                      delete(d)):
        with pytest.raises(DBAPIError, match="only counts up"), engine.begin() as conn:
            conn.execute(statement)
    if engine.dialect.name == "postgresql":
        with pytest.raises(DBAPIError, match="only counts up"), engine.begin() as conn:
            conn.execute(text("TRUNCATE audit_denials"))
    assert window_start(NOW + timedelta(seconds=59, microseconds=999)) == NOW
    engine.dispose()
