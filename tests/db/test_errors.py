"""Database errors classified from real drivers: what a retry can fix, and what may be said."""

from __future__ import annotations

import socket
import sqlite3
from pathlib import Path

import psycopg
import pytest
from sqlalchemy import create_engine, make_url, text
from sqlalchemy.exc import DBAPIError

from retention.db import errors, pg_arrow
from retention.db.engines import store_engine
from tests.support.pg import libpq

SECRET = "Jane Roe 1984-03-07"


def failure(url: str, sql: str) -> DBAPIError:
    engine = store_engine(url)
    try:
        with engine.connect() as conn, pytest.raises(DBAPIError) as caught:
            conn.execute(text(sql))
        return caught.value
    finally:
        engine.dispose()


def test_a_refused_query_is_permanent_and_names_its_column_and_sqlstate(pg_url: str) -> None:
    exc = failure(pg_url, "SELECT no_such_column FROM pg_class")
    assert not errors.is_transient(exc)
    assert errors.describe(exc) == 'column "no_such_column" does not exist (SQLSTATE 42703)'


def test_a_value_the_database_quotes_is_masked_and_the_statement_never_shown(
    pg_url: str,
) -> None:
    exc = failure(pg_url, f"SELECT CAST('{SECRET}' AS integer)")
    assert SECRET in str(exc)  # SQLAlchemy's own text quotes the value and the statement
    said = errors.describe(exc)
    assert not errors.is_transient(exc)
    assert said == 'invalid input syntax for type integer: "…" (SQLSTATE 22P02)'
    assert SECRET not in errors.safe_message(exc)


def test_a_copy_error_keeps_neither_the_field_nor_the_context(pg_url: str) -> None:
    """COPY's CONTEXT quotes the whole field of the row it stopped at."""
    with psycopg.connect(libpq(pg_url)) as conn:
        conn.execute("CREATE TEMP TABLE t (d date)")
        with pytest.raises(psycopg.Error) as caught, conn.cursor().copy(
                "COPY t (d) FROM STDIN") as copy:
            copy.write_row([SECRET])
    assert SECRET in (caught.value.diag.context or "")
    said = errors.describe(caught.value)
    assert SECRET not in said and "…" in said and "22007" in said


def test_a_statement_timeout_is_transient(pg_url: str) -> None:
    engine = store_engine(pg_url, statement_timeout=0.05)
    try:
        with engine.connect() as conn, pytest.raises(DBAPIError) as caught:
            conn.execute(text("SELECT pg_sleep(2)"))
    finally:
        engine.dispose()
    assert errors.is_transient(caught.value)
    assert "57014" in errors.describe(caught.value)


def test_a_server_that_does_not_answer_is_transient() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens here once the socket closes
    engine = create_engine(f"postgresql+psycopg://nobody@127.0.0.1:{port}/none",
                           connect_args={"connect_timeout": 2})
    with pytest.raises(DBAPIError) as caught:
        engine.connect()
    assert errors.is_transient(caught.value)
    assert errors.sqlstate(caught.value) is None


def test_adbc_errors_are_classified_by_their_sqlstate(pg_url: str) -> None:
    connection = pg_arrow.connect(make_url(pg_url))
    try:
        with pytest.raises(pg_arrow.Error) as caught:
            pg_arrow.read(connection, "SELECT missing FROM pg_class")
    finally:
        connection.close()
    assert not errors.is_transient(caught.value)
    assert errors.describe(caught.value).startswith('column "missing" does not exist')


def test_sqlite_errors_name_their_column_or_say_the_database_was_busy(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'x.db'}"
    refused = failure(url, "SELECT no_such_column FROM sqlite_master")
    assert not errors.is_transient(refused)
    assert errors.describe(refused) == "no such column: no_such_column"
    holder = sqlite3.connect(tmp_path / "x.db", isolation_level=None)
    holder.execute("CREATE TABLE t (x integer)")
    holder.execute("BEGIN EXCLUSIVE")
    engine = create_engine(url, connect_args={"timeout": 0.05})
    try:
        with engine.connect() as conn, pytest.raises(DBAPIError) as caught:
            conn.execute(text("INSERT INTO t VALUES (1)"))
    finally:
        engine.dispose()
        holder.close()
    assert errors.is_transient(caught.value)


def test_other_errors_keep_their_words_up_to_the_value() -> None:
    try:
        int(SECRET)
    except ValueError as exc:
        assert errors.safe_message(exc) == "invalid literal for int() with base 10: …"
    assert errors.safe_message(RuntimeError("no 'Jane' here")) == 'no "…" here'
