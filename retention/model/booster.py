"""The dropout model: a LightGBM booster and its calibrator, trained and used together.

``TrainedModel`` predicts calibrated risk, the raw log-odds that rank the list, and
the exact per-feature contributions behind each reason. How a model is stored,
checked and loaded is ``retention.model.artifacts``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import lightgbm as lgb
import numpy as np
import pandas as pd
from sklearn.metrics import average_precision_score, brier_score_loss, roc_auc_score

from retention.features.spec import CATEGORIES, FEATURE_NAMES, FEATURES
from retention.model.calibration import Calibrator


class ModelError(RuntimeError):
    """A model version is missing, tampered with, or does not fit the features."""


# The tree shape rolling-origin validation chooses among (``retention.model.tuning``);
# everything else in ``lgb_params`` is fixed. The first entry is the default.
DEFAULT_SHAPE: dict[str, Any] = {"num_leaves": 15, "min_data_in_leaf": 40}
NUM_BOOST_ROUND = 300


def lgb_params(seed: int, shape: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """LightGBM parameters: small trees, monotone where clinically sound, deterministic.

    ``shape`` overrides the tree shape (``DEFAULT_SHAPE`` keys) chosen by tuning.
    """
    return {
        "objective": "binary",
        "learning_rate": 0.05,
        **DEFAULT_SHAPE,
        **(shape or {}),
        "feature_fraction": 0.8,
        "bagging_fraction": 0.8,
        "bagging_freq": 1,
        "lambda_l2": 1.0,
        "monotone_constraints": [f.monotone for f in FEATURES],
        # "basic" over-constrains but holds; "advanced" has open reports of violations.
        "monotone_constraints_method": "basic",
        "seed": seed,
        "deterministic": True,
        "force_row_wise": True,
        "num_threads": 2,
        "verbose": -1,
    }


def to_matrix(frame: pd.DataFrame, feature_names: Sequence[str] = FEATURE_NAMES) -> pd.DataFrame:
    """The model's input matrix: features in stored order, categoricals fixed."""
    missing = [n for n in feature_names if n not in frame.columns]
    if missing:
        raise ModelError(f"feature frame lacks {missing}")
    x = frame[list(feature_names)].copy()
    for name in x.columns:
        if name in CATEGORIES:
            x[name] = pd.Categorical(x[name].astype("object"), categories=list(CATEGORIES[name]))
        else:
            # Stored features come back from JSON; a column of all-missing values is
            # still a float column to the model.
            x[name] = pd.to_numeric(x[name], errors="raise").astype(float)
    return x


def metrics(y: np.ndarray, p: np.ndarray) -> dict[str, float]:
    """Discrimination and calibration of probabilities ``p`` for outcomes ``y``."""
    both = len(np.unique(y)) == 2
    return {
        "n": float(len(y)),
        "positives": float(np.sum(y)),
        "base_rate": float(np.mean(y)) if len(y) else float("nan"),
        "mean_risk": float(np.mean(p)) if len(p) else float("nan"),
        "auroc": float(roc_auc_score(y, p)) if both else float("nan"),
        "average_precision": float(average_precision_score(y, p)) if both else float("nan"),
        "brier": float(brier_score_loss(y, p)) if len(y) else float("nan"),
    }


@dataclass(frozen=True)
class TrainedModel:
    """A booster, its calibrator and the metadata that travels with them."""

    booster: lgb.Booster
    calibrator: Calibrator
    metadata: dict[str, Any]
    # The fit the evaluation judged, when the served model was refit on more data
    # after it (``retention.model.training.fit``); None when this is that fit.
    evaluated: TrainedModel | None = None

    @property
    def judged(self) -> TrainedModel:
        """The fit whose held-out evaluation stands for this model."""
        return self.evaluated or self

    @property
    def version(self) -> str:
        return str(self.metadata["version"])

    @property
    def feature_names(self) -> tuple[str, ...]:
        return tuple(f["name"] for f in self.metadata["features"])

    def predict(self, frame: pd.DataFrame) -> np.ndarray:
        """Calibrated probability of disengagement for each row."""
        return self.calibrator.predict(self.raw_score(frame))

    def raw_score(self, frame: pd.DataFrame) -> np.ndarray:
        """The model's log-odds for each row."""
        return np.asarray(
            self.booster.predict(to_matrix(frame, self.feature_names), raw_score=True)
        )

    def contributions(self, frame: pd.DataFrame) -> pd.DataFrame:
        """Exact per-feature contributions in log-odds (TreeSHAP), plus ``expected_value``.

        Each row sums to the raw score. This costs far more than a prediction:
        call it only for rows whose reasons are shown.
        """
        contrib = self.booster.predict(to_matrix(frame, self.feature_names), pred_contrib=True)
        columns = [*self.feature_names, "expected_value"]
        return pd.DataFrame(np.asarray(contrib), index=frame.index, columns=columns)


def train_booster(
    x_train: pd.DataFrame,
    y_train: np.ndarray,
    seed: int,
    shape: Mapping[str, Any] | None = None,
    num_boost_round: int = NUM_BOOST_ROUND,
) -> lgb.Booster:
    """Fit the booster on a training matrix."""
    return lgb.train(lgb_params(seed, shape), dataset(x_train, y_train),
                     num_boost_round=num_boost_round)


def dataset(x: pd.DataFrame, y: np.ndarray) -> lgb.Dataset:
    """A LightGBM dataset of a model matrix, categoricals declared."""
    return lgb.Dataset(
        x,
        label=y,
        categorical_feature=[f.name for f in FEATURES if f.kind == "categorical"],
        free_raw_data=False,
    )
