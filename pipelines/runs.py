"""Recording runs: every job leaves a row saying what it did or why it failed."""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import date
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.exc import DBAPIError

from retention.clock import Clock, SystemClock
from retention.db import errors, locks
from retention.engine.memory import peak_rss_mib
from retention.publish_guard import Move
from retention.store import schema
from retention.store.runs import fail_dead_runs, finish_run, start_run

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
        """A stopwatch whose laps go into this run's detail, under "seconds", with the
        process's peak memory at the end of each stage under "peak_mib"."""
        return Stopwatch(self.detail.setdefault("seconds", {}),
                         self.detail.setdefault("peak_mib", {}))


class Stopwatch:
    """Seconds spent in each stage of a run, and the process's peak resident memory (MiB)
    when each ended: the stage after which it grows is the one whose memory follows the
    data (docs/performance.md reads them to say what to partition next)."""

    def __init__(self, laps: dict[str, float], peaks: dict[str, int] | None = None) -> None:
        self.laps = laps
        self.peaks = {} if peaks is None else peaks
        self._last = time.perf_counter()

    def lap(self, stage: str) -> None:
        now = time.perf_counter()
        self.laps[stage] = round(self.laps.get(stage, 0.0) + now - self._last, 3)
        self.peaks[stage] = peak_rss_mib()
        self._last = now


def error_text(exc: BaseException) -> str:
    """What a failed run's row says of its error: the type, and a message without values.

    The service's own errors are worded from ids, counts, table, rule and setting names
    and kept whole; any other (a database's, a library's) is cut to what cannot quote a
    source value (``retention.db.errors.safe_message``).
    """
    own = type(exc).__module__.split(".")[0] == "retention"
    message = str(exc) if own else errors.safe_message(exc)
    return f"{type(exc).__name__}: {message}"[:2000]


@contextmanager
def recorded_run(store_db: Engine, kind: str, as_of: date | None,
                 clock: Clock | None = None) -> Iterator[RunRecord]:
    """Open a run row, and close it as succeeded or failed with the error's type and text.

    The run row is written in its own transactions, so a failure that rolls
    back the job's data still leaves its record. The store's schema is brought
    up to date first (the same migrations as `retention migrate`), and runs left
    ``running`` by a process that died are marked failed. While the run lasts its
    process holds the run's lock, on a connection of the run's own. Start and end
    times come from ``clock`` (the machine's by default).
    """
    clock = clock or SystemClock()
    with store_db.connect() as own:
        with own.begin():
            schema.upgrade(own)
        _fail_dead_runs(own, clock)
        with own.begin():
            run_id = start_run(own, kind, as_of, clock.now(), host=socket.gethostname(),
                               pid=os.getpid())
            alive = locks.hold_run(own, run_id)  # before the commit: never seen unlocked
        try:
            record = RunRecord(run_id=run_id)
            try:
                yield record
            except BaseException as exc:
                with store_db.begin() as conn:
                    finish_run(
                        conn, record.run_id, "failed",
                        rows_read=record.rows_read, rows_quarantined=record.rows_quarantined,
                        model_version=record.model_version, detail=record.detail,
                        error=error_text(exc), at=clock.now(),
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
        finally:
            alive.release(own)


def _fail_dead_runs(own: Any, clock: Clock) -> None:
    """Mark failed the runs whose process is gone; a store too busy to say is left for the
    next start (the run at hand must not fail for it)."""
    try:
        with own.begin():
            dead = fail_dead_runs(own, clock.now())
    except DBAPIError as exc:
        log.warning("could not check for dead runs: %s", type(exc).__name__)
        return
    if dead:
        log.warning("marked failed %d run(s) whose process had died: %s", len(dead),
                    ", ".join(map(str, dead)))


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
            first, *rest = r["error"].splitlines()  # a refusal names each count on a line
            lines.append(f"      error: {first}")
            lines += [f"        {line}" for line in rest]
        detail = json.loads(r["detail"]) if r.get("detail") else {}
        drifted = detail.get("drift_flagged")
        if drifted:
            lines.append(f"      drift: PSI over the threshold in {', '.join(drifted)}")
        accepted = (detail.get("publish_guard") or {}).get("accepted")
        if accepted:
            lines.append(f"      accepted by {accepted['by']} at {accepted['at']}: "
                         f"{accepted['reason']}")
            lines += [f"        {Move.from_dict(m).describe()}"
                      for m in detail["publish_guard"]["moves"]]
    return lines
