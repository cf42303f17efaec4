"""The weekly retrain job: ETL to today, train a candidate, evaluate it, apply the gate.

A module-level function so the scheduler can run it in its own process. The
candidate is always kept as a version; it replaces the current model only
when the gate passes, and a refusal is logged with its reasons.
"""

from __future__ import annotations

import logging
from datetime import date
from pathlib import Path

from retention.db.engines import source_engine, store_engine
from retention.pipelines.etl import run_etl
from retention.pipelines.train import TrainResult, run_training
from retention.settings import Settings, load_settings

log = logging.getLogger(__name__)

JOB_ID = "weekly-retrain"


def run_retrain(settings: Settings, as_of: date) -> TrainResult:
    """Refresh the clinic copy, then train and gate a candidate as of ``as_of``."""
    source = source_engine(settings.source_url)
    store_db = store_engine(settings.store_url)
    try:
        run_etl(source, store_db, as_of, settings.etl)
        return run_training(settings, store_db, as_of, make_current=True)
    finally:
        source.dispose()
        store_db.dispose()


def retrain_job(config_path: str | None = None) -> None:
    """Module-level job function: settings are read fresh at each run."""
    settings = load_settings(Path(config_path) if config_path else None)
    result = run_retrain(settings, date.today())
    if result.promoted:
        log.info("weekly retrain: version %s promoted (train run %s)",
                 result.version, result.run_id)
    else:
        log.warning("weekly retrain: version %s kept but not promoted: %s",
                    result.version, "; ".join(result.gate.refusals) or "promotion disabled")
