"""The calibration check on the evaluation slice: ECE and deciles against the bound, with
client-bootstrap intervals; the gate refuses a clearly broken bound, and the report shows it."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest

from retention.evaluation.calibration import calibration_report, summary
from retention.evaluation.gate import gate
from retention.settings import EvaluationSettings
from tests.conftest import Scored

EV = EvaluationSettings(bootstrap_samples=200)


def slice_of(n_clients: int, per_client: int = 8, shift: float = 0.0,
             seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Outcomes drawn at risk ``p``, shown as ``p + shift``: a client's snapshots share a risk."""
    rng = np.random.default_rng(seed)
    risk = np.repeat(rng.beta(1.2, 5.0, n_clients), per_client)
    clients = np.repeat(np.arange(n_clients), per_client).astype(str)
    y = (rng.random(len(risk)) < risk).astype(float)
    return y, np.clip(risk + shift, 0.001, 0.999), clients


def test_honest_percentages_meet_the_bound() -> None:
    y, p, clients = slice_of(3000)
    report = calibration_report(y, p, clients, EV)
    bound = report["bound"]
    assert bound["met"] and not bound["broken"], summary(report)
    # The basic interval corrects ECE's upward bias: it may sit at or below the estimate.
    assert 0 <= report["ece"]["low"] <= report["ece"]["value"]
    assert len(report["deciles"]) == 10 and sum(d["n"] for d in report["deciles"]) == len(y)
    assert summary(report).endswith("within the bound")


def test_percentages_that_overstate_break_the_bound_and_the_gate_refuses() -> None:
    y, p, clients = slice_of(3000, shift=0.12)
    report = calibration_report(y, p, clients, EV)
    bound = report["bound"]
    assert bound["ece_broken"] and bound["deciles_broken"] and bound["broken"]
    assert all(report["deciles"][g]["gap"]["value"] > 0.08 for g in bound["deciles_broken"])
    assert summary(report).endswith("beyond the bound, clearly (the gate refuses)")


def test_a_clinic_too_small_to_tell_is_not_refused_on_noise() -> None:
    """Honest percentages on small slices often look over the bound (ECE is biased upwards,
    ten deciles give ten chances): the bound is broken in at most about one in twenty, as
    a 95% rule should be, while a real overstatement on the same sizes is refused."""
    broken = 0
    for seed in range(40):
        y, p, clients = slice_of(60, per_client=6, seed=seed)
        bound = calibration_report(y, p, clients, EV)["bound"]
        broken += bound["broken"]
    assert broken <= 2
    y, p, clients = slice_of(60, per_client=6, seed=1)
    noisy = calibration_report(y, p, clients, EV)
    assert not noisy["bound"]["met"] and not noisy["bound"]["broken"], summary(noisy)
    assert "within chance at this clinic's size" in summary(noisy)
    y, p, clients = slice_of(400, shift=0.06, seed=1)
    assert calibration_report(y, p, clients, EV)["bound"]["broken"]


def test_deciles_with_too_few_rows_are_shown_but_not_judged() -> None:
    y, p, clients = slice_of(20, per_client=10, shift=0.2, seed=2)  # 20 rows per decile
    bound = calibration_report(y, p, clients, EV)["bound"]
    assert bound["worst_decile"] is None and bound["deciles_exceeded"] == []


@pytest.fixture(scope="module")
def evaluation(scored: Scored) -> dict:
    folder = scored.settings.models_dir / scored.model.version
    return json.loads((folder / "evaluation.json").read_text())


def test_the_gate_refuses_only_a_clearly_broken_calibration(evaluation: dict) -> None:
    assert "calibration" in evaluation, "the training run checks calibration"
    version = "candidate"
    kept = gate(version, evaluation, 0.02)
    check = next(c for c in kept.checks if c["against"] == "the calibration bound")
    assert check["passed"] == (not evaluation["calibration"]["bound"]["broken"])
    broken = copy.deepcopy(evaluation)
    broken["calibration"]["bound"]["broken"] = True
    refused = gate(version, broken, 0.02)
    assert not refused.passed
    assert any("calibrated on the evaluation slice" in r for r in refused.refusals)
    exceeded = copy.deepcopy(evaluation)
    exceeded["calibration"]["bound"].update(met=False, broken=False)
    assert not any("calibrated" in r for r in gate(version, exceeded, 0.02).refusals)
