"""Reading the clinic's database: the contract tables (or their mapped queries), raw.

Every table is read in one read-only, repeatable-read transaction, so an
appointment and its episode come from the same moment of a database that other
systems write to all day (PostgreSQL: one exported snapshot; MariaDB and MySQL: a
consistent snapshot taken when the transaction starts). Values are returned as the
database gives them (text on PostgreSQL, where COPY moves them, and on MariaDB and
MySQL, where each row comes as one JSON object of text; SQLite's driver values);
``retention.etl.validation`` types and checks them. Nothing here writes.

What stops a read says whether trying again can help: an unreachable or timed-out
database is ``SourceUnavailable`` (the nightly job retries it); a table's query that
the database refuses is a ``MappingError`` naming its ``[etl.queries]`` entry (the
same query fails again). Their messages quote the database's own message without
values (``retention.db.errors``).
"""

from __future__ import annotations

import contextlib
import ctypes
import re
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import Any

import pandas as pd
import pyarrow as pa
from psycopg import sql as pgsql
from sqlalchemy import Connection, Date, DateTime, Engine, Float, Integer, inspect, text
from sqlalchemy.engine import URL

from retention.clinic import contract
from retention.db import bulk, errors, pg_arrow, pg_copy
from retention.db.engines import MYSQL_BACKENDS, SOURCE_CONNECT_ARGS
from retention.settings import SourceMapping

# Tables read by updated_at: rows changed since the table's watermark. The others are
# read in full each run: they carry no updated_at (clients) or follow their measure
# (items, read for the measures that changed).
INCREMENTAL = ("episodes", "appointments", "alliance_measures", "session_observations",
               "consents", "client_identifiers", "client_contacts")


class SourceError(RuntimeError):
    """The clinic's database could not be read; ``transient`` says whether a later try can
    succeed. Messages name tables, settings and the database's message, never values."""

    transient = False


class SourceUnavailable(SourceError):
    """The clinic's database could not be reached, or did not answer in time."""

    transient = True


class MappingError(SourceError):
    """The database refused a table's query: the mapping (or the source's schema) must be
    fixed; running it again gives the same error."""

    def __init__(self, table: str, mapping: SourceMapping, reason: str) -> None:
        self.table = table
        entry = (f"[etl.queries] {table}" if mapping.is_mapped(table)
                 else f"contract table {table} (no [etl.queries] entry: read as is)")
        super().__init__(f"the query for {entry} failed in the clinic database: {reason}")


class SourceRoleRefused(SourceError):
    """The source role can read anything on the server: a mapping could copy it into the store."""


class MissingTable(SourceError):
    """An optional table the copy holds rows of is gone from the source: read as empty, a
    full reload would delete its copy."""

    def __init__(self, tables: list[str], held: dict[str, int]) -> None:
        self.tables = tables
        named = ", ".join(f"{t} (the copy holds {held.get(t, 0):,} rows)" for t in tables)
        super().__init__(
            f"optional table(s) missing at the clinic database: {named}; it had rows before, "
            "so nothing was read or changed. Restore the table (or the source role's access "
            "to it), or, if the clinic no longer keeps it, map it to an empty query in "
            "[etl.queries] to delete its copy.")


# Text that repeats across rows (codes, and references to a parent): categoricals
# hold each distinct value once, which keeps millions of rows in memory at a fraction.
REPEATED = {
    "clients": ("clinic_id", "case_manager_id", "sex", "race_ethnicity"),
    "episodes": ("client_id", "program", "discharge_reason"),
    "appointments": ("episode_id", "client_id", "status", "service_type", "clinician_id",
                     "telehealth"),
    "alliance_measures": ("episode_id", "client_id", "instrument", "rater"),
    "alliance_items": ("measure_id",),
    "session_observations": ("episode_id", "client_id", "clinician_id", "signs", "rupture",
                             "repair_steps"),
    "consents": ("purpose",),
    "client_identifiers": ("system",),
    "client_contacts": ("preferred_channel", "language"),
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


def _select(query: str, table: str) -> str:
    """The table's query, wrapped so it yields exactly the contract columns in order."""
    cols = ", ".join(f"src.{c}" for c in _columns(table))
    return f"SELECT {cols} FROM ({query}) src"


# How a statement takes a watermark: as a literal (PostgreSQL's COPY takes no bind
# parameters) or as a bind parameter, whose placeholder it returns.
Param = Callable[[str, datetime], str]


def _statement(mapping: SourceMapping, table: str, since: dict[str, datetime | None],
               param: Param, verbatim: Callable[[str], str], split_or: bool = False) -> str:
    """The SQL that reads ``table``: its query, filtered to the rows changed since the marks.

    Only the filters' own parameters are placeholders; the mapping's SQL goes in as
    written (``verbatim`` escapes it where needed), so a colon inside it
    (``'YYYY-MM-DD HH24:MI'``) is never taken for a parameter. ``split_or`` reads the
    appointments' two conditions as two selects (MariaDB scans the whole table for an
    OR with a subquery, and uses an index for each half).
    """
    sql = _select(verbatim(mapping.query(table)), table)
    mark, episodes_mark = since.get(table), since.get("episodes")
    if table in INCREMENTAL and mark is not None:
        changed = f"src.updated_at >= {param('since', mark)}"
        if table == "appointments" and episodes_mark is not None:
            # Slots of episodes that changed are checked again: their admission date may
            # have moved.
            episodes = (f"SELECT e.episode_id FROM ({verbatim(mapping.query('episodes'))}) e "
                        f"WHERE e.updated_at >= {param('since_episodes', episodes_mark)}")
            if split_or:
                # UNION ALL, not UNION: an exact duplicate row must reach the checks twice.
                return (f"{sql} WHERE {changed} UNION ALL {sql} WHERE src.episode_id IN "
                        f"({episodes}) AND ({changed}) IS NOT TRUE")
            return f"{sql} WHERE {changed} OR src.episode_id IN ({episodes})"
        sql += f" WHERE {changed}"
    measures_mark = since.get("alliance_measures")
    if table == "alliance_items" and measures_mark is not None:
        measures = (f"SELECT m.measure_id FROM ({verbatim(mapping.query('alliance_measures'))})"
                    f" m WHERE m.updated_at >= {param('since', measures_mark)}")
        sql += f" WHERE src.measure_id IN ({measures})"
    return sql


def full_statement(mapping: SourceMapping, table: str) -> str:
    """The SQL that reads all of ``table`` from PostgreSQL (its mapped query as written)."""
    return _select(mapping.query(table), table)


def _escape_colons(sql: str) -> str:
    """SQL for SQLAlchemy's ``text()``, which takes every ``:word`` for a parameter unless
    it is escaped."""
    return sql.replace(":", "\\:")


def _bind() -> tuple[dict[str, Any], Param]:
    """Bind parameters for one statement, and the function that adds one."""
    params: dict[str, Any] = {}

    def placeholder(name: str, value: datetime) -> str:
        params[name] = value
        return f":{name}"

    return params, placeholder


def extract(
    connection: Connection,
    mapping: SourceMapping,
    since: dict[str, datetime | None],
    connections: int = 1,
    held: Callable[[str], int] | None = None,
) -> dict[str, pd.DataFrame]:
    """Rows changed since each table's ``since`` (all rows where it is None), codes mapped.

    ``alliance_items`` are read for the measures read (an item has no updated_at of
    its own: items change with their measure), and appointments also for the
    episodes read. A missing optional table reads empty, unless ``held`` (rows the
    store's copy holds of a table, asked only of a missing one) says it had rows: then
    ``MissingTable``.
    On PostgreSQL the tables are read through ADBC on up to ``connections``
    connections at once, largest first, all in ``connection``'s snapshot. On MariaDB
    and MySQL each is streamed from a server-side cursor, in ``connection``'s transaction.
    """
    frames = missing_optional(connection, mapping, held or (lambda _table: 0))
    tables = [t for t in contract.TABLES if t not in frames]
    if bulk.is_postgres(connection):
        def literal(_name: str, value: datetime) -> str:
            return untyped_literal(connection, value.isoformat(sep=" "))

        statements = [(t, _statement(mapping, t, since, literal, str)) for t in tables]
        frames.update(read_in_snapshot(connection.engine.url, export_snapshot(connection),
                                       statements, mapping, connections))
    else:
        for table in tables:
            params, placeholder = _bind()
            sql = _statement(mapping, table, since, placeholder, _escape_colons,
                             split_or=_is_mysql(connection))
            try:
                if _is_mysql(connection):
                    frame = bulk.stream_query(connection, sql, _columns(table), params,
                                              kinds=_kinds(table))
                else:
                    frame = bulk.read_query(connection, sql, _columns(table), params)
            except errors.DRIVER_ERRORS as exc:
                raise read_failure(table, mapping, exc) from exc
            frames[table] = mapping.apply_codes(table, frame)
    return {t: frames[t] for t in contract.TABLES}


def untyped_literal(connection: Connection, value: str) -> str:
    """``value`` as an untyped SQL literal: PostgreSQL reads it as the type of the column it
    is compared with, so a watermark compares with an updated_at kept as ISO text too
    ('::timestamp' would not), and a key's bound with a key of any type."""
    return pgsql.Literal(value).as_string(connection.connection.driver_connection)


def export_snapshot(connection: Connection) -> str:
    """The id of ``connection``'s snapshot, for other connections to read it
    (``pg_arrow.begin_in_snapshot``) while this one's transaction stays open."""
    return str(connection.execute(text("SELECT pg_export_snapshot()")).scalar_one())


def read_failure(table: str, mapping: SourceMapping, exc: BaseException) -> SourceError:
    """What a failed read of ``table`` means: the database unreachable, or its query refused."""
    if errors.is_transient(exc):
        return SourceUnavailable(f"the clinic database could not be read: {errors.describe(exc)}")
    return MappingError(table, mapping, errors.describe(exc))


def missing_optional(connection: Connection, mapping: SourceMapping,
                      held: Callable[[str], int]) -> dict[str, pd.DataFrame]:
    """Empty frames for the optional tables the source lacks (and does not map); an error
    for one whose rows the copy holds: it was dropped, renamed or hidden from the role."""
    unmapped = [t for t in contract.OPTIONAL_TABLES if not mapping.is_mapped(t)]
    if not unmapped:
        return {}
    existing = set(inspect(connection).get_table_names())
    missing = [t for t in unmapped if t not in existing]
    copy_rows = {t: held(t) for t in missing}
    lost = [t for t in missing if copy_rows[t]]
    if lost:
        raise MissingTable(lost, copy_rows)
    return {t: pd.DataFrame(columns=_columns(t), dtype=object) for t in missing}


def read_in_snapshot(url: URL, snapshot: str, statements: list[tuple[str, str]],
                      mapping: SourceMapping, connections: int) -> dict[str, pd.DataFrame]:
    """Each table's statement on one of ``connections`` ADBC connections in ``snapshot``."""
    pending = sorted(statements, key=lambda s: READ_COST[s[0]], reverse=True)
    lock = threading.Lock()
    frames: dict[str, pd.DataFrame] = {}

    def work() -> None:
        try:
            with pg_arrow.in_snapshot(url, snapshot, SOURCE_CONNECT_ARGS) as reader:
                while True:
                    with lock:
                        if not pending:
                            return
                        table, sql = pending.pop(0)
                    try:
                        rows = pg_arrow.read(reader, sql)
                    except pg_arrow.Error as exc:
                        raise read_failure(table, mapping, exc) from exc
                    frames[table] = mapping.apply_codes(
                        table, pg_copy.frame_from_arrow(rows, _columns(table), _kinds(table),
                                                        owned=True))
                    del rows
        except BaseException:
            with lock:
                pending.clear()  # the run fails: the other readers stop after theirs
            raise

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
# Session notes: an estimate, not a measurement (no clinic's notes have been read yet):
# one per attended session, were about half the slots attended, at eleven columns.
READ_COST = {"appointments": 55, "alliance_items": 41, "alliance_measures": 36,
             "session_observations": 30, "episodes": 1, "clients": 1, "consents": 1,
             "client_identifiers": 1, "client_contacts": 1}


def read_source(
    engine: Engine,
    mapping: SourceMapping,
    since: dict[str, datetime | None],
    connections: int = 1,
    *,
    held: Callable[[str], int] | None = None,
    allow_superuser: bool = False,
) -> tuple[dict[str, pd.DataFrame], datetime]:
    """Extract in one consistent read-only snapshot; returns the rows and the source's clock.

    A failure to reach the database, or a timeout, is ``SourceUnavailable``; a table's
    query refused is a ``MappingError``; a role that can read the server's files (a
    PostgreSQL superuser or file reader; a MariaDB or MySQL account with FILE, SUPER or
    ALL) is refused first (``SourceRoleRefused``) unless ``allow_superuser``.
    """
    with read_errors(), source_snapshot(engine, allow_superuser=allow_superuser) as (conn, now):
        return extract(conn, mapping, since, connections, held), now


@contextlib.contextmanager
def source_snapshot(engine: Engine, *, allow_superuser: bool = False
                    ) -> Iterator[tuple[Connection, datetime]]:
    """A read-only, repeatable-read connection to the source, its role checked
    (``check_source_role``), and the source's clock; rolled back when done."""
    options: dict[str, Any] = {}
    if engine.dialect.name == "postgresql":
        options = {"isolation_level": "REPEATABLE READ", "postgresql_readonly": True}
    elif engine.dialect.name in MYSQL_BACKENDS:
        options = {"isolation_level": "REPEATABLE READ"}
    with engine.connect().execution_options(**options) as conn:
        now = source_clock(conn)
        if _is_mysql(conn):
            # SQLAlchemy's begin sends nothing to MySQL (the driver's autocommit is off:
            # the first statement opens a transaction, a plain one, with no snapshot
            # until a table is read). This one ends that and takes the snapshot now, for
            # every read that follows. The session is read-only already
            # (source_engine); READ ONLY says it again.
            conn.exec_driver_sql("START TRANSACTION WITH CONSISTENT SNAPSHOT, READ ONLY")
        if not allow_superuser:
            check_source_role(conn)
        yield conn, now
        conn.rollback()


@contextlib.contextmanager
def read_errors() -> Iterator[None]:
    """Say what a driver's error while reading the source means: ``SourceUnavailable``
    (unreachable, timed out: try again) or a ``SourceError`` (a statement of the ETL's
    own refused). Wrap only the source's work: a store's error is no source's."""
    try:
        yield
    except SourceError:
        raise
    except (*errors.DRIVER_ERRORS, OSError) as exc:
        reason = errors.safe_message(exc)
        if errors.is_database_error(exc) and not errors.is_transient(exc):
            raise SourceError(f"the clinic database refused a statement of the ETL's own: "
                              f"{reason}") from exc
        raise SourceUnavailable(f"the clinic database could not be read: {reason}") from exc


# Roles that read or write the server's files, or run programs on it (PostgreSQL 11+).
SERVER_ROLES = ("pg_read_server_files", "pg_write_server_files", "pg_execute_server_program")


def _is_mysql(connection: Connection) -> bool:
    return connection.dialect.name in MYSQL_BACKENDS


def check_source_role(connection: Connection) -> None:
    """Refuse a PostgreSQL role that can read anything on the server: a superuser, or a
    member of a role that reads its files. A mapping's query run as it could copy any
    table or file (``pg_read_file('/etc/hostname')``) into the store. MariaDB and MySQL:
    ``check_mysql_role``."""
    if _is_mysql(connection):
        check_mysql_role(connection)
        return
    if connection.dialect.name != "postgresql":
        return
    roles = ", ".join(f"'{r}'" for r in SERVER_ROLES)
    name, superuser, powers = connection.execute(text(
        "SELECT current_user, r.rolsuper, ARRAY(SELECT g.rolname::text FROM pg_roles g "
        f"WHERE g.rolname IN ({roles}) AND pg_has_role(current_user, g.oid, 'MEMBER') "
        "ORDER BY 1) FROM pg_roles r WHERE r.rolname = current_user")).one()
    if not (superuser or powers):
        return
    what = "a superuser" if superuser else f"a member of {', '.join(powers)}"
    raise SourceRoleRefused(
        f"the source role {name!r} is {what} on the clinic's PostgreSQL: a mapping's query "
        "could read any table or file on the server into the store. Connect as a "
        "least-privilege role (SELECT on the mapped tables only; docs/nightly.md), or set "
        "[etl] allow_superuser_source = true to accept this.")


# Global privileges that read the server's files (FILE: ``LOAD_FILE('/etc/hostname')``) or
# override every check (SUPER, ALL).
MYSQL_SERVER_PRIVILEGES = ("ALL PRIVILEGES", "FILE", "SUPER")
_GLOBAL_GRANT = re.compile(r"^GRANT (.+?) ON \*\.\* TO ", re.IGNORECASE)


def check_mysql_role(connection: Connection) -> None:
    """Refuse a MariaDB or MySQL account with FILE, SUPER or ALL on ``*.*``: a mapping's
    query run as it could copy any file the server can read, or any database, into the
    store. Read from ``SHOW GRANTS``, which on MariaDB lists the enabled role's grants too."""
    name = str(connection.exec_driver_sql("SELECT CURRENT_USER()").scalar_one())
    held: set[str] = set()
    for (line,) in connection.exec_driver_sql("SHOW GRANTS").fetchall():
        found = _GLOBAL_GRANT.match(str(line))
        if found:
            granted = {p.strip().upper() for p in found.group(1).split(",")}
            held |= granted & set(MYSQL_SERVER_PRIVILEGES)
    if not held:
        return
    server = "MariaDB" if getattr(connection.dialect, "is_mariadb", False) else "MySQL"
    powers = ", ".join(p for p in MYSQL_SERVER_PRIVILEGES if p in held)
    raise SourceRoleRefused(
        f"the source role {name!r} holds {powers} on *.* on the clinic's {server}: a "
        "mapping's query could read any table or file on the server into the store. Connect "
        "as a least-privilege role (SELECT on the clinic's database only; docs/nightly.md), "
        "or set [etl] allow_superuser_source = true to accept this.")


def source_clock(connection: Connection) -> datetime:
    """The source's local time: watermarks never pass it (a row stamped in the future
    would otherwise hide every row written before that moment)."""
    if connection.dialect.name == "postgresql":
        value = connection.execute(text("SELECT LOCALTIMESTAMP")).scalar_one()
        return value if isinstance(value, datetime) else datetime.fromisoformat(str(value))
    if _is_mysql(connection):
        # NOW() is the session's time zone (the server's default: this session never sets
        # one), the same wall time an EHR's NOW() or CURRENT_TIMESTAMP writes into a
        # DATETIME updated_at, and the zone MySQL turns a TIMESTAMP into on read: the
        # naive times compared with the watermarks are all in it. read_source takes it
        # just before the snapshot, as PostgreSQL's transaction start precedes its own: a
        # row stamped after it may be read, but its mark is held back to this time and
        # the next run reads it again. Microseconds, as the watermarks keep them.
        value = connection.exec_driver_sql("SELECT NOW(6)").scalar_one()
        return value if isinstance(value, datetime) else datetime.fromisoformat(str(value))
    return datetime.now()
