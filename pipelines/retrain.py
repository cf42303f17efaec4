"""The weekly retrain job: ETL to today, train a candidate, evaluate it, apply the gate.

A module-level function so the scheduler can run it in its own process. The
candidate is always kept as a version; it replaces the current model only
when the gate passes, and a refusal is logged with its reasons.

The ETL reads the clinic through its own ``[etl]`` mapping and settings, as the nightly
job does, and takes the same locks (``retention.db.locks``): one retrain at a time
across every scheduler (a second stands down, as a second nightly run does), and the
store's ETL lock, so it never writes the copy while the nightly job does.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import date
from pathlib import Path

from retention.db import locks
from retention.db.engines import store_engine
from retention.etl.sources import open_source
from retention.pipelines.etl import EtlResult, ranges_checker, run_etl
from retention.pipelines.train import TrainResult, run_training
from retention.settings import Settings, load_settings

log = logging.getLogger(__name__)

JOB_ID = "weekly-retrain"
LOCK_NAME = locks.RETRAIN


@dataclass(frozen=True)
class RetrainResult:
    """What a retrain did; ``skipped`` says why it did nothing (another process ran it)."""

    etl: EtlResult | None
    train: TrainResult | None
    skipped: str | None = None


def run_retrain(settings: Settings, as_of: date) -> RetrainResult:
    """Refresh the clinic copy, then train and gate a candidate as of ``as_of``, unless
    another process is retraining on this store."""
    store_db = store_engine(settings.store_url)
    try:
        with locks.try_lock(store_db, LOCK_NAME) as got:
            if not got:
                return RetrainResult(None, None, "another process is running the retrain")
            source = open_source(settings.source_url, settings.etl, settings.instruments)
            try:
                extracted = run_etl(source, store_db, as_of, settings.etl,
                                    registry=settings.instruments,
                                    check_ranges=ranges_checker(settings))
            finally:
                source.dispose()
            trained = run_training(settings, store_db, as_of, make_current=True)
            return RetrainResult(extracted, trained)
    finally:
        store_db.dispose()


def retrain_job(config_path: str | None = None) -> None:
    """Module-level job function: settings are read fresh at each run."""
    settings = load_settings(Path(config_path) if config_path else None)
    outcome = run_retrain(settings, date.today())
    if outcome.train is None:
        log.info("weekly retrain skipped: %s", outcome.skipped)
        return
    result = outcome.train
    if result.promoted:
        log.info("weekly retrain: version %s promoted (train run %s)",
                 result.version, result.run_id)
    else:
        log.warning("weekly retrain: version %s kept but not promoted: %s%s",
                    result.version, "; ".join(result.gate.refusals) or "promotion disabled",
                    f" ({result.gate.advice})" if result.gate.advice else "")
