"""Reading the clinic's database: the contract tables (or their mapped queries), raw.

Every table is read in one read-only, repeatable-read transaction, so an
appointment and its episode come from the same moment of a database that other
systems write to all day. Values are returned as the database gives them (text
on PostgreSQL, where COPY moves them); ``retention.etl.validation`` types and checks
them. Nothing here writes.
"""

from __future__ import annotations

import contextlib
import ctypes
import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import Any

import pandas as pd
import psycopg
import pyarrow as pa
from sqlalchemy import Connection, Date, DateTime, Engine, Float, Integer, inspect, text
from sqlalchemy.engine import URL
from sqlalchemy.exc import SQLAlchemyError

from retention.clinic import contract
from retention.db import bulk, pg_arrow, pg_copy
from retention.db.engines import SOURCE_CONNECT_ARGS
from retention.settings import SourceMapping

# Tables read in full each run: they carry no updated_at (clients) or follow their
# measure (items, read for the measures that changed).
INCREMENTAL = ("episodes", "appointments", "alliance_measures")


class SourceUnavailable(RuntimeError):
    """The clinic's database could not be read; the message says why."""


# Text that repeats across rows (codes, and references to a parent): categoricals
# hold each distinct value once, which keeps millions of rows in memory at a fraction.
REPEATED = {
    "clients": ("clinic_id", "case_manager_id", "sex", "race_ethnicity"),
    "episodes": ("client_id", "program", "discharge_reason"),
    "appointments": ("episode_id", "client_id", "status", "service_type", "clinician_id",
                     "telehealth"),
    "alliance_measures": ("episode_id", "client_id", "instrument", "rater"),
    "alliance_items": ("measure_id",),
}


def _columns(table: str) -> list[str]:
    return [c.name for c in contract.TABLES[table].columns]


def _kinds(table: str) -> dict[str, str]:
    """How PostgreSQL's text is read per column: nothing is coerced that could hide a bad
    value (a column with one unreadable date or number stays text for the checks)."""
    kinds = {}
    for column in contract.TABLES[table].columns:
        if column.name in REPEATED.get(table, ()):
            kinds[column.name] = "category"
        elif isinstance(column.type, Date | DateTime):
            kinds[column.name] = "date"
        elif isinstance(column.type, Integer | Float):
            kinds[column.name] = "infer"
        else:
            kinds[column.name] = "object"
    return kinds


def _select(mapping: SourceMapping, table: str) -> str:
    """The table's query, wrapped so it yields exactly the contract columns in order."""
    cols = ", ".join(f"src.{c}" for c in _columns(table))
    return f"SELECT {cols} FROM ({mapping.query(table)}) src"


def extract(
    connection: Connection,
    mapping: SourceMapping,
    since: dict[str, datetime | None],
    connections: int = 1,
) -> dict[str, pd.DataFrame]:
    """Rows changed since each table's ``since`` (all rows where it is None), codes mapped.

    ``alliance_items`` are read for the measures read (an item has no updated_at of
    its own: items change with their measure), and appointments also for the
    episodes read. A missing optional table reads empty. On PostgreSQL the tables
    are read through ADBC on up to ``connections`` connections at once, largest
    first, all in ``connection``'s snapshot.
    """
    frames, reads = _reads(connection, mapping, since)
    if bulk.is_postgres(connection):
        raw = connection.connection.driver_connection
        # Watermarks as untyped text: PostgreSQL reads them as the column's type, so a
        # clinic whose updated_at is text (ISO) compares too ('::timestamp' would not).
        statements = [(t, bulk.inline_params(raw, sql, {k: v.isoformat(sep=" ") for k, v in
                                                        params.items()}))
                      for t, sql, params in reads]
        snapshot = str(connection.execute(text("SELECT pg_export_snapshot()")).scalar_one())
        frames.update(_read_in_snapshot(connection.engine.url, snapshot, statements, mapping,
                                        connections))
    else:
        for table, sql, params in reads:
            frame = bulk.read_query(connection, sql, _columns(table), params, kinds=_kinds(table))
            frames[table] = mapping.apply_codes(table, frame)
    return {t: frames[t] for t in contract.TABLES}


def _read_in_snapshot(url: URL, snapshot: str, statements: list[tuple[str, str]],
                      mapping: SourceMapping, connections: int) -> dict[str, pd.DataFrame]:
    """Each table's statement on one of ``connections`` ADBC connections in ``snapshot``."""
    pending = sorted(statements, key=lambda s: READ_COST[s[0]], reverse=True)
    lock = threading.Lock()
    frames: dict[str, pd.DataFrame] = {}

    def work() -> None:
        reader = pg_arrow.connect(url, SOURCE_CONNECT_ARGS)
        try:
            pg_arrow.begin_in_snapshot(reader, snapshot)
            while True:
                with lock:
                    if not pending:
                        return
                    table, sql = pending.pop(0)
                rows = pg_copy.frame_from_arrow(pg_arrow.read(reader, sql), _columns(table),
                                                _kinds(table), owned=True)
                frames[table] = mapping.apply_codes(table, rows)
        except BaseException:
            with lock:
                pending.clear()  # the run fails: the other readers stop after theirs
            raise
        finally:
            pg_arrow.end(reader)

    # ADBC reads without the GIL: the threads' reads overlap, as do the server's.
    readers = max(1, min(connections, len(pending)))
    with ThreadPoolExecutor(max_workers=readers) as pool:
        for done in [pool.submit(work) for _ in range(readers)]:
            done.result()
    _give_back_memory()
    return frames


def _give_back_memory() -> None:
    """Return the readers' freed buffers to the system before the checks allocate theirs.

    Arrow's pool and the C library keep freed memory for reuse, but the checks
    allocate through NumPy, which cannot reuse Arrow's pool, and the readers' threads
    freed into allocator arenas of their own, which would otherwise stay in the peak.
    """
    pa.default_memory_pool().release_unused()
    with contextlib.suppress(OSError, AttributeError):  # not glibc: nothing to trim
        ctypes.CDLL("libc.so.6").malloc_trim(0)


# Relative size of a full read of each table (millions of cells, rows times columns, at
# 100,000 clients with a year of history): the largest start first so the connections
# finish together.
READ_COST = {"appointments": 55, "alliance_items": 41, "alliance_measures": 36,
             "episodes": 1, "clients": 1}


def _reads(
    connection: Connection, mapping: SourceMapping, since: dict[str, datetime | None]
) -> tuple[dict[str, pd.DataFrame], list[tuple[str, str, dict[str, Any]]]]:
    """Empty frames for the optional tables that are missing, and a query for each other."""
    frames: dict[str, pd.DataFrame] = {}
    reads = []
    existing = None
    for table in contract.TABLES:
        if table in contract.OPTIONAL_TABLES and not mapping.is_mapped(table):
            existing = existing if existing is not None else set(
                inspect(connection).get_table_names())
            if table not in existing:
                frames[table] = pd.DataFrame(columns=_columns(table), dtype=object)
                continue
        sql = _select(mapping, table)
        params: dict[str, Any] = {}
        if table in INCREMENTAL and since.get(table) is not None:
            sql += " WHERE src.updated_at >= :since"
            params["since"] = since[table]
            if table == "appointments" and since.get("episodes") is not None:
                # Slots of episodes that changed are checked again: their admission
                # date may have moved.
                episodes = f"SELECT e.episode_id FROM ({mapping.query('episodes')}) e " \
                           "WHERE e.updated_at >= :since_episodes"
                sql += f" OR src.episode_id IN ({episodes})"
                params["since_episodes"] = since["episodes"]
        if table == "alliance_items" and since.get("alliance_measures") is not None:
            measures = f"SELECT m.measure_id FROM ({mapping.query('alliance_measures')}) m " \
                       "WHERE m.updated_at >= :since"
            sql += f" WHERE src.measure_id IN ({measures})"
            params["since"] = since["alliance_measures"]
        reads.append((table, sql, params))
    return frames, reads


def read_source(
    engine: Engine,
    mapping: SourceMapping,
    since: dict[str, datetime | None],
    connections: int = 1,
) -> tuple[dict[str, pd.DataFrame], datetime]:
    """Extract in one consistent read-only snapshot; returns the rows and the source's clock.

    Any failure to reach or read the database becomes ``SourceUnavailable``.
    """
    try:
        options: dict[str, Any] = {}
        if engine.dialect.name == "postgresql":
            options = {"isolation_level": "REPEATABLE READ", "postgresql_readonly": True}
        with engine.connect().execution_options(**options) as conn:
            now = source_clock(conn)
            frames = extract(conn, mapping, since, connections)
            conn.rollback()
        return frames, now
    except (SQLAlchemyError, OSError, psycopg.Error, pg_arrow.Error) as exc:
        reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0][:300]
        raise SourceUnavailable(f"the clinic database could not be read: {reason}") from exc


def source_clock(connection: Connection) -> datetime:
    """The source's local time: watermarks never pass it (a row stamped in the future
    would otherwise hide every row written before that moment)."""
    if connection.dialect.name == "postgresql":
        value = connection.execute(text("SELECT LOCALTIMESTAMP")).scalar_one()
        return value if isinstance(value, datetime) else datetime.fromisoformat(str(value))
    return datetime.now()
