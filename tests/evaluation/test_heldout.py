"""Held-out evaluation: capacity flags, every metric with an interval, baselines on the same
rows, and the synthetic model ahead of the best baseline."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from retention.evaluation.baselines import LOGISTIC
from retention.evaluation.gate import BETTER, WORSE, best_rule, verdict
from retention.evaluation.heldout import top_k_flags
from tests.conftest import Scored


@pytest.fixture(scope="module")
def evaluation(scored: Scored) -> dict:
    folder = scored.settings.models_dir / scored.model.version
    return json.loads((folder / "evaluation.json").read_text())


def test_capacity_is_top_k_per_clinic_per_date() -> None:
    rows = pd.DataFrame({
        "clinic_id": ["x"] * 4 + ["y"] * 2,
        "as_of": pd.to_datetime(["2026-01-05"] * 2 + ["2026-01-12"] * 2 + ["2026-01-05"] * 2),
        "episode_id": [f"e{i}" for i in range(6)],
    })
    flags = top_k_flags(rows, np.array([0.1, 0.9, 0.5, 0.5, 0.2, 0.3]), k=1)
    # One per clinic and date; a tie goes to the lower episode id.
    assert flags.tolist() == [False, True, True, False, False, True]


def test_report_has_every_metric_with_an_interval_for_both_subsets(evaluation: dict) -> None:
    assert evaluation["bootstrap"]["unit"] == "client"
    assert set(evaluation["scorers"]) == {"model", "missed_2_in_a_row", "srs_rule",
                                          "days_since_attended", "logistic_regression"}
    for subset in ("all", "engaged"):
        data = evaluation["subsets"][subset]
        for name, values in data["metrics"].items():
            for metric in ("auroc", "average_precision", "precision_at_k", "recall_at_k"):
                ci = values[metric]
                assert ci["low"] <= ci["value"] <= ci["high"], (subset, name, metric)
        for name in ("model", "logistic_regression"):
            assert data["metrics"][name]["brier"]["value"] is not None
            assert data["metrics"][name]["ece"]["value"] is not None
        assert data["metrics"]["days_since_attended"]["brier"]["value"] is None
    engaged, everyone = evaluation["subsets"]["engaged"], evaluation["subsets"]["all"]
    assert 0 < engaged["n"] < everyone["n"]


def test_baselines_are_scored_on_the_same_rows(scored: Scored, evaluation: dict) -> None:
    meta = scored.model.metadata
    assert evaluation["rows"] == meta["rows"]["evaluation"]
    assert evaluation["snapshot_dates"]["first"] >= meta["window"]["evaluate_from"]
    # The model's held-out AUROC here is the one the metadata records.
    assert evaluation["subsets"]["all"]["metrics"]["model"]["auroc"]["value"] == pytest.approx(
        meta["metrics"]["evaluation"]["auroc"], abs=0.01)


def test_the_synthetic_model_beats_the_rules_and_is_not_beaten_by_the_regression(
    evaluation: dict,
) -> None:
    """As the gate judges it, on the paired intervals: better than the best clinic rule on
    still-engaged clients, and the logistic regression not better beyond chance."""
    engaged = evaluation["subsets"]["engaged"]
    model = engaged["metrics"]["model"]["auroc"]["value"]
    rule = best_rule(evaluation)
    assert rule is not None
    diff = engaged["differences"][rule]["auroc"]
    assert diff["value"] == pytest.approx(model - engaged["metrics"][rule]["auroc"]["value"])
    assert verdict(diff) == BETTER, diff
    assert verdict(engaged["differences"][LOGISTIC]["auroc"]) != WORSE
