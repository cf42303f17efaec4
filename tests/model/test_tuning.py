"""Tuning by rolling origin on the training slice alone; the refit that serves, calibrated
out of sample; both fits saved, signed and loaded back."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import lightgbm as lgb
import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from retention.clinic.data import from_frames
from retention.clinic.synth import SynthConfig, generate
from retention.features.spec import FEATURE_NAMES
from retention.model import artifacts
from retention.model.booster import (
    DEFAULT_SHAPE,
    NUM_BOOST_ROUND,
    ModelError,
    TrainedModel,
    dataset,
    lgb_params,
    to_matrix,
)
from retention.model.calibration import Calibrator
from retention.model.training import engaged_rows, fit, snapshot_dates, time_split, training_rows
from retention.model.tuning import GRID, tune, validation_blocks

pytestmark = pytest.mark.slow  # every test trains (tuned, refit, cross-fitted)

AS_OF = date(2026, 6, 1)
HORIZON = 30


@pytest.fixture(scope="module")
def rows() -> pd.DataFrame:
    data = from_frames(generate(SynthConfig(end=AS_OF, n_clients=300, seed=5)))
    return training_rows(data, snapshot_dates(AS_OF, HORIZON, 6, 540), HORIZON, AS_OF)


@pytest.fixture(scope="module")
def trained(rows: pd.DataFrame) -> TrainedModel:
    return fit(rows, horizon_days=HORIZON, seed=42, trained_as_of=AS_OF)


def test_each_validation_block_trains_only_on_outcomes_known_at_its_origin(
        rows: pd.DataFrame) -> None:
    train = time_split(rows, HORIZON).train
    blocks = validation_blocks(train, HORIZON)
    assert len(blocks) == 2
    for fit_rows, valid, about in blocks:
        assert not (fit_rows & valid).any()
        origin = pd.Timestamp(about["origin"])
        assert (train.loc[fit_rows, "as_of"] + pd.Timedelta(days=HORIZON)).max() <= origin
        assert train.loc[valid, "as_of"].min() == origin
    # Rolling forward: the second block starts after the first ends.
    assert blocks[0][2]["until"] < blocks[1][2]["origin"]


def test_too_little_history_keeps_the_defaults_and_says_so(rows: pd.DataFrame) -> None:
    short = rows[rows["as_of"] <= rows["as_of"].min() + pd.Timedelta(days=40)]
    tuning = tune(short, horizon_days=HORIZON, seed=1, engaged=engaged_rows(short, 14))
    assert tuning.shape == DEFAULT_SHAPE and tuning.trials == []
    assert "too little history" in tuning.note


def test_tuning_sees_the_training_slice_only_and_is_deterministic(
        rows: pd.DataFrame, trained: TrainedModel) -> None:
    """Relabelling every row after the training slice changes neither the choice nor the
    evaluated booster: neither calibration nor evaluation rows inform the settings."""
    split = time_split(rows, HORIZON)
    tuning = trained.metadata["tuning"]
    assert tuning["shape"] in [dict(g) for g in GRID]
    assert len(tuning["trials"]) == len(GRID)
    assert max(t["mean_auroc"] for t in tuning["trials"]) == pytest.approx(
        next(t["mean_auroc"] for t in tuning["trials"] if t["shape"] == tuning["shape"]))
    for block in tuning["blocks"]:
        assert pd.Timestamp(block["until"]) <= pd.Timestamp(split.train_until)
    flipped = rows.copy()
    later = flipped["as_of"] > pd.Timestamp(split.train_until)
    flipped.loc[later, "label"] = 1 - flipped.loc[later, "label"]
    again = fit(flipped, horizon_days=HORIZON, seed=42, trained_as_of=AS_OF, refit=False)
    assert again.metadata["tuning"] == tuning
    assert again.booster.model_to_string() == trained.judged.booster.model_to_string()


def test_the_served_model_is_refit_on_every_labelled_snapshot(
        rows: pd.DataFrame, trained: TrainedModel) -> None:
    assert trained.evaluated is not None
    fits = trained.metadata["fits"]
    assert fits["served"]["rows"] == len(rows)
    assert fits["evaluated"]["rows"] == len(time_split(rows, HORIZON).train)
    assert trained.booster.model_to_string() != trained.judged.booster.model_to_string()
    assert trained.metadata["num_boost_round"] == trained.booster.current_iteration()
    assert trained.judged.booster.current_iteration() == trained.metadata["num_boost_round"]
    assert trained.metadata["params"]["num_leaves"] == trained.metadata["tuning"]["shape"][
        "num_leaves"]
    # The judged fit travels under the version's own name and metadata.
    assert trained.judged.version == trained.version
    oof = fits["served"]["metrics_out_of_fold"]["evaluation_slice"]
    assert 0.75 < oof["auroc"] <= 1


def test_the_served_calibration_is_out_of_sample(rows: pd.DataFrame) -> None:
    """Outcomes shuffled across clients carry no signal. A calibrator fitted on the served
    booster's own (memorised) scores would spread risks with them; fitted on out-of-fold
    scores, it learns that the score means nothing and gives about the base rate."""
    rng = np.random.default_rng(3)
    noise = rows.copy()
    noise["label"] = rng.permutation(noise["label"].to_numpy())
    # Isotonic: it fits whatever the scores do (Platt refuses a score that ranks nothing).
    model = fit(noise, horizon_days=HORIZON, seed=42, trained_as_of=AS_OF,
                calibration="isotonic")
    latest = noise[noise["as_of"] >= noise["as_of"].max() - pd.Timedelta(days=60)]
    risks = model.predict(latest)
    y = latest["label"].to_numpy()
    memorised = Calibrator("isotonic").fit(model.raw_score(latest), y).predict(
        model.raw_score(latest))
    assert np.std(memorised) > 3 * np.std(risks)
    assert abs(float(np.mean(risks)) - float(noise["label"].mean())) < 0.05
    assert np.std(risks) < 0.05


def test_both_fits_are_saved_signed_and_loaded_back(
        rows: pd.DataFrame, trained: TrainedModel, tmp_path: Path) -> None:
    models = tmp_path / "models"
    folder = artifacts.save(trained, models)
    assert (folder / artifacts.EVALUATED_MODEL_FILE).exists()
    served = artifacts.load(models, trained.version)
    judged = artifacts.load(models, trained.version, fit="evaluated")
    sample = rows.tail(200)
    np.testing.assert_allclose(served.predict(sample), trained.predict(sample))
    np.testing.assert_allclose(judged.predict(sample), trained.judged.predict(sample))
    assert not np.allclose(served.raw_score(sample), judged.raw_score(sample))
    # The evaluated files are covered by the metadata's hashes like the model's.
    (folder / artifacts.EVALUATED_CALIBRATOR_FILE).write_text("{}")
    with pytest.raises(ModelError, match=artifacts.EVALUATED_CALIBRATOR_FILE):
        artifacts.load(models, trained.version, fit="evaluated")


def test_a_version_without_an_evaluated_fit_is_its_own(
        rows: pd.DataFrame, tmp_path: Path) -> None:
    """Versions trained before the refit served the fit they were judged by."""
    evaluated_only = fit(rows, horizon_days=HORIZON, seed=42, trained_as_of=AS_OF,
                         refit=False)
    models = tmp_path / "models"
    artifacts.save(evaluated_only, models)
    a = artifacts.load(models, evaluated_only.version, fit="evaluated")
    assert a.booster.model_to_string() == evaluated_only.booster.model_to_string()
    assert evaluated_only.judged is evaluated_only
    assert "fits" not in a.metadata


def test_monotone_constraints_cost_no_accuracy_on_later_slices(rows: pd.DataFrame) -> None:
    """The constraints encode clinical sense (more misses never lower the risk); they must
    not cost ranking on snapshots after the training slice. Same shape, rounds and seed,
    with and without them, judged on the calibration and evaluation slices."""
    split = time_split(rows, HORIZON)
    later = pd.concat([split.calibrate, split.evaluate])
    y = later["label"].to_numpy()
    engaged = engaged_rows(later, 14)
    x_train, y_train = to_matrix(split.train), split.train["label"].to_numpy()
    free = {**lgb_params(42), "monotone_constraints": [0] * len(FEATURE_NAMES)}
    scores = {}
    for name, params in (("constrained", lgb_params(42)), ("free", free)):
        booster = lgb.train(params, dataset(x_train, y_train), num_boost_round=NUM_BOOST_ROUND)
        scores[name] = booster.predict(to_matrix(later), raw_score=True)
    for mask in (np.ones(len(later), dtype=bool), engaged):
        constrained = roc_auc_score(y[mask], scores["constrained"][mask])
        unconstrained = roc_auc_score(y[mask], scores["free"][mask])
        assert constrained >= unconstrained - 0.01, (constrained, unconstrained)
