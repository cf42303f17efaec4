"""Drift: has the population scored today moved away from the one the model was judged on?

At training time each feature's distribution on the evaluation slice (the latest rows
the model was judged on, closest to the days it will score) is stored with the model
as bin edges (deciles) and shares, missing values as their own bin, with the number
of rows. Each scoring run compares today's open episodes with that reference. A
feature is flagged only when the move is both large (population stability index,
PSI = sum((a - e) * ln(a / e)) over bins, above the threshold) and beyond chance for
the number of episodes scored (a chi-square goodness-of-fit test of today's counts
against the reference shares, Bonferroni-corrected across the features): the PSI of
a few hundred episodes moves by chance alone. The scoring run records the results
(``retention.store.lists.record_drift``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd
from scipy.stats import chisquare

from retention.features.spec import BY_NAME, CATEGORIES, FEATURES

SCORE = "__score__"
# Shares are floored so an empty bin gives a large but finite PSI.
EPSILON = 1e-4
# Significance of a flagged move, before dividing among the features tested.
ALPHA = 0.01
# Bins expected to hold fewer of today's rows than this are merged (chi-square's rule).
MIN_EXPECTED = 5.0


# A weekday's own reference needs at least this many rows; below it the pooled one serves.
MIN_WEEKDAY_ROWS = 200


def reference(frame: pd.DataFrame, score: np.ndarray) -> dict[str, Any]:
    """Bins and shares of each feature and of the score on the reference rows, pooled and,
    where the rows carry their as-of date, per weekday of it.

    Days since the last session and until the next one follow the week's timetable: on a
    Sunday nobody attended yesterday. A list is compared with the reference of its own
    weekday, so a Sunday's list is not "drifted" from a pool of weekdays.
    """
    out = _reference(frame, score)
    if "as_of" in frame.columns:
        weekday = pd.to_datetime(frame["as_of"]).dt.day_of_week.to_numpy()
        out["__by_weekday__"] = {
            str(day): _reference(frame[weekday == day], np.asarray(score)[weekday == day])
            for day in range(7) if int(np.sum(weekday == day)) >= MIN_WEEKDAY_ROWS
        }
    return out


def for_weekday(ref: Mapping[str, Any], weekday: int) -> Mapping[str, Any]:
    """The reference to compare a list of ``weekday`` (Monday 0) with."""
    return ref.get("__by_weekday__", {}).get(str(weekday), ref)


def _reference(frame: pd.DataFrame, score: np.ndarray) -> dict[str, Any]:
    out: dict[str, Any] = {"__rows__": len(frame)}
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
    tested = [name for name in ref if name not in ("__rows__", "__by_weekday__")]
    out = []
    for name in tested:
        r = ref[name]
        values = pd.Series(score, dtype=float) if name == SCORE else frame[name]
        if r["kind"] == "categorical":
            actual = _categorical_shares(values, r["categories"])
        else:
            actual = _numeric_shares(values, r["edges"])
        value = psi(r["shares"], actual)
        p = beyond_chance(r["shares"], actual, len(values))
        out.append({"feature": name, "psi": round(value, 6),
                    "flagged": bool(enough and value > threshold
                                    and p < ALPHA / max(len(tested), 1))})
    return out


def beyond_chance(expected: list[float], actual: list[float], n: int) -> float:
    """The p-value of today's ``n`` rows falling into the bins as ``actual`` says, if they
    were drawn from the reference shares (chi-square goodness of fit; sparse bins merged)."""
    if n == 0:
        return 1.0
    e = np.maximum(np.asarray(expected, dtype=float), 0.0)
    e = e / e.sum() * n if e.sum() > 0 else np.full(len(e), n / max(len(e), 1))
    o = np.asarray(actual, dtype=float) * n
    # Merge each sparse bin into its neighbour (the missing bin last) until all have enough.
    obs, exp = [], []
    run_o = run_e = 0.0
    for oi, ei in zip(o, e, strict=True):
        run_o, run_e = run_o + oi, run_e + ei
        if run_e >= MIN_EXPECTED:
            obs.append(run_o)
            exp.append(run_e)
            run_o = run_e = 0.0
    if run_e > 0 or run_o > 0:
        if exp:
            obs[-1] += run_o
            exp[-1] += run_e
        else:
            obs, exp = [run_o], [run_e]
    if len(exp) < 2:
        return 1.0
    exp_arr = np.asarray(exp)
    obs_arr = np.asarray(obs) * exp_arr.sum() / max(np.sum(obs), 1e-12)
    return float(chisquare(obs_arr, exp_arr).pvalue)


def drift_explanation(flagged: list[str]) -> str | None:
    """What a case manager or operator should know when inputs have drifted (None if none)."""
    if not flagged:
        return None
    words = [BY_NAME[f].description if f in BY_NAME else "the risk scores themselves"
             for f in flagged]
    shown = "; ".join(words[:4]) + (f"; and {len(words) - 4} more" if len(words) > 4 else "")
    return ("The clients on this list differ, beyond chance, from those the model was last "
            f"checked on, in: {shown}. Risks may be less accurate until the model is retrained: "
            "check recent attendance in the EHR before acting on a surprising rank, and ask "
            "the data team to check the clinic's data feed and retrain (docs/model.md, Drift).")
