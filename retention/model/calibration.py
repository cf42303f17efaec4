"""Probability calibration fitted on a later, disjoint slice, chosen by comparison, stored as JSON.

The booster's own probabilities are overconfident (risks of 0.999 are common with 300
rounds on easy rows). A calibrator maps the booster's raw log-odds to probabilities
that match observed rates on snapshots it was not trained on. Three maps are known:

- ``platt``: a logistic fit on the raw score (Platt 1999; scikit-learn's
  ``LogisticRegression``), two numbers;
- ``beta``: beta calibration (Kull, Silva Filho & Flach, AISTATS 2017; the authors'
  ``betacal`` package), three numbers, which can bend the two ends differently where
  a sigmoid cannot;
- ``isotonic``: a step function (scikit-learn's ``IsotonicRegression``), used only
  with enough outcomes of each kind, since on a small slice its steps put whole blocks
  of clients at one risk.

``choose`` compares them out of time within the calibration slice (fit on its earlier
dates, judge by log loss on its later ones) and the chosen one is fitted on the whole
slice. Every map is non-decreasing in the raw score, so the booster's monotone
constraints hold for the calibrated risk. A calibrator is a scikit-learn style
estimator whose fitted state is plain numbers, so it travels with the model as JSON
(never pickle) and is hashed with it.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
from betacal import BetaCalibration
from sklearn.base import BaseEstimator
from sklearn.isotonic import IsotonicRegression
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import log_loss
from sklearn.utils.validation import check_is_fitted

from retention.settings import CALIBRATION_METHODS as METHODS

# Scores are turned into probabilities for beta calibration; keep them off 0 and 1.
_EPS = 1e-12


class CalibrationError(ValueError):
    """A calibrator cannot be fitted or read back."""


def _sigmoid(raw: np.ndarray) -> np.ndarray:
    return np.clip(1.0 / (1.0 + np.exp(-raw)), _EPS, 1.0 - _EPS)


class Calibrator(BaseEstimator):
    """Map raw log-odds to calibrated probabilities (Platt, beta or isotonic).

    Parameters
    ----------
    method : {"platt", "beta", "isotonic"}
        A logistic fit on the raw score, beta calibration on its sigmoid, or isotonic
        regression (a step function, clipped at the ends).

    Examples
    --------
    >>> cal = Calibrator("platt").fit(np.array([-2.0, -1, 0, 1, 2]), np.array([0, 0, 1, 0, 1]))
    >>> bool(np.all(np.diff(cal.predict(np.array([-1.0, 0, 1]))) >= 0))
    True
    """

    def __init__(self, method: str = "platt") -> None:
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
        elif self.method == "beta":
            # betacal silences every warning in the process while it fits: contain that.
            with warnings.catch_warnings():
                fitted = BetaCalibration("abm").fit(_sigmoid(raw), y)
            a, b, _ = fitted.calibrator_.map_
            self.a_, self.b_ = float(a), float(b)
            self.c_ = float(fitted.calibrator_.lr_.intercept_[0])
            if self.a_ < 0 or self.b_ < 0 or self.a_ + self.b_ == 0:
                raise CalibrationError(
                    "beta calibration found risk falling as the model's score rises; "
                    "the model does not rank the calibration slice; do not use it"
                )
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
        if self.method == "beta":
            # The fitted beta map: logit p = c + a ln s - b ln(1 - s), s = sigmoid(raw).
            s = _sigmoid(raw)
            logit = self.c_ + self.a_ * np.log(s) - self.b_ * np.log1p(-s)
            return 1.0 / (1.0 + np.exp(-logit))
        return 1.0 / (1.0 + np.exp(-(self.coef_ * raw + self.intercept_)))

    def to_dict(self) -> dict[str, Any]:
        """The fitted state as plain JSON values."""
        check_is_fitted(self, "n_rows_")
        state: dict[str, Any] = {"method": self.method, "n_rows": self.n_rows_}
        if self.method == "isotonic":
            state["x_thresholds"] = self.x_thresholds_.tolist()
            state["y_thresholds"] = self.y_thresholds_.tolist()
        elif self.method == "beta":
            state.update(a=self.a_, b=self.b_, c=self.c_)
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
            elif cal.method == "beta":
                cal.a_, cal.b_, cal.c_ = (float(state[k]) for k in ("a", "b", "c"))
                if cal.a_ < 0 or cal.b_ < 0 or cal.a_ + cal.b_ == 0:
                    raise CalibrationError("beta calibration parameters are not increasing")
            elif cal.method == "platt":
                cal.coef_ = float(state["coef"])
                cal.intercept_ = float(state["intercept"])
                if cal.coef_ <= 0:
                    raise CalibrationError("Platt calibration slope is not positive")
            else:
                raise CalibrationError(f"unknown calibration method {cal.method!r}")
            cal.n_rows_ = int(state["n_rows"])
        except (KeyError, TypeError, ValueError) as exc:
            if isinstance(exc, CalibrationError):
                raise
            raise CalibrationError(f"calibrator state is malformed: {exc!r}") from exc
        return cal


@dataclass(frozen=True)
class Choice:
    """The calibration chosen and what each candidate scored out of time."""

    method: str
    # Per candidate: mean log loss on the later folds (None where it could not be fitted).
    log_loss: dict[str, float | None]
    folds: int

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, "log_loss": self.log_loss, "folds": self.folds,
                "compared_by": "log loss on the calibration slice's later dates, each "
                               "fitted on its earlier dates"}


# Simpler first: a tie (within this much log loss) goes to the earlier method.
PREFERENCE = ("platt", "beta", "isotonic")
TIE = 1e-4


def choose(raw: np.ndarray, y: np.ndarray, dates: np.ndarray,
           isotonic_min_outcomes: int = 100, folds: int = 3) -> Choice:
    """Compare the calibrations out of time on the calibration slice; the best by log loss.

    The slice's dates are cut into ``folds`` consecutive blocks; each candidate is fitted
    on the blocks before each later block and scored on it (forward chaining, as the
    calibrator will be used: on days after the ones it saw). Isotonic competes only with
    ``isotonic_min_outcomes`` outcomes of each kind in every fit.
    """
    raw, y, dates = np.asarray(raw, float), np.asarray(y, float), np.asarray(dates)
    blocks = np.array_split(np.unique(dates), folds)
    losses: dict[str, list[float]] = {m: [] for m in PREFERENCE}
    unusable: set[str] = set()
    for k in range(1, len(blocks)):
        if len(blocks[k]) == 0:
            continue
        fit_rows = dates < blocks[k][0]
        test_rows = np.isin(dates, blocks[k])
        y_fit, y_test = y[fit_rows], y[test_rows]
        if len(np.unique(y_fit)) < 2 or len(y_test) == 0:
            continue
        enough = min(y_fit.sum(), len(y_fit) - y_fit.sum()) >= isotonic_min_outcomes
        for method in PREFERENCE:
            if method == "isotonic" and not enough:
                unusable.add(method)
                continue
            try:
                p = Calibrator(method).fit(raw[fit_rows], y_fit).predict(raw[test_rows])
            except CalibrationError:
                unusable.add(method)
                continue
            losses[method].append(float(log_loss(y_test, np.clip(p, 1e-9, 1 - 1e-9),
                                                 labels=[0, 1])))
    scored = {m: float(np.mean(v)) if v and m not in unusable else None
              for m, v in losses.items()}
    candidates = [m for m in PREFERENCE if scored[m] is not None]
    if not candidates:
        # Nothing could be compared. A model whose score does not rise with risk refuses
        # the parametric maps; isotonic still fits (flat, if it must), so the candidate is
        # saved and judged by the gate rather than lost.
        parametric = [m for m in ("platt", "beta") if m not in unusable]
        return Choice(parametric[0] if parametric else "isotonic", scored, folds)
    best = min(scored[m] for m in candidates)  # type: ignore[type-var]
    method = next(m for m in candidates if scored[m] <= best + TIE)  # type: ignore[operator]
    return Choice(method, scored, folds)
