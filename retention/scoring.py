"""Scoring: ranked risk and reasons for every open episode, as the rows a list publishes.

The job that reads features, calls this and publishes the list in one transaction
is ``retention.pipelines.scoring``; training's counterpart is ``retention.model.training``.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
from collections import Counter
from collections.abc import Mapping
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from datetime import date
from typing import Any

import numpy as np
import orjson
import pandas as pd
from sqlalchemy import Connection

from retention.features.attendance import booked_ahead, past_slots
from retention.model import drift
from retention.model.booster import TrainedModel
from retention.reasons.catalogue import Catalogue
from retention.reasons.explain import Explanation, Limits, RiskOf, explain
from retention.reasons.history import histories
from retention.settings import Settings
from retention.store.clinic_copy import copy_version

# Contributions must add up to the model's own log-odds; beyond this, something is wrong.
FAITHFULNESS_TOLERANCE = 1e-6


class ScoringError(RuntimeError):
    """Scoring cannot go ahead; the message says what to run first."""


def tier_names(risk: np.ndarray, thresholds: Mapping[str, float]) -> list[str]:
    """'high', 'medium' or 'low' for each risk by the configured thresholds (the highest
    cut a risk reaches names it; below every cut, or NaN, is 'low')."""
    cuts = sorted(thresholds.items(), key=lambda kv: -kv[1])
    names = np.select([risk >= cut for _, cut in cuts], [name for name, _ in cuts], "low")
    return [str(n) for n in names]


def drift_rows(settings: Settings, model: TrainedModel, features: pd.DataFrame,
               rows: list[dict[str, Any]], as_of: date) -> list[dict[str, Any]]:
    """Drift of each feature and of the published risk against the rows the model was
    judged on (those of the list's weekday, where the model has enough of them)."""
    reference = model.metadata.get("drift_reference")
    if not reference:
        return []
    risk = np.array([r["risk"] for r in rows], dtype=float)
    ordered = features.loc[[r["episode_id"] for r in rows]]
    return drift.drift_table(drift.for_weekday(reference, as_of.weekday()), ordered, risk,
                             settings.evaluation.drift_psi_threshold,
                             settings.evaluation.drift_min_rows)


def inputs_digest(
    connection: Connection,
    settings: Settings,
    model: TrainedModel,
    catalogue: Catalogue,
    features: pd.DataFrame,
    as_of: date,
) -> str:
    """What a published list was computed from: equal digests give equal lists.

    The model (version and file hash), the reason wording, the settings that shape
    the list, the features for ``as_of`` and the version of the clinic copy the
    reasons quote from.
    """
    parts = {
        "as_of": as_of.isoformat(),
        "model": [model.version, model.metadata.get("sha256")],
        "catalogue": catalogue.digest_parts(),
        "settings": [dict(settings.tiers), settings.max_reasons, settings.min_reason_share,
                     settings.min_reason_points, settings.engaged_within_days,
                     settings.etl.reasons_top_n, settings.etl.reasons_per_caseload],
        "copy_version": copy_version(connection),
        # Hashed by dtype, not as text: formatting every float costs far more than the hash.
        "features": hashlib.sha256(pd.util.hash_pandas_object(
            features, index=True).to_numpy().tobytes()).hexdigest(),
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


@dataclass(frozen=True)
class ScoredPart:
    """Open episodes scored but not yet ranked: a whole list's, or one partition's
    (``retention.engine``), with reasons worded for every row the list might show.

    A partition's rows are ranked with the others' by ``ranked_rows``; the rows a part
    explains (its own top ``reasons_top_n`` and each of its caseloads' top) are a
    superset of those the whole list shows from it, since the list's order restricted
    to a part is the part's own order.
    """

    features: pd.DataFrame  # indexed by episode id: meta columns and FEATURE_NAMES
    raw: np.ndarray
    risk: np.ndarray
    expected: float  # the model's expected value (its contributions' starting point)
    explained: dict[str, str]  # reasons_json by episode id, for the rows worded
    last_attended: list[Any]
    next_booked: list[Any]
    program: list[str]


def score_rows(
    settings: Settings,
    model: TrainedModel,
    catalogue: Catalogue,
    data: Any,
    features: pd.DataFrame,
    as_of: date,
    run_id: int,
    reasons_top_n: int | None = None,
) -> list[dict[str, Any]]:
    """The published rows: ranked risk, one per open episode, reasons for the top of the list.

    Per-feature contributions cost far more than a prediction, and wording a reason
    reads the client's rows: both are done where a case manager reads them, the
    ``reasons_top_n`` highest-ranked rows and the ``reasons_per_caseload`` highest of
    each case manager's caseload (``[etl]``).
    Every row carries its raw score and the model's expected value.
    """
    part = score_part(settings, model, catalogue, data, features, as_of, reasons_top_n)
    return ranked_rows(settings, [part], as_of, run_id, model.version, reasons_top_n)


def score_part(
    settings: Settings,
    model: TrainedModel,
    catalogue: Catalogue,
    data: Any,
    features: pd.DataFrame,
    as_of: date,
    reasons_top_n: int | None = None,
    workers: int | None = None,
) -> ScoredPart:
    """Risk for every row of ``features``, and reasons for its top rows and caseloads' top.

    ``workers`` processes word reasons (``[etl] reasons_workers`` by default; a Dask
    worker passes 1: Dask is its parallelism).
    """
    etl = settings.etl
    top_n = etl.reasons_top_n if reasons_top_n is None else reasons_top_n
    raw = model.raw_score(features)
    # model.predict would walk the trees a second time for the same raw score.
    risk = model.calibrator.predict(raw)
    index = features.index
    picked = explained_positions(features, list_order(index, raw, risk), top_n,
                                 etl.reasons_per_caseload)
    shown = index[picked]
    contributions = model.contributions(features.loc[shown])
    summed = contributions.sum(axis=1).to_numpy()
    worst = float(np.max(np.abs(summed - raw[picked]))) if len(shown) else 0.0
    if worst > FAITHFULNESS_TOLERANCE:
        raise ScoringError(f"contributions do not add up to the model's score (off by {worst})")
    expected = float(contributions["expected_value"].iloc[0]) if len(shown) else 0.0
    families = {f["name"]: f["family"] for f in model.metadata["features"]}
    explanations = explain_rows(data, features.loc[shown], contributions, families, catalogue,
                                as_of, model.calibrator.predict, limits(settings),
                                etl.reasons_workers if workers is None else workers)
    slots = past_slots(data.appointments, index, as_of)
    attended = slots.loc[slots["status"] == "attended"]
    ahead = booked_ahead(data.appointments, index, as_of)
    return ScoredPart(
        features=features, raw=raw, risk=risk, expected=expected,
        # orjson: json is far slower
        explained={str(i): orjson.dumps(payload_of(e)).decode()
                   for i, e in explanations.items()},
        last_attended=list(attended.groupby("episode_id")["scheduled_at"].max().reindex(index)),
        next_booked=list(ahead.groupby("episode_id")["scheduled_at"].min().reindex(index)),
        program=[str(p) for p in
                 data.episodes.set_index("episode_id")["program"].reindex(index)],
    )


def list_order(index: pd.Index, raw: np.ndarray, risk: np.ndarray) -> np.ndarray:
    """Positions in list order: by risk, then raw score (calibrated risks tie within
    isotonic steps: the raw score keeps the model's order), then episode id."""
    return np.lexsort((index.to_numpy(), -raw, -risk))


def ranked_rows(
    settings: Settings,
    parts: list[ScoredPart],
    as_of: date,
    run_id: int,
    model_version: str,
    reasons_top_n: int | None = None,
) -> list[dict[str, Any]]:
    """The published rows of ``parts`` ranked as one list, reasons kept for the rows the
    list shows (its top and each caseload's top) and dropped for the others."""
    etl = settings.etl
    top_n = etl.reasons_top_n if reasons_top_n is None else reasons_top_n
    one = len(parts) == 1
    features = parts[0].features if one else pd.concat([p.features for p in parts])
    raw = np.concatenate([p.raw for p in parts])
    risk = np.concatenate([p.risk for p in parts])
    explained: dict[str, str] = {}
    for p in parts:
        explained.update(p.explained)
    # Plain lists for the loop below: a label or position lookup per row costs more than the row.
    last_attended = [v for p in parts for v in p.last_attended]
    next_booked = [v for p in parts for v in p.next_booked]
    program = [v for p in parts for v in p.program]
    expected = next((p.expected for p in parts if p.explained), 0.0)
    index = features.index
    order = list_order(index, raw, risk)
    shown = {str(i) for i in index[explained_positions(features, order, top_n,
                                                       etl.reasons_per_caseload)]}
    days_since = features["days_since_attended"].to_numpy()
    client = features["client_id"].to_numpy()
    clinic = features["clinic_id"].to_numpy()
    manager = features["case_manager_id"].to_numpy()
    tiers = tier_names(risk, settings.tiers)
    rows = []
    for rank, i in enumerate(order, start=1):
        episode_id = str(index[i])
        last, nxt = last_attended[i], next_booked[i]
        if episode_id in shown:
            reasons_json = explained[episode_id]
        else:
            reasons_json = orjson.dumps({
                "raw_score": round(float(raw[i]), 6), "expected_value": round(expected, 6),
                "reasons": [], "protective": [], "context": [], "prompts": [],
                "points": None, "left_out": []}).decode()
        rows.append({
            "as_of": as_of,
            "episode_id": episode_id,
            "client_id": client[i],
            "clinic_id": clinic[i],
            "case_manager_id": _none_if_na(manager[i]),
            "program": program[i],
            "rank": rank,
            "risk": round(float(risk[i]), 6),
            "tier": tiers[i],
            "still_engaged": bool(
                pd.notna(last) and days_since[i] <= settings.engaged_within_days
            ),
            "last_attended_on": None if pd.isna(last) else last.date(),
            "next_booked_at": None if pd.isna(nxt) else nxt.to_pydatetime(),
            "model_version": model_version,
            "run_id": run_id,
            "reasons_json": reasons_json,
        })
    return rows


def limits(settings: Settings) -> Limits:
    """How many reasons a list shows, and the least a reason must carry to be shown."""
    return Limits(settings.max_reasons, settings.min_reason_share, settings.min_reason_points)


def payload_of(explanation: Explanation) -> dict[str, Any]:
    """What a published row keeps of an explanation (its ``reasons_json``)."""
    return {
        "raw_score": round(explanation.raw_score, 6),
        "expected_value": round(explanation.expected_value, 6),
        "reasons": [r.to_dict() for r in explanation.reasons],
        "protective": [r.to_dict() for r in explanation.protective],
        "context": [r.to_dict() for r in explanation.context],
        "prompts": [p.to_dict() for p in explanation.prompts],
        "points": explanation.points(),
        "left_out": explanation.left_out,
    }


def reasons_summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """For the run record: how many rows were explained, and how often a family the model
    moved was left out because the client's facts point the other way, by family."""
    explained, left_out = 0, Counter[str]()
    for row in rows:
        payload = orjson.loads(row["reasons_json"])
        if payload.get("points") is not None:
            explained += 1
        left_out.update(payload.get("left_out", []))
    return {"explained": explained, "left_out": dict(sorted(left_out.items()))}


def explained_positions(
    features: pd.DataFrame, order: np.ndarray, top_n: int, per_caseload: int
) -> np.ndarray:
    """Positions (in rank order) of the rows to explain: the list's top and each caseload's."""
    chosen = np.zeros(len(order), dtype=bool)
    chosen[:top_n] = True
    if per_caseload > 0 and len(order):
        ranked = features.iloc[order]
        caseload = ranked["case_manager_id"].astype(object).where(
            ranked["case_manager_id"].notna(), "clinic:" + ranked["clinic_id"].astype(str))
        chosen |= (caseload.groupby(caseload.to_numpy()).cumcount() < per_caseload).to_numpy()
    return order[chosen]


def explain_rows(
    data: Any,
    features: pd.DataFrame,
    contributions: pd.DataFrame,
    families: Mapping[str, str],
    catalogue: Catalogue,
    as_of: date,
    risk_of: RiskOf,
    limits: Limits,
    workers: int = 1,
    min_rows_per_worker: int = 1000,
) -> dict[str, Explanation]:
    """Reasons for each row of ``features``; large batches are split over ``workers`` processes.

    Each episode's reasons depend only on its own rows, so the split cannot change them.
    Each worker is a fork and its own pass over the clinic copy, which pays off only for
    large batches: hence ``min_rows_per_worker`` (docs/performance.md).
    """
    ids = [str(i) for i in features.index]
    workers = min(workers, len(ids) // max(1, min_rows_per_worker))
    if workers <= 1:
        rows = histories(data, list(features.index), as_of)
        return explain(contributions, families, rows, catalogue, risk_of, limits)
    global _EXPLAIN_JOB
    _EXPLAIN_JOB = (data, features, contributions, families, catalogue, as_of, risk_of, limits)
    chunks = [list(range(k, len(ids), workers)) for k in range(workers)]
    try:
        context = multiprocessing.get_context("fork")
        with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
            parts = list(pool.map(_explain_chunk, chunks))
    finally:
        _EXPLAIN_JOB = None
    merged: dict[str, Explanation] = {}
    for part in parts:
        merged.update(part)
    return {i: merged[i] for i in ids}


_EXPLAIN_JOB: tuple[Any, ...] | None = None


def _explain_chunk(positions: list[int]) -> dict[str, Explanation]:
    """In a forked worker: reasons for some rows of the job its parent set up."""
    assert _EXPLAIN_JOB is not None
    data, features, contributions, families, catalogue, as_of, risk_of, limits = _EXPLAIN_JOB
    part = features.iloc[positions]
    rows = histories(data, list(part.index), as_of)
    return explain(contributions.loc[part.index], families, rows, catalogue, risk_of, limits)


def _none_if_na(value: Any) -> Any:
    return None if value is None or (isinstance(value, float) and np.isnan(value)) else value
