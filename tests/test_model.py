"""The model: time split, determinism, clinically sensible directions, refusal of bad artifacts."""

from __future__ import annotations

import itertools
import json
import shutil
from datetime import timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from retention.features import FEATURE_NAMES
from retention.model import artifacts
from retention.model.booster import ModelError
from retention.model.training import fit, snapshot_dates, time_split, training_rows
from retention.store.clinic_copy import read_clinic_copy
from retention.store.features import read_features
from tests.conftest import Scored


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


def test_split_refuses_too_little_history(rows: pd.DataFrame) -> None:
    few = rows[rows["as_of"] >= rows["as_of"].max() - pd.Timedelta(days=35)]
    with pytest.raises(ValueError, match="need at least 8"):
        time_split(few, horizon_days=30)


def test_training_is_deterministic(rows: pd.DataFrame, scored: Scored) -> None:
    a = fit(rows, horizon_days=30, seed=3, trained_as_of=scored.as_of)
    b = fit(rows, horizon_days=30, seed=3, trained_as_of=scored.as_of)
    assert a.booster.model_to_string() == b.booster.model_to_string()
    assert artifacts.calibrator_json(a.calibrator) == artifacts.calibrator_json(b.calibrator)
    assert a.version == b.version
    np.testing.assert_array_equal(a.predict(rows), b.predict(rows))
    c = fit(rows, horizon_days=30, seed=4, trained_as_of=scored.as_of)
    assert c.booster.model_to_string() != a.booster.model_to_string()


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


def test_no_client_is_given_exactly_0_or_100_percent(scored: Scored) -> None:
    """A calibrated risk of exactly 0 or 1 claims a certainty no model has.

    Isotonic steps fitted on a clinic's few dropouts did this to whole blocks
    of clients; the default calibration is smooth.
    """
    with scored.store.connect() as conn:
        features = read_features(conn, scored.as_of, FEATURE_NAMES)
    risk = scored.model.predict(features)
    assert ((risk > 0) & (risk < 1)).all()


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


def copy_version(scored: Scored, tmp_path: Path) -> Path:
    folder = tmp_path / scored.model.version
    shutil.copytree(scored.settings.models_dir / scored.model.version, folder)
    return folder


def test_loading_refuses_a_tampered_model_file(scored: Scored, tmp_path: Path) -> None:
    folder = copy_version(scored, tmp_path)
    text = (folder / "model.txt").read_text()
    (folder / "model.txt").write_text(text.replace("shrinkage=0.05", "shrinkage=0.5", 1))
    with pytest.raises(ModelError, match="integrity check"):
        artifacts.load(tmp_path, scored.model.version)


def test_loading_refuses_a_feature_list_the_etl_does_not_produce(
    scored: Scored, tmp_path: Path
) -> None:
    copy_version(scored, tmp_path)
    with pytest.raises(ModelError, match="expects different features"):
        artifacts.load(tmp_path, scored.model.version, expected_features=FEATURE_NAMES[:-1])
    with pytest.raises(ModelError, match="expects different features"):
        artifacts.load(tmp_path, scored.model.version,
                      expected_features=tuple(reversed(FEATURE_NAMES)))


def test_loading_refuses_a_tampered_calibrator(scored: Scored, tmp_path: Path) -> None:
    folder = copy_version(scored, tmp_path)
    state = json.loads((folder / "calibrator.json").read_text())
    state["intercept"] = state["intercept"] + 0.5  # every risk a little higher
    (folder / "calibrator.json").write_text(json.dumps(state, indent=2, sort_keys=True))
    with pytest.raises(ModelError, match=r"calibrator\.json does not match"):
        artifacts.load(tmp_path, scored.model.version)
    (folder / "calibrator.json").unlink()
    with pytest.raises(ModelError, match="incomplete"):
        artifacts.load(tmp_path, scored.model.version)


def test_a_version_is_text_and_json_only(scored: Scored) -> None:
    folder = scored.settings.models_dir / scored.model.version
    assert sorted(p.name for p in folder.iterdir()) == [
        "calibrator.json", "evaluation.json", "gate.json", "metadata.json", "model.txt"]
    meta = json.loads((folder / "metadata.json").read_text())
    assert [f["name"] for f in meta["features"]] == list(FEATURE_NAMES)
    assert [f["kind"] for f in meta["features"]][:1] == ["numeric"]
    assert set(meta["sha256"]) == {"model.txt", "calibrator.json", "evaluation.json"}
    assert {"train_until", "calibrate_from", "evaluate_from"} <= set(meta["window"])
    assert meta["data_fingerprint"]
    assert {"lightgbm", "scikit-learn"} <= set(meta["libraries"])


def test_no_current_model_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="run `retention train` first"):
        artifacts.load(tmp_path)


def test_no_version_past_the_gate_says_so(scored: Scored, tmp_path: Path) -> None:
    """Trained versions but none current: the error points at the gate, not at training."""
    copy_version(scored, tmp_path)
    with pytest.raises(ModelError, match="no trained version has passed the"):
        artifacts.load(tmp_path)
