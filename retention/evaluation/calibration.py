"""How honest the percentages are: calibration on the evaluation slice, by bin and by decile.

A case manager reads "60%" as "six in ten like this client disengage". This checks it
on the evaluation slice, the latest days the model did not see: the expected
calibration error over ten equal-width bins of predicted risk, and the gap between
predicted and observed rates in each decile of predicted risk, each with a 95%
interval that resamples clients (a client appears in many weekly snapshots).

The bound (``[evaluation]`` calibration settings): ECE at most ``max_ece`` and no decile
with at least ``min_rows`` rows off by more than ``max_gap``. A point estimate over the
bound is *exceeded*; the bound is *broken* only when the evidence says so beyond chance,
so that a clinic too small to tell is not refused on noise:

- ECE is biased upwards on small slices (noise alone puts observed rates off their
  bins), and its bootstrap replicates more so; its interval is the basic bootstrap
  interval (2 x estimate - percentiles), which corrects for that bias, and the bound
  is broken when the interval's low end is above it.
- A decile's gap is broken when it is beyond the bound by more than its bootstrap
  standard error times the normal quantile for 95% across every judged decile
  (Bonferroni): ten deciles give ten chances for one to look off.

The gate refuses a broken bound; ``retention train`` and the report show both.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy.stats import norm

from retention.evaluation import bootstrap as m
from retention.settings import EvaluationSettings


def _interval(values: np.ndarray, point: float) -> dict[str, float]:
    return m.interval(values, point)


def _basic_interval(values: np.ndarray, point: float) -> dict[str, float]:
    """The basic bootstrap interval of a non-negative statistic biased upwards (ECE)."""
    percentile = m.interval(values, point)
    if not np.isfinite(percentile["low"]):
        return percentile
    return {"value": point, "low": max(0.0, 2 * point - percentile["high"]),
            "high": max(0.0, 2 * point - percentile["low"])}


def _standard_error(values: np.ndarray) -> float:
    finite = values[np.isfinite(values)]
    return float(finite.std(ddof=1)) if len(finite) > 1 else float("nan")


def _groups(p: np.ndarray, y: np.ndarray, w: np.ndarray, labels: np.ndarray,
            n_groups: int) -> list[dict[str, Any]]:
    """Per group: rows, mean predicted, observed rate with its interval, and the gap."""
    out = []
    for g in range(n_groups):
        mask = labels == g
        n = int(mask.sum())
        if n == 0:
            continue
        weight = w @ mask.astype(float)
        with np.errstate(invalid="ignore", divide="ignore"):
            predicted_b = (w @ (p * mask)) / weight
            observed_b = (w @ (y * mask)) / weight
        predicted, observed = float(p[mask].mean()), float(y[mask].mean())
        out.append({
            "group": g, "n": n, "low_risk": float(p[mask].min()),
            "high_risk": float(p[mask].max()),
            "predicted": predicted,
            "observed": _interval(observed_b, observed),
            "gap": _interval(predicted_b - observed_b, predicted - observed),
            "gap_se": _standard_error(predicted_b - observed_b),
        })
    return out


def calibration_report(y: np.ndarray, p: np.ndarray, clients: np.ndarray,
                       ev: EvaluationSettings) -> dict[str, Any]:
    """Calibration of probabilities ``p`` for outcomes ``y``, against the bound in ``ev``."""
    y, p = np.asarray(y, dtype=float), np.asarray(p, dtype=float)
    w = m.client_weights(clients, ev.bootstrap_samples, ev.bootstrap_seed)
    ones = np.ones((1, len(y)))
    ece = _basic_interval(m.probability_metrics(w, y, p)["ece"],
                          float(m.probability_metrics(ones, y, p)["ece"][0]))
    bins = np.clip((p * m.ECE_BINS).astype(int), 0, m.ECE_BINS - 1)
    # Deciles of predicted risk (ties kept together, so a decile may hold more rows).
    ranks = np.argsort(np.argsort(p, kind="mergesort"), kind="mergesort")
    deciles = np.minimum(ranks * 10 // max(len(p), 1), 9)
    by_bin = _groups(p, y, w, bins, m.ECE_BINS)
    by_decile = _groups(p, y, w, deciles, 10)
    judged = [d for d in by_decile if d["n"] >= ev.calibration_min_decile_rows]
    worst = max(judged, key=lambda d: abs(d["gap"]["value"]), default=None)
    limit = ev.calibration_max_decile_gap
    exceeded = [d["group"] for d in judged if abs(d["gap"]["value"]) > limit]
    z = float(norm.ppf(1 - 0.025 / max(len(judged), 1)))
    broken = [d["group"] for d in judged
              if abs(d["gap"]["value"]) - z * d["gap_se"] > limit]
    return {
        "n": len(y), "mean_predicted": float(p.mean()) if len(p) else float("nan"),
        "observed_rate": float(y.mean()) if len(y) else float("nan"),
        "ece": ece, "bins": by_bin, "deciles": by_decile,
        "bound": {
            "max_ece": ev.calibration_max_ece, "max_decile_gap": limit,
            "min_decile_rows": ev.calibration_min_decile_rows,
            "ece_exceeded": ece["value"] > ev.calibration_max_ece,
            "ece_broken": ece["low"] > ev.calibration_max_ece,
            "worst_decile": None if worst is None else worst["group"],
            "worst_decile_gap": None if worst is None else worst["gap"],
            "deciles_exceeded": exceeded, "deciles_broken": broken,
            "met": ece["value"] <= ev.calibration_max_ece and not exceeded,
            "broken": ece["low"] > ev.calibration_max_ece or bool(broken),
        },
    }


def summary(report: dict[str, Any]) -> str:
    """One line for ``retention train``: ECE and the worst decile, with intervals, and a verdict."""
    b = report["bound"]
    ece = report["ece"]
    text = (f"ECE {ece['value']:.3f} ({ece['low']:.3f}-{ece['high']:.3f}), "
            f"bound {b['max_ece']:.2f}")
    if b["worst_decile_gap"] is not None:
        g = b["worst_decile_gap"]
        text += (f"; worst decile off by {g['value']:+.3f} ({g['low']:+.3f} to {g['high']:+.3f}),"
                 f" bound {b['max_decile_gap']:.2f}")
    verdict = ("within the bound" if b["met"] else
               "beyond the bound, clearly (the gate refuses)" if b["broken"] else
               "over the bound but within chance at this clinic's size (allowing for "
               "ECE's bias on small slices and for ten deciles)")
    return f"{text}: {verdict}"
