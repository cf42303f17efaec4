"""Engines: store connections on PostgreSQL pinged only after they sat idle; the clinic source
opened read-only."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.exc import DBAPIError, OperationalError

from retention.db import engines as db
from retention.db.engines import is_read_only, source_engine, store_engine


def _engine_and_backend(url: str, monkeypatch: pytest.MonkeyPatch) -> tuple[Engine, int, list[int]]:
    """An engine with one pooled connection, its server pid, and a count of pings."""
    engine = store_engine(url)
    pings: list[int] = []
    ping = engine.dialect.do_ping

    def counted(dbapi_connection: Any) -> bool:
        pings.append(1)
        return bool(ping(dbapi_connection))

    monkeypatch.setattr(engine.dialect, "do_ping", counted)
    with engine.connect() as conn:
        pid = int(conn.execute(text("SELECT pg_backend_pid()")).scalar_one())
    return engine, pid, pings


def test_a_connection_killed_while_idle_is_replaced_before_use(
    pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(db, "IDLE_PING_SECONDS", 0.0)
    engine, pid, pings = _engine_and_backend(pg_url, monkeypatch)
    killer = store_engine(pg_url)
    with killer.connect() as other:
        other.execute(text("SELECT pg_terminate_backend(:p)"), {"p": pid})
    killer.dispose()
    with engine.connect() as conn:
        assert conn.execute(text("SELECT pg_backend_pid()")).scalar_one() != pid
    assert pings  # it was pinged, found dead, and replaced
    engine.dispose()


def test_a_connection_used_moments_ago_is_not_pinged(
    pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(db, "IDLE_PING_SECONDS", 3600.0)
    engine, pid, pings = _engine_and_backend(pg_url, monkeypatch)
    pings.clear()  # a brand-new connection may be pinged once
    for _ in range(3):
        with engine.connect() as conn:
            assert conn.execute(text("SELECT pg_backend_pid()")).scalar_one() == pid
    assert pings == []
    engine.dispose()


def test_the_clinic_source_is_opened_read_only(tmp_path: Path) -> None:
    path = tmp_path / "clinic.db"
    create_engine(f"sqlite:///{path}").connect().close()
    engine = source_engine(f"sqlite:///{path}")
    with engine.connect() as conn:
        assert is_read_only(conn)
        with pytest.raises(DBAPIError, match="readonly"):
            conn.execute(text("CREATE TABLE intruder (x integer)"))
    engine.dispose()


@pytest.mark.parametrize("scheme", ["mysql", "mysql+pymysql", "mariadb", "mariadb+pymysql"])
def test_a_mariadb_source_is_opened_with_pymysql_read_only(mariadb_url: str, scheme: str) -> None:
    """Every MySQL or MariaDB URL form gets the driver this service ships, utf8mb4 and a
    session whose every transaction is read-only, whatever it begins with."""
    url = mariadb_url.replace("mysql+pymysql://", f"{scheme}://", 1)
    engine = source_engine(url)
    try:
        assert engine.dialect.driver == "pymysql"
        with engine.connect() as conn:
            assert is_read_only(conn)
            assert conn.exec_driver_sql("SELECT @@character_set_client").scalar_one() == "utf8mb4"
            conn.exec_driver_sql("START TRANSACTION")  # no READ ONLY: the session's mode holds
            with pytest.raises(DBAPIError, match="READ ONLY transaction"):
                conn.execute(text("CREATE TABLE intruder (x integer)"))
    finally:
        engine.dispose()


def test_the_apis_engine_bounds_statements_and_lock_waits_and_jobs_engines_do_not(
    pg_url: str,
) -> None:
    api = store_engine(pg_url, statement_timeout=0.3, lock_timeout=0.2)
    job = store_engine(pg_url)
    with api.connect() as conn:
        assert conn.execute(text("SHOW statement_timeout")).scalar_one() == "300ms"
        assert conn.execute(text("SHOW lock_timeout")).scalar_one() == "200ms"
        with pytest.raises(OperationalError, match="statement timeout"):
            conn.execute(text("SELECT pg_sleep(5)"))
    with job.connect() as conn:  # a nightly run may take long
        assert conn.execute(text("SHOW statement_timeout")).scalar_one() == "0"
        assert conn.execute(text("SHOW lock_timeout")).scalar_one() == "0"
        conn.execute(text("CREATE TABLE held (x integer)"))
        conn.commit()
        conn.execute(text("LOCK TABLE held IN ACCESS EXCLUSIVE MODE"))
        with api.connect() as other, pytest.raises(OperationalError, match="lock timeout"):
            other.execute(text("SELECT * FROM held"))
        conn.rollback()
    api.dispose()
    job.dispose()


def test_the_apis_sqlite_engine_waits_its_lock_timeout_for_the_write_lock(
    tmp_path: Path,
) -> None:
    api = store_engine(f"sqlite:///{tmp_path}/store.db", statement_timeout=2.0, lock_timeout=0.25)
    job = store_engine(f"sqlite:///{tmp_path}/store.db")
    with api.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar_one() == 250
    with job.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar_one() == db.SQLITE_BUSY_MS
    api.dispose()
    job.dispose()


def test_the_timeouts_keep_the_options_the_url_already_sets(pg_url: str) -> None:
    url = f"{pg_url}?options=-c%20work_mem%3D7MB"
    api = store_engine(url, statement_timeout=0.3, lock_timeout=0.2)
    with api.connect() as conn:
        assert conn.execute(text("SHOW work_mem")).scalar_one() == "7MB"
        assert conn.execute(text("SHOW lock_timeout")).scalar_one() == "200ms"
    api.dispose()
