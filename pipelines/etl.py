"""The ETL job: read what changed at the source, check it, load it, compute features.

One run reads, in one read-only snapshot of the clinic's database, the rows updated
since each table's watermark less an overlap (everything on a full reload: from
PostgreSQL into PostgreSQL with ``[etl] reload_part_rows``, the large tables in key
ranges, each checked and built beside the copy as it lands, ``retention.etl.parts``),
then in one store transaction checks and loads them (``retention.etl.load``) and stores the
features of every episode open at the as-of date. A run killed anywhere leaves the
store as it was; re-running changes nothing. One ETL run writes a store at a time
(``retention.db.locks.ETL``): the nightly job, the weekly retrain and ``retention etl``
wait their turn, so none drops the tables another builds beside the copy.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import date
from functools import partial
from typing import cast

from sqlalchemy import Engine, func, select

from retention.clinic.data import ClinicData
from retention.clinic.registry import Registry, default_registry
from retention.clock import Clock, SystemClock
from retention.db import bulk, locks
from retention.etl import load, parts
from retention.etl.extract import MissingTable, read_source
from retention.etl.sources import Source
from retention.features import FEATURE_NAMES, build_features
from retention.pipelines.runs import recorded_run
from retention.settings import EtlSettings, Settings
from retention.store import tables
from retention.store.clinic_copy import copy_version, read_scoped_copy
from retention.store.features import write_features

log = logging.getLogger(__name__)

# How long a run waits for another ETL run on the same store before it gives up.
LOCK_WAIT_SECONDS = 6 * 3600.0


class EtlBusy(RuntimeError):
    """Another process held the store's ETL lock for longer than a run waits."""


@dataclass(frozen=True)
class EtlResult:
    run_id: int
    as_of: date
    rows_read: int
    # None when the features were left to the scoring run (the Dask engine): the run
    # did not count the open episodes, and 0 would say there were none.
    open_episodes: int | None
    rows_changed: int = 0
    rows_quarantined: int = 0
    full: bool = False
    # What the features were built from, and the copy version it is: the nightly run
    # hands both to scoring, which then need not read the same rows again.
    scoped: ClinicData | None = field(default=None, repr=False, compare=False)
    copy_version: int | None = None


def run_etl(
    source: Source,
    store_db: Engine,
    as_of: date,
    etl: EtlSettings | None = None,
    *,
    full: bool | None = None,
    clock: Clock | None = None,
    lock_wait_seconds: float = LOCK_WAIT_SECONDS,
    registry: Registry | None = None,
    features: bool = True,
    check_ranges: parts.CheckRanges | None = None,
) -> EtlResult:
    """Bring the store's copy up to date with the source and store features for ``as_of``.

    ``full`` forces (True) or forbids (False) a full reload; by default a run is
    full when the store has no watermark yet or the last full reload is older
    than ``full_reload_after_days`` (by ``clock``). Waits up to ``lock_wait_seconds``
    while another ETL run writes the store. ``registry`` (``Settings.instruments``; the
    shipped one by default) checks the measures and says what the features read.
    ``features=False`` loads the copy only: on the Dask engine the scoring run computes
    the features with the scores, partition by partition (``retention.engine``).
    ``check_ranges`` reads and checks a reload in parts' ranges (``ranges_checker``).
    """
    registry = registry or default_registry()
    etl = etl or EtlSettings()
    clock = clock or SystemClock()
    with etl_lock(store_db, lock_wait_seconds), recorded_run(store_db, "etl", as_of,
                                                               clock) as run:
        with store_db.begin() as conn:
            # Tables a killed full reload built beside the copy and never swapped in.
            bulk.drop_beside(conn, list(tables.copies.values()))
            marks = load.read_watermarks(conn)
            if full is None:
                full = load.full_reload_due(conn, marks, etl, clock.now())
        run.detail["full"] = full
        watch = run.stopwatch()
        since, held = load.since(marks, full, etl), partial(_copy_rows, store_db)
        staged: parts.Staged | None = None
        try:
            if full and etl.reload_part_rows and isinstance(source, Engine) and (
                    source.dialect.name == store_db.dialect.name == "postgresql"):
                staged = parts.reload_in_parts(source, store_db, etl, registry, held,
                                               lap=watch.lap, check_ranges=check_ranges)
                checked, source_now = staged.checked, staged.clock
                run.detail.update({"parts": staged.parts, "parts_waited_s": staged.waited_s})
                if staged.workers:
                    run.detail["parts_on_workers"] = staged.workers
            elif isinstance(source, Engine):
                raw, source_now = read_source(source, etl.mapping, since, etl.source_connections,
                                              held=held, allow_superuser=etl.allow_superuser_source)
            else:  # an export folder: files, read by the source itself
                raw, source_now = source.read(since, held)
        except MissingTable as exc:
            run.detail["missing_tables"] = exc.tables  # for the status: pages, /health, /ready
            log.warning("etl run %s: optional table(s) %s missing at the source while the copy "
                        "holds their rows; stopping with the copy unchanged", run.run_id,
                        ", ".join(exc.tables))
            raise
        if staged is None:
            watch.lap("extract")
            # Resources an export held that could not be read are rows read too (and held).
            unreadable = len(raw.malformed) if isinstance(raw, load.Extract) else 0
            run.rows_read = sum(len(f) for f in raw.values()) + unreadable
        else:
            run.rows_read = staged.checked.total_read
        log.info("etl run %s: read %d source rows (%s)", run.run_id, run.rows_read,
                 "full reload" if full else "incremental")
        with _dropped_if_failed(staged), store_db.begin() as conn:
            if staged is None:
                checked = load.check(conn, raw, etl, full, registry)
                watch.lap("check")
            run.rows_quarantined = checked.rows_quarantined
            run.detail.update(checked.detail)
            load.enforce_limit(checked, etl)
            beside = staged.finish() if staged is not None else None
            applied = load.apply(conn, checked, source_now, full=full, run_id=run.run_id,
                                 marks=marks, built=beside)
            watch.lap("load")
            run.detail.update({"copy_changed": applied.copy_changed,
                               "released": applied.released, "watermarks": applied.watermarks})
            data, feature_changes, n_open = None, 0, None
            if features:
                data = read_scoped_copy(conn, as_of, etl.lookback_days, registry)
                watch.lap("scoped_read")
                built = build_features(data, as_of, registry)
                watch.lap("features")
                feature_changes = write_features(conn, as_of, built, FEATURE_NAMES, run.run_id)
                watch.lap("write_features")
                n_open = len(built)
                run.detail.update({"features_changed": feature_changes, "open_episodes": n_open})
            run.rows_changed = applied.copy_changed + feature_changes
            version = copy_version(conn)
        watch.lap("commit")
        log.info("etl run %s: %d rows changed, %d quarantined, %s as of %s", run.run_id,
                 run.rows_changed, run.rows_quarantined,
                 f"{n_open} open episodes" if features else "features left to scoring", as_of)
        return EtlResult(run.run_id, as_of, run.rows_read, n_open,
                         run.rows_changed or 0, run.rows_quarantined or 0, full, data, version)


def ranges_checker(settings: Settings) -> parts.CheckRanges | None:
    """Where a full reload in parts reads and checks its ranges: on the Dask engine, on
    its workers (``retention.engine.reload``, imported only then: the local engine runs
    without Dask installed); else in the job's process."""
    if settings.engine.kind != "dask":
        return None
    module = importlib.import_module("retention.engine.reload")
    return cast(parts.CheckRanges, module.checked_on_workers(settings.engine))


@contextmanager
def _dropped_if_failed(staged: parts.Staged | None) -> Iterator[None]:
    """Give up a reload in parts' tables built beside the copy if the run fails before
    they are swapped in (over a limit, say). Outside the run's transaction: it has
    rolled back, and released any of them it had locked, before they are dropped."""
    try:
        yield
    except BaseException:
        if staged is not None:
            staged.drop()
        raise


@contextmanager
def etl_lock(store_db: Engine, wait_seconds: float) -> Iterator[None]:
    """Hold the store's ETL lock, waiting (and saying so) while another run holds it: no
    other ETL run writes the copy meanwhile (a network's partitions read it under it)."""
    with locks.try_lock(store_db, locks.ETL) as got:
        if got:
            yield
            return
    log.info("etl: another ETL run is writing the store; waiting up to %.0f s", wait_seconds)
    with locks.try_lock(store_db, locks.ETL, wait_seconds) as got:
        if not got:
            raise EtlBusy(f"another process held the store's ETL lock for over "
                          f"{wait_seconds:.0f} s; nothing was read or changed")
        yield


def _copy_rows(store_db: Engine, table: str) -> int:
    """Rows the copy holds of an optional table the source lacks: if any, it was dropped,
    not emptied (``retention.etl.extract.MissingTable``). Counted only then: the items'
    copy is the store's largest table."""
    with store_db.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(tables.copies[table]))
                   .scalar_one())
