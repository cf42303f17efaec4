"""PostgreSQL COPY in and out of data frames, with Arrow's CSV reader and writer.

COPY is the fast way rows move in and out of PostgreSQL; what is slow is turning
its CSV into frames and frames into CSV. Arrow's CSV codec does both in C++ on
every core, several times faster than pandas' (``read_csv`` with object columns,
``to_csv``), and keeps text in Arrow buffers rather than one Python object per value.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import psycopg
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
from psycopg import pq

# Per column, how the text COPY gives is read: "category" (repeated text, kept as a
# categorical), "date" (parsed if every value parses, else left as text), "infer"
# (numbers if every value is one, else text) or "object" (text).
KINDS = ("category", "date", "infer", "object")
WRITE_ROWS = 500_000


def read_copy(connection: psycopg.Connection[Any], statement: str, columns: Sequence[str],
              kinds: Mapping[str, str]) -> pd.DataFrame:
    """Run ``COPY (...) TO STDOUT WITH (FORMAT csv)`` and read its rows into a frame."""
    buffer = _copied_out(connection, statement)
    if buffer.tell() == 0:
        return pd.DataFrame({c: pd.Series([], dtype=object) for c in columns})
    table = pacsv.read_csv(
        pa.BufferReader(pa.py_buffer(buffer.getbuffer())),
        read_options=pacsv.ReadOptions(column_names=list(columns)),
        # Text may hold newlines (COPY quotes them). Empty text and NULL both read as
        # missing, and nothing else does ("NULL" or "NA" as text is text).
        parse_options=pacsv.ParseOptions(newlines_in_values=True),
        convert_options=pacsv.ConvertOptions(
            column_types={c: pa.string() for c in columns}, null_values=[""],
            strings_can_be_null=True, quoted_strings_can_be_null=True),
    )
    del buffer
    return frame_from_arrow(table, columns, kinds)


def _copied_out(connection: psycopg.Connection[Any], statement: str) -> io.BytesIO:
    """The bytes of a COPY TO STDOUT, read with libpq's own blocking loop.

    PostgreSQL sends one message per row. psycopg's ``Copy.read`` goes through its
    wait machinery for each; ``PQgetCopyData`` in blocking mode through
    ``psycopg.pq`` costs a fraction of that. The statement runs in the connection's
    transaction, like any other.
    """
    if (not connection.autocommit
            and connection.info.transaction_status == pq.TransactionStatus.IDLE):
        # libpq below psycopg does not open transactions: let psycopg do it (BEGIN with
        # the connection's isolation level), so every read of one transaction shares
        # its snapshot.
        connection.execute("SELECT 1")
    pgconn = connection.pgconn
    result = pgconn.exec_(statement.encode())
    if result.status != pq.ExecStatus.COPY_OUT:
        raise psycopg.errors.error_from_result(result, encoding=connection.info.encoding)
    buffer = io.BytesIO()
    write, get = buffer.write, pgconn.get_copy_data
    while True:
        size, data = get(0)
        if size < 0:
            break
        write(data)
    final = pgconn.get_result()
    while pgconn.get_result() is not None:
        pass
    if final is None or final.status != pq.ExecStatus.COMMAND_OK:
        if final is not None:
            raise psycopg.errors.error_from_result(final, encoding=connection.info.encoding)
        raise psycopg.OperationalError(pgconn.get_error_message())
    return buffer


def frame_from_arrow(table: pa.Table, columns: Sequence[str], kinds: Mapping[str, str],
                     owned: bool = False) -> pd.DataFrame:
    """Columns of ``table`` read as ``kinds`` say, whether they came as text (CSV) or typed.

    With ``owned`` no column shares ``table``'s memory. Columns imported from ADBC
    (the Arrow C data interface) release their memory only together, per batch: one
    text column kept as it is would keep every other column of the table alive too.
    Only text kept as Arrow is copied for that: a frame made from a dict copies NumPy
    columns into its own blocks anyway, and categories and parsed columns are built in
    fresh memory (a second copy of every column would cost the readers CPU time).
    """
    return pd.DataFrame({c: _typed(table.column(i), kinds.get(c, "object"), owned)
                         for i, c in enumerate(columns)})


def _typed(values: pa.ChunkedArray, kind: str, owned: bool = False) -> Any:
    """One column as ``kind`` says; a column that does not parse stays text.

    Typed columns (ADBC) that already are what ``kind`` asks for are kept; any other
    is first written as text, so it meets the same rules as CSV's text would. With
    ``owned``, text kept as Arrow is a copy (see ``frame_from_arrow``).
    """
    vtype = values.type
    if kind == "date" and (pa.types.is_date(vtype) or (
            pa.types.is_timestamp(vtype) and vtype.tz is None)):
        try:
            return pc.cast(values, pa.timestamp("us")).to_pandas()
        except pa.ArrowInvalid:  # a date no timestamp holds ('infinity'): text, for the checks
            pass
    if kind == "infer" and (pa.types.is_integer(vtype) or pa.types.is_floating(vtype)):
        return pc.cast(values, pa.int64() if pa.types.is_integer(vtype) else pa.float64()
                       ).to_pandas()
    text = values if pa.types.is_string(vtype) else _as_text(values)
    if kind == "category":
        return text.dictionary_encode().to_pandas()
    targets = {"date": (pa.timestamp("us"),), "infer": (pa.int64(), pa.float64())}.get(kind, ())
    for target in targets:
        try:
            return pc.cast(text, target).to_pandas()
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            continue
    if owned and text is values:
        text = pc.take(text, pa.array(np.arange(len(text), dtype=np.int64)))
    return text.to_pandas()


def _as_text(values: pa.ChunkedArray) -> pa.ChunkedArray:
    """Any typed column as text (PostgreSQL's numeric comes as text in an extension type)."""
    if isinstance(values.type, pa.BaseExtensionType):
        values = pa.chunked_array([c.storage for c in values.chunks], values.type.storage_type)
    try:
        return pc.cast(values, pa.string())
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return pa.chunked_array([pa.array([None if v is None else str(v)
                                           for v in values.to_pylist()], pa.string())])


def write_copy(cursor: Any, statement: str, frame: pd.DataFrame) -> None:
    """Run ``COPY ... FROM STDIN WITH (FORMAT csv)`` with the rows of ``frame``.

    The frame's columns must already hold values PostgreSQL reads as the target
    types (``bulk`` prepares them). Strings are quoted, so an empty string stays
    one; missing values are written unquoted empty, which COPY reads as NULL.
    """
    table = arrow_columns(frame)
    options = pacsv.WriteOptions(include_header=False)
    with cursor.copy(statement) as copy:
        for start in range(0, len(frame), WRITE_ROWS):
            sink = io.BytesIO()
            pacsv.write_csv(table.slice(start, WRITE_ROWS), sink, options)
            copy.write(sink.getbuffer())


def arrow_columns(frame: pd.DataFrame) -> pa.Table:
    """The frame as Arrow columns; categoricals as their plain values, mixed objects as text."""
    arrays = {}
    for name in frame.columns:
        array = arrow_column(frame[name])
        if pa.types.is_dictionary(array.type):
            array = array.cast(array.type.value_type)
        arrays[str(name)] = array
    return pa.table(arrays)


def arrow_column(column: pd.Series) -> pa.Array | pa.ChunkedArray:
    """One column in Arrow, without copying where Arrow can share pandas' memory
    (categoricals stay dictionaries); mixed Python objects as text."""
    try:
        return pa.array(column, from_pandas=True)
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        return pa.array([None if v is None or v != v else str(v) for v in column])
