"""Weighted classification metrics, computed for many bootstrap weight vectors at once.

Every metric takes a weight matrix ``w`` of shape (resamples, rows). Row
weights come from resampling *clients* (a client drawn twice counts twice),
so one matrix gives clustered bootstrap estimates of every metric for every
scorer, paired across scorers. A single row of ones gives the point estimate,
which the tests check against scikit-learn.
"""

from __future__ import annotations

import numpy as np

ECE_BINS = 10


def client_weights(clients: np.ndarray, samples: int, seed: int) -> np.ndarray:
    """(samples, rows) weights from resampling clients with replacement.

    Rows of one client share its draw count: the bootstrap unit is the
    client, because one client appears in many weekly snapshots and those
    rows are not independent.
    """
    codes, uniques = _codes(clients)
    rng = np.random.default_rng(seed)
    n = len(uniques)
    counts = rng.multinomial(n, np.full(n, 1.0 / n), size=samples).astype(float)
    return counts[:, codes]


def _codes(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    uniques, codes = np.unique(np.asarray(values).astype(str), return_inverse=True)
    return codes, uniques


def ranking_metrics(w: np.ndarray, y: np.ndarray, score: np.ndarray) -> dict[str, np.ndarray]:
    """Weighted AUROC (ties count half) and average precision (scikit-learn's step sum)."""
    order = np.argsort(-score, kind="mergesort")
    s, yy, wo = score[order], y[order].astype(float), w[:, order]
    starts = np.flatnonzero(np.r_[True, s[1:] != s[:-1]])
    tp = np.add.reduceat(wo * yy, starts, axis=1)
    fp = np.add.reduceat(wo * (1.0 - yy), starts, axis=1)
    pos, neg = tp.sum(axis=1), fp.sum(axis=1)
    ctp, cfp = np.cumsum(tp, axis=1), np.cumsum(fp, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        auroc = (tp * (neg[:, None] - cfp + 0.5 * fp)).sum(axis=1) / (pos * neg)
        precision = ctp / (ctp + cfp)
        recall = ctp / pos[:, None]
        gain = np.diff(np.c_[np.zeros(len(w)), recall], axis=1)
        ap = np.nansum(gain * precision, axis=1)
    ap = np.where(pos > 0, ap, np.nan)
    return {"auroc": auroc, "average_precision": ap}


def probability_metrics(w: np.ndarray, y: np.ndarray, p: np.ndarray) -> dict[str, np.ndarray]:
    """Weighted Brier score and expected calibration error (10 equal-width bins)."""
    total = w.sum(axis=1)
    brier = w @ ((p - y) ** 2) / total
    bins = np.clip((p * ECE_BINS).astype(int), 0, ECE_BINS - 1)
    onehot = np.zeros((len(p), ECE_BINS))
    onehot[np.arange(len(p)), bins] = 1.0
    gap = w @ (onehot * (p - y)[:, None])
    ece = np.abs(gap).sum(axis=1) / total
    return {"brier": brier, "ece": ece}


def flag_metrics(w: np.ndarray, y: np.ndarray, flagged: np.ndarray) -> dict[str, np.ndarray]:
    """Precision, recall and share flagged for a fixed set of flagged rows."""
    f = flagged.astype(float)
    hits = w @ (y * f)
    with np.errstate(invalid="ignore", divide="ignore"):
        return {
            "precision": hits / (w @ f),
            "recall": hits / (w @ y.astype(float)),
            "flag_rate": (w @ f) / w.sum(axis=1),
        }


def calibration_curve(y: np.ndarray, p: np.ndarray, bins: int = ECE_BINS) -> dict[str, list[float]]:
    """Mean predicted and observed rate per equal-width bin (empty bins left out)."""
    idx = np.clip((p * bins).astype(int), 0, bins - 1)
    out: dict[str, list[float]] = {"predicted": [], "observed": [], "n": []}
    for b in range(bins):
        m = idx == b
        if m.any():
            out["predicted"].append(float(p[m].mean()))
            out["observed"].append(float(y[m].mean()))
            out["n"].append(float(m.sum()))
    return out


def interval(values: np.ndarray, point: float, level: float = 0.95) -> dict[str, float]:
    """Point estimate with a percentile bootstrap interval (NaN-safe)."""
    finite = values[np.isfinite(values)]
    if not np.isfinite(point) or len(finite) == 0:
        return {"value": float(point), "low": float("nan"), "high": float("nan")}
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(finite, [tail, 100 - tail])
    return {"value": float(point), "low": float(low), "high": float(high)}
