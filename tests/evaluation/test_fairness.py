"""Fairness: groups from demographics that are never inputs, gaps flagged beyond tolerance."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd

from retention.evaluation.fairness import fairness_report, group_columns
from retention.features import FEATURE_NAMES
from tests.conftest import Scored


def test_demographics_are_not_model_inputs() -> None:
    assert not {"sex", "birth_year", "race_ethnicity", "age"} & set(FEATURE_NAMES)


def test_age_band_is_taken_at_the_as_of_date() -> None:
    rows = pd.DataFrame({"client_id": ["a", "b", "c"], "program": ["outpatient"] * 3,
                         "as_of": pd.to_datetime(["2026-03-02"] * 3)})
    clients = pd.DataFrame({"client_id": ["a", "b", "c"], "birth_year": [2002, 1990, None],
                            "sex": ["female", None, "male"], "race_ethnicity": [None] * 3})
    groups = group_columns(rows, clients)
    assert groups["age_band"].tolist() == ["under 25", "35-44", "not recorded"]
    assert groups["sex"].tolist() == ["female", "not recorded", "male"]


def test_a_group_the_model_serves_badly_is_flagged() -> None:
    rng = np.random.default_rng(1)
    n = 4000
    y = (rng.random(n) < 0.2).astype(float)
    group = np.where(rng.random(n) < 0.5, "a", "b")
    score = y * 2 + rng.normal(0, 1, n)
    score[group == "b"] = rng.normal(0, 1, (group == "b").sum())  # no signal for group b
    p = 1 / (1 + np.exp(-(score - 2)))
    flags = score > np.quantile(score, 0.8)
    groups = pd.DataFrame({"sex": group, "age_band": "x", "race_ethnicity": "x",
                           "program": "outpatient"})
    report = fairness_report(y, score, p, flags, groups, tolerance=0.05, min_outcomes=20)
    flagged = " ".join(report["flags"])
    assert "sex=b: AUROC" in flagged and "sex=a: AUROC" not in flagged
    small = fairness_report(y[:50], score[:50], p[:50], flags[:50], groups[:50],
                            tolerance=0.05, min_outcomes=20)
    assert not small["flags"]
    assert not any(g["judged"] for g in small["groups"]["sex"])


def test_the_trained_model_reports_every_group_dimension(scored: Scored) -> None:
    folder = scored.settings.models_dir / scored.model.version
    fairness = json.loads((folder / "evaluation.json").read_text())["fairness"]
    for subset in ("all", "engaged"):
        groups = fairness[subset]["groups"]
        assert set(groups) == {"sex", "age_band", "race_ethnicity", "program"}
        for table in groups.values():
            assert sum(g["n"] for g in table) == fairness[subset]["overall"]["n"]
