"""Held-out evaluation: the model and the clinic's baselines on the same rows, with CIs.

Rows are the evaluation slice's snapshots (every open episode at every
snapshot date, label observed). Each scorer is judged on all open episodes and
on clients still engaged (attended within ``engaged_within_days``), where early
warning matters most. Intervals are 95% percentile bootstraps that resample
clients, not rows; every scorer sees the same resamples, so differences
between scorers have paired intervals too.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from sklearn.metrics import precision_recall_curve, roc_curve

from retention.evaluation import bootstrap as m
from retention.evaluation.baselines import BaselineScore
from retention.model.booster import TrainedModel
from retention.model.training import engaged_rows

CURVE_POINTS = 200
SUBSETS = ("all", "engaged")


@dataclass(frozen=True)
class Scorer:
    """A ranking score on the evaluation rows, its probability if calibrated, its own flags.

    ``kind`` is ``model`` (the candidate), ``current`` (the model in service)
    or ``baseline``.
    """

    name: str
    label: str
    kind: str
    score: np.ndarray
    probability: np.ndarray | None = None
    flagged: np.ndarray | None = None


def model_scorer(model: TrainedModel, rows: pd.DataFrame, name: str = "model",
                 kind: str = "model") -> Scorer:
    """Rank by the booster's raw score, as scoring does; judge calibration on the probability.

    Ranking by the raw score keeps the order within isotonic steps, where the
    calibrated probabilities tie.
    """
    raw = model.raw_score(rows)
    return Scorer(name, f"LightGBM {model.version}", kind, raw, model.calibrator.predict(raw))


def baseline_scorer(b: BaselineScore) -> Scorer:
    return Scorer(b.name, b.label, "baseline", b.score, b.probability, b.flagged)


def engaged_mask(rows: pd.DataFrame, within_days: int) -> np.ndarray:
    """Still engaged: attended a session within ``within_days`` before the as-of date."""
    if within_days > 28:
        raise ValueError("engaged_within_days above 28 is not supported by the 28-day counts")
    return engaged_rows(rows, within_days)


def top_k_flags(rows: pd.DataFrame, score: np.ndarray, k: int) -> np.ndarray:
    """True for the k highest scores per clinic per snapshot date (ties by episode id)."""
    frame = pd.DataFrame({
        "clinic": rows["clinic_id"].astype(str).to_numpy(),
        "as_of": rows["as_of"].to_numpy(),
        "neg": -np.asarray(score, dtype=float),
        "episode": rows["episode_id"].astype(str).to_numpy(),
        "pos": np.arange(len(rows)),
    }).sort_values(["clinic", "as_of", "neg", "episode"], kind="mergesort")
    rank = frame.groupby(["clinic", "as_of"], sort=False).cumcount().to_numpy()
    flags = np.zeros(len(rows), dtype=bool)
    flags[frame["pos"].to_numpy()] = rank < k
    return flags


def evaluate(
    rows: pd.DataFrame,
    scorers: list[Scorer],
    *,
    engaged_within_days: int,
    capacity_k: int,
    samples: int,
    seed: int,
) -> dict[str, Any]:
    """Every scorer's metrics with clustered bootstrap CIs, on all rows and the engaged subset."""
    if rows.empty or rows["label"].nunique() < 2:
        raise ValueError("the evaluation slice is empty or has one outcome class; "
                         "use more history")
    y_all = rows["label"].to_numpy(float)
    weights = m.client_weights(rows["client_id"].to_numpy(), samples, seed)
    masks = {"all": np.ones(len(rows), dtype=bool),
             "engaged": engaged_mask(rows, engaged_within_days)}
    out: dict[str, Any] = {
        "rows": len(rows),
        "clients": int(rows["client_id"].nunique()),
        "snapshot_dates": _date_span(rows),
        "capacity_k": capacity_k,
        "engaged_within_days": engaged_within_days,
        "bootstrap": {"samples": samples, "seed": seed, "unit": "client", "level": 0.95,
                      "method": "percentile"},
        "scorers": {s.name: {"label": s.label, "kind": s.kind} for s in scorers},
        "subsets": {},
    }
    for subset, mask in masks.items():
        y, w = y_all[mask], weights[:, mask]
        sub_rows = rows[mask]
        result: dict[str, Any] = {
            "n": int(mask.sum()), "positives": int(y.sum()),
            "clients": int(sub_rows["client_id"].nunique()),
            "base_rate": float(y.mean()) if len(y) else math.nan,
            "metrics": {}, "curves": {},
        }
        boots: dict[str, dict[str, np.ndarray]] = {}
        points: dict[str, dict[str, float]] = {}
        for s in scorers:
            point, boot = _scorer_metrics(sub_rows, y, w, s, mask, capacity_k)
            boots[s.name], points[s.name] = boot, point
            result["metrics"][s.name] = {k: m.interval(boot[k], point[k]) for k in point}
            result["curves"][s.name] = _curves(y, s.score[mask], None if s.probability is None
                                               else s.probability[mask])
        result["differences"] = _differences(scorers, points, boots)
        out["subsets"][subset] = result
    return out


def _date_span(rows: pd.DataFrame) -> dict[str, Any]:
    dates = rows["as_of"].dt.date
    return {"first": dates.min().isoformat(), "last": dates.max().isoformat(),
            "count": int(dates.nunique())}


def _scorer_metrics(
    rows: pd.DataFrame, y: np.ndarray, w: np.ndarray, s: Scorer, mask: np.ndarray, k: int
) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    ones = np.ones((1, len(y)))
    score = s.score[mask]
    boot: dict[str, np.ndarray] = {}
    point: dict[str, float] = {}

    def add(name: str, fn_boot: dict[str, np.ndarray], fn_point: dict[str, np.ndarray],
            rename: dict[str, str] | None = None) -> None:
        for key, values in fn_boot.items():
            label = (rename or {}).get(key, key)
            boot[label] = values
            point[label] = float(fn_point[key][0])

    add("rank", m.ranking_metrics(w, y, score), m.ranking_metrics(ones, y, score))
    if s.probability is not None:
        p = s.probability[mask]
        add("prob", m.probability_metrics(w, y, p), m.probability_metrics(ones, y, p))
    else:
        for key in ("brier", "ece"):
            boot[key], point[key] = np.full(len(w), np.nan), math.nan
    flags = top_k_flags(rows, score, k)
    add("k", m.flag_metrics(w, y, flags), m.flag_metrics(ones, y, flags),
        {"precision": "precision_at_k", "recall": "recall_at_k", "flag_rate": "share_in_top_k"})
    if s.flagged is not None:
        own = s.flagged[mask]
        add("rule", m.flag_metrics(w, y, own), m.flag_metrics(ones, y, own),
            {"precision": "rule_precision", "recall": "rule_recall",
             "flag_rate": "rule_flag_rate"})
    return point, boot


def _differences(
    scorers: list[Scorer], points: dict[str, dict[str, float]],
    boots: dict[str, dict[str, np.ndarray]],
) -> dict[str, Any]:
    """Candidate minus each other scorer, paired over the same client resamples."""
    out: dict[str, Any] = {}
    for s in scorers:
        if s.kind == "model":
            continue
        out[s.name] = {
            key: m.interval(boots["model"][key] - boots[s.name][key],
                            points["model"][key] - points[s.name][key])
            for key in ("auroc", "average_precision")
        }
    return out


def _curves(y: np.ndarray, score: np.ndarray, p: np.ndarray | None) -> dict[str, Any]:
    """Down-sampled ROC and PR curves, and the calibration curve for probabilities."""
    if len(np.unique(y)) < 2:
        return {}
    fpr, tpr, _ = roc_curve(y, score)
    precision, recall, _ = precision_recall_curve(y, score)
    out: dict[str, Any] = {
        "roc": _thin({"fpr": fpr, "tpr": tpr}),
        "pr": _thin({"recall": recall[::-1], "precision": precision[::-1]}),
    }
    if p is not None:
        out["calibration"] = m.calibration_curve(y, p)
        hist_pos, edges = np.histogram(p[y == 1], bins=20, range=(0, 1))
        hist_neg, _ = np.histogram(p[y == 0], bins=20, range=(0, 1))
        out["histogram"] = {"edges": edges.tolist(), "positives": hist_pos.tolist(),
                            "negatives": hist_neg.tolist()}
    return out


def _thin(curve: dict[str, np.ndarray]) -> dict[str, list[float]]:
    n = len(next(iter(curve.values())))
    idx = np.unique(np.linspace(0, n - 1, min(n, CURVE_POINTS)).astype(int))
    return {k: [round(float(v), 5) for v in arr[idx]] for k, arr in curve.items()}


def best_baseline(evaluation: dict[str, Any], subset: str = "engaged",
                  metric: str = "auroc") -> tuple[str, float]:
    """The baseline with the highest point estimate of ``metric`` on ``subset``."""
    kinds = evaluation["scorers"]
    values = {
        name: v[metric]["value"]
        for name, v in evaluation["subsets"][subset]["metrics"].items()
        if kinds[name]["kind"] == "baseline" and v[metric]["value"] is not None
        and math.isfinite(v[metric]["value"])
    }
    if not values:
        raise ValueError(f"no baseline has a finite {metric} on the {subset} rows")
    name = max(values, key=lambda k: values[k])
    return name, values[name]


def json_safe(value: Any) -> Any:
    """NaN and infinities as null, numpy scalars as Python numbers, for strict JSON."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
