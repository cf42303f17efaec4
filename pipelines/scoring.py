"""The scoring job: risk and reasons for every open episode, published as one list."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date
from typing import Any

import numpy as np
import pandas as pd
from sqlalchemy import Engine

from pipelines.runs import recorded_run
from retention import drift, reasons, store
from retention.config import Settings
from retention.features import FEATURE_NAMES
from retention.model import TrainedModel
from retention.model_settings import model_settings

log = logging.getLogger(__name__)

# Contributions must add up to the model's own log-odds; beyond this, something is wrong.
FAITHFULNESS_TOLERANCE = 1e-6


class ScoringError(RuntimeError):
    """Scoring cannot go ahead; the message says what to run first."""


@dataclass(frozen=True)
class ScoreResult:
    run_id: int
    as_of: date
    scored: int
    high_risk: int
    model_version: str


def tier(risk: float, thresholds: Mapping[str, float]) -> str:
    """'high', 'medium' or 'low' by the configured thresholds."""
    for name, cut in sorted(thresholds.items(), key=lambda kv: -kv[1]):
        if risk >= cut:
            return name
    return "low"


def run_scoring(
    settings: Settings,
    store_db: Engine,
    model: TrainedModel,
    catalogue: reasons.Catalogue,
    as_of: date,
) -> ScoreResult:
    """Score the features stored for ``as_of`` and publish the ranked list atomically."""
    with recorded_run(store_db, "score", as_of) as run:
        run.model_version = model.version
        with store_db.connect() as conn:
            features = store.read_features(conn, as_of, FEATURE_NAMES)
            data = store.read_clinic_copy(conn)
        if features.empty:
            raise ScoringError(
                f"no features stored for {as_of}: run `retention etl --as-of {as_of}` first"
            )
        run.rows_read = len(features)
        rows = score_rows(settings, model, catalogue, data, features, as_of, run.run_id)
        drifted = drift_rows(settings, model, features, rows)
        with store_db.begin() as conn:
            store.publish_scores(conn, as_of, rows, run.run_id, model.version)
            drift.record_drift(conn, run.run_id, as_of, model.version, drifted)
        flagged = [d["feature"] for d in drifted if d["flagged"]]
        if flagged:
            log.warning("score run %s: drift beyond PSI %.2f in %d of %d inputs",
                        run.run_id, model_settings(settings).drift_psi_threshold,
                        len(flagged), len(drifted))
        run.rows_written = len(rows)
        high = sum(1 for r in rows if r["tier"] == "high")
        log.info("score run %s: published %d episodes as of %s", run.run_id, len(rows), as_of)
        return ScoreResult(run.run_id, as_of, len(rows), high, model.version)


def drift_rows(settings: Settings, model: TrainedModel, features: pd.DataFrame,
               rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """PSI of each feature and of the published risk against the model's training rows."""
    reference = model.metadata.get("drift_reference")
    if not reference:
        return []
    risk = np.array([r["risk"] for r in rows], dtype=float)
    ordered = features.loc[[r["episode_id"] for r in rows]]
    return drift.drift_table(reference, ordered, risk,
                             model_settings(settings).drift_psi_threshold)


def score_rows(
    settings: Settings,
    model: TrainedModel,
    catalogue: reasons.Catalogue,
    data: Any,
    features: pd.DataFrame,
    as_of: date,
    run_id: int,
) -> list[dict[str, Any]]:
    """The published rows: ranked risk with reasons, one per open episode."""
    risk = model.predict(features)
    raw = model.raw_score(features)
    contributions = model.contributions(features)
    summed = contributions.sum(axis=1).to_numpy()
    worst = float(np.max(np.abs(summed - raw))) if len(raw) else 0.0
    if worst > FAITHFULNESS_TOLERANCE:
        raise ScoringError(f"contributions do not add up to the model's score (off by {worst})")
    families = {f["name"]: f["family"] for f in model.metadata["features"]}
    histories = reasons.histories(data, features, list(features.index), as_of)
    explanations = reasons.explain(
        contributions, families, histories, catalogue, max_reasons=settings.max_reasons
    )
    # Calibrated risks tie within isotonic steps: the raw score keeps the model's order.
    order = np.lexsort((features.index.to_numpy(), -raw, -risk))
    rows = []
    for rank, i in enumerate(order, start=1):
        episode_id = str(features.index[i])
        h = histories[episode_id]
        attended = h.slots[h.slots["status"] == "attended"]
        last_attended = attended["scheduled_at"].max() if len(attended) else None
        next_booked = h.ahead["scheduled_at"].min() if len(h.ahead) else None
        days_since = features.iloc[i]["days_since_attended"]
        explanation = explanations[episode_id]
        rows.append({
            "as_of": as_of,
            "episode_id": episode_id,
            "client_id": features.iloc[i]["client_id"],
            "clinic_id": features.iloc[i]["clinic_id"],
            "case_manager_id": _none_if_na(features.iloc[i]["case_manager_id"]),
            "program": str(h.episode["program"]),
            "rank": rank,
            "risk": round(float(risk[i]), 6),
            "tier": tier(float(risk[i]), settings.tiers),
            "still_engaged": bool(
                last_attended is not None and days_since <= settings.engaged_within_days
            ),
            "last_attended_on": None if last_attended is None else last_attended.date(),
            "next_booked_at": None if next_booked is None else next_booked.to_pydatetime(),
            "model_version": model.version,
            "run_id": run_id,
            "reasons_json": json.dumps({
                "raw_score": round(explanation.raw_score, 6),
                "expected_value": round(explanation.expected_value, 6),
                "reasons": [r.to_dict() for r in explanation.reasons],
                "protective": [r.to_dict() for r in explanation.protective],
            }),
        })
    return rows


def _none_if_na(value: Any) -> Any:
    return None if value is None or (isinstance(value, float) and np.isnan(value)) else value
