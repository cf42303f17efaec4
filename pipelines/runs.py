"""Recording runs: every job leaves a row saying what it did or why it failed."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import date
from typing import Any

from sqlalchemy import Engine

from retention.clock import Clock, SystemClock
from retention.store import schema
from retention.store.runs import finish_run, start_run

log = logging.getLogger(__name__)


@dataclass
class RunRecord:
    """What a running job reports back to its run row."""

    run_id: int
    rows_read: int | None = None
    rows_changed: int | None = None
    rows_quarantined: int | None = None
    model_version: str | None = None
    detail: dict[str, Any] = field(default_factory=dict)

    def stopwatch(self) -> Stopwatch:
        """A stopwatch whose laps go into this run's detail, under "seconds"."""
        return Stopwatch(self.detail.setdefault("seconds", {}))


class Stopwatch:
    """Seconds spent in each stage of a run, kept in the run's detail."""

    def __init__(self, laps: dict[str, float]) -> None:
        self.laps = laps
        self._last = time.perf_counter()

    def lap(self, stage: str) -> None:
        now = time.perf_counter()
        self.laps[stage] = round(self.laps.get(stage, 0.0) + now - self._last, 3)
        self._last = now


@contextmanager
def recorded_run(store_db: Engine, kind: str, as_of: date | None,
                 clock: Clock | None = None) -> Iterator[RunRecord]:
    """Open a run row, and close it as succeeded or failed with the error's type and text.

    The run row is written in its own transactions, so a failure that rolls
    back the job's data still leaves its record. The store's schema is brought
    up to date first (the same migrations as `retention migrate`). Start and end
    times come from ``clock`` (the machine's by default).
    """
    clock = clock or SystemClock()
    with store_db.begin() as conn:
        schema.upgrade(conn)
        record = RunRecord(run_id=start_run(conn, kind, as_of, clock.now()))
    try:
        yield record
    except BaseException as exc:
        with store_db.begin() as conn:
            finish_run(
                conn, record.run_id, "failed",
                rows_read=record.rows_read, rows_quarantined=record.rows_quarantined,
                model_version=record.model_version, detail=record.detail,
                error=f"{type(exc).__name__}: {exc}"[:2000], at=clock.now(),
            )
        log.error("%s run %s failed: %s", kind, record.run_id, type(exc).__name__)
        raise
    with store_db.begin() as conn:
        finish_run(
            conn, record.run_id, "succeeded",
            rows_read=record.rows_read, rows_changed=record.rows_changed,
            rows_quarantined=record.rows_quarantined, model_version=record.model_version,
            detail=record.detail, at=clock.now(),
        )


def format_runs(rows: list[dict[str, Any]]) -> list[str]:
    """Lines for `retention runs`: one per run, its error (if any) on the next."""
    lines = [f"{'run':>5} {'kind':<7} {'as_of':<10} {'status':<9} {'read':>10} {'changed':>10} "
             f"{'quarant.':>8} {'secs':>7} {'model':<20} started (UTC)"]
    for r in rows:
        took = ""
        if r["finished_at"] is not None:
            took = f"{(r['finished_at'] - r['started_at']).total_seconds():.1f}"
        lines.append(
            f"{r['run_id']:>5} {r['kind']:<7} {r['as_of'] or ''!s:<10} {r['status']:<9} "
            f"{r['rows_read'] or 0:>10,} {r['rows_changed'] or 0:>10,} "
            f"{r['rows_quarantined'] or 0:>8,} {took:>7} {r['model_version'] or '':<20} "
            f"{r['started_at']:%Y-%m-%d %H:%M:%S}"
        )
        if r["error"]:
            lines.append(f"      error: {r['error']}")
        drifted = json.loads(r["detail"]).get("drift_flagged") if r.get("detail") else None
        if drifted:
            lines.append(f"      drift: PSI over the threshold in {', '.join(drifted)}")
    return lines
