"""Locks across processes: one run of a job at a time, and whether a run's process lives.

PostgreSQL: a session-level advisory lock held on a connection of its own; the
server releases it if the process dies. SQLite: an exclusive ``flock`` on a file
beside the database, which the operating system releases the same way. Because the
server or the kernel lets go of a dead process's locks, and never of a live one's,
a lock says more than a host and pid could (a pid is reused; a host may run several
processes, or be another machine).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
import zlib
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

from sqlalchemy import Connection, Engine, text

# The jobs' locks. ``NIGHTLY``: one nightly run per slot (a second process stands down).
# ``RETRAIN``: one weekly retrain at a time. ``ETL``: one ETL run writing the store's
# copy at a time, whichever job or command started it (others wait their turn).
NIGHTLY = "nightly"
RETRAIN = "retrain"
ETL = "etl"

# Runs are locked by id in PostgreSQL's two-key advisory space, which never meets the
# one-key space of the locks above; this is the first key.
RUN_CLASS = zlib.crc32(b"retention:run") & 0x7FFFFFFF


def lock_key(name: str) -> int:
    """The advisory-lock number for a lock name (stable across processes and versions)."""
    return zlib.crc32(f"retention:{name}".encode())


@contextmanager
def try_lock(engine: Engine, name: str, wait_seconds: float = 0.0,
             poll_seconds: float = 1.0) -> Iterator[bool]:
    """Take the lock ``name``, waiting up to ``wait_seconds`` while someone holds it;
    yields whether it was taken.

    The lock is held until the block ends, and released even if the block fails.
    """
    deadline = time.monotonic() + wait_seconds
    if engine.dialect.name == "postgresql":
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            while True:
                got = bool(conn.execute(
                    text("SELECT pg_try_advisory_lock(:k)"), {"k": lock_key(name)}
                ).scalar())
                if got or time.monotonic() >= deadline:
                    break
                time.sleep(poll_seconds)
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
    path.parent.mkdir(parents=True, exist_ok=True)  # a store not created yet (the demo's)
    with path.open("a") as handle:
        while True:
            got = _try_flock(handle)
            if got or time.monotonic() >= deadline:
                break
            time.sleep(poll_seconds)
        if not got:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _try_flock(handle: IO[str]) -> bool:
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


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


# --- a run's liveness ------------------------------------------------------------------


def _run_file(connection: Connection, run_id: int) -> Path | None:
    return lock_file(connection.engine, f"run-{run_id}")


class RunLock:
    """Held by the process running a run, from before its row is committed until it ends."""

    def __init__(self, connection: Connection, run_id: int) -> None:
        self.run_id = run_id
        self._handle: IO[str] | None = None
        self._path = _run_file(connection, run_id)
        if connection.dialect.name == "postgresql":
            # Session-level: taken inside the run row's transaction, it outlives the commit.
            connection.execute(text("SELECT pg_advisory_lock(:c, :r)"),
                               {"c": RUN_CLASS, "r": run_id})
        elif self._path is not None:
            self._handle = self._path.open("a")
            fcntl.flock(self._handle, fcntl.LOCK_EX)

    def release(self, connection: Connection) -> None:
        """Let go of the lock (on the connection that took it, on PostgreSQL)."""
        if connection.dialect.name == "postgresql":
            # A connection lost with the server has already let go.
            with contextlib.suppress(Exception):
                connection.execute(text("SELECT pg_advisory_unlock(:c, :r)"),
                                   {"c": RUN_CLASS, "r": self.run_id})
        if self._handle is not None:
            if self._path is not None:
                self._path.unlink(missing_ok=True)
            fcntl.flock(self._handle, fcntl.LOCK_UN)
            self._handle.close()
            self._handle = None


def hold_run(connection: Connection, run_id: int) -> RunLock:
    """Take run ``run_id``'s lock on ``connection``, which must stay open while it runs."""
    return RunLock(connection, run_id)


def live_runs(connection: Connection, run_ids: Iterable[int]) -> set[int]:
    """Which of ``run_ids`` a living process holds the lock of.

    A run whose lock no one holds has no process: it was killed, crashed, or started
    by a version of the service that took no lock. Where a lock cannot be seen (a
    SQLite database in memory), every run counts as alive.
    """
    ids = set(run_ids)
    if not ids:
        return set()
    if connection.dialect.name == "postgresql":
        held = connection.execute(text(
            "SELECT CAST(objid AS bigint) FROM pg_locks WHERE locktype = 'advisory' "
            "AND granted AND objsubid = 2 AND CAST(classid AS bigint) = :c "
            "AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
        ), {"c": RUN_CLASS}).scalars()
        return ids & {int(r) for r in held}
    if _run_file(connection, 0) is None:
        return ids
    return {r for r in ids if _file_held(_run_file(connection, r))}


def _file_held(path: Path | None) -> bool:
    """Whether a process holds ``path``'s lock; read-only, so the API's account can ask too
    (a file it may not open at all is taken for held: a run is never failed on a guess)."""
    if path is None:
        return True
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return False
    except PermissionError:
        return True
    with os.fdopen(fd, "r") as handle:
        if _try_flock(handle):
            fcntl.flock(handle, fcntl.LOCK_UN)
            return False
        return True


def forget_run(connection: Connection, run_id: int) -> None:
    """Remove a dead run's lock file (nothing to do on PostgreSQL)."""
    path = _run_file(connection, run_id)
    if path is not None:
        path.unlink(missing_ok=True)
