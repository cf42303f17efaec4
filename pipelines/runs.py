"""Recording runs: every job leaves a row saying what it did or why it failed."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date

from sqlalchemy import Engine

from retention import store

log = logging.getLogger(__name__)


@dataclass
class RunRecord:
    """What a running job reports back to its run row."""

    run_id: int
    rows_read: int | None = None
    rows_written: int | None = None
    model_version: str | None = None


@contextmanager
def recorded_run(store_db: Engine, kind: str, as_of: date | None) -> Iterator[RunRecord]:
    """Open a run row, and close it as succeeded or failed with the error's type and text.

    The run row is written in its own transactions, so a failure that rolls
    back the job's data still leaves its record.
    """
    with store_db.begin() as conn:
        store.create_schema(conn)
        record = RunRecord(run_id=store.start_run(conn, kind, as_of))
    try:
        yield record
    except BaseException as exc:
        with store_db.begin() as conn:
            store.finish_run(
                conn, record.run_id, "failed",
                rows_read=record.rows_read, model_version=record.model_version,
                error=f"{type(exc).__name__}: {exc}"[:2000],
            )
        log.error("%s run %s failed: %s", kind, record.run_id, type(exc).__name__)
        raise
    with store_db.begin() as conn:
        store.finish_run(
            conn, record.run_id, "succeeded",
            rows_read=record.rows_read, rows_written=record.rows_written,
            model_version=record.model_version,
        )
