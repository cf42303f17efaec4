"""The training job: snapshots, a time-ordered fit, an evaluation, a version, the gate.

Every trained model is saved as a version with its evaluation. It becomes
current only if the promotion gate passes: it beats the clinic's baselines on
still-engaged clients and is no worse than the current model on the same rows.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

from sqlalchemy import Engine

from retention.clock import Clock
from retention.evaluation.candidate import assess
from retention.evaluation.gate import GateDecision, gate
from retention.model import artifacts, registry, signing
from retention.model.booster import ModelError, TrainedModel
from retention.model.sampling import stratified_clients
from retention.model.training import (
    Progress,
    fit_as_configured,
    snapshot_dates,
    time_split,
    training_rows,
)
from retention.pipelines.runs import recorded_run
from retention.settings import Settings
from retention.store.clinic_copy import copy_clients, read_clinic_copy

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainResult:
    run_id: int
    version: str
    folder: Path
    rows: int
    snapshots: int
    metrics: dict[str, dict[str, float]]
    evaluation: dict[str, Any]
    gate: GateDecision
    promoted: bool
    # The calibration kept, and how the candidates compared (None when one was named).
    calibration_method: str = ""
    calibration_choice: dict[str, Any] | None = None


def run_training(
    settings: Settings,
    store_db: Engine,
    as_of: date,
    *,
    make_current: bool = True,
    progress: Progress | None = None,
    clock: Clock | None = None,
) -> TrainResult:
    """Train on snapshots whose horizon ends by ``as_of``, evaluate, save, apply the gate.

    ``make_current=False`` saves and judges the candidate without promoting it.
    """
    ms = settings.evaluation
    # Versions and promotions are signed; the first training creates the default key.
    key = signing.model_key(settings, create=True)
    with recorded_run(store_db, "train", as_of, clock) as run:
        with store_db.connect() as conn:
            sample = stratified_clients(copy_clients(conn), ms.training_sample_clients,
                                        settings.seed)
            data = read_clinic_copy(conn, sample)
        if sample is not None:
            run.detail["training_sample"] = {"clients": len(sample), "by": "clinic",
                                             "seed": settings.seed}
            log.info("train run %s: a sample of %d clients, drawn by clinic", run.run_id,
                     len(sample))
        if data.episodes.empty:
            raise RuntimeError("the store holds no clinic data: run `retention etl` first")
        dates = snapshot_dates(
            as_of, settings.horizon_days, settings.snapshot_every_days,
            settings.training_window_days,
        )
        rows = training_rows(data, dates, settings.horizon_days, as_of, progress,
                             registry=settings.instruments)
        run.rows_read = len(rows)
        trained = fit_as_configured(rows, settings, as_of)
        split = time_split(rows, settings.horizon_days, evaluate_share=ms.evaluate_share,
                           calibrate_share=ms.calibrate_share)
        current = _current_model(settings.models_dir, trained.version, key)
        evaluation = assess(trained, split, data.clients, ms,
                            engaged_within_days=settings.engaged_within_days,
                            seed=settings.seed, current=current)
        folder = artifacts.save(trained, settings.models_dir, evaluation, key=key,
                                signed_by=f"train run {run.run_id} ({signing.signer()})")
        decision = gate(trained.version, evaluation, ms.promotion_tolerance)
        registry.write_gate(settings.models_dir, decision, key=key)
        promoted = False
        if make_current and decision.passed:
            registry.promote(settings.models_dir, trained.version,
                             reason=f"train run {run.run_id}: gate passed", key=key)
            promoted = True
        run.model_version = trained.version
        log.info("train run %s: version %s from %d rows; gate %s; promoted %s", run.run_id,
                 trained.version, len(rows), "passed" if decision.passed else "refused",
                 promoted)
        return TrainResult(run.run_id, trained.version, folder, len(rows), len(dates),
                           trained.metadata["metrics"], evaluation, decision, promoted,
                           trained.calibrator.method, trained.metadata.get("calibration_choice"))


def _current_model(models_dir: Path, candidate: str,
                   key: signing.SigningKey) -> TrainedModel | None:
    """The model in service, to compare on the candidate's rows (None if none or the same).

    Its evaluated fit: the served one was refit on snapshots that include the
    candidate's evaluation slice, and would be judged on rows it learnt.
    """
    version = registry.current_or_none(models_dir)
    if version is None or version == candidate:
        return None
    try:
        return artifacts.load(models_dir, version, key=key, fit="evaluated")
    except ModelError as exc:
        # A broken current model cannot be a reference; the gate then checks baselines only.
        log.warning("current model %s unusable as a reference: %s", version, exc)
        return None
