"""Engines for the clinic source (read-only where the driver allows) and the store."""

from __future__ import annotations

import functools
import time
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DisconnectionError

# How long to wait for a database before calling it down.
CONNECT_TIMEOUT_SECONDS = 10
# libpq settings of every connection to a clinic's PostgreSQL (the ADBC readers' too):
# read-only by default, named for the clinic's DBA, and quick to give up when it is down.
SOURCE_CONNECT_ARGS: dict[str, Any] = {
    "options": "-c default_transaction_read_only=on",
    "application_name": "retention-etl",
    "connect_timeout": CONNECT_TIMEOUT_SECONDS,
}
# PyMySQL settings of every connection to a clinic's MariaDB or MySQL: every transaction
# of the session read-only (``init_command`` runs on each connect, a driver reconnect
# included, before SQLAlchemy or a mapping's query sees the connection), all of Unicode
# (MySQL's "utf8" is three bytes), and quick to give up when the server is down.
MYSQL_SOURCE_CONNECT_ARGS: dict[str, Any] = {
    "init_command": "SET SESSION TRANSACTION READ ONLY",
    "charset": "utf8mb4",
    "connect_timeout": CONNECT_TIMEOUT_SECONDS,
}
MYSQL_BACKENDS = ("mysql", "mariadb")


def store_engine(
    url: str, statement_timeout: float | None = None, lock_timeout: float | None = None
) -> Engine:
    """The service's own database.

    SQLite files get WAL (readers never wait on a run) and real transactions: the
    driver's own handling would run DDL outside them and begin lazily, so a run
    killed part way could leave half its writes.

    The API passes its timeouts (seconds): on PostgreSQL every statement is cancelled
    after ``statement_timeout`` and gives up waiting on a lock after ``lock_timeout``
    (set when the connection opens, so they cost no round trip); SQLite waits
    ``lock_timeout`` for its write lock. Jobs pass none: a nightly run may take long.
    """
    options = []
    if statement_timeout is not None:
        options.append(f"-c statement_timeout={_milliseconds(statement_timeout)}")
    if lock_timeout is not None:
        options.append(f"-c lock_timeout={_milliseconds(lock_timeout)}")
    engine = _engine(url, application_name="retention", options=" ".join(options))
    if engine.dialect.name == "sqlite":
        busy = SQLITE_BUSY_MS if lock_timeout is None else _milliseconds(lock_timeout)
        event.listen(engine, "connect", functools.partial(_sqlite_connect, busy))
        event.listen(engine, "begin", _sqlite_begin)
    return engine


def _milliseconds(seconds: float) -> int:
    return max(1, round(seconds * 1000))


def source_engine(url: str) -> Engine:
    """The clinic's database, opened read-only: the ETL never writes to it."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:"):
        path = Path(parsed.database).resolve()
        if not path.exists():
            raise FileNotFoundError(
                f"clinic database {path} does not exist; run `retention synth` for a "
                "synthetic clinic or set source_url"
            )
        return create_engine(f"sqlite:///file:{path}?mode=ro&uri=true")
    if parsed.get_backend_name() == "postgresql":
        return create_engine(
            _with_driver(url),
            connect_args=SOURCE_CONNECT_ARGS,
            pool_pre_ping=True,
        )
    if parsed.get_backend_name() in MYSQL_BACKENDS:
        # PyMySQL whatever the URL names: the connect arguments above are its own.
        return create_engine(
            parsed.set(drivername=f"{parsed.get_backend_name()}+pymysql"),
            connect_args=MYSQL_SOURCE_CONNECT_ARGS,
            pool_pre_ping=True,
        )
    return _engine(url)


def is_read_only(connection: Connection) -> bool | None:
    """Whether the database refuses writes on this connection (None if it cannot tell)."""
    if connection.dialect.name == "postgresql":
        return str(connection.exec_driver_sql("SHOW transaction_read_only").scalar()) == "on"
    if connection.dialect.name == "sqlite":
        return "mode=ro" in str(connection.engine.url)
    if connection.dialect.name in MYSQL_BACKENDS:
        # MySQL 8.0.3 renamed tx_read_only (which it then dropped) to transaction_read_only;
        # MariaDB reads tx_read_only (an alias of the new name from 11.1).
        dialect: Any = connection.dialect
        version = tuple(dialect.server_version_info or ())
        old = dialect.is_mariadb or version < (8, 0, 3)
        variable = "@@tx_read_only" if old else "@@transaction_read_only"
        return int(connection.exec_driver_sql(f"SELECT {variable}").scalar_one()) == 1
    return None


def _with_driver(url: str) -> str:
    """Plain ``postgresql://`` URLs use psycopg 3, the driver this service ships with."""
    parsed = make_url(url)
    if parsed.drivername == "postgresql":
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed.render_as_string(hide_password=False)


def _engine(url: str, application_name: str | None = None, options: str = "") -> Engine:
    url = _with_driver(url)
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:"):
        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
    if parsed.get_backend_name() == "postgresql":
        args: dict[str, Any] = {"connect_timeout": CONNECT_TIMEOUT_SECONDS}
        if application_name:
            args["application_name"] = application_name
        if options:
            # connect_args replace the URL's own ``options`` (a search_path, say): keep both.
            given = parsed.query.get("options")
            given = " ".join(given) if isinstance(given, tuple) else given
            args["options"] = f"{given} {options}" if given else options
        engine = create_engine(url, connect_args=args)
        event.listen(engine, "checkin", _note_checkin)
        event.listen(engine, "checkout", functools.partial(_ping_if_idle, engine.dialect))
        return engine
    return create_engine(url)


# Pinged only when idle this long: a ping per checkout was costly; a restart still costs no error.
IDLE_PING_SECONDS = 10.0


def _note_checkin(_dbapi_connection: Any, record: Any) -> None:
    record.info["checked_in_at"] = time.monotonic()


def _ping_if_idle(dialect: Any, dbapi_connection: Any, record: Any, _proxy: Any) -> None:
    """Ping a connection that sat idle; a dead one is replaced before anyone uses it."""
    checked_in = record.info.get("checked_in_at")
    if checked_in is not None and time.monotonic() - checked_in < IDLE_PING_SECONDS:
        return
    try:
        alive = dialect.do_ping(dbapi_connection)
    except Exception as exc:
        if not dialect.is_disconnect(exc, dbapi_connection, None):
            raise
        alive = False
    if not alive:
        raise DisconnectionError("a pooled connection to the database was closed")


# How long a job's SQLite connection waits for the write lock another process holds.
SQLITE_BUSY_MS = 30000


def _sqlite_connect(busy_ms: int, dbapi_connection: Any, _record: Any) -> None:
    dbapi_connection.isolation_level = None  # SQLAlchemy's "begin" event emits BEGIN
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute(f"PRAGMA busy_timeout={int(busy_ms)}")
    cursor.close()


def _sqlite_begin(connection: Connection) -> None:
    connection.exec_driver_sql("BEGIN")
