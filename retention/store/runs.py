"""Runs: every job leaves a row saying what it did or why it failed.

Functions take a connection first and never commit: the caller owns the transaction.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import date, datetime
from typing import Any

from sqlalchemy import Connection, insert, select, update

from retention.clock import utcnow
from retention.store.tables import runs


def start_run(connection: Connection, kind: str, as_of: date | None,
              at: datetime | None = None) -> int:
    """Record that a run began (at ``at``, naive UTC; default now); returns its id."""
    result = connection.execute(
        insert(runs).values(kind=kind, as_of=as_of, started_at=at or utcnow(), status="running")
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


def list_runs(connection: Connection, limit: int = 20) -> list[dict[str, Any]]:
    """The most recent runs, newest first."""
    rows = connection.execute(select(runs).order_by(runs.c.run_id.desc()).limit(limit))
    return [{str(k): v for k, v in r._mapping.items()} for r in rows]
