"""The API's request connections: held by the worker thread on PostgreSQL, pooled on SQLite."""

from __future__ import annotations

import pytest
from sqlalchemy import Connection, text
from sqlalchemy.exc import DBAPIError, OperationalError

from retention.api.connections import RequestConnections
from retention.db import engines as db
from retention.db.engines import store_engine


def _backend(conn: Connection) -> int:
    return int(conn.execute(text("SELECT pg_backend_pid()")).scalar_one())


def _kill(url: str, pid: int) -> None:
    killer = store_engine(url)
    with killer.connect() as other:
        other.execute(text("SELECT pg_terminate_backend(:p)"), {"p": pid})
    killer.dispose()


def test_requests_on_postgresql_reuse_one_autocommit_connection(pg_url: str) -> None:
    engine = store_engine(pg_url)
    connections = RequestConnections(engine)
    pids = []
    for _ in range(3):
        conn = connections.acquire()
        pids.append(_backend(conn))
        assert conn.connection.driver_connection.autocommit  # type: ignore[attr-defined]
        connections.release(conn)
    assert len(set(pids)) == 1
    engine.dispose()


def test_a_held_connection_killed_while_idle_is_replaced_before_use(
    pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(db, "IDLE_PING_SECONDS", 0.0)
    engine = store_engine(pg_url)
    connections = RequestConnections(engine)
    conn = connections.acquire()
    pid = _backend(conn)
    connections.release(conn)
    _kill(pg_url, pid)
    conn = connections.acquire()
    assert _backend(conn) != pid
    connections.release(conn)
    engine.dispose()


def test_a_held_connection_that_failed_is_replaced(pg_url: str) -> None:
    """Killed in use (no idle pause, so no ping): that request fails, the next one works."""
    engine = store_engine(pg_url)
    connections = RequestConnections(engine)
    conn = connections.acquire()
    pid = _backend(conn)
    _kill(pg_url, pid)
    with pytest.raises(DBAPIError):
        _backend(conn)
    connections.release(conn)
    conn = connections.acquire()
    assert _backend(conn) != pid
    connections.release(conn)
    engine.dispose()


def test_sqlite_connections_go_back_to_the_pool(tmp_path: object) -> None:
    engine = store_engine(f"sqlite:///{tmp_path}/store.db")
    connections = RequestConnections(engine)
    conn = connections.acquire()
    conn.execute(text("SELECT 1"))
    connections.release(conn)
    assert conn.closed
    engine.dispose()


def test_a_held_connection_that_timed_out_on_a_lock_is_kept_and_works(pg_url: str) -> None:
    """A lock or statement timeout cancels one statement: the connection is not lost."""
    engine = store_engine(pg_url, statement_timeout=2.0, lock_timeout=0.2)
    connections = RequestConnections(engine)
    conn = connections.acquire()
    pid = _backend(conn)
    conn.execute(text("CREATE TABLE held (x integer)"))
    connections.release(conn)
    locker = store_engine(pg_url)
    with locker.connect() as other:
        other.execute(text("LOCK TABLE held IN ACCESS EXCLUSIVE MODE"))
        conn = connections.acquire()
        with pytest.raises(OperationalError, match="lock timeout"):
            conn.execute(text("SELECT * FROM held"))
        connections.release(conn)
        other.rollback()
    conn = connections.acquire()
    assert _backend(conn) == pid
    assert conn.execute(text("SELECT count(*) FROM held")).scalar_one() == 0
    connections.release(conn)
    locker.dispose()
    engine.dispose()
