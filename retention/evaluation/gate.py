"""The promotion gate: whether a candidate may replace the model in service.

On the candidate's own evaluation window, the candidate must beat the best clinic
baseline on still-engaged clients (AUROC), and must be no worse than the current
model, scored on the same rows, beyond a tolerance (AUROC and average precision, on
all rows and the engaged subset).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

from retention.evaluation.heldout import best_baseline


@dataclass(frozen=True)
class GateDecision:
    """Whether a candidate may be promoted, every check made, and the reasons for a refusal."""

    version: str
    passed: bool
    compared_with: str | None
    checks: list[dict[str, Any]] = field(default_factory=list)
    refusals: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def gate(version: str, evaluation: dict[str, Any], tolerance: float) -> GateDecision:
    """Apply the promotion gate to an evaluation holding ``model`` (and ``current`` if any)."""
    checks: list[dict[str, Any]] = []
    engaged = evaluation["subsets"]["engaged"]["metrics"]
    name, value = best_baseline(evaluation, "engaged", "auroc")
    model_auroc = engaged["model"]["auroc"]["value"]
    checks.append({
        "check": "beats the best baseline on still-engaged clients (AUROC)",
        "candidate": model_auroc, "reference": value, "against": name,
        "passed": _finite(model_auroc) and model_auroc > value,
    })
    calibration = evaluation.get("calibration")
    if calibration is not None:
        bound = calibration["bound"]
        checks.append({
            "check": f"calibrated on the evaluation slice (ECE at most {bound['max_ece']}, "
                     f"no decile of {bound['min_decile_rows']}+ rows off by more than "
                     f"{bound['max_decile_gap']}; refused when clearly beyond)",
            "candidate": calibration["ece"]["value"], "reference": bound["max_ece"],
            "against": "the calibration bound", "passed": not bound["broken"],
            "within_bound": bound["met"],
        })
    current = next((n for n, s in evaluation["scorers"].items() if s["kind"] == "current"), None)
    if current is not None:
        for subset in ("all", "engaged"):
            for metric in ("auroc", "average_precision"):
                mine = evaluation["subsets"][subset]["metrics"]["model"][metric]["value"]
                theirs = evaluation["subsets"][subset]["metrics"][current][metric]["value"]
                checks.append({
                    "check": f"no worse than the current model beyond {tolerance} "
                             f"({metric}, {subset})",
                    "candidate": mine, "reference": theirs, "against": current,
                    "passed": _finite(mine) and (not _finite(theirs)
                                                 or mine >= theirs - tolerance),
                })
    refusals = [
        f"{c['check']}: candidate {_fmt(c['candidate'])} vs {c['against']} "
        f"{_fmt(c['reference'])}"
        for c in checks if not c["passed"]
    ]
    label = evaluation["scorers"][current]["label"] if current else None
    return GateDecision(version, not refusals, label, checks, refusals)


def _finite(v: Any) -> bool:
    return isinstance(v, int | float) and math.isfinite(v)


def _fmt(v: Any) -> str:
    return f"{v:.3f}" if _finite(v) else "n/a"
