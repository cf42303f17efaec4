"""The trained booster as served: risks strictly between 0 and 1, and no demographic input."""

from __future__ import annotations

from typing import Any

from retention.features import FEATURE_NAMES
from retention.store.features import read_features
from tests.conftest import Scored

DEMOGRAPHIC_COLUMNS = {"birth_year", "sex", "race_ethnicity", "age"}


def test_no_client_is_given_exactly_0_or_100_percent(scored: Scored) -> None:
    """A calibrated risk of exactly 0 or 1 claims a certainty no model has.

    Isotonic steps fitted on a clinic's few dropouts did this to whole blocks
    of clients; the default calibration is smooth.
    """
    with scored.store.connect() as conn:
        features = read_features(conn, scored.as_of, FEATURE_NAMES)
    risk = scored.model.predict(features)
    assert ((risk > 0) & (risk < 1)).all()


def test_model_has_no_demographic_inputs(scored: Any) -> None:
    """Guards: neither the metadata nor the booster lists a demographic column as an input."""
    names = {f["name"] for f in scored.model.metadata["features"]}
    assert not names & DEMOGRAPHIC_COLUMNS
    assert not set(scored.model.booster.feature_name()) & DEMOGRAPHIC_COLUMNS
    assert not any(w in n.split("_") for n in names for w in ("age", "sex", "race", "birth"))
