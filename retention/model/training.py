"""Training rows and a time-ordered fit with a calibration slice.

Rows are as-of snapshots: for each snapshot date, the features of every open
episode (from data before that date) and its label (from the horizon after
it). Only snapshots whose horizon ends by the training date are used.

The split is three ways by time: train on the oldest snapshots, calibrate on a
later slice, evaluate on the most recent one. Each slice ends a full horizon
before the next begins, so no label of an earlier slice looks into a later
slice's period: a client's future never informs a model judged on it.

The fit so judged (the *evaluated* fit, its shape and rounds tuned on the training
slice alone) decides whether the method works on this clinic. The model that serves
is then *refit* the same way on every labelled snapshot, the freshest included, and
calibrated out of sample (cross-fitted across clients, on the latest snapshots): the
evaluation is of the procedure, and the served model is that procedure given all the
data. Both fits travel in the version (``retention.model.artifacts``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any

import lightgbm as lgb
import numpy as np
import pandas as pd
from sklearn.model_selection import GroupKFold

from retention.clinic.data import ClinicData
from retention.clinic.registry import Registry
from retention.features.builder import build_features, registry_facts
from retention.features.labels import disengagement_labels, label_observable
from retention.model import drift
from retention.model.artifacts import build_metadata, fingerprint
from retention.model.booster import TrainedModel, metrics, to_matrix, train_booster
from retention.model.calibration import CalibrationError, Calibrator, choose
from retention.model.tuning import Tuning, tune
from retention.settings import Settings

Progress = Callable[[int, int], None]


def snapshot_dates(until: date, horizon_days: int, every_days: int, window_days: int) -> list[date]:
    """Snapshot dates, oldest first, whose horizon ends on or before ``until``."""
    last = until - timedelta(days=horizon_days)
    first = until - timedelta(days=window_days)
    dates = []
    day = last
    while day >= first:
        dates.append(day)
        day -= timedelta(days=every_days)
    return sorted(dates)


def training_rows(
    data: ClinicData,
    dates: list[date],
    horizon_days: int,
    until: date,
    progress: Progress | None = None,
    registry: Registry | None = None,
) -> pd.DataFrame:
    """Features and labels for every open episode at every snapshot date (features read
    the instrument ``registry``, the shipped one by default)."""
    frames = []
    for i, day in enumerate(dates):
        if not label_observable(day, horizon_days, until):
            raise ValueError(f"snapshot {day} has a horizon past {until}: label not observed")
        features = build_features(data, day, registry)
        labels = disengagement_labels(data, day, horizon_days)
        rows = features.join(labels)
        rows.insert(0, "as_of", pd.Timestamp(day))
        frames.append(rows.reset_index(drop=True))
        if progress:
            progress(i + 1, len(dates))
    return pd.concat(frames, ignore_index=True)


@dataclass(frozen=True)
class Split:
    """Train, calibration and evaluation rows, oldest to newest, with their boundaries."""

    train: pd.DataFrame
    calibrate: pd.DataFrame
    evaluate: pd.DataFrame
    train_until: date
    calibrate_from: date
    calibrate_until: date
    evaluate_from: date

    def window(self, rows: pd.DataFrame) -> dict[str, str]:
        """The dates that bound each slice, for the model's metadata."""
        return {
            "first_snapshot": rows["as_of"].min().date().isoformat(),
            "train_until": self.train_until.isoformat(),
            "calibrate_from": self.calibrate_from.isoformat(),
            "calibrate_until": self.calibrate_until.isoformat(),
            "evaluate_from": self.evaluate_from.isoformat(),
            "last_snapshot": rows["as_of"].max().date().isoformat(),
        }


def time_split(
    rows: pd.DataFrame,
    horizon_days: int,
    evaluate_share: float = 0.2,
    calibrate_share: float = 0.15,
) -> Split:
    """Latest dates evaluate, the ones a horizon before calibrate, the rest a horizon earlier train.

    Snapshot dates inside a gap are dropped: their labels would straddle two slices.
    """
    dates = sorted(rows["as_of"].dt.date.unique())
    if len(dates) < 8:
        raise ValueError(
            f"only {len(dates)} snapshot dates: need at least 8 for a train / calibrate / "
            "evaluate split by time; use more history or a shorter snapshot interval"
        )
    gap = timedelta(days=horizon_days)
    n_eval = max(1, round(len(dates) * evaluate_share))
    evaluate_from = dates[-n_eval]
    earlier = [d for d in dates if d <= evaluate_from - gap]
    n_cal = max(1, round(len(dates) * calibrate_share))
    if len(earlier) <= n_cal:
        raise ValueError("too few snapshot dates before the evaluation slice to calibrate "
                         "and train; use more history")
    calibrate_from = earlier[-n_cal]
    calibrate_until = earlier[-1]
    train_until_candidates = [d for d in dates if d <= calibrate_from - gap]
    if not train_until_candidates:
        raise ValueError("no snapshot dates left to train on; use more history")
    train_until = train_until_candidates[-1]
    as_of = rows["as_of"].dt.date
    split = Split(
        train=rows[as_of <= train_until],
        calibrate=rows[(as_of >= calibrate_from) & (as_of <= calibrate_until)],
        evaluate=rows[as_of >= evaluate_from],
        train_until=train_until,
        calibrate_from=calibrate_from,
        calibrate_until=calibrate_until,
        evaluate_from=evaluate_from,
    )
    for name in ("train", "calibrate", "evaluate"):
        part = getattr(split, name)
        if part.empty or part["label"].nunique() < 2:
            raise ValueError(f"the {name} slice is empty or has one outcome class; "
                             "use more history")
    return split


def engaged_rows(rows: pd.DataFrame, within_days: int) -> np.ndarray:
    """Still engaged: attended within ``within_days``; ``retention.evaluation`` judges by it."""
    return ((rows["days_since_attended"] <= within_days) & (rows["attended_28d"] > 0)).to_numpy()


CROSS_FIT_FOLDS = 4


def fit_as_configured(rows: pd.DataFrame, settings: Settings, as_of: date) -> TrainedModel:
    """``fit`` with everything ``settings`` says about training: how `retention train`
    fits, and so how a backtest or a benchmark that must fit the same way does."""
    ms = settings.evaluation
    return fit(rows, horizon_days=settings.horizon_days, seed=settings.seed,
               trained_as_of=as_of, calibration=ms.calibration_method,
               isotonic_min_outcomes=ms.isotonic_min_outcomes,
               engaged_within_days=settings.engaged_within_days,
               instruments=registry_facts(settings.instruments),
               evaluate_share=ms.evaluate_share, calibrate_share=ms.calibrate_share)


def fit(
    rows: pd.DataFrame,
    *,
    horizon_days: int,
    seed: int,
    trained_as_of: date,
    calibration: str = "auto",
    evaluate_share: float = 0.2,
    calibrate_share: float = 0.15,
    isotonic_min_outcomes: int = 100,
    engaged_within_days: int = 14,
    refit: bool = True,
    instruments: Mapping[str, Any] | None = None,
) -> TrainedModel:
    """Tune and train on the oldest slice, calibrate on the next; then refit for serving.

    ``calibration`` "auto" compares the calibrations out of time on the calibration
    slice and keeps the best (``calibration.choose``). The full evaluation against
    baselines (``retention.evaluation``) runs on ``time_split(...).evaluate`` with the
    same arguments, with the returned model's ``judged`` fit. With ``refit`` (the
    default) the returned model is refit on every row (``refit_for_serving``) and
    carries the evaluated fit; without, it is the evaluated fit.
    """
    split = time_split(rows, horizon_days, evaluate_share, calibrate_share)
    tuning = tune(split.train, horizon_days=horizon_days, seed=seed,
                  engaged=engaged_rows(split.train, engaged_within_days))
    y_train = split.train["label"].to_numpy()
    booster = train_booster(to_matrix(split.train), y_train, seed, tuning.shape,
                            tuning.num_boost_round)
    raw = {name: np.asarray(booster.predict(to_matrix(part), raw_score=True))
           for name, part in (("train", split.train), ("calibration", split.calibrate),
                              ("evaluation", split.evaluate))}
    y_cal = split.calibrate["label"].to_numpy()
    choice = None
    if calibration == "auto":
        choice = choose(raw["calibration"], y_cal, split.calibrate["as_of"].to_numpy(),
                        isotonic_min_outcomes)
        calibration = choice.method
    calibrator = Calibrator(calibration).fit(raw["calibration"], y_cal)
    headline = {
        name: metrics(part["label"].to_numpy(), calibrator.predict(raw[name]))
        for name, part in (("train", split.train), ("calibration", split.calibrate),
                           ("evaluation", split.evaluate))
    }
    common: dict[str, Any] = {
        "seed": seed, "horizon_days": horizon_days, "trained_as_of": trained_as_of,
        "metrics_by_split": headline, "data_fingerprint": fingerprint(rows),
        "shape": tuning.shape, "num_boost_round": tuning.num_boost_round,
    }
    extra: dict[str, Any] = {
        "rows": {"train": len(split.train), "calibration": len(split.calibrate),
                 "evaluation": len(split.evaluate)},
        "clients": {"train": int(split.train["client_id"].nunique()),
                    "evaluation": int(split.evaluate["client_id"].nunique())},
        "calibration_choice": None if choice is None else choice.to_dict(),
        "split": {"evaluate_share": evaluate_share, "calibrate_share": calibrate_share},
        "tuning": tuning.to_dict(),
        # What the features read of the instrument registry (builder.registry_facts):
        # scoring refuses features built from another.
        "instruments": dict(instruments) if instruments is not None else None,
    }
    evaluated_reference = drift.reference(split.evaluate, calibrator.predict(raw["evaluation"]))
    evaluated = TrainedModel(booster, calibrator, build_metadata(
        booster, calibrator, window=split.window(rows), **common,
        extra={**extra, "drift_reference": evaluated_reference,
               "fit": "evaluated (trained on the training slice only)"},
    ))
    if not refit:
        return evaluated
    served_booster, served_calibrator, oof = refit_for_serving(
        rows, split, tuning, seed, calibrator.method)
    latest = (rows["as_of"] >= pd.Timestamp(split.calibrate_from)).to_numpy()
    judged = (rows["as_of"] >= pd.Timestamp(split.evaluate_from)).to_numpy()
    y = rows["label"].to_numpy()
    served_p = served_calibrator.predict(oof)
    fits = {
        "evaluated": {
            "window": split.window(rows), "rows": len(split.train),
            "calibration": f"{calibrator.method} on the calibration slice",
            "metrics": headline,
        },
        "served": {
            "window": {"first_snapshot": split.window(rows)["first_snapshot"],
                       "last_snapshot": split.window(rows)["last_snapshot"]},
            "rows": len(rows),
            "calibration": (f"{served_calibrator.method}, fitted on out-of-fold scores "
                            f"({CROSS_FIT_FOLDS} folds of clients) of the snapshots from "
                            f"{split.calibrate_from} on"),
            # Out of fold: each row scored by a fit that never saw its client.
            "metrics_out_of_fold": {
                "latest": metrics(y[latest], served_p[latest]),
                "evaluation_slice": metrics(y[judged], served_p[judged]),
            },
        },
    }
    # Drift is judged against the served model's own out-of-sample risks on the
    # latest rows judged, the population closest to the days it will score.
    metadata = build_metadata(
        served_booster, served_calibrator, window=split.window(rows), **common,
        evaluated=(booster, calibrator),
        extra={**extra, "fits": fits, "fit": "served (refit on every labelled snapshot)",
               "drift_reference": drift.reference(split.evaluate, served_p[judged])},
    )
    # The evaluated fit under the version's metadata, as ``artifacts.load(fit="evaluated")``
    # gives it back.
    return TrainedModel(served_booster, served_calibrator, metadata,
                        evaluated=TrainedModel(booster, calibrator, metadata))


def refit_for_serving(
    rows: pd.DataFrame, split: Split, tuning: Tuning, seed: int, method: str,
) -> tuple[lgb.Booster, Calibrator, np.ndarray]:
    """The served booster on every row, its calibrator, and the out-of-fold raw scores.

    Calibration must be fitted on scores of rows the booster did not learn: each fold
    of clients is scored by a booster trained, with the same settings, on the others,
    and the calibrator (the method the evaluation chose) is fitted on those scores of
    the latest snapshots, from the calibration slice on (recent, as the list is).
    """
    x, y = to_matrix(rows), rows["label"].to_numpy()
    served = train_booster(x, y, seed, tuning.shape, tuning.num_boost_round)
    oof = np.empty(len(rows))
    groups = rows["client_id"].astype(str).to_numpy()
    for fit_idx, held in GroupKFold(n_splits=CROSS_FIT_FOLDS).split(x, y, groups):
        fold = train_booster(x.iloc[fit_idx], y[fit_idx], seed, tuning.shape,
                             tuning.num_boost_round)
        oof[held] = fold.predict(x.iloc[held], raw_score=True)
    latest = (rows["as_of"] >= pd.Timestamp(split.calibrate_from)).to_numpy()
    try:
        calibrator = Calibrator(method).fit(oof[latest], y[latest])
    except CalibrationError:
        # Out of fold the score ranks nothing (Platt and beta refuse a falling map): the
        # model is broken and the gate will refuse it; isotonic still fits (flat, if it
        # must), so the candidate is saved and judged rather than lost, as ``choose`` does.
        calibrator = Calibrator("isotonic").fit(oof[latest], y[latest])
    return served, calibrator, oof
