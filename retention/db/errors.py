"""What a database error means for a run: whether trying again can help, and what may be
said of it.

Every record is a substance-use treatment record (42 CFR Part 2), and a run's error text
is stored and shown (``retention runs``, the API). Databases quote values freely
(``invalid input syntax for type date: "..."``; PostgreSQL's COPY context quotes the
whole field) and SQLAlchemy appends the statement and its parameters, so ``describe``
keeps the database's primary message only, with quoted values masked, and its SQLSTATE
(MariaDB's and MySQL's error number, which PyMySQL gives instead).
"""

from __future__ import annotations

import re
import sqlite3

import psycopg
import pymysql
from sqlalchemy.exc import DBAPIError, DisconnectionError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from retention.db import pg_arrow

# SQLSTATE classes a later try may not meet: connection lost or refused (08), a
# transaction rolled back for concurrency (40), resources (53), a lock not available
# (55), the server shutting down or a statement timeout (57), I/O (58), internal (XX).
TRANSIENT_CLASSES = frozenset({"08", "40", "53", "55", "57", "58", "XX"})
# Classes whose messages quote names and SQL text from the query, never a row's values:
# syntax or access (42), a feature not supported (0A), a read-only transaction (25).
NAMING_CLASSES = frozenset({"42", "0A", "25"})
# SQLite result codes a later try may not meet (extended codes start with these).
TRANSIENT_SQLITE = ("SQLITE_BUSY", "SQLITE_LOCKED", "SQLITE_IOERR", "SQLITE_CANTOPEN",
                    "SQLITE_FULL", "SQLITE_NOMEM", "SQLITE_PROTOCOL", "SQLITE_INTERRUPT")
# MariaDB and MySQL error numbers a later try may not meet: too many connections (1040),
# shutdown (1053), network errors (1158-1161), a lock wait timeout or deadlock (1205, 1213),
# a query interrupted or killed (1317, 1927), a statement timeout (MariaDB 1969, MySQL
# 3024), the client unable to connect or the connection lost (2002-2013, 2055), an idle
# session ended by the server (4031).
TRANSIENT_MYSQL = frozenset({1040, 1053, 1158, 1159, 1160, 1161, 1205, 1213, 1317, 1927,
                             1969, 3024, 2002, 2003, 2005, 2006, 2013, 2055, 4031})
# Numbers whose messages quote names and SQL text, never a row's values: access denied
# (1044, 1045, 1142, 1143, 1227), unknown database, column or table (1049, 1054, 1146, 1109),
# an ambiguous column (1052), a syntax error (1064), a function that does not exist
# (1305), a read-only transaction (1792).
NAMING_MYSQL = frozenset({1044, 1045, 1049, 1052, 1054, 1064, 1109, 1142, 1143, 1146, 1227,
                          1305, 1792})
DRIVER_ERRORS = (DBAPIError, psycopg.Error, pg_arrow.Error, sqlite3.Error, pymysql.MySQLError)
MASK = '"…"'
_QUOTED = re.compile(r"\"[^\"]*\"|'[^']*'")
_ADBC_PREFIX = re.compile(r"^.*?ERROR:\s+")


def is_database_error(exc: BaseException) -> bool:
    return isinstance(exc, DRIVER_ERRORS)


def _driver(exc: BaseException) -> BaseException:
    """The driver's own exception under SQLAlchemy's wrapper."""
    orig = getattr(exc, "orig", None) if isinstance(exc, DBAPIError) else None
    return orig if isinstance(orig, BaseException) else exc


def mysql_error(exc: BaseException) -> tuple[int, str] | None:
    """MariaDB's or MySQL's error number and message, from PyMySQL; None for other drivers."""
    inner = _driver(exc)
    if not isinstance(inner, pymysql.MySQLError):
        return None
    args = inner.args
    if len(args) >= 2 and isinstance(args[0], int):
        return args[0], str(args[1])
    return None


def sqlstate(exc: BaseException) -> str | None:
    """PostgreSQL's SQLSTATE, or SQLite's result-code name; None when the server gave none."""
    inner = _driver(exc)
    if isinstance(inner, sqlite3.Error):
        return getattr(inner, "sqlite_errorname", None)
    state = getattr(inner, "sqlstate", None)
    return str(state) if state else None


def is_transient(exc: BaseException) -> bool:
    """Whether the same work may succeed later: the database was unreachable, busy or
    timed out, rather than refusing the statement itself."""
    numbered = mysql_error(exc)
    if numbered is not None and numbered[0]:
        # By number: PyMySQL's SQLSTATE is mostly the catch-all HY000.
        return numbered[0] in TRANSIENT_MYSQL
    state = sqlstate(exc)
    if state is not None:
        if state.startswith("SQLITE"):
            return state.startswith(TRANSIENT_SQLITE)
        return state[:2] in TRANSIENT_CLASSES
    if isinstance(exc, DBAPIError) and exc.connection_invalidated:
        return True
    inner = _driver(exc)
    if isinstance(exc, OperationalError | InterfaceError | DisconnectionError | PoolTimeout):
        return True
    # No verdict from a server: the connection failed or dropped before one came.
    return isinstance(inner, psycopg.OperationalError | psycopg.InterfaceError
                      | pymysql.OperationalError | pymysql.InterfaceError
                      | pg_arrow.Error | OSError)


def describe(exc: BaseException) -> str:
    """The database's primary message with quoted values masked, and its SQLSTATE.

    Never the DETAIL, CONTEXT, the statement or its parameters. Quoted text is kept
    only where the database quotes names (syntax and access errors, SQLite's SQL
    errors) or reports a connection or server state.
    """
    numbered = mysql_error(exc)
    if numbered is not None:
        code, message = numbered
        lines = message.strip().splitlines() or [type(_driver(exc)).__name__]
        message = lines[0][:300]
        if not (code in NAMING_MYSQL or is_transient(exc)):
            message = mask(message)
        return f"{message} (error {code})" if code else message
    inner = _driver(exc)
    message = _primary(inner)
    state = sqlstate(exc)
    names_only = state is not None and (state[:2] in NAMING_CLASSES or state == "SQLITE_ERROR")
    if not (names_only or is_transient(exc)):
        message = mask(message)
    return f"{message} (SQLSTATE {state})" if state and not state.startswith("SQLITE") \
        else message


def _primary(inner: BaseException) -> str:
    if isinstance(inner, psycopg.Error) and inner.diag.message_primary:
        return inner.diag.message_primary
    details = dict(getattr(inner, "details", None) or [])
    primary = details.get(b"PG_DIAG_MESSAGE_PRIMARY")
    if isinstance(primary, bytes):
        return primary.decode(errors="replace")
    lines = str(inner).strip().splitlines() or [type(inner).__name__]
    line = lines[0]
    if isinstance(inner, pg_arrow.Error):  # "NOT_FOUND: [libpq] ... ERROR:  message"
        line = _ADBC_PREFIX.sub("", line)
    return line.strip()[:300]


def mask(text: str) -> str:
    """``text`` with every quoted part replaced: it may hold a row's value."""
    return _QUOTED.sub(MASK, text)


def safe_message(exc: BaseException) -> str:
    """A message for an error that is not the service's own: the database's, described,
    or the first line of any other up to its first ": " (where Python and libraries put
    the offending value), quoted parts masked."""
    if is_database_error(exc):
        return describe(exc)
    lines = str(exc).strip().splitlines()
    if not lines:
        return ""
    head, sep, _ = lines[0].partition(": ")
    return mask(head) + (": …" if sep else "")
