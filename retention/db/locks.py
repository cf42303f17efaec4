"""Locks across processes: one run of a job at a time, whichever process starts it.

PostgreSQL: a session-level advisory lock held on a connection of its own; the
server releases it if the process dies. SQLite: an exclusive ``flock`` on a file
beside the database, which the operating system releases the same way.
"""

from __future__ import annotations

import fcntl
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import Engine, text


def lock_key(name: str) -> int:
    """The advisory-lock number for a lock name (stable across processes and versions)."""
    return zlib.crc32(f"retention:{name}".encode())


@contextmanager
def try_lock(engine: Engine, name: str) -> Iterator[bool]:
    """Take the lock ``name`` if no one holds it; yields whether it was taken.

    The lock is held until the block ends, and released even if the block fails.
    """
    if engine.dialect.name == "postgresql":
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            got = bool(conn.execute(
                text("SELECT pg_try_advisory_lock(:k)"), {"k": lock_key(name)}
            ).scalar())
            try:
                yield got
            finally:
                if got:
                    conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": lock_key(name)})
        return
    path = lock_file(engine, name)
    if path is None:
        yield True
        return
    with path.open("a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@contextmanager
def file_lock(path: Path | None) -> Iterator[None]:
    """Wait for an exclusive lock on ``path`` (no-op for None)."""
    if path is None:
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def lock_file(engine: Engine, name: str) -> Path | None:
    """The lock file for ``name`` beside a SQLite database file (None in memory)."""
    database = engine.url.database
    if engine.dialect.name != "sqlite" or not database or database == ":memory:":
        return None
    if database.startswith("file:"):
        database = database.removeprefix("file:").split("?")[0]
    return Path(database).resolve().with_name(Path(database).name + f".{name}.lock")
