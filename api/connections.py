"""Each request's store connection: held by its worker thread on PostgreSQL, pooled elsewhere.

Checking a pooled connection out and back in, and switching it to autocommit, cost
about 50 microseconds of CPU on every request (measured inside a cached list
request: 57-63 against 10 for taking the held one). On
PostgreSQL the API runs each statement as its own transaction (autocommit), so a
connection holds nothing between requests and can stay with its thread. It is
treated as the pool treats one: pinged before use after sitting idle longer than
``db.IDLE_PING_SECONDS`` (a database restart overnight costs no request an error)
and replaced once it has failed. SQLite connections go back to the pool after each
request, so no read transaction outlives its request.
"""

from __future__ import annotations

import threading
import time

from sqlalchemy import Connection, Engine

from retention.db import engines as db


class RequestConnections:
    """One per app, so one per gunicorn worker (created after the fork)."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._held = engine.dialect.name == "postgresql"
        self._local = threading.local()

    def acquire(self) -> Connection:
        if not self._held:
            return self._engine.connect()
        conn: Connection | None = getattr(self._local, "conn", None)
        if conn is not None and (conn.invalidated or conn.closed or not self._usable(conn)):
            conn.close()
            conn = None
        if conn is None:
            conn = self._engine.connect().execution_options(isolation_level="AUTOCOMMIT")
            self._local.conn = conn
        return conn

    def release(self, conn: Connection) -> None:
        if not self._held:
            conn.close()
            return
        if conn.in_transaction() and not conn.invalidated:
            conn.rollback()  # ends what SQLAlchemy began; in autocommit nothing is open
        self._local.released_at = time.monotonic()

    def _usable(self, conn: Connection) -> bool:
        """Alive, as far as one knows without asking, or as a ping says after a pause."""
        released = getattr(self._local, "released_at", None)
        if released is not None and time.monotonic() - released < db.IDLE_PING_SECONDS:
            return True
        try:
            dbapi_connection = conn.connection.dbapi_connection
            alive = dbapi_connection is not None and bool(
                self._engine.dialect.do_ping(dbapi_connection))
        except Exception:
            alive = False
        if not alive:
            conn.invalidate()  # its pooled connection is discarded, not handed out again
        return alive
