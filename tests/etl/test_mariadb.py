"""Reading a clinic's MariaDB (or MySQL): read-only, one snapshot, a least-privilege role,
streamed, and the same copy as any other source gives."""

from __future__ import annotations

import re
import secrets
import socket
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pymysql
import pytest
from sqlalchemy import event, make_url, text
from sqlalchemy.exc import DBAPIError

from retention.db import bulk, errors
from retention.db.engines import is_read_only, source_engine, store_engine
from retention.etl import extract
from retention.pipelines.etl import run_etl
from retention.settings import EtlSettings, SourceMapping
from tests.support import mariadb
from tests.support.sources import AS_OF, Source, appointment, stored

EVERYTHING: dict[str, datetime | None] = {t: None for t in extract.INCREMENTAL}
SECRET = "Jane Roe 1984-03-07"
LATER = datetime.combine(AS_OF, datetime.min.time()) + timedelta(hours=9)


@pytest.fixture
def source(mariadb_url: str) -> Iterator[Source]:
    src = Source.synthetic(mariadb_url, n_clients=60, seed=3)
    yield src
    src.dispose()


def read(url: str, mapping: SourceMapping | None = None,
         allow_superuser: bool = True) -> dict[str, pd.DataFrame]:
    engine = source_engine(url)
    try:
        # The test server's root holds every privilege (docs/nightly.md: a clinic's role
        # does not).
        return extract.read_source(engine, mapping or SourceMapping(), EVERYTHING,
                                   allow_superuser=allow_superuser)[0]
    finally:
        engine.dispose()


def test_nothing_the_etl_runs_can_write(source: Source) -> None:
    engine = source_engine(source.url)
    try:
        with engine.connect() as conn:
            assert is_read_only(conn)
            with pytest.raises(DBAPIError) as caught:
                conn.execute(text("INSERT INTO clients (client_id, clinic_id) VALUES ('X', 'x')"))
            conn.rollback()
    finally:
        engine.dispose()
    assert errors.mysql_error(caught.value) == (
        1792, "Cannot execute statement in a READ ONLY transaction")
    assert not errors.is_transient(caught.value)
    assert source.count("clients") == 60


def test_every_table_is_read_in_the_snapshot_taken_before_the_first(
        source: Source, monkeypatch: pytest.MonkeyPatch) -> None:
    """Rows another connection commits after the snapshot began, before the first table's
    read or between two tables' reads, are seen by none of the reads."""
    episode = source.rows("episodes", {"episode_id": source.open_episode_ids()[0]})[0]
    client = source.rows("clients", {"client_id": episode["client_id"]})[0]
    real = bulk.stream_query
    reads: list[str] = []

    def write_late_rows(tag: str) -> None:
        source.insert("clients", [{**client, "client_id": f"{tag}-C"}])
        source.insert("episodes", [{**episode, "episode_id": f"{tag}-E",
                                    "client_id": f"{tag}-C"}])
        source.insert("appointments", [appointment(f"{tag}-A", episode, LATER)])
        source.insert("alliance_measures", [{
            "measure_id": f"{tag}-M", "episode_id": episode["episode_id"],
            "client_id": episode["client_id"], "appointment_id": None, "instrument": "SRS",
            "rater": "client", "administered_at": LATER, "score_total": 30, "goal": None,
            "task": None, "bond": None, "updated_at": LATER}])
        source.insert("alliance_items", [{"measure_id": f"{tag}-M", "item_number": 1,
                                          "response": 7}])

    def writes_between(connection: Any, sql: str, *args: Any, **kwargs: Any) -> pd.DataFrame:
        if not reads:
            write_late_rows("LATE")  # after START TRANSACTION, before any table is read
        reads.append(sql)
        frame = real(connection, sql, *args, **kwargs)
        if len(reads) == 1:
            write_late_rows("LATER")  # one table is read; every other one is not
        return frame

    monkeypatch.setattr(bulk, "stream_query", writes_between)
    frames = read(source.url)
    assert len(reads) == len(frames)
    for table, key in (("clients", "client_id"), ("episodes", "episode_id"),
                       ("appointments", "appointment_id"), ("alliance_measures", "measure_id"),
                       ("alliance_items", "measure_id")):
        assert not frames[table][key].astype(str).str.startswith("LATE").any(), table
    monkeypatch.setattr(bulk, "stream_query", real)
    again = read(source.url)["appointments"]["appointment_id"]
    assert set(again[again.str.startswith("LATE")]) == {"LATE-A", "LATER-A"}


def test_a_role_that_reads_the_servers_files_is_refused(
        source: Source, mariadb_users: Callable[..., str]) -> None:
    """FILE reads any file the server can (``LOAD_FILE``) into the store through a mapping;
    SELECT on the clinic's database alone is all the ETL needs."""
    filer = mariadb_users("SELECT ON {db}.*", "FILE ON *.*")
    reader = mariadb_users("SELECT ON {db}.*")
    reads_a_file = SourceMapping(queries={"clients": (
        "SELECT client_id, LOAD_FILE('/etc/hostname') AS clinic_id, case_manager_id, "
        "birth_year, sex, race_ethnicity FROM clients")})
    with pytest.raises(extract.SourceRoleRefused,
                       match=r"'root@.*' holds ALL PRIVILEGES on \*\.\* on the clinic's "
                             r"(MariaDB|MySQL): .* \[etl\] allow_superuser_source = true"):
        read(source.url, allow_superuser=False)
    with pytest.raises(extract.SourceRoleRefused, match=r"'rt_\w+@%' holds FILE on \*\.\*"):
        read(filer, reads_a_file, allow_superuser=False)
    role = f"rt_role_{secrets.token_hex(4)}"  # FILE through MariaDB's default role
    admin = mariadb.connect()
    try:
        with admin.cursor() as cursor:
            cursor.execute("SELECT VERSION()")
            if "MariaDB" not in str(cursor.fetchone()):  # MySQL: other syntax, other listing
                return
            cursor.execute(f"CREATE ROLE {role}")
            cursor.execute(f"GRANT FILE ON *.* TO {role}")
            granted = make_url(mariadb_users("SELECT ON {db}.*"))
            user = granted.username
            cursor.execute(f"GRANT {role} TO '{user}'@'%'")
            cursor.execute(f"SET DEFAULT ROLE {role} FOR '{user}'@'%'")
        with pytest.raises(extract.SourceRoleRefused, match=r"holds FILE on \*\.\*"):
            read(granted.render_as_string(hide_password=False), allow_superuser=False)
    finally:
        with admin.cursor() as cursor:
            cursor.execute(f"DROP ROLE IF EXISTS {role}")
        admin.close()
    frames = read(reader, reads_a_file, allow_superuser=False)
    assert frames["clients"]["clinic_id"].isna().all()  # no FILE: LOAD_FILE reads nothing
    assert len(read(reader, allow_superuser=False)["appointments"]) == source.count(
        "appointments")


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])  # nothing listens here once the socket closes


def test_a_server_that_does_not_answer_is_unavailable_and_transient() -> None:
    url = f"mysql://nobody@127.0.0.1:{closed_port()}/clinic"
    with pytest.raises(extract.SourceUnavailable) as caught:
        read(url)
    assert caught.value.transient
    assert str(caught.value).startswith(
        "the clinic database could not be read: Can't connect to")
    assert str(caught.value).endswith("(error 2003)")


def test_a_connection_lost_mid_read_is_unavailable(
        source: Source, monkeypatch: pytest.MonkeyPatch) -> None:
    """The DBA's KILL (or a dropped network) while a table streams: whatever the socket
    still held is read, then the read fails, as one the nightly job retries."""
    real = bulk._chunk_table
    database = source.engine.url.database
    kills: list[int] = []

    def killed(rows: Sequence[Any], *args: Any) -> pa.Table:
        if not kills:
            admin = mariadb.connect()
            try:
                with admin.cursor() as cursor:
                    cursor.execute("SELECT id FROM information_schema.processlist "
                                   "WHERE db = %s AND id <> CONNECTION_ID()", (database,))
                    for (session,) in cursor.fetchall():
                        cursor.execute(f"KILL {int(session)}")
                        kills.append(int(session))
            finally:
                admin.close()
        return real(rows, *args)

    monkeypatch.setattr(bulk, "STREAM_ROWS", 10)
    monkeypatch.setattr(bulk, "_chunk_table", killed)
    with pytest.raises(extract.SourceUnavailable) as caught:
        read(source.url)
    assert kills and caught.value.transient
    assert "Lost connection" in str(caught.value) or "gone away" in str(caught.value)


@pytest.mark.parametrize("code", [2003, 2006, 2013, 1205, 1213, 4031, 1969])
def test_unreachable_lost_or_timed_out_is_transient(code: int) -> None:
    assert errors.is_transient(pymysql.err.OperationalError(code, "gone"))


def failure(url: str, *statements: str) -> DBAPIError:
    engine = store_engine(url)  # writable: a clinic's errors on writes are classified too
    try:
        with engine.connect() as conn, pytest.raises(DBAPIError) as caught:
            for statement in statements:
                conn.execute(text(statement))
        return caught.value
    finally:
        engine.dispose()


@pytest.mark.parametrize(("sql", "said"), [
    ("SELECT admited_on FROM clients",
     r"^Unknown column 'admited_on' in '[\w ]+' \(error 1054\)$"),
    ("SELECT 1 FROM no_such_table", r"^Table '\w+\.no_such_table' doesn't exist \(error 1146\)$"),
    ("SELEKT 1", r"^You have an error in your SQL syntax.* near 'SELEKT 1' .*\(error 1064\)$"),
])
def test_a_refused_query_is_permanent_and_names_what_it_refused(
        source: Source, sql: str, said: str) -> None:
    exc = failure(source.url, sql)
    assert not errors.is_transient(exc)
    assert re.match(said, errors.describe(exc)), errors.describe(exc)


def test_a_value_the_server_quotes_is_masked(mariadb_url: str) -> None:
    exc = failure(mariadb_url, "CREATE TABLE born (d DATE)",
                  f"INSERT INTO born VALUES ('{SECRET}')")
    assert SECRET in str(exc)
    assert not errors.is_transient(exc)
    said = errors.safe_message(exc)
    assert SECRET not in said
    assert said.startswith('Incorrect date value: "…" for column ') and "(error 1292)" in said


def test_a_lock_wait_timeout_is_transient(mariadb_url: str) -> None:
    holder = mariadb.connect(mariadb_url, autocommit=False)
    try:
        with holder.cursor() as cursor:
            cursor.execute("CREATE TABLE held (id INT PRIMARY KEY)")
            cursor.execute("INSERT INTO held VALUES (1)")
            holder.commit()
            cursor.execute("SELECT id FROM held WHERE id = 1 FOR UPDATE")
        exc = failure(mariadb_url, "SET SESSION innodb_lock_wait_timeout = 1",
                      "UPDATE held SET id = 2 WHERE id = 1")
    finally:
        holder.close()
    assert (errors.mysql_error(exc) or (0, ""))[0] == 1205
    assert errors.is_transient(exc)


def run(src: Source, tmp_path: Path, name: str) -> dict[str, list[tuple[Any, ...]]]:
    store_db = store_engine(f"sqlite:///{tmp_path / f'{name}.db'}")
    engine = source_engine(src.url)
    try:
        run_etl(engine, store_db, AS_OF, EtlSettings(allow_superuser_source=True), full=True)
        return stored(store_db, AS_OF)
    finally:
        engine.dispose()
        store_db.dispose()


@pytest.mark.slow
def test_the_copy_is_the_one_a_sqlite_source_of_the_same_clinic_gives(
        mariadb_url: str, tmp_path: Path) -> None:
    """The driver's values (dates as dates, flags as integers) go through the same checks
    as SQLite's (dates as text) to the same copy, quarantine and features."""
    maria = Source.synthetic(mariadb_url, n_clients=150, seed=7)
    lite = Source.synthetic(f"sqlite:///{tmp_path / 'clinic.db'}", n_clients=150, seed=7)
    try:
        from_maria, from_lite = run(maria, tmp_path, "maria"), run(lite, tmp_path, "lite")
    finally:
        maria.dispose()
        lite.dispose()
    assert sum(len(rows) for rows in from_maria.values()) > 1000
    for table, rows in from_lite.items():
        assert from_maria[table] == rows, table


def test_reads_stream_from_a_server_side_cursor_in_chunks(
        source: Source, monkeypatch: pytest.MonkeyPatch) -> None:
    """No table is ever held as Python row tuples whole: the rows come from an unbuffered
    cursor (PyMySQL's SSCursor) a chunk at a time, each parsed into Arrow before the next
    is fetched."""
    chunks: list[int] = []
    real = bulk._chunk_table

    def counted(rows: Sequence[Any], *args: Any) -> pa.Table:
        chunks.append(len(rows))
        return real(rows, *args)

    monkeypatch.setattr(bulk, "STREAM_ROWS", 50)
    monkeypatch.setattr(bulk, "_chunk_table", counted)
    engine = source_engine(source.url)
    cursors: list[type] = []

    @event.listens_for(engine, "before_cursor_execute")
    def note(_conn: Any, cursor: Any, statement: str, *_args: Any) -> None:
        if statement.startswith("SELECT JSON_OBJECT("):
            cursors.append(type(cursor))

    try:
        frames = extract.read_source(engine, SourceMapping(), EVERYTHING,
                                     allow_superuser=True)[0]
    finally:
        engine.dispose()
    rows = sum(len(f) for f in frames.values())
    assert cursors and all(issubclass(c, pymysql.cursors.SSCursor) for c in cursors)
    assert len(cursors) == len(frames)
    assert max(chunks) == 50 and sum(chunks) == rows
    assert len(chunks) >= rows // 50
    slots = frames["appointments"]
    assert len(slots) == source.count("appointments") > 200
    # Read as PostgreSQL's text is: repeated codes as categoricals, times parsed, ids text.
    assert isinstance(slots["status"].dtype, pd.CategoricalDtype)
    assert pd.api.types.is_datetime64_dtype(slots["scheduled_at"])
    assert slots["appointment_id"].map(type).eq(str).all()


def test_an_incremental_read_gets_changed_slots_and_those_of_changed_episodes_each_once(
        mariadb_url: str) -> None:
    """MariaDB reads the two conditions as two selects (one index each, not a scan of every
    slot); a slot meeting both comes once, and an exact duplicate row still comes twice,
    for the checks to hold."""
    src = Source.loose(mariadb_url, n_clients=40)
    try:
        episode, other = (src.rows("episodes", {"episode_id": e})[0]
                          for e in src.open_episode_ids()[:2])
        src.update("episodes", {"episode_id": episode["episode_id"]}, updated_at=LATER)
        src.insert("appointments", [appointment("NEW-1", other, LATER, stamp=LATER)] * 2
                   + [appointment("NEW-2", episode, LATER, stamp=LATER)])
        marks: dict[str, datetime | None] = {t: LATER - timedelta(minutes=1)
                                             for t in extract.INCREMENTAL}
        engine = source_engine(src.url)
        statements: list[str] = []
        event.listen(engine, "before_cursor_execute",
                     lambda _c, _cur, statement, *_a: statements.append(statement))
        try:
            slots = extract.read_source(engine, SourceMapping(), marks,
                                        allow_superuser=True)[0]["appointments"]
        finally:
            engine.dispose()
        assert sum("UNION ALL" in s for s in statements) == 1
        ids = slots["appointment_id"].astype(str)
        of_episode = {r["appointment_id"] for r in src.rows("appointments")
                      if r["episode_id"] == episode["episode_id"]}
        assert sorted(ids) == sorted(["NEW-1", "NEW-1", *of_episode])
        assert "NEW-2" in of_episode and len(of_episode) > 2
    finally:
        src.dispose()
