"""The bulk paths: upserts that write only what differs (SQLite and PostgreSQL), and on real
PostgreSQL COPY through Arrow's CSV both ways and first loads that build their indexes after
the rows."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime

import pandas as pd
import pyarrow as pa
import pytest
from sqlalchemy import (
    Boolean,
    Column,
    Connection,
    Date,
    DateTime,
    Engine,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    select,
    text,
)
from sqlalchemy.engine import make_url

from retention.db import bulk, pg_arrow
from retention.db.engines import store_engine

TRICKY = ["plain", "", 'a "quoted", comma', "two\nlines", "ünïcode ✓", None, "NULL", "\\N"]


def _table(name: str = "bulk_probe") -> Table:
    table = Table(
        name, MetaData(),
        Column("k", String, primary_key=True),
        Column("note", String),
        Column("n", Integer),
        Column("x", Float),
        Column("flag", Boolean),
        Column("at", DateTime),
        Column("on", Date),
    )
    Index(f"ix_{name}_n", table.c.n, table.c.at)
    return table


@pytest.fixture
def conn(pg_url: str) -> Iterator[Connection]:
    engine = store_engine(pg_url)
    with engine.connect() as connection:
        _table().create(connection)
        connection.commit()
        yield connection
    engine.dispose()


def _frame(n: int) -> pd.DataFrame:
    notes = [TRICKY[i % len(TRICKY)] for i in range(n)]
    return pd.DataFrame({
        "k": [f"K{i:06d}" for i in range(n)],
        "note": pd.Series(notes, dtype=object),
        "n": pd.array([None if i % 7 == 0 else i for i in range(n)], dtype="Int64"),
        "x": [None if i % 5 == 0 else i / 3 for i in range(n)],
        "flag": [i % 2 == 0 for i in range(n)],
        "at": pd.to_datetime([datetime(2026, 1, 1, 8, 30, 15, 123456)] * n),
        "on": pd.to_datetime([None if i % 3 == 0 else datetime(2026, 2, 1 + i % 28)
                              for i in range(n)]),
    })


def assert_stored_exactly(conn: Connection, frame: pd.DataFrame) -> None:
    """bulk_probe holds ``frame``'s rows, value for value (empty text and NULL apart)."""
    assert conn.execute(text("SELECT count(*) FROM bulk_probe WHERE note = ''")).scalar() == (
        frame["note"] == "").sum()
    assert conn.execute(text("SELECT count(*) FROM bulk_probe WHERE note IS NULL")).scalar() == (
        frame["note"].isna().sum())
    stored = conn.execute(text('SELECT k, note, n, x, flag, at, "on" FROM bulk_probe ORDER BY k'))
    for row, (_, want) in zip(stored, frame.iterrows(), strict=True):
        assert row.note == want["note"]
        assert row.n == (None if pd.isna(want["n"]) else want["n"])
        assert row.x == pytest.approx(None if pd.isna(want["x"]) else want["x"])
        assert row.flag is bool(want["flag"])
        assert row.at == datetime(2026, 1, 1, 8, 30, 15, 123456)
        assert row.on == (None if pd.isna(want["on"]) else want["on"].date())


def test_copy_round_trip_keeps_every_value(conn: Connection) -> None:
    table, frame = _table(), _frame(40)
    bulk.insert_frame(conn, table, frame)
    assert_stored_exactly(conn, frame)
    # Values come back as text the checks read (both as missing, as before), numbers
    # inferred where every value is one, timestamps parsed.
    back = bulk.read_query(conn, "SELECT k, note, n, x, at FROM bulk_probe ORDER BY k",
                           ["k", "note", "n", "x", "at"],
                           kinds={"n": "infer", "x": "infer", "at": "date", "note": "category"})
    notes = [None if pd.isna(v) else v for v in back["note"].astype(object)]
    assert notes == [None if v in ("", None) else v for v in frame["note"]]
    assert back["n"].isna().sum() == frame["n"].isna().sum()
    assert back["x"].dropna().tolist() == pytest.approx(frame["x"].dropna().tolist())
    assert back["at"].iloc[0] == pd.Timestamp("2026-01-01 08:30:15.123456")


def test_a_column_that_does_not_parse_stays_text(conn: Connection) -> None:
    frame = bulk.read_query(
        conn, "SELECT * FROM (VALUES ('2026-01-02', '3'), ('not a date', 'x')) v(d, n)",
        ["d", "n"], kinds={"d": "date", "n": "infer"})
    assert frame["d"].tolist() == ["2026-01-02", "not a date"]
    assert frame["n"].tolist() == ["3", "x"]


def test_copy_out_reports_the_servers_error(conn: Connection) -> None:
    with pytest.raises(Exception, match="division by zero"):
        bulk.read_query(conn, "SELECT 1 / (n - n) FROM generate_series(1, 3) n", ["q"])


def _indexes(conn: Connection) -> set[str]:
    return set(conn.execute(text(
        "SELECT indexdef FROM pg_indexes WHERE tablename = 'bulk_probe'")).scalars())


def test_a_large_first_load_builds_the_same_indexes_after_the_rows(
    conn: Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(bulk, "REBUILD_INDEXES_ROWS", 10)
    before = _indexes(conn)
    assert len(before) == 2
    assert bulk.sync_rows(conn, _table(), _frame(50)) == 50
    assert _indexes(conn) == before
    assert conn.execute(text(
        "SELECT count(*) FROM pg_constraint WHERE conrelid = 'bulk_probe'::regclass "
        "AND contype = 'p'")).scalar() == 1
    assert conn.execute(text("SELECT count(*) FROM bulk_probe")).scalar() == 50


def test_a_first_load_that_fails_leaves_table_and_indexes_as_they_were(
    conn: Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(bulk, "REBUILD_INDEXES_ROWS", 10)
    before = _indexes(conn)
    twice = pd.concat([_frame(20), _frame(20)], ignore_index=True)  # the key repeats
    with pytest.raises(Exception, match=r"could not create unique index|duplicate key"):
        bulk.sync_rows(conn, _table(), twice)
    conn.rollback()
    assert _indexes(conn) == before
    assert conn.execute(text("SELECT count(*) FROM bulk_probe")).scalar() == 0


def _oid(conn: Connection) -> int:
    return int(conn.execute(text("SELECT 'bulk_probe'::regclass::oid")).scalar_one())


def test_a_large_full_sync_rebuilds_beside_the_table_and_counts_like_the_upsert(
    conn: Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(bulk, "REBUILD_INDEXES_ROWS", 10)
    table, before = _table(), _indexes(conn)
    bulk.insert_frame(conn, table, _frame(50))
    first = _oid(conn)
    assert bulk.sync_rows(conn, table, _frame(50)) == 0  # the same rows: nothing changes...
    assert _oid(conn) == first  # ...and the table is the same table
    new = _frame(60).iloc[5:].copy()  # 5 rows gone, 10 new
    new.loc[new["k"] == "K000007", "note"] = "changed"  # and one updated
    assert bulk.sync_rows(conn, table, new) == 5 + 10 + 1
    assert _oid(conn) != first
    assert _indexes(conn) == before  # the same names and definitions
    assert conn.execute(text(
        "SELECT conname FROM pg_constraint WHERE conrelid = 'bulk_probe'::regclass "
        "AND contype = 'p'")).scalar_one() == "bulk_probe_pkey"
    stored = conn.execute(text("SELECT k, note FROM bulk_probe ORDER BY k")).fetchall()
    assert [r.k for r in stored] == sorted(new["k"])
    assert dict(stored)["K000007"] == "changed"
    assert conn.execute(text("SELECT count(*) FROM pg_class WHERE relname LIKE '%__next'")
                        ).scalar() == 0


def test_a_rebuild_that_fails_leaves_the_old_table_in_place(
    conn: Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(bulk, "REBUILD_INDEXES_ROWS", 10)
    table, before = _table(), _indexes(conn)
    bulk.insert_frame(conn, table, _frame(30))
    conn.commit()
    twice = pd.concat([_frame(20), _frame(20)], ignore_index=True)  # the key repeats
    with pytest.raises(Exception, match=r"could not create unique index|duplicate key"):
        bulk.sync_rows(conn, table, twice)
    conn.rollback()
    assert _indexes(conn) == before
    assert conn.execute(text("SELECT count(*) FROM bulk_probe")).scalar() == 30


def test_tables_built_in_parallel_swap_in_only_in_the_callers_transaction(
    conn: Connection,
) -> None:
    table = _table()
    bulk.insert_frame(conn, table, _frame(30))
    conn.commit()
    built = bulk.build_beside_in_parallel(conn, [(table, _frame(40))])
    assert built == {"bulk_probe": 40}
    # Built and committed beside the table, but the table is what it was...
    assert conn.execute(text("SELECT count(*) FROM bulk_probe")).scalar() == 30
    assert bulk.swap_in(conn, table) == 10
    # The comparison's planner setting does not outlive it.
    assert conn.execute(text("SHOW enable_hashjoin")).scalar() == "on"
    conn.rollback()  # ...and stays so when the caller's transaction does not commit.
    assert conn.execute(text("SELECT count(*) FROM bulk_probe")).scalar() == 30
    bulk.drop_beside(conn, [_table()])  # what the next ETL run does first, and commits
    conn.commit()
    assert conn.execute(text(
        "SELECT count(*) FROM pg_class WHERE relname = 'bulk_probe__next'")).scalar() == 0
    bulk.build_beside_in_parallel(conn, [(table, _frame(40))])
    assert bulk.swap_in(conn, table) == 10
    conn.commit()
    assert conn.execute(text("SELECT count(*) FROM bulk_probe")).scalar() == 40


def test_a_parallel_build_keeps_every_value(conn: Connection) -> None:
    """The builders' binary COPY (ADBC) stores what the CSV path stores, categoricals too."""
    table, frame = _table(), _frame(40)
    frame["note"] = frame["note"].astype("category")
    built = bulk.build_beside_in_parallel(conn, [(table, frame)])
    assert built == {"bulk_probe": 40}
    assert bulk.swap_in(conn, table, built["bulk_probe"]) == 40  # empty before: not counted
    assert_stored_exactly(conn, _frame(40))


def test_rows_go_to_binary_copy_in_batches_of_the_tables_types() -> None:
    whole = bulk.arrow_batches(_table(), _frame(40)).read_all()
    batches = list(bulk.arrow_batches(_table(), _frame(40), rows=7))
    assert [b.num_rows for b in batches] == [7, 7, 7, 7, 7, 5]
    assert [str(t) for t in whole.schema.types] == [
        "string", "string", "int32", "double", "bool", "timestamp[us]", "date32[day]"]
    assert whole.equals(pa.Table.from_batches(batches))


def test_a_parallel_build_that_fails_leaves_nothing_beside_the_tables(conn: Connection) -> None:
    # Two tables, as the ETL builds them: the same one twice would race its builders to
    # create one name (a catalog error, not the failure this test is about).
    table, other = _table(), _table("bulk_probe_b")
    other.create(conn)
    conn.commit()
    twice = pd.concat([_frame(20), _frame(20)], ignore_index=True)  # the key repeats
    with pytest.raises(Exception, match=r"could not create unique index|duplicate key"):
        bulk.build_beside_in_parallel(conn, [(table, _frame(10)), (other, twice)])
    conn.rollback()
    assert conn.execute(text(
        r"SELECT count(*) FROM pg_class WHERE relname LIKE 'bulk\_probe%\_\_next%'"
    )).scalar() == 0


def _next_rows(conn: Connection) -> int:
    return int(conn.execute(text("SELECT count(*) FROM bulk_probe__next")).scalar_one())


def _landings(conn: Connection) -> list[str]:
    return list(conn.execute(text(
        r"SELECT relname FROM pg_class WHERE relkind = 'r' AND relname LIKE 'beside\_landed\_%'"
    )).scalars())


def test_a_part_landed_by_another_process_lands_once_beside_the_job_s_own(
    conn: Connection, pg_url: str,
) -> None:
    """A Dask worker appends a range itself; run again (a retry after its commit) it
    lands nothing more, and once the builds are finished nothing lands at all."""
    conn.execute(text(f'CREATE TABLE "{bulk.LANDING_PREFIX}0123456789abcdef" (part text)'))
    conn.commit()  # a landing table left by a run that died
    table, rows, engine = _table(), _frame(30), store_engine(pg_url)
    builds = bulk.BesideBuilds(engine, [table])
    assert _landings(conn) == [builds.landing]
    url = make_url(pg_url)
    builds.append(table, rows.iloc[:10])
    assert bulk.land_beside(url, builds.landing, "bulk range 1 of 2", [(table, rows.iloc[10:20])])
    assert not bulk.land_beside(url, builds.landing, "bulk range 1 of 2",
                                [(table, rows.iloc[10:20])])
    assert bulk.land_beside(url, builds.landing, "bulk range 2 of 2", [(table, rows.iloc[20:])])
    builds.landed({"bulk_probe": 20})
    assert builds.finish() == {"bulk_probe": 30}
    assert _landings(conn) == []
    with pytest.raises(pg_arrow.Error, match="does not exist"):
        bulk.land_beside(url, builds.landing, "bulk range 3 of 2", [(table, rows.iloc[:1])])
    assert _next_rows(conn) == 30
    assert bulk.swap_in(conn, table, 30) == 30
    assert_stored_exactly(conn, rows)
    engine.dispose()


def _waiting_on_a_lock(engine: Engine) -> int:
    """Backends of this database blocked on a lock, read afresh (a transaction would see
    the activity of its first read again)."""
    with engine.connect() as own:
        return int(own.execute(text(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
            "AND wait_event_type = 'Lock'")).scalar_one())


def _eventually(condition: Callable[[], bool], tries: int = 600) -> bool:
    """Whether ``condition`` holds within ``tries`` checks 50 ms apart (30 s)."""
    for _ in range(tries):
        if condition():
            return True
        time.sleep(0.05)
    return False


def test_a_part_run_twice_at_once_lands_once(conn: Connection, pg_url: str) -> None:
    """The second of two runs of one part waits for the first's commit, then finds its
    name there: Dask may run a task twice when it thinks a worker lost."""
    table, rows, engine = _table(), _frame(10), store_engine(pg_url)
    builds = bulk.BesideBuilds(engine, [table])
    first = engine.connect()
    first.execute(text(f"INSERT INTO \"{builds.landing}\" (part) VALUES ('bulk range 1 of 1')"))
    with ThreadPoolExecutor(1) as pool:
        second = pool.submit(bulk.land_beside, make_url(pg_url), builds.landing,
                             "bulk range 1 of 1", [(table, rows)])
        # Held by the first's uncommitted name: its backend waits on a lock. Polled with
        # sleeps, not a timed wait, which a faked clock (faketime) would never end.
        assert _eventually(lambda: _waiting_on_a_lock(engine) == 1)
        assert not second.done()
        first.commit()
        assert _eventually(second.done)
        assert second.result() is False
    first.close()
    assert builds.finish() == {"bulk_probe": 0}
    assert _next_rows(conn) == 0
    engine.dispose()


def test_builds_given_up_leave_nothing_and_refuse_parts(conn: Connection, pg_url: str) -> None:
    table, rows, engine = _table(), _frame(10), store_engine(pg_url)
    builds = bulk.BesideBuilds(engine, [table])
    assert bulk.land_beside(make_url(pg_url), builds.landing, "bulk range 1 of 2",
                            [(table, rows.iloc[:5])])
    builds.drop()
    engine.dispose()
    assert _landings(conn) == []
    assert conn.execute(text(
        r"SELECT count(*) FROM pg_class WHERE relname LIKE 'bulk\_probe%\_\_next%'")).scalar() == 0
    with pytest.raises(pg_arrow.Error, match="does not exist"):
        bulk.land_beside(make_url(pg_url), builds.landing, "bulk range 2 of 2",
                         [(table, rows.iloc[5:])])
    with pytest.raises(ValueError, match="not a landing table and part"):
        bulk.land_beside(make_url(pg_url), builds.landing, "x'); DROP TABLE y; --",
                         [(table, rows)])


def test_reads_by_copy_share_the_transaction_they_open(pg_url: str) -> None:
    """A COPY as a connection's first statement opens its transaction, so later reads see
    the same snapshot even when another connection commits in between."""
    engine = store_engine(pg_url)
    with engine.connect() as setup:
        _table().create(setup)
        bulk.insert_frame(setup, _table(), _frame(5))
        setup.commit()
    reader = engine.connect().execution_options(isolation_level="REPEATABLE READ")
    first = bulk.read_query(reader, "SELECT k FROM bulk_probe", ["k"])
    with engine.connect() as writer:
        writer.execute(text("DELETE FROM bulk_probe"))
        writer.commit()
    again = bulk.read_query(reader, "SELECT k FROM bulk_probe", ["k"])
    assert len(first) == len(again) == 5
    reader.rollback()
    assert bulk.read_query(reader, "SELECT k FROM bulk_probe", ["k"]).empty
    reader.close()
    engine.dispose()


def test_sync_rows_writes_only_what_differs(store_url: str) -> None:
    engine = store_engine(store_url)
    table = Table("things", MetaData(), Column("k", String(8), primary_key=True),
                  Column("group_id", Integer), Column("v", String(8)))
    with engine.begin() as conn:
        table.create(conn)
        rows = pd.DataFrame({"k": ["a", "b", "c"], "group_id": [1, 1, 2], "v": ["x", "y", None]})
        assert bulk.sync_rows(conn, table, rows) == 3
        assert bulk.sync_rows(conn, table, rows) == 0  # the same rows: nothing written
        changed = rows.assign(v=["x", "z", None])
        assert bulk.sync_rows(conn, table, changed, delete_missing=False) == 1
        # Deleting the rows missing from a scope leaves other scopes alone.
        assert bulk.sync_rows(conn, table, changed.iloc[:1], scope={"group_id": 1}) == 1
        keys = conn.execute(select(table.c.k).order_by(table.c.k)).scalars().all()
        assert keys == ["a", "c"]
        assert bulk.delete_keys(conn, table, pd.DataFrame({"k": ["c", "nope"]})) == 1
    engine.dispose()
