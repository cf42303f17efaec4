"""The rules a clinic uses today, and a logistic regression, as scores on the same rows.

Each baseline gives a ranking score (higher means riskier) and, for the rules,
the rows the rule itself flags. Rules are ranked first by their flag and then
by the quantity they threshold, so "precision at capacity" fills a case
manager's list the way a clinic using the rule would.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from sklearn.compose import ColumnTransformer
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from retention.features.spec import CATEGORIES, FEATURES
from retention.model.booster import to_matrix

SRS_CUTOFF = 36.0
MISSED_IN_A_ROW = 2
# The rules a clinic uses today, and the regression that checks the booster is sound.
RULES = ("missed_2_in_a_row", "srs_rule", "days_since_attended")
LOGISTIC = "logistic_regression"


@dataclass(frozen=True)
class BaselineScore:
    """A baseline's ranking score, its probabilities if it has any, and its own flags."""

    name: str
    label: str
    score: np.ndarray
    probability: np.ndarray | None = None
    flagged: np.ndarray | None = None


def rule_baselines(rows: pd.DataFrame) -> list[BaselineScore]:
    """Consecutive misses, the SRS rule (PCOMS/OpenFIT) and days since last attended."""
    misses = rows["consecutive_misses"].fillna(0).to_numpy(float)
    srs = rows["srs_latest"].to_numpy(float)
    change = rows["srs_change"].to_numpy(float)
    with np.errstate(invalid="ignore"):
        srs_flag = (srs < SRS_CUTOFF) | (change < 0)
    # Lower SRS ranks higher among flagged rows; no SRS at all ranks last.
    srs_score = srs_flag * 100.0 + np.nan_to_num(40.0 - srs, nan=-1.0)
    days = rows["days_since_attended"].fillna(rows["days_since_attended"].max()).to_numpy(float)
    return [
        BaselineScore("missed_2_in_a_row", "2+ consecutive missed sessions",
                      misses, flagged=misses >= MISSED_IN_A_ROW),
        BaselineScore("srs_rule", "SRS below 36 or dropped (PCOMS/OpenFIT)",
                      srs_score, flagged=srs_flag),
        BaselineScore("days_since_attended", "days since last attended", days),
    ]


def fit_logistic(train: pd.DataFrame, seed: int) -> Pipeline:
    """A logistic regression on the model's own features (median-imputed, with indicators)."""
    numeric = [f.name for f in FEATURES if f.kind == "numeric"]
    categorical = [f.name for f in FEATURES if f.kind == "categorical"]
    prep = ColumnTransformer([
        ("num", make_pipeline(SimpleImputer(strategy="median", add_indicator=True,
                                            keep_empty_features=True), StandardScaler()),
         numeric),
        ("cat", OneHotEncoder(categories=[list(CATEGORIES[c]) for c in categorical],
                              handle_unknown="ignore"), categorical),
    ])
    pipe = Pipeline([("prep", prep),
                     ("lr", LogisticRegression(max_iter=2000, C=1.0, random_state=seed))])
    return pipe.fit(_lr_matrix(train), train["label"].to_numpy())


def logistic_baseline(model: Pipeline, rows: pd.DataFrame) -> BaselineScore:
    """The fitted logistic regression's probabilities on ``rows``."""
    p = np.asarray(model.predict_proba(_lr_matrix(rows))[:, 1])
    return BaselineScore(LOGISTIC, "logistic regression, same features", p,
                         probability=p)


def _lr_matrix(rows: pd.DataFrame) -> pd.DataFrame:
    x = to_matrix(rows)
    for name in CATEGORIES:
        x[name] = x[name].astype(object).where(x[name].notna(), "missing")
    return x
