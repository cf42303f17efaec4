"""PostgreSQL to and from Arrow with ADBC: binary COPY, encoded and parsed in C++.

The CSV path (``pg_copy``) hands every row to Python once, as a COPY message, then
parses text.
ADBC's PostgreSQL driver reads ``COPY ... TO STDOUT (FORMAT binary)`` into Arrow
columns, and writes them back by binary COPY, without Python per row and without
the GIL, so several connections work side by side. Its connections are its own
(libpq under ADBC), so it serves work that needs no transaction of the caller's:
the source extract, which shares one exported snapshot instead, and the full
reload's builders, which commit tables of their own beside the copy.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any
from urllib.parse import quote, urlencode

import adbc_driver_manager
import adbc_driver_postgresql.dbapi as adbc
import pyarrow as pa
from sqlalchemy.engine import URL

# What ADBC raises (connection refused, a query that fails, a dropped connection).
Error = adbc_driver_manager.Error

_SNAPSHOT_ID = re.compile(r"[0-9A-F]+-[0-9A-F]+(-[0-9]+)?")


def connect(url: URL, settings: Mapping[str, Any] | None = None) -> Any:
    """An ADBC connection to the database ``url`` (a SQLAlchemy URL) names, autocommit;
    ``settings`` are libpq connection parameters (``application_name``, ``options``...)."""
    query = {**{k: v if isinstance(v, str) else v[-1] for k, v in url.query.items()},
             **{k: str(v) for k, v in (settings or {}).items()}}
    base = url.set(drivername="postgresql", query={}).render_as_string(hide_password=False)
    # libpq reads %20, not '+', as a space ("-c default_transaction_read_only=on").
    uri = f"{base}?{urlencode(query, quote_via=quote)}" if query else base
    return adbc.connect(uri, autocommit=True)


def check_snapshot_id(snapshot: str) -> str:
    """A ``pg_export_snapshot`` id, checked before it is written into SQL."""
    if not _SNAPSHOT_ID.fullmatch(snapshot):
        raise ValueError(f"not a snapshot id: {snapshot!r}")
    return snapshot


def begin_in_snapshot(connection: Any, snapshot: str) -> None:
    """Open a read-only repeatable-read transaction in an exported snapshot: it sees
    exactly what the exporting transaction sees, and no later commit."""
    with connection.cursor() as cursor:
        cursor.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        cursor.execute(f"SET TRANSACTION SNAPSHOT '{check_snapshot_id(snapshot)}'")


@contextmanager
def in_snapshot(url: URL, snapshot: str,
                settings: Mapping[str, Any] | None = None) -> Iterator[Any]:
    """A connection (``connect``) reading in an exported snapshot (``begin_in_snapshot``),
    its transaction ended and the connection closed on leaving (``end``)."""
    connection = connect(url, settings)
    try:
        begin_in_snapshot(connection, snapshot)
        yield connection
    finally:
        end(connection)


def read(connection: Any, query: str) -> pa.Table:
    """The rows of ``query`` (no parameters: literals are inlined by the caller)."""
    with connection.cursor() as cursor:
        cursor.execute(query)
        table: pa.Table = cursor.fetch_arrow_table()
    return table


def end(connection: Any) -> None:
    """Roll back the connection's transaction (reads only) and close it.

    A connection already broken cannot roll back, and need not: its transaction died
    with it. Its error is not raised here, so it does not hide the one that broke it.
    """
    try:
        with connection.cursor() as cursor:
            cursor.execute("ROLLBACK")
    except Error:
        pass
    finally:
        connection.close()


def execute(connection: Any, *statements: str) -> None:
    """Run statements that return no rows, in order."""
    with connection.cursor() as cursor:
        for statement in statements:
            cursor.execute(statement)


def append(connection: Any, name: str, data: pa.Table | pa.RecordBatchReader) -> int:
    """Append ``data`` to the existing table ``name`` by binary COPY; returns the rows.

    Binary COPY takes each value in its column's exact type: ``data``'s types must
    be those of the table (``arrow_types``), an int8 for an integer column fails.
    """
    with connection.cursor() as cursor:
        return int(cursor.adbc_ingest(name, data, mode="append"))
