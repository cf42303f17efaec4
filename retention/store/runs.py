"""Runs: every job leaves a row saying what it did or why it failed.

A run's process holds a lock on its run from before the row is committed until it
ends (``retention.db.locks.hold_run``); a row still ``running`` whose lock no one
holds belongs to a process that was killed or crashed, and the next run to start
marks it failed. Error texts name ids, tables and rules, never a source value.

Functions take a connection first and never commit: the caller owns the transaction.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import date, datetime
from typing import Any

from sqlalchemy import Connection, insert, select, update

from retention.clock import utcnow
from retention.db import locks
from retention.store.tables import runs


def start_run(connection: Connection, kind: str, as_of: date | None,
              at: datetime | None = None, *, host: str | None = None,
              pid: int | None = None) -> int:
    """Record that a run began (at ``at``, naive UTC; default now) on ``host`` in process
    ``pid``; returns its id."""
    result = connection.execute(
        insert(runs).values(kind=kind, as_of=as_of, started_at=at or utcnow(), status="running",
                            host=host, pid=pid)
    )
    return int(result.inserted_primary_key[0])  # type: ignore[index]


def finish_run(
    connection: Connection,
    run_id: int,
    status: str,
    *,
    rows_read: int | None = None,
    rows_changed: int | None = None,
    rows_quarantined: int | None = None,
    model_version: str | None = None,
    error: str | None = None,
    detail: Mapping[str, Any] | None = None,
    at: datetime | None = None,
) -> None:
    """Record how a run ended (at ``at``, naive UTC; default now)."""
    connection.execute(
        update(runs)
        .where(runs.c.run_id == run_id)
        .values(
            finished_at=at or utcnow(),
            status=status,
            rows_read=rows_read,
            rows_changed=rows_changed,
            rows_quarantined=rows_quarantined,
            model_version=model_version,
            error=error,
            detail=json.dumps(detail, sort_keys=True, default=str) if detail else None,
        )
    )


def dead_run_error(host: str | None, pid: int | None) -> str:
    """The error a dead run is marked with: where it ran, never what it read."""
    where = f" (host {host}, pid {pid})" if host else ""
    return (f"DeadRun: the process running it{where} ended before the run finished "
            "(killed or crashed); marked failed when a later run started")


def fail_dead_runs(connection: Connection, at: datetime) -> list[int]:
    """Mark failed every run still ``running`` whose process is gone; returns their ids."""
    rows = connection.execute(
        select(runs.c.run_id, runs.c.host, runs.c.pid).where(runs.c.status == "running")
    ).fetchall()
    alive = locks.live_runs(connection, [r.run_id for r in rows])
    dead = [r for r in rows if r.run_id not in alive]
    for r in dead:
        connection.execute(
            update(runs).where(runs.c.run_id == r.run_id, runs.c.status == "running")
            .values(status="failed", finished_at=at, error=dead_run_error(r.host, r.pid)))
        locks.forget_run(connection, r.run_id)
    return [r.run_id for r in dead]


def list_runs(connection: Connection, limit: int = 20) -> list[dict[str, Any]]:
    """The most recent runs, newest first."""
    rows = connection.execute(select(runs).order_by(runs.c.run_id.desc()).limit(limit))
    return [{str(k): v for k, v in r._mapping.items()} for r in rows]
