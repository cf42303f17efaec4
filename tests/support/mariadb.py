"""MariaDB (or MySQL) for tests: the server on this machine, a fresh database per use,
dropped after.

The root conftest registers this module as a plugin, so every test can use them. The
server may be shared: every database is named for this run (a process id and a random
token), only databases made here are ever dropped, and nothing else on the server is
touched.

- ``mariadb_server`` (session): the admin URL of a server that answers, or a skip; with
  ``CI`` set an unreachable server fails the run instead of skipping.
- ``mariadb_url`` (function): a fresh, empty database for one test, dropped after it
  (``mysql+pymysql://root@127.0.0.1:3306/<name>``).
- ``mariadb_databases`` (function): a factory of fresh databases, all dropped after the test.
- ``mariadb_users`` (function): a factory of accounts (``make(*grants) -> url``) with
  the given grants on the test's database, all dropped after the test.
- ``new_database(admin_url)`` / ``drop_database(url)``: for helpers that manage their
  own lifetimes.

The server defaults to ``mysql+pymysql://root@127.0.0.1:3306`` (root by unix-style
trust on this machine); ``RETENTION_TEST_MARIADB_URL`` names another.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Callable, Iterator
from typing import Any

import pymysql
import pytest
from sqlalchemy.engine import make_url

DEFAULT_ADMIN_URL = "mysql+pymysql://root@127.0.0.1:3306"
PREFIX = "retention_test_"
# One token for this test run: its databases are told apart from any other run's.
RUN = f"{os.getpid()}_{secrets.token_hex(3)}"


def admin_url() -> str:
    """The URL of an account on the test server with the right to create databases."""
    return os.environ.get("RETENTION_TEST_MARIADB_URL", DEFAULT_ADMIN_URL)


def connect(url: str | None = None, timeout: int = 5, **kwargs: Any) -> pymysql.Connection:
    """A PyMySQL connection (autocommit) as the account of ``url`` (default: the admin's)."""
    parsed = make_url(url or admin_url())
    args: dict[str, Any] = {
        "host": parsed.host or "127.0.0.1", "port": parsed.port or 3306,
        "user": parsed.username or "root", "password": parsed.password or "",
        "connect_timeout": timeout, "autocommit": True, "charset": "utf8mb4",
    }
    if parsed.database:
        args["database"] = parsed.database
    args.update(kwargs)
    return pymysql.connect(**args)


def server_answers(url: str | None = None, timeout: int = 3) -> str | None:
    """None when the server answers, else the reason it does not."""
    try:
        conn = connect(url, timeout)
        try:
            with conn.cursor() as cursor:
                cursor.execute("SELECT 1")
        finally:
            conn.close()
    except pymysql.Error as exc:
        return str(exc).strip() or type(exc).__name__
    return None


def new_database(admin: str | None = None, label: str = "") -> str:
    """Create an empty database on the server; returns its SQLAlchemy (PyMySQL) URL."""
    admin = admin or admin_url()
    name = f"{PREFIX}{RUN}_{label + '_' if label else ''}{secrets.token_hex(4)}"
    conn = connect(admin)
    try:
        with conn.cursor() as cursor:
            cursor.execute(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4")
    finally:
        conn.close()
    return (make_url(admin).set(drivername="mysql+pymysql", database=name)
            .render_as_string(hide_password=False))


def drop_database(url: str, admin: str | None = None) -> None:
    """Drop a database made by ``new_database``, ending the sessions still using it."""
    name = make_url(url).database or ""
    if not name.startswith(PREFIX):
        raise ValueError(f"{name!r} was not made by new_database; not dropping it")
    conn = connect(admin)
    try:
        with conn.cursor() as cursor:
            # A test's open snapshot would hold the metadata lock DROP DATABASE waits for.
            cursor.execute("SELECT id FROM information_schema.processlist "
                           "WHERE db = %s AND id <> CONNECTION_ID()", (name,))
            for (session,) in cursor.fetchall():
                with contextlib.suppress(pymysql.err.OperationalError):  # ended meanwhile
                    cursor.execute(f"KILL {int(session)}")
            cursor.execute(f"DROP DATABASE IF EXISTS `{name}`")
    finally:
        conn.close()


@pytest.fixture(scope="session")
def mariadb_server() -> str:
    """The admin URL of the test server; skip (or, under CI, fail) when it is down."""
    problem = server_answers()
    if problem is not None:
        message = f"MariaDB at {admin_url()} does not answer: {problem}"
        if os.environ.get("CI"):
            pytest.fail(message + " (CI requires it; .ci/run starts it)", pytrace=False)
        pytest.skip(message)
    return admin_url()


@pytest.fixture
def mariadb_url(mariadb_server: str) -> Iterator[str]:
    """A fresh empty database for one test, dropped after it."""
    url = new_database(mariadb_server)
    try:
        yield url
    finally:
        drop_database(url, mariadb_server)


@pytest.fixture
def mariadb_databases(mariadb_server: str) -> Iterator[Callable[[str], str]]:
    """A factory of fresh databases (``make("label") -> url``), all dropped after the test."""
    made: list[str] = []

    def make(label: str = "") -> str:
        made.append(new_database(mariadb_server, label))
        return made[-1]

    try:
        yield make
    finally:
        for url in made:
            drop_database(url, mariadb_server)


@pytest.fixture
def mariadb_users(mariadb_server: str, mariadb_url: str) -> Iterator[Callable[..., str]]:
    """A factory of accounts: ``make("SELECT ON {db}.*", "FILE ON *.*")`` creates a user
    (a unique name, no password) holding those grants (``{db}``: the test's database) and
    returns ``mariadb_url`` as that user. Every user made is dropped after the test."""
    database = make_url(mariadb_url).database or ""
    made: list[str] = []

    def make(*grants: str) -> str:
        name = f"rt_{secrets.token_hex(6)}"  # MySQL allows 32 characters
        conn = connect(mariadb_server)
        try:
            with conn.cursor() as cursor:
                cursor.execute(f"CREATE USER '{name}'@'%'")
                made.append(name)
                for grant in grants:
                    cursor.execute(f"GRANT {grant.format(db=f'`{database}`')} TO '{name}'@'%'")
        finally:
            conn.close()
        return make_url(mariadb_url).set(username=name).render_as_string(hide_password=False)

    try:
        yield make
    finally:
        conn = connect(mariadb_server)
        try:
            with conn.cursor() as cursor:
                for name in made:
                    cursor.execute(f"DROP USER IF EXISTS '{name}'@'%'")
        finally:
            conn.close()
