"""Training: snapshots and a time split with horizon gaps, determinism, calibrated and
clinically sensible risks, a saved model that predicts as trained."""

from __future__ import annotations

import itertools
from datetime import timedelta

import numpy as np
import pandas as pd
import pytest

from retention.model import artifacts
from retention.model.training import fit, snapshot_dates, time_split, training_rows
from retention.store.clinic_copy import read_clinic_copy
from tests.conftest import Scored


# A year of weekly snapshots takes seconds to build: every test that needs them is slow.
@pytest.fixture(scope="module")
def rows(scored: Scored) -> pd.DataFrame:
    s = scored.settings
    dates = snapshot_dates(scored.as_of, s.horizon_days, s.snapshot_every_days, 360)
    with scored.store.connect() as conn:
        data = read_clinic_copy(conn)
    return training_rows(data, dates, s.horizon_days, scored.as_of)


def test_snapshots_have_observed_horizons(scored: Scored) -> None:
    dates = snapshot_dates(scored.as_of, 30, 7, 360)
    assert max(dates) + timedelta(days=30) <= scored.as_of
    assert all(b - a == timedelta(days=7) for a, b in itertools.pairwise(dates))


@pytest.mark.slow
def test_split_is_by_time_with_horizon_gaps(rows: pd.DataFrame) -> None:
    split = time_split(rows, horizon_days=30)
    slices = [split.train["as_of"], split.calibrate["as_of"], split.evaluate["as_of"]]
    for earlier, later in itertools.pairwise(slices):
        assert set(earlier).isdisjoint(set(later))
        # No label window of an earlier slice reaches into the next slice's period.
        assert earlier.max() + pd.Timedelta(days=30) <= later.min()
    assert (split.train["as_of"] + pd.Timedelta(days=30)).max() <= pd.Timestamp(
        split.calibrate_from)
    assert (split.calibrate["as_of"] + pd.Timedelta(days=30)).max() <= pd.Timestamp(
        split.evaluate_from)
    # Every row is in at most one slice; rows dropped are only those in the gaps.
    used = pd.concat(slices)
    assert len(used) == len(used.index.unique())
    assert split.evaluate["as_of"].max() == rows["as_of"].max()


@pytest.mark.slow
def test_split_refuses_too_little_history(rows: pd.DataFrame) -> None:
    few = rows[rows["as_of"] >= rows["as_of"].max() - pd.Timedelta(days=35)]
    with pytest.raises(ValueError, match="need at least 8"):
        time_split(few, horizon_days=30)


@pytest.mark.slow
def test_training_is_deterministic(rows: pd.DataFrame, scored: Scored) -> None:
    a = fit(rows, horizon_days=30, seed=3, trained_as_of=scored.as_of)
    b = fit(rows, horizon_days=30, seed=3, trained_as_of=scored.as_of)
    assert a.booster.model_to_string() == b.booster.model_to_string()
    assert artifacts.calibrator_json(a.calibrator) == artifacts.calibrator_json(b.calibrator)
    assert a.version == b.version
    np.testing.assert_array_equal(a.predict(rows), b.predict(rows))
    c = fit(rows, horizon_days=30, seed=4, trained_as_of=scored.as_of)
    assert c.booster.model_to_string() != a.booster.model_to_string()


@pytest.mark.slow
def test_the_saved_model_reproduces_the_trained_predictions(
    scored: Scored, rows: pd.DataFrame
) -> None:
    again = artifacts.load(scored.settings.models_dir, scored.model.version)
    np.testing.assert_array_equal(again.predict(rows), scored.model.predict(rows))


def test_served_risks_are_calibrated_probabilities(scored: Scored) -> None:
    """The booster's own probabilities reach 0.999; calibrated ones match held-out rates."""
    held_out = scored.model.metadata["metrics"]["evaluation"]
    assert held_out["auroc"] > 0.7
    assert abs(held_out["mean_risk"] - held_out["base_rate"]) < 0.05
    calibration = scored.model.metadata["metrics"]["calibration"]
    # On its own slice a logistic (Platt) fit with an intercept matches the mean outcome.
    assert calibration["mean_risk"] == pytest.approx(calibration["base_rate"], abs=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("feature", "direction"),
    [("consecutive_misses", 1), ("days_since_attended", 1), ("missed_28d", 1),
     ("booked_next_14d", -1), ("srs_latest", -1), ("wai_client_bond", -1)],
)
def test_risk_moves_in_the_clinically_expected_direction(
    scored: Scored, rows: pd.DataFrame, feature: str, direction: int
) -> None:
    """More consecutive misses never lowers risk; a better alliance never raises it."""
    sample = rows.sample(200, random_state=0)
    low, high = rows[feature].quantile(0.05), rows[feature].quantile(0.95)
    previous = None
    for value in np.linspace(low, high, 8):
        probe = sample.copy()
        probe[feature] = value
        risk = scored.model.predict(probe)
        if previous is not None:
            assert np.all(direction * (risk - previous) >= -1e-12), feature
        previous = risk
