"""Applying the store's migrations: Alembic, run in the caller's transaction.

Every table is defined in ``retention.store.tables``; Alembic's ``target_metadata``
(``migrations/env.py``) is its ``metadata``. See docs/migrations.md.
"""

from __future__ import annotations

import logging
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine, inspect, text

from retention.db import locks

ROOT = Path(__file__).resolve().parents[2]
MIGRATIONS_DIR = ROOT / "migrations"


class SchemaError(RuntimeError):
    """The store's schema is not one the migrations know how to bring up to date."""


def alembic_config(connection: Connection | None = None) -> Config:
    """Alembic's configuration for this repository, bound to ``connection`` if given."""
    _quiet()
    config = Config(str(ROOT / "alembic.ini"))
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def _quiet() -> None:
    """Alembic's per-step INFO lines are noise in a job's log (unless asked for)."""
    logger = logging.getLogger("alembic")
    if logger.level == logging.NOTSET:
        logger.setLevel(logging.WARNING)


def head_revision() -> str:
    """The newest revision in migrations/."""
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    if head is None:
        raise SchemaError("migrations/ holds no revision")
    return head


def current_revision(connection: Connection) -> str | None:
    """The revision the store is at (None for an empty or unmigrated store)."""
    _quiet()
    return MigrationContext.configure(connection).get_current_revision()


def upgrade(connection: Connection, revision: str = "head") -> None:
    """Apply pending migrations through ``connection``, in the caller's transaction.

    Concurrent callers (two processes starting at once) wait for each other: a
    transaction-level advisory lock on PostgreSQL, a lock file beside a SQLite
    database. A store made before migrations existed is refused with the way out.
    """
    with locks.file_lock(locks.lock_file(connection.engine, "migrate")):
        if connection.dialect.name == "postgresql":
            connection.execute(
                text("SELECT pg_advisory_xact_lock(:k)"), {"k": locks.lock_key("migrate")}
            )
        _refuse_unversioned(connection)
        if current_revision(connection) == head_revision() and revision == "head":
            return
        command.upgrade(alembic_config(connection), revision)


def upgrade_engine(engine: Engine, revision: str = "head") -> tuple[str | None, str | None]:
    """Apply pending migrations in one transaction; returns the revisions before and after."""
    with engine.begin() as conn:
        before = current_revision(conn)
        upgrade(conn, revision)
        return before, current_revision(conn)


def _refuse_unversioned(connection: Connection) -> None:
    names = set(inspect(connection).get_table_names())
    if "runs" in names and "alembic_version" not in names:
        raise SchemaError(
            "this store was created before the service used migrations and cannot be "
            "upgraded in place; point store_url at a new database (the next ETL run "
            "with --full rebuilds the copy) or delete the SQLite file"
        )
