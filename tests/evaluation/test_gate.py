"""The promotion gate decides on paired intervals of differences, never on point estimates."""

from __future__ import annotations

from typing import Any

import pytest

from retention.evaluation.gate import BETTER, TIED, WORSE, best_rule, gate, verdict


def interval(value: float, low: float, high: float) -> dict[str, float]:
    return {"value": value, "low": low, "high": high}


def evaluation(
    model: float,
    others: dict[str, tuple[float, tuple[float, float, float]]],
    *,
    current: bool = False,
    all_rows: dict[str, tuple[float, tuple[float, float, float]]] | None = None,
) -> dict[str, Any]:
    """An evaluation whose engaged AUROC (and AP, equal) of each scorer and paired
    difference from the model are given; the calibration bound is met."""
    def subset(table: dict[str, tuple[float, tuple[float, float, float]]]) -> dict[str, Any]:
        metrics = {"model": {m: interval(model, model - 0.02, model + 0.02)
                             for m in ("auroc", "average_precision")}}
        differences = {}
        for name, (value, diff) in table.items():
            metrics[name] = {m: interval(value, value - 0.02, value + 0.02)
                             for m in ("auroc", "average_precision")}
            differences[name] = {m: interval(*diff) for m in ("auroc", "average_precision")}
        return {"n": 4000, "positives": 150, "clients": 300, "metrics": metrics,
                "differences": differences}

    scorers = {"model": {"label": "LightGBM candidate", "kind": "model"}}
    for name in others:
        kind = "current" if name == "current" else "baseline"
        scorers[name] = {"label": f"label of {name}", "kind": kind}
    return {
        "scorers": scorers,
        "subsets": {"engaged": subset(others), "all": subset(all_rows or others)},
        "calibration": {"ece": interval(0.01, 0.0, 0.02),
                        "bound": {"max_ece": 0.02, "min_decile_rows": 30,
                                  "max_decile_gap": 0.08, "met": True, "broken": False}},
    }


RULES_FAR_BELOW = {
    "missed_2_in_a_row": (0.71, (0.16, 0.13, 0.19)),
    "days_since_attended": (0.70, (0.17, 0.14, 0.20)),
    "srs_rule": (0.55, (0.32, 0.28, 0.36)),
}


def test_verdicts_follow_the_interval_not_the_point() -> None:
    assert verdict(interval(0.006, -0.008, 0.020)) == TIED
    assert verdict(interval(-0.009, -0.030, 0.012)) == TIED
    assert verdict(interval(0.010, 0.001, 0.020)) == BETTER
    assert verdict(interval(-0.010, -0.020, -0.001)) == WORSE


def test_a_model_that_ties_the_regression_but_beats_the_rules_passes() -> None:
    """The demo on some dates: LightGBM 0.855 against the regression's 0.864, within noise."""
    ev = evaluation(0.855, {**RULES_FAR_BELOW,
                            "logistic_regression": (0.864, (-0.009, -0.030, 0.012))})
    decision = gate("v", ev, 0.01)
    assert decision.passed, decision.refusals
    regression = next(c for c in decision.checks if c["against"] == "logistic_regression")
    assert regression["verdict"] == TIED and regression["passed"]
    rule = next(c for c in decision.checks if c["against"] == "missed_2_in_a_row")
    assert rule["verdict"] == BETTER


def test_a_regression_clearly_better_refuses_the_booster() -> None:
    ev = evaluation(0.82, {**RULES_FAR_BELOW,
                           "logistic_regression": (0.86, (-0.04, -0.06, -0.02))})
    decision = gate("v", ev, 0.01)
    assert not decision.passed
    assert any("logistic regression" in r and "worse" in r for r in decision.refusals)


def test_a_first_model_that_cannot_be_told_apart_from_a_rule_is_refused_with_advice() -> None:
    """A small clinic: the point estimate beats the rule, the interval does not."""
    rules = {"missed_2_in_a_row": (0.80, (0.03, -0.02, 0.08)),
             "days_since_attended": (0.78, (0.05, -0.01, 0.11))}
    decision = gate("v", evaluation(0.83, rules), 0.01)
    assert not decision.passed
    assert "cannot be told apart" in decision.refusals[0]
    assert "+0.030 (-0.020 to +0.080)" in decision.refusals[0]
    assert "300 still-engaged clients" in decision.advice
    assert "No list can be published" in decision.advice
    assert "--force" in decision.advice


def test_the_best_rule_is_chosen_among_the_rules_only() -> None:
    ev = evaluation(0.9, {**RULES_FAR_BELOW,
                          "logistic_regression": (0.95, (-0.05, -0.07, -0.03))})
    assert best_rule(ev) == "missed_2_in_a_row"
    ev["subsets"]["engaged"]["metrics"]["srs_rule"]["auroc"]["value"] = 0.8
    assert best_rule(ev) == "srs_rule"


@pytest.mark.parametrize(("low", "passed"), [(-0.008, True), (-0.01, True), (-0.03, False)])
def test_against_the_current_model_the_low_end_must_stay_within_tolerance(
        low: float, passed: bool) -> None:
    """0.867 vs 0.861 once passed as an 'improvement' with an interval of -0.008 to 0.020:
    it passes as within tolerance, and says the two cannot be told apart."""
    ev = evaluation(0.867, {**RULES_FAR_BELOW, "current": (0.861, (0.006, low, 0.020))},
                    current=True)
    decision = gate("v", ev, 0.01)
    assert decision.passed is passed, decision.refusals
    checks = [c for c in decision.checks if c["against"] == "current"]
    assert len(checks) == 4 and all(c["verdict"] == TIED for c in checks)
    assert decision.compared_with == "label of current"
    if not passed:
        assert any("no worse than the current model beyond 0.01" in r
                   for r in decision.refusals)
        assert decision.advice == ""  # the rule check passed: the model in service stays


def test_a_better_point_with_a_worse_low_end_on_all_clients_is_refused() -> None:
    ev = evaluation(0.90, {**RULES_FAR_BELOW, "current": (0.89, (0.01, -0.005, 0.02))},
                    all_rows={**RULES_FAR_BELOW, "current": (0.91, (0.004, -0.05, 0.03))})
    decision = gate("v", ev, 0.01)
    assert not decision.passed
    assert all("all;" in r for r in decision.refusals)
