"""Drift: population stability of every feature and of the score against training data.

At training time each feature's distribution on the training slice is stored
with the model as bin edges (deciles) and shares, with missing values as their
own bin. Each scoring run compares today's open episodes with that reference
(PSI = sum((a - e) * ln(a / e)) over bins); values above the threshold are
flagged. The scoring run records them (``retention.store.lists.record_drift``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from retention.features.spec import CATEGORIES, FEATURES

SCORE = "__score__"
# Shares are floored so an empty bin gives a large but finite PSI.
EPSILON = 1e-4
MISSING = "__missing__"


def reference(frame: pd.DataFrame, score: np.ndarray) -> dict[str, Any]:
    """Bins and shares of each feature and of the score on the training rows."""
    out: dict[str, Any] = {}
    for f in FEATURES:
        values = frame[f.name]
        if f.kind == "categorical":
            out[f.name] = _categorical_reference(values, CATEGORIES[f.name])
        else:
            out[f.name] = _numeric_reference(pd.to_numeric(values, errors="coerce"))
    out[SCORE] = _numeric_reference(pd.Series(score, dtype=float))
    return out


def _numeric_reference(values: pd.Series) -> dict[str, Any]:
    finite = values.dropna().to_numpy(float)
    edges: list[float] = (
        [float(e) for e in np.unique(np.quantile(finite, np.linspace(0.1, 0.9, 9)))]
        if len(finite) else []
    )
    return {"kind": "numeric", "edges": edges, "shares": _numeric_shares(values, edges)}


def _numeric_shares(values: pd.Series, edges: list[float]) -> list[float]:
    v = pd.to_numeric(values, errors="coerce").to_numpy(float)
    n = max(len(v), 1)
    present = v[~np.isnan(v)]
    # Bins (-inf, e1], (e1, e2], ... (ek, inf), then missing.
    counts = np.bincount(np.searchsorted(edges, present, side="left"), minlength=len(edges) + 1)
    return [float(c) / n for c in counts] + [float(np.isnan(v).sum()) / n]


def _categorical_reference(values: pd.Series, categories: tuple[str, ...]) -> dict[str, Any]:
    return {"kind": "categorical", "categories": list(categories),
            "shares": _categorical_shares(values, list(categories))}


def _categorical_shares(values: pd.Series, categories: list[str]) -> list[float]:
    v = values.astype(object)
    n = max(len(v), 1)
    shares = [float((v == c).sum()) / n for c in categories]
    return [*shares, 1.0 - sum(shares)]


def psi(expected: list[float], actual: list[float]) -> float:
    """Population stability index between two share vectors over the same bins."""
    e = np.maximum(np.asarray(expected, dtype=float), EPSILON)
    a = np.maximum(np.asarray(actual, dtype=float), EPSILON)
    return float(np.sum((a - e) * np.log(a / e)))


def drift_table(ref: Mapping[str, Any], frame: pd.DataFrame, score: np.ndarray,
                threshold: float, min_rows: int = 0) -> list[dict[str, Any]]:
    """PSI of each referenced feature and the score for today's rows, flagged above threshold.

    Nothing is flagged for fewer than ``min_rows`` rows: the PSI of a small
    sample is mostly noise.
    """
    enough = len(frame) >= min_rows
    out = []
    for name, r in ref.items():
        values = pd.Series(score, dtype=float) if name == SCORE else frame[name]
        if r["kind"] == "categorical":
            actual = _categorical_shares(values, r["categories"])
        else:
            actual = _numeric_shares(values, r["edges"])
        value = psi(r["shares"], actual)
        out.append({"feature": name, "psi": round(value, 6),
                    "flagged": enough and value > threshold})
    return out
