"""Probability calibration fitted on a later, disjoint slice and stored as JSON.

The booster's own probabilities are overconfident (risks of 0.999 are common
with 300 rounds on easy rows). A calibrator maps the booster's raw log-odds to
probabilities that match observed rates on snapshots it was not trained on.
It is a scikit-learn style estimator whose fitted state is plain numbers, so
it travels with the model as JSON (never pickle) and is hashed with it.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.base import BaseEstimator
from sklearn.isotonic import IsotonicRegression
from sklearn.linear_model import LogisticRegression
from sklearn.utils.validation import check_is_fitted

from retention.settings import CALIBRATION_METHODS as METHODS


class CalibrationError(ValueError):
    """A calibrator cannot be fitted or read back."""


class Calibrator(BaseEstimator):
    """Map raw log-odds to calibrated probabilities (isotonic or Platt).

    Both maps are non-decreasing in the raw score, so the booster's monotone
    constraints still hold for the calibrated risk.

    Parameters
    ----------
    method : {"isotonic", "platt"}
        Isotonic regression (step function, clipped at the ends) or a logistic
        fit on the raw score (two coefficients).

    Examples
    --------
    >>> cal = Calibrator("platt").fit(np.array([-2.0, -1, 0, 1, 2]), np.array([0, 0, 1, 0, 1]))
    >>> bool(np.all(np.diff(cal.predict(np.array([-1.0, 0, 1]))) >= 0))
    True
    """

    def __init__(self, method: str = "isotonic") -> None:
        self.method = method

    def fit(self, raw: np.ndarray, y: np.ndarray) -> Calibrator:
        """Fit on raw scores and observed 0/1 outcomes of the calibration slice."""
        raw = np.asarray(raw, dtype=float).ravel()
        y = np.asarray(y, dtype=float).ravel()
        if self.method not in METHODS:
            raise CalibrationError(f"unknown calibration method {self.method!r}; use {METHODS}")
        if len(raw) != len(y) or len(raw) == 0:
            raise CalibrationError("calibration needs as many outcomes as scores, and some rows")
        if len(np.unique(y)) < 2:
            raise CalibrationError(
                "the calibration slice has one outcome class; use more history"
            )
        if self.method == "isotonic":
            iso = IsotonicRegression(out_of_bounds="clip", y_min=0.0, y_max=1.0).fit(raw, y)
            self.x_thresholds_ = np.asarray(iso.X_thresholds_, dtype=float)
            self.y_thresholds_ = np.asarray(iso.y_thresholds_, dtype=float)
        else:
            lr = LogisticRegression(C=1e6).fit(raw.reshape(-1, 1), y)
            self.coef_ = float(lr.coef_[0, 0])
            self.intercept_ = float(lr.intercept_[0])
            if self.coef_ <= 0:
                raise CalibrationError(
                    "Platt calibration found risk falling as the model's score rises; "
                    "the model does not rank the calibration slice; do not use it"
                )
        self.n_rows_ = len(raw)
        return self

    def predict(self, raw: np.ndarray) -> np.ndarray:
        """Calibrated probability for each raw score."""
        check_is_fitted(self, "n_rows_")
        raw = np.asarray(raw, dtype=float).ravel()
        if self.method == "isotonic":
            return np.interp(raw, self.x_thresholds_, self.y_thresholds_)
        return 1.0 / (1.0 + np.exp(-(self.coef_ * raw + self.intercept_)))

    def to_dict(self) -> dict[str, Any]:
        """The fitted state as plain JSON values."""
        check_is_fitted(self, "n_rows_")
        state: dict[str, Any] = {"method": self.method, "n_rows": self.n_rows_}
        if self.method == "isotonic":
            state["x_thresholds"] = self.x_thresholds_.tolist()
            state["y_thresholds"] = self.y_thresholds_.tolist()
        else:
            state["coef"] = self.coef_
            state["intercept"] = self.intercept_
        return state

    @classmethod
    def from_dict(cls, state: dict[str, Any]) -> Calibrator:
        """Rebuild a fitted calibrator from ``to_dict`` output, refusing malformed state."""
        try:
            cal = cls(state["method"])
            if cal.method == "isotonic":
                x = np.asarray(state["x_thresholds"], dtype=float)
                y = np.asarray(state["y_thresholds"], dtype=float)
                if len(x) == 0 or len(x) != len(y) or np.any(np.diff(x) < 0) \
                        or np.any(np.diff(y) < 0):
                    raise CalibrationError("isotonic thresholds are empty or not increasing")
                cal.x_thresholds_, cal.y_thresholds_ = x, y
            elif cal.method == "platt":
                cal.coef_ = float(state["coef"])
                cal.intercept_ = float(state["intercept"])
            else:
                raise CalibrationError(f"unknown calibration method {cal.method!r}")
            cal.n_rows_ = int(state["n_rows"])
        except (KeyError, TypeError, ValueError) as exc:
            if isinstance(exc, CalibrationError):
                raise
            raise CalibrationError(f"calibrator state is malformed: {exc!r}") from exc
        return cal
