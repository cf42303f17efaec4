"""Bulk reads and writes that take the fast path each database offers.

PostgreSQL moves rows with COPY (several times faster than fetching or inserting
row by row); other databases use plain queries and ``executemany``. Every function
takes a connection and runs inside the caller's transaction, COPY included.
"""

from __future__ import annotations

import contextlib
import io
import re
import uuid
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import date, datetime
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pa_json
from psycopg import sql as pgsql
from sqlalchemy import (
    URL,
    BigInteger,
    Boolean,
    Column,
    Connection,
    Date,
    DateTime,
    Engine,
    Float,
    Integer,
    MetaData,
    SmallInteger,
    Table,
    bindparam,
    insert,
    text,
)

from retention.clinic.data import TRUE_TEXT
from retention.db import pg_arrow, pg_copy

CHUNK_ROWS = 20_000
# Rows fetched from a server-side cursor at a time by ``stream_query``: each chunk's row
# tuples are dropped once it is a frame.
STREAM_ROWS = 50_000
# A load this large builds its indexes once, after the rows: a first load into the
# table, or a whole-table sync rebuilt beside it (the weekly full reload).
REBUILD_INDEXES_ROWS = 100_000
# Sort memory per index build, enough for the items' key; two builds at once need twice this free.
BUILD_SORT_MEMORY = "1GB"
# A ``BesideBuilds``' landing table: which parts have landed, one name per part.
LANDING_PREFIX = "beside_landed_"
_LANDING = re.compile(re.escape(LANDING_PREFIX) + "[0-9a-f]{16}")
_PART = re.compile(r"[A-Za-z0-9_ ]+")  # a part's name, written into SQL as a literal
_PARAM = re.compile(r"(?<!:):([A-Za-z_][A-Za-z0-9_]*)")


def is_postgres(connection: Connection) -> bool:
    return connection.dialect.name == "postgresql"


def read_query(
    connection: Connection,
    sql: str,
    columns: Sequence[str],
    params: Mapping[str, Any] | None = None,
    dates: Sequence[str] = (),
    kinds: Mapping[str, str] | None = None,
) -> pd.DataFrame:
    """Rows of ``sql`` as a frame with ``columns``; ``:name`` placeholders take ``params``.

    On PostgreSQL the rows come through ``COPY (query) TO STDOUT`` as CSV text, so
    every value arrives as a string (or NaN for NULL) except the ``dates`` columns,
    parsed on the way in (for the store's own, well-typed rows): callers parse the
    rest. ``kinds`` says more per column: "category" (repeated text, kept as a
    categorical), "date" (parsed if every value parses, else left as text), "infer"
    (numbers if every value is one, else text) or "object" (text). Elsewhere values
    come as the driver returns them.
    """
    used = set(_PARAM.findall(sql))
    params = {k: v for k, v in (params or {}).items() if k in used}
    if is_postgres(connection):
        return _copy_out(connection, sql, columns, params, dates, kinds)
    statement = text(sql).bindparams(*(_typed_bind(k, v) for k, v in params.items()))
    rows = connection.execute(statement).fetchall()
    return pd.DataFrame([tuple(r) for r in rows], columns=list(columns), dtype=object)


def stream_query(
    connection: Connection,
    sql: str,
    columns: Sequence[str],
    params: Mapping[str, Any] | None = None,
    kinds: Mapping[str, str] | None = None,
    chunk_rows: int | None = None,
) -> pd.DataFrame:
    """``read_query`` on MariaDB and MySQL: every row one JSON object of text, streamed.

    PyMySQL decodes each value in Python; asked for one value a row (the row as
    ``JSON_OBJECT`` of its values cast to text, built by the server in C) it reads
    a table about twice as fast, and Arrow's JSON reader parses each chunk's lines in
    C++. The rows come from a server-side cursor ``chunk_rows`` (default
    ``STREAM_ROWS``) at a time, so a whole table never sits in memory as Python
    tuples. Every value arrives as text or null, as PostgreSQL's COPY gives it, and
    the columns are read as ``kinds`` say (``pg_copy.frame_from_arrow``): a bad value
    stays text for the checks, repeated codes become categoricals.
    """
    used = set(_PARAM.findall(sql))
    params = {k: v for k, v in (params or {}).items() if k in used}
    # Keys "c0", "c1" ... rather than the column names: less for the server to build and
    # send on every row (docs/performance.md).
    values = ", ".join(f"'c{i}', CAST(q.{c} AS CHAR)" for i, c in enumerate(columns))
    statement = text(f"SELECT JSON_OBJECT({values}) FROM ({sql}) q").bindparams(
        *(_typed_bind(k, v) for k, v in params.items()))
    size = chunk_rows or STREAM_ROWS
    schema = pa.schema([(f"c{i}", pa.string()) for i in range(len(columns))])
    result = connection.execute(
        statement, execution_options={"stream_results": True, "yield_per": size})
    parts: list[pa.Table] = []
    # Arrow parses a chunk without the GIL while the driver fetches the next; at most
    # one chunk waits, so memory holds two chunks' rows, not the table's.
    with result, ThreadPoolExecutor(max_workers=1) as parser:
        pending: Future[pa.Table] | None = None
        for rows in result.partitions(size):
            if pending is not None:
                parts.append(pending.result())
            pending = parser.submit(_chunk_table, rows, schema)
        if pending is not None:
            parts.append(pending.result())
    table = pa.concat_tables(parts) if parts else schema.empty_table()
    del parts
    # frame_from_arrow takes the columns by position, named ``columns``.
    return pg_copy.frame_from_arrow(table, columns, kinds or {}, owned=True)


def _chunk_table(rows: Sequence[Any], schema: pa.Schema) -> pa.Table:
    """A chunk's rows (one JSON object each) as an Arrow table of text columns."""
    lines = "\n".join(row[0] for row in rows).encode()
    return pa_json.read_json(io.BytesIO(lines), parse_options=pa_json.ParseOptions(
        explicit_schema=schema, unexpected_field_behavior="error"))


def driver(connection: Connection) -> Any:
    """The psycopg connection under ``connection``, inside its SQLAlchemy transaction.

    COPY and the API's audit write go to the driver directly, which SQLAlchemy does
    not see: without this, such a statement as a connection's first would run in a
    transaction SQLAlchemy does not know it has, and the caller's ``commit()`` would
    do nothing.
    """
    if not connection.in_transaction():
        connection.begin()
    raw = connection.connection.driver_connection
    assert raw is not None
    return raw


def _typed_bind(name: str, value: Any) -> Any:
    """Dates and timestamps bound with their SQLAlchemy type, so SQLite compares like it stores."""
    if isinstance(value, datetime):
        return bindparam(name, value, type_=DateTime())
    if isinstance(value, date):
        return bindparam(name, value, type_=Date())
    return bindparam(name, value)


def inline_params(raw: Any, sql: str, params: Mapping[str, Any]) -> str:
    """``sql`` with each ``:name`` replaced by its value as a quoted PostgreSQL literal
    (COPY takes no bind parameters); ``raw`` is a psycopg connection, for its encoding."""
    return _PARAM.sub(lambda m: pgsql.Literal(params[m.group(1)]).as_string(raw), sql)


def _copy_out(
    connection: Connection, sql: str, columns: Sequence[str], params: Mapping[str, Any],
    dates: Sequence[str] = (),
    kinds: Mapping[str, str] | None = None,
) -> pd.DataFrame:
    raw = driver(connection)
    query = inline_params(raw, sql, params)
    kinds = dict(kinds or {})
    for c in columns:
        kinds.setdefault(c, "date" if c in dates else "object")
    return pg_copy.read_copy(raw, f"COPY ({query}) TO STDOUT WITH (FORMAT csv)", columns, kinds)


# --- writing ------------------------------------------------------------------------


def insert_frame(connection: Connection, table: Table, frame: pd.DataFrame) -> int:
    """Insert every row of ``frame`` (columns named as the table's) into ``table``."""
    if frame.empty:
        return 0
    columns = [c.name for c in table.columns if c.name in frame.columns]
    if is_postgres(connection):
        _copy_in(connection, table.name, columns, _csv_ready(table, frame[columns]))
    else:
        for chunk in record_chunks(table, frame[columns]):
            connection.execute(insert(table), chunk)
    return len(frame)


def _copy_in(connection: Connection, name: str, columns: list[str], frame: pd.DataFrame) -> None:
    raw = driver(connection)
    cols = ", ".join(f'"{c}"' for c in columns)
    with raw.cursor() as cursor:
        pg_copy.write_copy(cursor, f'COPY "{name}" ({cols}) FROM STDIN WITH (FORMAT csv)', frame)


def _csv_ready(table: Table, frame: pd.DataFrame) -> pd.DataFrame:
    """Columns in the text PostgreSQL's COPY reads back as the column's type."""
    out: dict[str, Any] = {}
    for name in frame.columns:
        column, sqltype = frame[name], table.c[name].type
        if isinstance(sqltype, Integer) and not pd.api.types.is_integer_dtype(column):
            out[name] = pd.to_numeric(column).astype("Int64")
        elif isinstance(sqltype, Boolean) and not pd.api.types.is_bool_dtype(column):
            out[name] = column.map(lambda v: None if v is None or v is pd.NA or v != v
                                   else ("t" if _truthy(v) else "f"))
        elif isinstance(sqltype, DateTime | Date) and not pd.api.types.is_datetime64_any_dtype(
            column
        ):
            out[name] = pd.to_datetime(column)
        else:
            out[name] = column
    return pd.DataFrame(out, index=frame.index)


def _truthy(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in TRUE_TEXT
    return bool(value)


def record_chunks(table: Table, frame: pd.DataFrame) -> Iterator[list[dict[str, Any]]]:
    """Plain Python values per the column types (None for missing), in chunks."""
    columns = list(frame.columns)
    values = [_python_column(frame[c], table.c[c].type) for c in columns]
    for start in range(0, len(frame), CHUNK_ROWS):
        rows = zip(*(v[start:start + CHUNK_ROWS] for v in values), strict=True)
        yield [dict(zip(columns, row, strict=True)) for row in rows]


def _python_column(series: pd.Series, sqltype: Any) -> list[Any]:
    present = series.notna().to_numpy()
    if isinstance(sqltype, DateTime | Date):
        stamps = pd.to_datetime(series)
        out: list[Any] = [
            (s.date() if isinstance(sqltype, Date) and not isinstance(sqltype, DateTime)
             else s.to_pydatetime()) if ok else None
            for s, ok in zip(stamps, present, strict=True)
        ]
        return out
    if isinstance(sqltype, Boolean):
        return [bool(v) if ok else None for v, ok in zip(series, present, strict=True)]
    if isinstance(sqltype, Integer):
        return [int(v) if ok else None for v, ok in zip(series, present, strict=True)]
    if isinstance(sqltype, Float):
        return [float(v) if ok else None for v, ok in zip(series, present, strict=True)]
    return [plain(v) if ok else None for v, ok in zip(series, present, strict=True)]


def plain(value: Any) -> Any:
    """A numpy scalar as the Python value it holds; anything else as it is."""
    if isinstance(value, np.generic):
        return value.item()
    return value


# --- staged upserts -----------------------------------------------------------------


def sync_rows(
    connection: Connection,
    table: Table,
    new: pd.DataFrame,
    *,
    compare: Sequence[str] | None = None,
    scope: Mapping[str, Any] | None = None,
    scope_in: tuple[str, Sequence[Any]] | None = None,
    delete_missing: bool = True,
) -> int:
    """Make ``table`` hold ``new``: insert and update by primary key, then delete the rest.

    Only rows whose ``compare`` columns (default: every non-key column) differ are
    updated, so syncing the same rows twice changes nothing the second time. With
    ``delete_missing``, rows of the table inside the scope (``scope``: column equals
    value; ``scope_in``: column in values; neither: the whole table) that are not in
    ``new`` are deleted. Returns the number of rows inserted, updated or deleted.
    """
    keys = [c.name for c in table.primary_key.columns]
    columns = [c.name for c in table.columns]
    compare = list(compare) if compare is not None else [c for c in columns if c not in keys]
    unscoped = scope is None and scope_in is None
    if unscoped and _is_empty(connection, table):
        # A first load: nothing to compare with or delete, so no staging either.
        if _rebuilds(connection, table, new):
            return _rebuild(connection, table, new[columns])
        return insert_frame(connection, table, new[columns])
    if (unscoped and delete_missing and set(compare) == set(columns) - set(keys)
            and _rebuilds(connection, table, new)):
        return _rebuild(connection, table, new[columns])
    staging = _temp_table(connection, table, "stage")
    try:
        insert_frame(connection, staging, new[columns])
        changed = _upsert(connection, table, staging.name, keys, columns, compare)
        if delete_missing:
            changed += _delete_missing(connection, table, staging.name, keys, scope, scope_in)
    finally:
        staging.drop(connection)
    return changed


def _rebuilds(connection: Connection, table: Table, new: pd.DataFrame) -> bool:
    """Whether syncing ``new`` into the whole table is done by ``_rebuild``: on PostgreSQL,
    for loads large enough, into tables no foreign key refers to."""
    return (is_postgres(connection) and len(new) >= REBUILD_INDEXES_ROWS
            and not _referenced(connection, table.name))


def _indexes(connection: Connection, name: str) -> list[tuple[str, str, str | None, str | None]]:
    """The table's indexes: name, definition, and the constraint each backs (if any)."""
    rows = connection.execute(text(
        "SELECT i.relname, pg_get_indexdef(i.oid), c.conname, pg_get_constraintdef(c.oid) "
        "FROM pg_index x JOIN pg_class i ON i.oid = x.indexrelid "
        "LEFT JOIN pg_constraint c ON c.conindid = x.indexrelid AND c.conrelid = x.indrelid "
        "WHERE x.indrelid = CAST(:t AS regclass) ORDER BY i.relname"), {"t": name})
    return [(r[0], r[1], r[2], r[3]) for r in rows]


def _referenced(connection: Connection, name: str) -> bool:
    """Whether a foreign key points at the table (it cannot then be dropped or emptied)."""
    return connection.execute(text(
        "SELECT 1 FROM pg_constraint WHERE confrelid = CAST(:t AS regclass) LIMIT 1"),
        {"t": name}).first() is not None


def _rebuild(connection: Connection, table: Table, frame: pd.DataFrame) -> int:
    """Replace a whole table's rows with ``frame`` by building the new table beside it.

    Upserting millions of rows into a table that holds them (the weekly full reload)
    touches every row and index entry, changed or not, and a first load that grows
    its b-trees row by row is several times slower than building each once. Instead
    the rows go into a new table, its indexes are built once after them, the two are
    compared in one join, and the new one takes the old one's place only if they
    differ. All in the caller's transaction: a failure leaves the old table as it
    was. Returns the rows inserted, updated or deleted, as the upsert would have.
    """
    build_beside(connection, table, frame)
    return swap_in(connection, table)


def build_beside(connection: Connection, table: Table, frame: pd.DataFrame) -> None:
    """Build ``<table>__next`` holding ``frame``, with the table's indexes under ``__next`` names.

    Takes no lock that keeps others from reading the table, so several can be built at
    once on connections of their own (``build_beside_in_parallel``).
    """
    create, index = _beside_statements(connection, table)
    for statement in create:
        connection.execute(text(statement))
    columns = [c.name for c in table.columns]
    _copy_in(connection, f"{table.name}__next", columns, _csv_ready(table, frame[columns]))
    for statement in index:
        connection.execute(text(statement))


def _beside_statements(connection: Connection, table: Table) -> tuple[list[str], list[str]]:
    """SQL that creates ``<table>__next`` empty, and SQL that indexes it once it is loaded."""
    name, after = table.name, f"{table.name}__next"
    create = [f'DROP TABLE IF EXISTS "{after}"',
              f'CREATE TABLE "{after}" (LIKE "{name}" INCLUDING DEFAULTS INCLUDING CONSTRAINTS)']
    index = [f"SET LOCAL maintenance_work_mem = '{BUILD_SORT_MEMORY}'",
             # The builders already run one per core: a parallel sort only takes the other's.
             "SET LOCAL max_parallel_maintenance_workers = 0"]
    for name_of_index, definition, constraint, constraint_definition in _indexes(connection, name):
        if constraint:
            index.append(f'ALTER TABLE "{after}" ADD CONSTRAINT "{constraint}__next" '
                         f"{constraint_definition}")
        else:
            renamed = f'\\g<1>"{name_of_index}__next" ON "{after}" '
            index.append(_INDEX_DEF.sub(renamed, definition, count=1))
    return create, index


def build_beside_in_parallel(
    connection: Connection, jobs: Sequence[tuple[Table, pd.DataFrame]], workers: int = 2
) -> dict[str, int]:
    """``build_beside`` for each job, ``workers`` at a time, each committed on its own connection.

    COPY and index builds are the database's work, one core per connection: on two
    cores two tables build in about the time of one. The builders' connections are
    ADBC's, whose binary COPY from Arrow columns runs without the GIL and spares the
    server parsing text, much faster than the CSV path (docs/performance.md).
    Nothing is visible under the tables' own names until ``swap_in`` runs in the
    caller's transaction; if a build fails, every ``__next`` table is dropped and the
    error raised. Tables a foreign key refers to are left out. Returns the tables built,
    by name, with the rows each holds. The caller's transaction must not yet have
    locked a ``__next`` table or locked a table exclusively: the builders would wait
    for it while it waits for them.
    """
    engine = connection.engine
    chosen = [(t, f) for t, f in jobs if not _referenced(connection, t.name)]
    plans = {t.name: _beside_statements(connection, t) for t, _f in chosen}

    def build(job: tuple[Table, pd.DataFrame]) -> int:
        table, frame = job
        create, index = plans[table.name]
        own = pg_arrow.connect(engine.url)
        try:
            pg_arrow.execute(own, "BEGIN", *create)
            rows = pg_arrow.append(own, f"{table.name}__next", arrow_batches(table, frame))
            pg_arrow.execute(own, *index, "COMMIT")
        finally:
            own.close()
        return rows

    try:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            rows = list(pool.map(build, chosen))
    except BaseException:
        with engine.begin() as own:
            drop_beside(own, [t for t, _f in chosen])
        raise
    return {t.name: n for (t, _f), n in zip(chosen, rows, strict=True)}


class BesideBuilds:
    """Tables built beside the copy from rows that arrive in parts (a network's full
    reload read by key range): each part's rows are appended as it comes and let go,
    the indexes built once at the end.

    The ``__next`` tables are created empty and committed at once, with a landing table
    (``landing``: one row per part), so a part's rows may be appended here or by another
    process on a connection of its own (``land_beside``: a Dask worker's). Nothing is
    visible under the tables' own names until ``swap_in`` runs in the caller's
    transaction. The job's own appends run on one ADBC connection per table, in a
    transaction ``finish`` commits, on the table's thread while the caller checks the
    next part; ``append`` waits for the table's previous one, so at most one part per
    table is held for it. ``drop`` (or any failure) leaves nothing.
    """

    def __init__(self, engine: Engine, tables: Sequence[Table], workers: int = 2) -> None:
        with engine.connect() as conn:
            referenced = [t.name for t in tables if _referenced(conn, t.name)]
            if referenced:
                raise ValueError(f"tables a foreign key refers to cannot be swapped in: "
                                 f"{', '.join(referenced)}")
            self._plans = {t.name: _beside_statements(conn, t) for t in tables}
        self._engine, self._tables, self._workers = engine, list(tables), workers
        self.landing = f"{LANDING_PREFIX}{uuid.uuid4().hex[:16]}"
        self._own: dict[str, Any] = {}
        self._threads = {t.name: ThreadPoolExecutor(1) for t in tables}
        self._pending: dict[str, Future[int]] = {}
        self.rows = dict.fromkeys(self._plans, 0)
        try:
            with engine.begin() as conn:
                # A landing table left by a run that died goes first: a part still being
                # landed for it then waits, or fails, before these tables are made anew.
                _drop_landings(conn)
                for table in self._tables:
                    for statement in self._plans[table.name][0]:
                        conn.execute(text(statement))
                conn.execute(text(f'CREATE TABLE "{self.landing}" (part text PRIMARY KEY)'))
            for table in self._tables:
                self._own[table.name] = pg_arrow.connect(engine.url)
                pg_arrow.execute(self._own[table.name], "BEGIN")
        except BaseException:
            self.drop()
            raise

    def append(self, table: Table, frame: pd.DataFrame) -> None:
        """Append ``frame``'s rows to ``table``'s ``__next`` table, in the background.

        A range holds one family's tables: the others' empty frames cost nothing, not a
        COPY, nor a wait for the table's previous append."""
        if frame.empty:
            return
        self._wait(table.name)
        own = self._own[table.name]
        self._pending[table.name] = self._threads[table.name].submit(
            pg_arrow.append, own, f"{table.name}__next", arrow_batches(table, frame))

    def landed(self, rows: Mapping[str, int]) -> None:
        """Count the rows another process landed (``land_beside``), by table name."""
        for name, n in rows.items():
            self.rows[name] += n

    def _wait(self, name: str) -> None:
        pending = self._pending.pop(name, None)
        if pending is not None:
            self.rows[name] += pending.result()

    def finish(self) -> dict[str, int]:
        """Index and commit every table, ``workers`` at a time; the rows each holds, by name.

        Every part must have landed: the caller waited for them all."""
        def index(name: str) -> None:
            pg_arrow.execute(self._own[name], *self._plans[name][1], "COMMIT")

        try:
            for name in self._plans:
                self._wait(name)
            with self._engine.begin() as conn:
                _drop_landings(conn)
            with ThreadPoolExecutor(max_workers=self._workers) as pool:
                list(pool.map(index, self._plans))
        except BaseException:
            self.drop()
            raise
        self._close()
        return dict(self.rows)

    def drop(self) -> None:
        """Give up: roll back the job's appends and drop the tables, the landing first."""
        for pending in self._pending.values():
            pending.cancel()
            with contextlib.suppress(BaseException):
                pending.result()
        self._pending.clear()
        for own in self._own.values():
            pg_arrow.end(own)
        self._own.clear()
        self._close()
        with self._engine.begin() as conn:
            _drop_landings(conn)
            drop_beside(conn, self._tables)

    def _close(self) -> None:
        for thread in self._threads.values():
            thread.shutdown(wait=True)
        for own in self._own.values():
            own.close()
        self._own.clear()


def land_beside(url: URL, landing: str, part: str,
                frames: Sequence[tuple[Table, pd.DataFrame]]) -> bool:
    """Append one part's rows to the ``__next`` tables a ``BesideBuilds`` made, once.

    The part's name goes into the builds' landing table in the same transaction as its
    rows, so a part run again (a Dask retry after its worker died past the commit, or
    two runs of one task at once) lands nothing the second time: its insert waits for
    the first's commit and finds the name there. Returns whether this call landed the
    rows. Fails, landing nothing, when the builds are gone (dropped or finished): their
    landing table is dropped first, and the tables' rows are then no longer wanted.
    """
    if not _LANDING.fullmatch(landing) or not _PART.fullmatch(part):
        raise ValueError(f"not a landing table and part: {landing!r}, {part!r}")
    own = pg_arrow.connect(url)
    try:
        pg_arrow.execute(own, "BEGIN")
        first = pg_arrow.read(own, f"INSERT INTO \"{landing}\" (part) VALUES ('{part}') "
                                   "ON CONFLICT DO NOTHING RETURNING part").num_rows == 1
        if first:
            for table, frame in frames:
                if not frame.empty:
                    pg_arrow.append(own, f"{table.name}__next", arrow_batches(table, frame))
        pg_arrow.execute(own, "COMMIT")
    finally:
        pg_arrow.end(own)
    return first


def _drop_landings(connection: Connection) -> None:
    """Drop every builds' landing table (one run builds at a time: the ETL's lock)."""
    names = connection.execute(text(
        "SELECT tablename FROM pg_tables WHERE schemaname = current_schema() "
        "AND tablename LIKE :prefix"), {"prefix": LANDING_PREFIX.replace("_", "\\_") + "%"})
    for name in names.scalars().all():
        connection.execute(text(f'DROP TABLE IF EXISTS "{name}"'))


def arrow_batches(table: Table, frame: pd.DataFrame, rows: int = 500_000) -> pa.RecordBatchReader:
    """``frame``'s rows as Arrow batches with exactly the types of ``table``'s columns.

    Made one batch at a time as COPY asks for them: a whole table in Arrow beside
    its frame would add its size to the run's peak memory.
    """
    columns = [c.name for c in table.columns]
    arrays = {c: pg_copy.arrow_column(frame[c]) for c in columns}

    def batches() -> Iterator[pa.RecordBatch]:
        for start in range(0, len(frame), rows):
            yield pa.record_batch([_one_chunk(_cast(arrays[c].slice(start, rows),
                                                    table.c[c].type)) for c in columns],
                                  names=columns)

    schema = pa.schema([(c, _arrow_type(table.c[c].type)) for c in columns])
    return pa.RecordBatchReader.from_batches(schema, batches())


def _arrow_type(sqltype: Any) -> pa.DataType:
    """The Arrow type whose binary COPY form is the column type's."""
    for kind, arrow in ((BigInteger, pa.int64()), (SmallInteger, pa.int16()),
                        (Integer, pa.int32()), (Float, pa.float64()), (Boolean, pa.bool_()),
                        (DateTime, pa.timestamp("us")), (Date, pa.date32())):
        if isinstance(sqltype, kind):
            return arrow
    return pa.string()


def _one_chunk(values: pa.Array | pa.ChunkedArray) -> pa.Array:
    return values.combine_chunks() if isinstance(values, pa.ChunkedArray) else values


def _cast(values: pa.Array | pa.ChunkedArray, sqltype: Any) -> pa.Array | pa.ChunkedArray:
    target = _arrow_type(sqltype)
    if pa.types.is_temporal(target):
        # Nanoseconds do not fit the column's microseconds: they are cut, as on insert.
        return pc.cast(pc.cast(values, pa.timestamp("us"), safe=False), target)
    return pc.cast(values, target)


def drop_beside(connection: Connection, tables: Sequence[Table]) -> None:
    """Drop any ``<table>__next`` left by a build whose swap never committed."""
    if is_postgres(connection):
        for table in tables:
            connection.execute(text(f'DROP TABLE IF EXISTS "{table.name}__next"'))


def swap_in(connection: Connection, table: Table, rows: int | None = None) -> int:
    """Put ``<table>__next`` in the table's place if their rows differ; drop it otherwise.

    Returns the rows inserted, updated or deleted, counted in one join as an upsert
    would have (every table in the copy has a primary key). ``rows``, what the builder
    wrote, spares counting them again when the table was empty (a first load).
    """
    name, after = table.name, f"{table.name}__next"
    keys = [c.name for c in table.primary_key.columns]
    if _is_empty(connection, table):
        changed = rows if rows is not None and rows >= 0 else int(connection.execute(
            text(f'SELECT count(*) FROM "{after}"')).scalar_one())
    else:
        values = [c.name for c in table.columns if c.name not in keys]
        match = " AND ".join(f'n."{k}" = o."{k}"' for k in keys)
        differs = [f'n."{keys[0]}" IS NULL', f'o."{keys[0]}" IS NULL']
        if values:
            differs.append(f"({', '.join(f'n.{c}' for c in values)}) IS DISTINCT FROM "
                           f"({', '.join(f'o.{c}' for c in values)})")
        # Merged along both keys, not hashed (the hash join spills to disk); RESET puts it back.
        connection.execute(text("SET LOCAL enable_hashjoin = off"))
        changed = int(connection.execute(text(
            f'SELECT count(*) FROM "{after}" n FULL JOIN "{name}" o ON {match} '
            f"WHERE {' OR '.join(differs)}")).scalar_one())
        connection.execute(text("RESET enable_hashjoin"))
    if changed == 0:
        connection.execute(text(f'DROP TABLE "{after}"'))
        return 0
    indexes = _indexes(connection, name)
    connection.execute(text(f'DROP TABLE "{name}"'))
    connection.execute(text(f'ALTER TABLE "{after}" RENAME TO "{name}"'))
    for index, _definition, constraint, _constraint_definition in indexes:
        connection.execute(text(
            f'ALTER TABLE "{name}" RENAME CONSTRAINT "{constraint}__next" TO "{constraint}"'
            if constraint else f'ALTER INDEX "{index}__next" RENAME TO "{index}"'))
    connection.execute(text(f'ANALYZE "{name}"'))  # a new table has no statistics yet
    return changed


_INDEX_DEF = re.compile(r"^(CREATE (?:UNIQUE )?INDEX )\S+ ON \S+ ")


def _is_empty(connection: Connection, table: Table) -> bool:
    return connection.execute(text(f"SELECT 1 FROM {table.name} LIMIT 1")).first() is None


def delete_keys(connection: Connection, table: Table, keys: pd.DataFrame) -> int:
    """Delete the rows whose primary key is in ``keys`` (a frame of key columns)."""
    if keys.empty:
        return 0
    key_cols = [c.name for c in table.primary_key.columns]
    staging = _temp_table(connection, table, "keys", key_cols)
    try:
        insert_frame(connection, staging, keys[key_cols])
        match = " AND ".join(f"k.{c} = {table.name}.{c}" for c in key_cols)
        result = connection.execute(text(
            f"DELETE FROM {table.name} WHERE EXISTS (SELECT 1 FROM {staging.name} k WHERE {match})"
        ))
    finally:
        staging.drop(connection)
    return int(result.rowcount or 0)


def _temp_table(
    connection: Connection, table: Table, tag: str, only: Sequence[str] | None = None
) -> Table:
    name = f"tmp_{tag}_{table.name}"
    connection.execute(text(f"DROP TABLE IF EXISTS {name}"))
    keys = {c.name for c in table.primary_key.columns}
    chosen = [c for c in table.columns if only is None or c.name in only]
    # Keyed like the table so the joins back to it are lookups, not scans.
    keyed = keys <= {c.name for c in chosen}
    columns = [Column(c.name, c.type, primary_key=keyed and c.name in keys) for c in chosen]
    temp = Table(name, MetaData(), *columns, prefixes=["TEMPORARY"])
    temp.create(connection)
    return temp


def _upsert(
    connection: Connection, table: Table, staging: str, keys: list[str], columns: list[str],
    compare: list[str],
) -> int:
    cols = ", ".join(columns)
    updates = [c for c in columns if c not in keys]
    if not updates:
        action = "DO NOTHING"
    elif is_postgres(connection):
        differs = f"({', '.join(f'{table.name}.{c}' for c in compare)}) IS DISTINCT FROM " \
                  f"({', '.join(f'EXCLUDED.{c}' for c in compare)})"
        sets = ", ".join(f"{c} = EXCLUDED.{c}" for c in updates)
        action = f"DO UPDATE SET {sets} WHERE {differs}"
    else:
        differs = " OR ".join(f"{table.name}.{c} IS NOT excluded.{c}" for c in compare)
        sets = ", ".join(f"{c} = excluded.{c}" for c in updates)
        action = f"DO UPDATE SET {sets} WHERE {differs}"
    result = connection.execute(text(
        f"INSERT INTO {table.name} ({cols}) SELECT {cols} FROM {staging} WHERE true "
        f"ON CONFLICT ({', '.join(keys)}) {action}"
    ))
    return int(result.rowcount or 0)


def _delete_missing(
    connection: Connection, table: Table, staging: str, keys: list[str],
    scope: Mapping[str, Any] | None, scope_in: tuple[str, Sequence[Any]] | None,
) -> int:
    match = " AND ".join(f"s.{k} = {table.name}.{k}" for k in keys)
    where = [f"NOT EXISTS (SELECT 1 FROM {staging} s WHERE {match})"]
    binds = []
    for i, (column, value) in enumerate((scope or {}).items()):
        where.append(f"{table.name}.{column} = :scope{i}")
        binds.append(_typed_bind(f"scope{i}", value))
    scope_table = None
    if scope_in is not None:
        column, values = scope_in
        scope_table = _temp_table(connection, table, "scope", [column])
        insert_frame(connection, scope_table, pd.DataFrame({column: list(values)}))
        where.append(f"{table.name}.{column} IN (SELECT {column} FROM {scope_table.name})")
    try:
        result = connection.execute(
            text(f"DELETE FROM {table.name} WHERE {' AND '.join(where)}").bindparams(*binds)
        )
    finally:
        if scope_table is not None:
            scope_table.drop(connection)
    return int(result.rowcount or 0)
