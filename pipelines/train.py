"""The training job: snapshots from the store's clinic copy, a time-ordered fit, a new version."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import date
from pathlib import Path

from sqlalchemy import Engine

from pipelines.runs import recorded_run
from retention import model as model_io
from retention import store
from retention.config import Settings
from retention.training import Progress, fit, snapshot_dates, training_rows

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainResult:
    run_id: int
    version: str
    folder: Path
    rows: int
    snapshots: int
    metrics: dict[str, dict[str, float]]


def run_training(
    settings: Settings,
    store_db: Engine,
    as_of: date,
    *,
    make_current: bool = True,
    progress: Progress | None = None,
) -> TrainResult:
    """Train on snapshots whose horizon ends by ``as_of`` and save a model version."""
    with recorded_run(store_db, "train", as_of) as run:
        with store_db.connect() as conn:
            data = store.read_clinic_copy(conn)
        if data.episodes.empty:
            raise RuntimeError("the store holds no clinic data: run `retention etl` first")
        dates = snapshot_dates(
            as_of, settings.horizon_days, settings.snapshot_every_days,
            settings.training_window_days,
        )
        rows = training_rows(data, dates, settings.horizon_days, as_of, progress)
        run.rows_read = len(rows)
        trained = fit(rows, horizon_days=settings.horizon_days, seed=settings.seed,
                      trained_as_of=as_of)
        folder = model_io.save(trained, settings.models_dir)
        if make_current:
            model_io.set_current(settings.models_dir, trained.version)
        run.model_version = trained.version
        log.info("train run %s: version %s from %d rows", run.run_id, trained.version, len(rows))
        return TrainResult(run.run_id, trained.version, folder, len(rows), len(dates),
                           trained.metadata["metrics"])
