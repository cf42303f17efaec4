"""Drift: population stability of every feature and of the score against training data.

At training time each feature's distribution on the training slice is stored
with the model as bin edges (deciles) and shares, with missing values as their
own bin. Each scoring run compares today's open episodes with that reference
(PSI = sum((a - e) * ln(a / e)) over bins) and records one row per feature in
the ``drift`` table; values above the threshold are flagged.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from datetime import date
from typing import Any

import numpy as np
import pandas as pd
from sqlalchemy import (
    Boolean,
    Column,
    Connection,
    Date,
    Float,
    Integer,
    String,
    Table,
    delete,
    func,
    insert,
    select,
)

from retention.features.spec import CATEGORIES, FEATURES
from retention.store import metadata

SCORE = "__score__"
# Shares are floored so an empty bin gives a large but finite PSI.
EPSILON = 1e-4
MISSING = "__missing__"

drift = Table(
    "drift",
    metadata,
    Column("run_id", Integer, primary_key=True),
    Column("feature", String(64), primary_key=True),
    Column("as_of", Date, nullable=False),
    Column("model_version", String(64), nullable=False),
    Column("psi", Float, nullable=False),
    Column("flagged", Boolean, nullable=False),
)


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


def record_drift(connection: Connection, run_id: int, as_of: date, model_version: str,
                 results: list[dict[str, Any]]) -> None:
    """Store one scoring run's drift rows (the caller owns the transaction)."""
    connection.execute(delete(drift).where(drift.c.run_id == run_id))
    if results:
        connection.execute(insert(drift), [
            {"run_id": run_id, "as_of": as_of, "model_version": model_version, **r}
            for r in results
        ])


def latest_drift(connection: Connection) -> dict[str, Any]:
    """The newest scoring run's drift: flagged features, the score's PSI, and all values.

    Returns ``{"run_id": None, ...}`` when no run has recorded drift yet.
    """
    return run_drift(connection, connection.execute(select(func.max(drift.c.run_id))).scalar())


def run_drift(connection: Connection, run_id: int | None) -> dict[str, Any]:
    """One scoring run's drift, as ``latest_drift`` gives it (empty if none was recorded)."""
    rows = [] if run_id is None else connection.execute(
        select(drift).where(drift.c.run_id == run_id)).fetchall()
    if not rows:
        return {"run_id": run_id, "as_of": None, "model_version": None, "drifted": False,
                "flagged": [], "score_psi": None, "psi": {}}
    psi_values = {r.feature: float(r.psi) for r in rows}
    flagged = sorted(r.feature for r in rows if r.flagged)
    score_psi = psi_values.pop(SCORE, math.nan)
    return {
        "run_id": int(rows[0].run_id),
        "as_of": rows[0].as_of.isoformat() if rows else None,
        "model_version": rows[0].model_version if rows else None,
        "drifted": bool(flagged),
        "flagged": ["score" if f == SCORE else f for f in flagged],
        "score_psi": None if math.isnan(score_psi) else score_psi,
        "psi": psi_values,
    }
