"""A rolling-origin backtest: at each origin, train on what was known then, score who was open.

For every origin O (every few weeks over a period), a model is fitted as ``retention
train`` would fit it, on the snapshots whose outcome was observable at O (``as_of +
horizon <= O``) within the training window, and the model ``fit`` returns (the one a
version serves) scores; a logistic regression is fitted on the same rows. Both, and
the clinic's rules, score the episodes open at O, whose outcome is the horizon after
O: no training row's outcome window reaches past O, so nothing scored was learnt.
Every origin's rows are pooled and judged as the held-out evaluation judges a
candidate (``heldout.evaluate``: client-bootstrap intervals, paired differences,
precision at capacity per clinic per date) with the calibration check on the model's
probabilities. The answer to "how would this have done here?", with no model saved
and nothing promoted.

Snapshot rows are built once, on one grid of dates every ``snapshot_every_days``
ending a horizon before the last origin, and sliced per origin: building features is
the expensive part. The pooled ranking mixes the raw scores of one model per origin;
precision at capacity compares within a date, so within one model, and the
per-origin table gives each origin's own AUROC.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import date, timedelta
from typing import Any

import numpy as np
import pandas as pd

from retention.clinic.data import ClinicData
from retention.evaluation import bootstrap as m
from retention.evaluation.baselines import fit_logistic, logistic_baseline, rule_baselines
from retention.evaluation.calibration import calibration_report
from retention.evaluation.heldout import (
    SUBSETS,
    Scorer,
    baseline_scorer,
    best_baseline,
    engaged_mask,
    evaluate,
    json_safe,
    model_scorer,
)
from retention.model.artifacts import fingerprint
from retention.model.training import (
    Progress,
    fit_as_configured,
    snapshot_dates,
    training_rows,
)
from retention.settings import Settings

# Without --from: origins over the six months (26 weeks) up to the latest one.
DEFAULT_PERIOD_DAYS = 182
MODEL_LABEL = "LightGBM, retrained at each origin"
# The ``[evaluation]`` settings a backtest uses, recorded with its result.
EVALUATION_SETTINGS = ("evaluate_share", "calibrate_share", "calibration_method",
                       "isotonic_min_outcomes", "calibration_max_ece",
                       "calibration_max_decile_gap", "calibration_min_decile_rows", "capacity_k",
                       "bootstrap_samples", "bootstrap_seed")


class BacktestError(ValueError):
    """The backtest asked for cannot be run."""


class LabelWindowOpen(BacktestError):
    """An origin's outcome window ends after the as-of date: its labels are not known yet."""


class EmptyPeriod(BacktestError):
    """The period holds no origin."""


class NoUsableOrigin(BacktestError):
    """No origin had enough history to train on, or nobody open to score."""


@dataclass(frozen=True)
class OriginResult:
    """What happened at one origin: the rows trained on and scored, or why it was skipped."""

    origin: date
    train_rows: int
    train_snapshots: int
    reason: str = ""
    test_rows: int = 0
    positives: int = 0
    engaged_rows: int = 0
    engaged_positives: int = 0
    model_version: str = ""
    calibration: str = ""
    # The model's own record of the snapshots it was fitted on (its metadata's window).
    window: dict[str, str] = field(default_factory=dict)
    # Per subset, per scorer: AUROC and average precision on this origin's rows alone.
    metrics: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)

    @property
    def scored(self) -> bool:
        return not self.reason

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["origin"] = self.origin.isoformat()
        out["status"] = "scored" if self.scored else "skipped"
        return out


OnOrigin = Callable[[int, int, OriginResult], None]


@dataclass(frozen=True)
class Backtest:
    """Every origin's outcome, the pooled rows and scores, and their evaluation.

    ``scorers`` hold one array per pooled row, in ``rows``' order; ``evaluation`` is
    ``heldout.evaluate`` on them with the model's calibration under ``calibration``.
    """

    until: date
    every_weeks: int | None
    origins: list[OriginResult]
    rows: pd.DataFrame
    scorers: list[Scorer]
    evaluation: dict[str, Any]
    settings: dict[str, Any]

    @property
    def scored(self) -> list[OriginResult]:
        return [o for o in self.origins if o.scored]

    def best_baselines(self) -> dict[str, str | None]:
        """Per subset, the baseline with the highest pooled AUROC (None if none is finite)."""
        out: dict[str, str | None] = {}
        for subset in SUBSETS:
            try:
                out[subset] = best_baseline(self.evaluation, subset, "auroc")[0]
            except ValueError:
                out[subset] = None
        return out

    def to_dict(self) -> dict[str, Any]:
        """Everything the report shows, JSON-ready (NaN as null)."""
        dates = [o.origin for o in self.origins]
        return json_safe({
            "as_of": self.until.isoformat(),
            "period": {"from": min(dates).isoformat(), "to": max(dates).isoformat(),
                       "every_weeks": self.every_weeks, "origins": len(dates),
                       "scored": len(self.scored), "skipped": len(dates) - len(self.scored)},
            "settings": self.settings,
            "model": MODEL_LABEL,
            "logistic_trained_on": "every training row at the origin",
            "data_fingerprint": fingerprint(self.rows),
            "origins": [o.to_dict() for o in self.origins],
            "best_baseline": self.best_baselines(),
            "evaluation": self.evaluation,
        })


def origin_dates(
    until: date,
    horizon_days: int,
    *,
    every_weeks: int,
    start: date | None = None,
    end: date | None = None,
) -> list[date]:
    """Origins every ``every_weeks`` weeks from ``end`` back to ``start``, oldest first.

    ``end`` defaults to the latest origin whose outcome is known by ``until`` (a horizon
    before it), ``start`` to ``DEFAULT_PERIOD_DAYS`` before ``end``. An ``end`` whose
    outcome window passes ``until`` is refused.
    """
    if every_weeks < 1:
        raise BacktestError("origins must be at least one week apart")
    latest = until - timedelta(days=horizon_days)
    end = latest if end is None else end
    if end > latest:
        raise LabelWindowOpen(
            f"origin {end}: its {horizon_days}-day outcome window ends "
            f"{end + timedelta(days=horizon_days)}, after the as-of date {until}, so its "
            f"labels are not known; the latest origin with a known outcome is {latest}")
    start = end - timedelta(days=DEFAULT_PERIOD_DAYS) if start is None else start
    if start > end:
        raise EmptyPeriod(f"the period {start} to {end} holds no origin (it starts after "
                          "it ends)")
    step = timedelta(weeks=every_weeks)
    origins = []
    day = end
    while day >= start:
        origins.append(day)
        day -= step
    return sorted(origins)


def snapshot_grid(origins: Sequence[date], horizon_days: int, every_days: int,
                  window_days: int) -> list[date]:
    """One grid of snapshot dates serving every origin's training window, oldest first."""
    first, last = min(origins), max(origins)
    return snapshot_dates(last, horizon_days, every_days, window_days + (last - first).days)


def training_slice(rows: pd.DataFrame, origin: date, horizon_days: int,
                   window_days: int) -> pd.DataFrame:
    """Rows whose outcome was observable at ``origin``, within the training window."""
    as_of = rows["as_of"].dt.date
    known = as_of + timedelta(days=horizon_days) <= origin
    recent = as_of >= origin - timedelta(days=window_days)
    return rows[known & recent].reset_index(drop=True)


def run_backtest(
    data: ClinicData,
    settings: Settings,
    origins: Sequence[date],
    until: date,
    *,
    every_weeks: int | None = None,
    on_origin: OnOrigin | None = None,
    progress: Progress | None = None,
) -> Backtest:
    """Fit at every origin, score the episodes open at it, pool and evaluate.

    An origin the model cannot be fitted at (too little history before it: ``fit``
    refuses) is skipped with its reason, and so is one with nobody open. ``until`` is
    the as-of date: every origin's outcome window must end by it.
    """
    origins = sorted(set(origins))
    if not origins:
        raise EmptyPeriod("no origin to backtest")
    horizon, window = settings.horizon_days, settings.training_window_days
    for origin in origins:
        if origin + timedelta(days=horizon) > until:
            raise LabelWindowOpen(
                f"origin {origin}: its {horizon}-day outcome window ends "
                f"{origin + timedelta(days=horizon)}, after the as-of date {until}")
    ms = settings.evaluation
    grid = snapshot_grid(origins, horizon, settings.snapshot_every_days, window)
    # Nobody is open on or before the first admission: those snapshots would be empty.
    first_admitted = data.episodes["admitted_on"].min()
    grid = [day for day in grid if not pd.isna(first_admitted) and day > first_admitted.date()]
    if not grid:
        raise NoUsableOrigin(f"no episode was open at any snapshot before {max(origins)} "
                             "whose outcome was known by then: no history to train on")
    # Labelled up to the last origin only: no row's outcome looks past the origins.
    rows = training_rows(data, grid, horizon, max(origins), progress,
                         registry=settings.instruments)
    results: list[OriginResult] = []
    tested: list[pd.DataFrame] = []
    model_raw: list[np.ndarray] = []
    model_p: list[np.ndarray] = []
    logistic: list[np.ndarray] = []
    logistic_scorer: Scorer | None = None
    for i, origin in enumerate(origins):
        train = training_slice(rows, origin, horizon, window)
        outcome, test, scores = _fit_and_score(data, settings, origin, until, train)
        results.append(outcome)
        if test is not None:
            tested.append(test)
            model_raw.append(scores[0].score)
            model_p.append(np.asarray(scores[0].probability))
            logistic.append(scores[1].score)
            logistic_scorer = scores[1]
        if on_origin:
            on_origin(i + 1, len(origins), outcome)
    if not tested:
        reasons = "; ".join(f"{r.origin}: {r.reason}" for r in results)
        raise NoUsableOrigin(f"no origin could be backtested ({reasons})")
    pooled = pd.concat(tested, ignore_index=True)
    if pooled["label"].nunique() < 2:
        raise NoUsableOrigin("every scored episode had the same outcome: nothing to rank")
    lr = np.concatenate(logistic)
    assert logistic_scorer is not None
    scorers = [
        Scorer("model", MODEL_LABEL, "model", np.concatenate(model_raw),
               np.concatenate(model_p)),
        *(baseline_scorer(b) for b in rule_baselines(pooled)),
        # The regression's own name and label, with every origin's scores.
        replace(logistic_scorer, score=lr, probability=lr),
    ]
    evaluation = evaluate(pooled, scorers, engaged_within_days=settings.engaged_within_days,
                          capacity_k=ms.capacity_k, samples=ms.bootstrap_samples,
                          seed=ms.bootstrap_seed)
    model_p_all = scorers[0].probability
    assert model_p_all is not None
    evaluation["calibration"] = calibration_report(
        pooled["label"].to_numpy(float), model_p_all, pooled["client_id"].to_numpy(), ms)
    results = _per_origin_metrics(results, pooled, scorers, settings.engaged_within_days)
    record = {
        "horizon_days": horizon, "snapshot_every_days": settings.snapshot_every_days,
        "training_window_days": window, "engaged_within_days": settings.engaged_within_days,
        "seed": settings.seed,
        "evaluation": {name: getattr(ms, name) for name in EVALUATION_SETTINGS},
    }
    return Backtest(until, every_weeks, results, pooled, scorers, json_safe(evaluation), record)


def _fit_and_score(
    data: ClinicData, settings: Settings, origin: date, until: date, train: pd.DataFrame,
) -> tuple[OriginResult, pd.DataFrame | None, list[Scorer]]:
    """The model and the logistic regression fitted at ``origin``, scoring who is open at it.

    Returns the origin's outcome, its scored rows and the two scorers (no rows and no
    scorers when it is skipped).
    """
    snapshots = int(train["as_of"].nunique())
    # Features at the origin and the outcome in the horizon after it.
    test = training_rows(data, [origin], settings.horizon_days, until,
                         registry=settings.instruments)
    if test.empty:
        return OriginResult(origin, len(train), snapshots,
                            reason="no episode was open at the origin"), None, []
    try:
        # As ``retention train`` fits, with the origin as its date.
        model = fit_as_configured(train, settings, origin)
    except ValueError as exc:
        # Too little history before the origin: fewer snapshots or outcomes than a
        # split by time needs.
        return OriginResult(origin, len(train), snapshots,
                            reason=f"cannot fit a model: {exc}"), None, []
    engaged = engaged_mask(test, settings.engaged_within_days)
    y = test["label"].to_numpy()
    scorers = [model_scorer(model, test),
               baseline_scorer(logistic_baseline(fit_logistic(train, settings.seed), test))]
    outcome = OriginResult(
        origin, len(train), snapshots, test_rows=len(test), positives=int(y.sum()),
        engaged_rows=int(engaged.sum()), engaged_positives=int(y[engaged].sum()),
        model_version=model.version, calibration=model.calibrator.method,
        window=dict(model.metadata["window"]),
    )
    return outcome, test, scorers


def _per_origin_metrics(results: list[OriginResult], pooled: pd.DataFrame,
                        scorers: list[Scorer], engaged_within_days: int) -> list[OriginResult]:
    """Each scored origin's AUROC and average precision per scorer, on all and engaged rows."""
    day = pooled["as_of"].dt.date.to_numpy()
    engaged = engaged_mask(pooled, engaged_within_days)
    y = pooled["label"].to_numpy(float)
    out = []
    for r in results:
        if not r.scored:
            out.append(r)
            continue
        at = day == r.origin
        figures: dict[str, dict[str, dict[str, float]]] = {}
        for subset, mask in (("all", at), ("engaged", at & engaged)):
            ones = np.ones((1, int(mask.sum())))
            figures[subset] = {
                s.name: {k: float(v[0]) for k, v in
                         m.ranking_metrics(ones, y[mask], s.score[mask]).items()}
                for s in scorers
            } if mask.any() else {}
        out.append(replace(r, metrics=figures))
    return out
