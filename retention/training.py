"""Training rows and a time-ordered fit.

Rows are as-of snapshots: for each snapshot date, the features of every open
episode (from data before that date) and its label (from the horizon after
it). Only snapshots whose horizon ends by the training date are used. The
validation slice is the most recent snapshots; training snapshots end a full
horizon before it, so no training label looks into the validation period.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, timedelta

import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score

from retention.clinic_data import ClinicData
from retention.features.builder import build_features
from retention.labels import disengagement_labels, label_observable
from retention.model import (
    TrainedModel,
    build_metadata,
    fingerprint,
    metrics,
    to_matrix,
    train_booster,
)

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
    """Time-ordered train and validation rows with the dates that bound them."""

    train: pd.DataFrame
    valid: pd.DataFrame
    train_until: date
    valid_from: date


def time_split(rows: pd.DataFrame, horizon_days: int, valid_share: float = 0.2) -> Split:
    """Hold out the latest snapshot dates; train only on snapshots a horizon earlier."""
    dates = sorted(rows["as_of"].dt.date.unique())
    if len(dates) < 4:
        raise ValueError(
            f"only {len(dates)} snapshot dates: need at least 4 for a time-ordered split; "
            "use more history or a shorter snapshot interval"
        )
    n_valid = max(1, round(len(dates) * valid_share))
    valid_from = dates[-n_valid]
    train_until = valid_from - timedelta(days=horizon_days)
    as_of = rows["as_of"].dt.date
    train = rows[as_of <= train_until]
    valid = rows[as_of >= valid_from]
    if train.empty or train["label"].nunique() < 2:
        raise ValueError("the training slice is empty or has one class; use more history")
    return Split(train=train, valid=valid, train_until=train_until, valid_from=valid_from)


def fit(
    rows: pd.DataFrame, *, horizon_days: int, seed: int, trained_as_of: date
) -> TrainedModel:
    """Train on the older slice and measure on the held-out recent slice."""
    split = time_split(rows, horizon_days)
    y_train = split.train["label"].to_numpy()
    y_valid = split.valid["label"].to_numpy()
    booster = train_booster(to_matrix(split.train), y_train, seed)
    p_train = np.asarray(booster.predict(to_matrix(split.train)))
    p_valid = np.asarray(booster.predict(to_matrix(split.valid)))
    baseline = split.valid["days_since_attended"].to_numpy()
    valid_metrics = metrics(y_valid, p_valid)
    # The simplest rule a clinic already uses, as a floor the model must clear.
    valid_metrics["auroc_days_since_attended"] = float(
        roc_auc_score(y_valid, np.nan_to_num(baseline, nan=0.0))
    )
    window = {
        "first_snapshot": rows["as_of"].min().date().isoformat(),
        "train_until": split.train_until.isoformat(),
        "valid_from": split.valid_from.isoformat(),
        "last_snapshot": rows["as_of"].max().date().isoformat(),
    }
    metadata = build_metadata(
        booster,
        seed=seed,
        horizon_days=horizon_days,
        trained_as_of=trained_as_of,
        window=window,
        metrics_by_split={"train": metrics(y_train, p_train), "validation": valid_metrics},
        data_fingerprint=fingerprint(rows),
    )
    return TrainedModel(booster=booster, metadata=metadata)
