"""Calibration: fitted on its own slice, monotone, stored as JSON, refused when malformed."""

from __future__ import annotations

import json

import numpy as np
import pytest

from retention.evaluation import bootstrap as m
from retention.model.calibration import CalibrationError, Calibrator, choose


def overconfident(n: int = 4000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Raw scores three times too large: the booster's habit on easy rows."""
    rng = np.random.default_rng(seed)
    true_logit = rng.normal(-1.5, 1.5, n)
    y = (rng.random(n) < 1 / (1 + np.exp(-true_logit))).astype(float)
    return 3 * true_logit, y


def ece(y: np.ndarray, p: np.ndarray) -> float:
    return float(m.probability_metrics(np.ones((1, len(y))), y, p)["ece"][0])


@pytest.mark.parametrize("method", ["isotonic", "platt", "beta"])
def test_calibration_fixes_overconfident_scores_on_new_rows(method: str) -> None:
    raw_fit, y_fit = overconfident(seed=1)
    raw_new, y_new = overconfident(seed=2)
    cal = Calibrator(method).fit(raw_fit, y_fit)
    uncalibrated = 1 / (1 + np.exp(-raw_new))
    assert ece(y_new, cal.predict(raw_new)) < 0.03 < ece(y_new, uncalibrated)


@pytest.mark.parametrize("method", ["isotonic", "platt", "beta"])
def test_calibration_never_reverses_the_ranking(method: str) -> None:
    raw, y = overconfident()
    cal = Calibrator(method).fit(raw, y)
    grid = np.linspace(-15, 15, 301)
    assert np.all(np.diff(cal.predict(grid)) >= 0)
    assert np.all((cal.predict(grid) >= 0) & (cal.predict(grid) <= 1))


@pytest.mark.parametrize("method", ["isotonic", "platt", "beta"])
def test_calibrator_round_trips_through_json(method: str) -> None:
    raw, y = overconfident()
    cal = Calibrator(method).fit(raw, y)
    again = Calibrator.from_dict(json.loads(json.dumps(cal.to_dict())))
    np.testing.assert_array_equal(again.predict(raw), cal.predict(raw))


def test_malformed_or_unfittable_calibrators_are_refused() -> None:
    raw, y = overconfident()
    state = Calibrator("isotonic").fit(raw, y).to_dict()
    state["y_thresholds"] = list(reversed(state["y_thresholds"]))
    with pytest.raises(CalibrationError, match="not increasing"):
        Calibrator.from_dict(state)
    with pytest.raises(CalibrationError, match="malformed"):
        Calibrator.from_dict({"method": "platt"})
    with pytest.raises(CalibrationError, match="one outcome class"):
        Calibrator().fit(raw, np.zeros_like(y))
    with pytest.raises(CalibrationError, match="unknown calibration method"):
        Calibrator("spline").fit(raw, y)
    for method in ("platt", "beta"):
        with pytest.raises(CalibrationError, match="does not rank"):
            Calibrator(method).fit(-raw, y)
    with pytest.raises(CalibrationError, match="not increasing"):
        Calibrator.from_dict({"method": "beta", "a": -1.0, "b": 0.5, "c": 0.0, "n_rows": 3})


def weekly(n: int, weeks: int = 12) -> np.ndarray:
    """Snapshot dates for ``n`` rows spread over ``weeks`` weeks, in order."""
    return np.repeat(np.arange(weeks), -(-n // weeks))[:n].astype("datetime64[W]")


def test_the_choice_goes_to_the_map_that_fits_new_days_best() -> None:
    """On scores whose true link is a beta map (asymmetric in the tails) beta wins out of
    time; on a plain logistic link Platt is as good and, simpler, kept; isotonic is not
    tried without enough outcomes of each kind."""
    rng = np.random.default_rng(3)
    raw = rng.normal(-1.0, 2.0, 30_000)
    s = 1 / (1 + np.exp(-raw))
    asymmetric = 1 / (1 + np.exp(-(2.5 * np.log(s) - 0.4 * np.log(1 - s) + 1.0)))
    y = (rng.random(len(raw)) < asymmetric).astype(float)
    picked = choose(raw, y, weekly(len(raw)), isotonic_min_outcomes=100)
    assert picked.method == "beta", picked.to_dict()
    assert picked.to_dict()["log_loss"]["beta"] < picked.to_dict()["log_loss"]["platt"]

    logistic, y2 = overconfident(n=30_000, seed=4)
    plain = choose(logistic, y2, weekly(len(logistic)), isotonic_min_outcomes=100)
    assert plain.method == "platt", plain.to_dict()

    few = choose(logistic[:600], y2[:600], weekly(600), isotonic_min_outcomes=10_000)
    assert few.to_dict()["log_loss"]["isotonic"] is None and few.method in ("platt", "beta")


def test_with_nothing_to_compare_a_candidate_is_still_calibrated() -> None:
    """One outcome class in every earlier block: nothing can be compared, and the choice
    falls back to Platt rather than failing the training run."""
    raw, _ = overconfident(n=1200)
    y = np.zeros(1200)
    y[-50:] = 1.0  # outcomes only in the last block
    assert choose(raw, y, weekly(1200)).method == "platt"
