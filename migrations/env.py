"""Alembic environment: every table of the store is in retention.store.tables."""

from __future__ import annotations

import os

from alembic import context
from sqlalchemy import Connection

from retention.db.engines import store_engine
from retention.store.tables import metadata

config = context.config
target_metadata = metadata


def _url() -> str:
    url = context.get_x_argument(as_dictionary=True).get("url") or os.environ.get(
        "RETENTION_STORE_URL"
    )
    if not url:
        raise SystemExit("set RETENTION_STORE_URL or pass -x url=... (or use `retention migrate`)")
    return url


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        # SQLite cannot ALTER most things: batch mode copies the table instead.
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_offline() -> None:
    context.configure(url=_url(), target_metadata=target_metadata, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:  # `retention migrate` and the jobs hand theirs in
        _run(connection)
        return
    engine = store_engine(_url())
    try:
        with engine.begin() as conn:
            _run(conn)
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
