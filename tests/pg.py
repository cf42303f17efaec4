"""PostgreSQL for tests: the server on this machine, a fresh database per use, dropped after.

The root conftest registers this module as a plugin, so every test can use them.

- ``pg_server`` (session): the admin URL of a server that answers, or a skip; with
  ``CI`` set an unreachable server fails the run instead of skipping.
- ``pg_session_db`` (session): one database created for the test session, dropped at
  its end.
- ``pg_url`` (function): a fresh, empty database for one test, dropped after it.
- ``pg_databases`` (function): a factory of fresh databases, all dropped after the test.
- ``store_url`` (function): parametrised over ``sqlite`` and ``postgresql``; an empty
  store database of either kind.
- ``new_database(admin_url)`` / ``drop_database(admin_url, name)``: for helpers that
  manage their own lifetimes (benchmarks, other fixtures).

The server defaults to ``postgresql://postgres@127.0.0.1:5432/postgres`` (trust auth on
this machine); ``RETENTION_TEST_PG_URL`` names another.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import sql
from sqlalchemy.engine import make_url

DEFAULT_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
PREFIX = "retention_test_"


def admin_url() -> str:
    """The URL of a database on the test server with the right to create databases."""
    return os.environ.get("RETENTION_TEST_PG_URL", DEFAULT_ADMIN_URL)


def _libpq(url: str) -> str:
    """A SQLAlchemy URL (maybe ``postgresql+psycopg://``) as a libpq connection string."""
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def server_answers(url: str | None = None, timeout: int = 3) -> str | None:
    """None when the server answers, else the reason it does not."""
    try:
        with psycopg.connect(_libpq(url or admin_url()), connect_timeout=timeout) as conn:
            conn.execute("SELECT 1")
    except psycopg.Error as exc:
        return str(exc).strip() or type(exc).__name__
    return None


def new_database(admin: str | None = None, label: str = "") -> str:
    """Create an empty database on the server; returns its SQLAlchemy (psycopg 3) URL."""
    admin = admin or admin_url()
    name = f"{PREFIX}{label + '_' if label else ''}{os.getpid()}_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(_libpq(admin), autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return (
        make_url(admin)
        .set(drivername="postgresql+psycopg", database=name)
        .render_as_string(hide_password=False)
    )


def drop_database(url: str, admin: str | None = None) -> None:
    """Drop a database made by ``new_database``, ending any session still connected to it."""
    name = make_url(url).database or ""
    with psycopg.connect(_libpq(admin or admin_url()), autocommit=True) as conn:
        conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = %s AND pid <> pg_backend_pid()",
            (name,),
        )
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(name)))


@pytest.fixture(scope="session")
def pg_server() -> str:
    """The admin URL of the test server; skip (or, under CI, fail) when it is down."""
    problem = server_answers()
    if problem is not None:
        message = f"PostgreSQL at {admin_url()} does not answer: {problem}"
        if os.environ.get("CI"):
            pytest.fail(message + " (CI requires it; .ci/run starts it)", pytrace=False)
        pytest.skip(message)
    drop_orphans(admin_url())
    return admin_url()


def drop_orphans(admin: str) -> None:
    """Drop test databases left by test processes that died before cleaning up."""
    with psycopg.connect(_libpq(admin), autocommit=True) as conn:
        names = [r[0] for r in conn.execute(
            "SELECT datname FROM pg_database WHERE datname LIKE %s", (PREFIX + "%",))]
    for name in names:
        pid = next((part for part in name.removeprefix(PREFIX).split("_") if part.isdigit()),
                   None)
        if pid is not None and not Path(f"/proc/{pid}").exists():
            drop_database(make_url(admin).set(database=name).render_as_string(
                hide_password=False), admin)


@pytest.fixture(scope="session")
def pg_session_db(pg_server: str) -> Iterator[str]:
    """One database for the whole test session, dropped when it ends."""
    url = new_database(pg_server, "session")
    try:
        yield url
    finally:
        drop_database(url, pg_server)


@pytest.fixture
def pg_url(pg_server: str) -> Iterator[str]:
    """A fresh empty database for one test, dropped after it."""
    url = new_database(pg_server)
    try:
        yield url
    finally:
        drop_database(url, pg_server)


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty store database of each kind the service supports."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'store.db'}"
        return
    server = request.getfixturevalue("pg_server")
    url = new_database(server, "store")
    try:
        yield url
    finally:
        drop_database(url, server)


@pytest.fixture
def pg_databases(pg_server: str) -> Iterator[Callable[[str], str]]:
    """A factory of fresh databases (``make("label") -> url``), all dropped after the test."""
    made: list[str] = []

    def make(label: str = "") -> str:
        made.append(new_database(pg_server, label))
        return made[-1]

    try:
        yield make
    finally:
        for url in made:
            drop_database(url, pg_server)
