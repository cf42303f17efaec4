"""Subgroup performance: discrimination, calibration and flag rate per group and program.

Demographics (sex, age band, race/ethnicity) are never model inputs; they are
joined to the evaluation rows here, only to report how the model serves each
group. A group whose AUROC falls below the whole population's, whose mean
predicted risk misses its observed rate, or whose share of dropouts that make
the capacity list (recall at k) differs from the whole population's by more
than the tolerance is flagged. Groups too small to judge are reported, not judged.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from retention.evaluation import bootstrap as m

AGE_BANDS = ((0, 25, "under 25"), (25, 35, "25-34"), (35, 45, "35-44"), (45, 55, "45-54"),
             (55, 200, "55 and over"))
DIMENSIONS = ("sex", "age_band", "race_ethnicity", "program")


def group_columns(rows: pd.DataFrame, clients: pd.DataFrame) -> pd.DataFrame:
    """Sex, age band at the as-of date, race/ethnicity and program for each row."""
    demo = clients.set_index("client_id")[["birth_year", "sex", "race_ethnicity"]]
    joined = rows[["client_id", "as_of", "program"]].join(demo, on="client_id")
    age = joined["as_of"].dt.year - pd.to_numeric(joined["birth_year"], errors="coerce")
    band = pd.Series("not recorded", index=rows.index, dtype=object)
    for low, high, name in AGE_BANDS:
        band[(age >= low) & (age < high)] = name
    return pd.DataFrame({
        "sex": joined["sex"].fillna("not recorded").astype(str),
        "age_band": band,
        "race_ethnicity": joined["race_ethnicity"].fillna("not recorded").astype(str),
        "program": joined["program"].astype(str),
    }, index=rows.index)


def fairness_report(
    y: np.ndarray,
    score: np.ndarray,
    probability: np.ndarray,
    flagged: np.ndarray,
    groups: pd.DataFrame,
    *,
    tolerance: float,
    min_outcomes: int,
) -> dict[str, Any]:
    """Per-group metrics and the gaps beyond ``tolerance``, on the same rows as the evaluation."""
    overall = _group_metrics(y, score, probability, flagged)
    out: dict[str, Any] = {"tolerance": tolerance, "min_outcomes": min_outcomes,
                           "overall": overall, "groups": {}, "flags": []}
    for dim in DIMENSIONS:
        table = []
        for value in sorted(groups[dim].unique()):
            mask = (groups[dim] == value).to_numpy()
            g = _group_metrics(y[mask], score[mask], probability[mask], flagged[mask])
            g["group"] = str(value)
            g["judged"] = bool(g["positives"] >= min_outcomes
                               and g["n"] - g["positives"] >= min_outcomes)
            g["gaps"] = _gaps(g, overall, tolerance) if g["judged"] else []
            for gap in g["gaps"]:
                out["flags"].append(f"{dim}={value}: {gap}")
            table.append(g)
        out["groups"][dim] = table
    return out


def _group_metrics(y: np.ndarray, score: np.ndarray, p: np.ndarray,
                   flagged: np.ndarray) -> dict[str, Any]:
    ones = np.ones((1, len(y)))
    n, pos = len(y), int(y.sum())
    both = 0 < pos < n
    rank = m.ranking_metrics(ones, y, score) if both else None
    prob = m.probability_metrics(ones, y, p) if n else None
    flags = m.flag_metrics(ones, y, flagged) if n else None
    return {
        "n": n,
        "positives": pos,
        "base_rate": float(y.mean()) if n else math.nan,
        "mean_risk": float(p.mean()) if n else math.nan,
        "calibration_gap": float(p.mean() - y.mean()) if n else math.nan,
        "auroc": float(rank["auroc"][0]) if rank else math.nan,
        "ece": float(prob["ece"][0]) if prob else math.nan,
        "flag_rate": float(flags["flag_rate"][0]) if flags else math.nan,
        "recall_at_k": float(flags["recall"][0]) if flags and pos else math.nan,
    }


def _gaps(g: dict[str, Any], overall: dict[str, Any], tol: float) -> list[str]:
    gaps = []
    if overall["auroc"] - g["auroc"] > tol:
        gaps.append(f"AUROC {g['auroc']:.3f} vs {overall['auroc']:.3f} overall")
    if abs(g["calibration_gap"]) > tol:
        gaps.append(f"mean risk {g['mean_risk']:.3f} vs observed {g['base_rate']:.3f}")
    if abs(g["recall_at_k"] - overall["recall_at_k"]) > tol:
        gaps.append(f"recall at capacity {g['recall_at_k']:.3f} vs "
                    f"{overall['recall_at_k']:.3f} overall")
    return gaps
