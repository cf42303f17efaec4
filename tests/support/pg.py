"""PostgreSQL for tests: the server on this machine, a fresh database per use, dropped after.

The root conftest registers this module as a plugin, so every test can use them. The
server may be shared: every database is named for this run (a random token, not a
process id), only databases this checkout created are ever dropped, and nothing
else on the server is touched.

- ``pg_server`` (session): the admin URL of a server that answers, or a skip; with
  ``CI`` set an unreachable server fails the run instead of skipping.
- ``pg_session_db`` (session): one database created for the test session, dropped at
  its end.
- ``pg_url`` (function): a fresh, empty database for one test, dropped after it.
- ``pg_databases`` (function): a factory of fresh databases, all dropped after the test.
- ``store_url`` (function): parametrised over ``sqlite`` and ``postgresql``; an empty
  store database of either kind.
- ``new_database(admin_url)`` / ``drop_database(url)``: for helpers that manage their
  own lifetimes.

A run killed before it cleaned up leaves its databases listed in a ledger in
``test-artifacts/``; the next run drops those (and only those) that no session uses.
The server defaults to ``postgresql://postgres@127.0.0.1:5432/postgres`` (trust auth on
this machine); ``RETENTION_TEST_PG_URL`` names another.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import sql
from sqlalchemy.engine import make_url

DEFAULT_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
PREFIX = "retention_test_"
# One token for this test run: its databases are told apart from any other run's.
RUN = secrets.token_hex(4)
LEDGER = Path(__file__).resolve().parents[2] / "test-artifacts" / "pg-databases.txt"


def admin_url() -> str:
    """The URL of a database on the test server with the right to create databases."""
    return os.environ.get("RETENTION_TEST_PG_URL", DEFAULT_ADMIN_URL)


def libpq(url: str) -> str:
    """A SQLAlchemy URL (maybe ``postgresql+psycopg://``) as a libpq connection string."""
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def server_answers(url: str | None = None, timeout: int = 3) -> str | None:
    """None when the server answers, else the reason it does not."""
    try:
        with psycopg.connect(libpq(url or admin_url()), connect_timeout=timeout) as conn:
            conn.execute("SELECT 1")
    except psycopg.Error as exc:
        return str(exc).strip() or type(exc).__name__
    return None


def new_database(admin: str | None = None, label: str = "") -> str:
    """Create an empty database on the server; returns its SQLAlchemy (psycopg 3) URL."""
    admin = admin or admin_url()
    name = f"{PREFIX}{RUN}_{label + '_' if label else ''}{secrets.token_hex(4)}"
    LEDGER.parent.mkdir(parents=True, exist_ok=True)
    with LEDGER.open("a") as ledger:  # before it exists: a kill between leaves no stranger
        ledger.write(f"{admin}\t{name}\n")
    with psycopg.connect(libpq(admin), autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return (
        make_url(admin)
        .set(drivername="postgresql+psycopg", database=name)
        .render_as_string(hide_password=False)
    )


def drop_database(url: str, admin: str | None = None) -> None:
    """Drop a database made by ``new_database``, ending the sessions still connected to it."""
    name = make_url(url).database or ""
    if not name.startswith(PREFIX):
        raise ValueError(f"{name!r} was not made by new_database; not dropping it")
    with psycopg.connect(libpq(admin or admin_url()), autocommit=True) as conn:
        conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = %s AND pid <> pg_backend_pid()",
            (name,),
        )
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(name)))


def drop_leftovers() -> None:
    """Drop the databases earlier runs of this checkout made and did not drop (killed runs).

    Only names in this checkout's ledger, and only those no session is using: a run
    still going in another process keeps its databases.
    """
    if not LEDGER.exists():
        return
    kept = []
    for line in LEDGER.read_text().splitlines():
        admin, _, name = line.partition("\t")
        if not name.startswith(PREFIX) or name.startswith(f"{PREFIX}{RUN}_"):
            kept.append(line)
            continue
        try:
            with psycopg.connect(libpq(admin), autocommit=True, connect_timeout=3) as conn:
                busy = conn.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = %s",
                                    (name,)).fetchone()
                if busy and busy[0]:
                    kept.append(line)
                    continue
                conn.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(name)))
        except psycopg.Error:
            kept.append(line)  # its server is not here now: try again next time
    LEDGER.write_text("".join(f"{line}\n" for line in kept))


@pytest.fixture(scope="session")
def pg_server() -> str:
    """The admin URL of the test server; skip (or, under CI, fail) when it is down."""
    problem = server_answers()
    if problem is not None:
        message = f"PostgreSQL at {admin_url()} does not answer: {problem}"
        if os.environ.get("CI"):
            pytest.fail(message + " (CI requires it; .ci/run starts it)", pytrace=False)
        pytest.skip(message)
    drop_leftovers()
    return admin_url()


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
