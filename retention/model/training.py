"""Training rows and a time-ordered fit with a calibration slice.

Rows are as-of snapshots: for each snapshot date, the features of every open
episode (from data before that date) and its label (from the horizon after
it). Only snapshots whose horizon ends by the training date are used.

The split is three ways by time: train on the oldest snapshots, calibrate on a
later slice, evaluate on the most recent one. Each slice ends a full horizon
before the next begins, so no label of an earlier slice looks into a later
slice's period: a client's future never informs a model judged on it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, timedelta

import numpy as np
import pandas as pd

from retention.clinic.data import ClinicData
from retention.features.builder import build_features
from retention.features.labels import disengagement_labels, label_observable
from retention.model import drift
from retention.model.artifacts import build_metadata, fingerprint
from retention.model.booster import TrainedModel, metrics, to_matrix, train_booster
from retention.model.calibration import Calibrator, choose

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
) -> pd.DataFrame:
    """Features and labels for every open episode at every snapshot date."""
    frames = []
    for i, day in enumerate(dates):
        if not label_observable(day, horizon_days, until):
            raise ValueError(f"snapshot {day} has a horizon past {until}: label not observed")
        features = build_features(data, day)
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
) -> TrainedModel:
    """Train on the oldest slice, calibrate on the next, and record headline metrics.

    ``calibration`` "auto" compares the calibrations out of time on the calibration
    slice and keeps the best (``calibration.choose``). The full evaluation against
    baselines (``retention.evaluation``) runs on ``time_split(...).evaluate`` with the
    same arguments.
    """
    split = time_split(rows, horizon_days, evaluate_share, calibrate_share)
    y_train = split.train["label"].to_numpy()
    booster = train_booster(to_matrix(split.train), y_train, seed)
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
    metadata = build_metadata(
        booster,
        calibrator,
        seed=seed,
        horizon_days=horizon_days,
        trained_as_of=trained_as_of,
        window=split.window(rows),
        metrics_by_split=headline,
        data_fingerprint=fingerprint(rows),
        extra={
            "rows": {"train": len(split.train), "calibration": len(split.calibrate),
                     "evaluation": len(split.evaluate)},
            "clients": {"train": int(split.train["client_id"].nunique()),
                        "evaluation": int(split.evaluate["client_id"].nunique())},
            # The latest rows the model was judged on (the evaluation slice), features
            # and out-of-sample risks: the population closest to the days it will score,
            # so a list scored on its first days is compared with data like its own.
            "drift_reference": drift.reference(
                split.evaluate, calibrator.predict(raw["evaluation"]),
            ),
            "calibration_choice": None if choice is None else choice.to_dict(),
            "split": {"evaluate_share": evaluate_share, "calibrate_share": calibrate_share},
        },
    )
    return TrainedModel(booster=booster, calibrator=calibrator, metadata=metadata)
