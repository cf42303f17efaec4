"""Engines for the clinic source (read-only where the driver allows) and the store."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url


def store_engine(url: str) -> Engine:
    """The service's own database; SQLite files get WAL so readers never wait on a run."""
    engine = _engine(url)
    if engine.dialect.name == "sqlite":
        event.listen(engine, "connect", _sqlite_pragmas)
    return engine


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
            _with_driver(url), connect_args={"options": "-c default_transaction_read_only=on"}
        )
    return _engine(url)


def _with_driver(url: str) -> str:
    """Plain ``postgresql://`` URLs use psycopg 3, the driver this service ships with."""
    parsed = make_url(url)
    if parsed.drivername == "postgresql":
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed.render_as_string(hide_password=False)


def _engine(url: str) -> Engine:
    url = _with_driver(url)
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:"):
        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
    return create_engine(url)


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()
