"""Reading the clinic's PostgreSQL on several connections: one snapshot, the same rows."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from retention.clinic import contract
from retention.db import pg_arrow, pg_copy
from retention.db.engines import source_engine
from retention.etl import extract
from retention.settings import SourceMapping
from tests.support.sources import AS_OF, Source, appointment

EVERYTHING: dict[str, datetime | None] = {t: None for t in extract.INCREMENTAL}


@pytest.fixture
def source(pg_url: str) -> Iterator[Source]:
    src = Source.synthetic(pg_url, n_clients=120, seed=3)
    yield src
    src.dispose()


def read(src: Source, connections: int,
         mapping: SourceMapping | None = None) -> dict[str, pd.DataFrame]:
    engine = source_engine(src.url)
    try:
        # The test server's role is a superuser (docs/nightly.md: a clinic's is not).
        return extract.read_source(engine, mapping or SourceMapping(), EVERYTHING, connections,
                                   allow_superuser=True)[0]
    finally:
        engine.dispose()


def sorted_frame(table: str, frame: pd.DataFrame) -> pd.DataFrame:
    keys = [c.name for c in contract.TABLES[table].primary_key.columns]
    return frame.astype(str).sort_values(keys).reset_index(drop=True)


def test_reading_on_several_connections_gives_the_rows_one_connection_gives(
        source: Source) -> None:
    one, three = read(source, 1), read(source, 3)
    assert list(one) == list(three) == list(contract.TABLES)
    for table in contract.TABLES:
        assert len(one[table]) == source.count(table) > 0
        pd.testing.assert_frame_equal(sorted_frame(table, one[table]),
                                      sorted_frame(table, three[table]))


def test_every_connection_reads_the_snapshot_of_the_first(
        source: Source, monkeypatch: pytest.MonkeyPatch) -> None:
    """Rows committed while the readers start are seen by none of them."""
    episode = source.rows("episodes", {"episode_id": source.open_episode_ids()[0]})[0]
    client = source.rows("clients", {"client_id": episode["client_id"]})[0]
    later = datetime.combine(AS_OF, datetime.min.time()) + timedelta(hours=9)
    real = pg_arrow.begin_in_snapshot
    written: list[bool] = []

    def commit_first(connection: object, snapshot: str) -> None:
        if not written:  # another system writes to every table after the export
            written.append(True)
            write_late_rows()
        real(connection, snapshot)

    def write_late_rows() -> None:
        source.insert("clients", [{**client, "client_id": "LATE-C"}])
        source.insert("episodes", [{**episode, "episode_id": "LATE-E", "client_id": "LATE-C"}])
        source.insert("appointments", [appointment("LATE-A", episode, later)])
        source.insert("alliance_measures", [{
            "measure_id": "LATE-M", "episode_id": episode["episode_id"],
            "client_id": episode["client_id"], "appointment_id": None, "instrument": "SRS",
            "rater": "client", "administered_at": later, "score_total": 30, "goal": None,
            "task": None, "bond": None, "updated_at": later}])
        source.insert("alliance_items", [{"measure_id": "LATE-M", "item_number": 1,
                                          "response": 7}])

    monkeypatch.setattr(pg_arrow, "begin_in_snapshot", commit_first)
    frames = read(source, 3)
    assert written
    for table, key in (("clients", "client_id"), ("episodes", "episode_id"),
                       ("appointments", "appointment_id"), ("alliance_measures", "measure_id"),
                       ("alliance_items", "measure_id")):
        assert not frames[table][key].astype(str).str.startswith("LATE").any(), table
    # The rows are there for the next read.
    assert (read(source, 3)["appointments"]["appointment_id"] == "LATE-A").sum() == 1


def test_a_failed_read_on_any_connection_fails_the_extract(source: Source) -> None:
    broken = SourceMapping(queries={"alliance_items": "SELECT * FROM no_such_table"})
    with pytest.raises(extract.MappingError,
                       match=r"\[etl.queries\] alliance_items .*no_such_table"):
        read(source, 2, broken)


def test_a_snapshot_id_is_checked_before_it_reaches_sql() -> None:
    with pytest.raises(ValueError, match="not a snapshot id"):
        pg_arrow.check_snapshot_id("1'; DROP TABLE clients; --")


def test_the_readers_sessions_are_read_only_and_named(source: Source) -> None:
    """What the clinic's DBA sees of each reader: read-only by default, named retention-etl."""
    clients = ("SELECT client_id, current_setting('application_name') AS clinic_id, "
               "case_manager_id, birth_year, "
               "current_setting('default_transaction_read_only') AS sex, race_ethnicity "
               "FROM clients")
    frames = read(source, 2, SourceMapping(queries={"clients": clients}))
    assert set(frames["clients"]["clinic_id"].astype(str)) == {"retention-etl"}
    assert set(frames["clients"]["sex"].astype(str)) == {"on"}


def _ranges(array: pa.Array | pa.ChunkedArray) -> list[tuple[int, int]]:
    chunks = array.chunks if isinstance(array, pa.ChunkedArray) else [array]
    return [(b.address, b.address + b.size) for c in chunks for b in c.buffers() if b]


def _memory_of(column: pd.Series) -> list[tuple[int, int]]:
    if isinstance(column.dtype, pd.StringDtype | pd.ArrowDtype):
        return _ranges(pa.array(column.array))
    if isinstance(column.dtype, pd.CategoricalDtype):
        return [_numpy_range(np.asarray(column.cat.codes))]
    return [_numpy_range(column.to_numpy())]


def _numpy_range(values: np.ndarray) -> tuple[int, int]:
    start = values.__array_interface__["data"][0]
    return start, start + values.nbytes


def test_an_owned_frame_shares_no_memory_with_the_arrow_rows_it_came_from() -> None:
    # ADBC frees a batch's memory only when no column of it is alive: a frame keeping
    # one column's buffers would keep them all (1.5 GB at 100,000 clients).
    n = 1000
    table = pa.table({
        "id": pa.array([f"A{i:05d}" for i in range(n)]),
        "code": pa.array(["x", "y"] * (n // 2)),
        "at": pa.array(pd.date_range("2026-01-01", periods=n, freq="h").as_unit("us")),
        "count": pa.array(np.arange(n, dtype=np.int64)),
        "score": pa.array(np.linspace(0, 40, n)),
        "text_date": pa.array(["2026-01-02"] * n),
    })
    kinds = {"id": "object", "code": "category", "at": "date", "count": "infer",
             "score": "infer", "text_date": "date"}
    frame = pg_copy.frame_from_arrow(table, list(table.column_names), kinds, owned=True)
    arrow = [r for column in table.columns for r in _ranges(column)]
    for name in table.column_names:
        for start, end in _memory_of(frame[name]):
            assert not any(start < a_end and a_start < end for a_start, a_end in arrow), name
    # Without ``owned`` text keeps the characters where they were read.
    shared = pg_copy.frame_from_arrow(table, list(table.column_names), kinds)
    assert set(_memory_of(shared["id"])) & set(_ranges(table.column("id")))
    assert frame["count"].tolist() == list(range(n))
    assert str(frame["text_date"].dtype).startswith("datetime64")
