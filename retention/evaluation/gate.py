"""The promotion gate: whether a candidate may replace the model in service.

It decides on intervals, not point estimates: every comparison is the paired
client-bootstrap interval of the difference on the candidate's evaluation rows
(``retention.evaluation.heldout``), so a gap inside the noise neither passes nor
refuses a model. The candidate must:

- rank still-engaged clients better than the best of the clinic's own rules (the
  interval of the AUROC difference clears zero): a list that cannot be told apart
  from "2 misses in a row" adds nothing a case manager can trust;
- not rank them worse than the logistic regression on the same features beyond
  chance (the interval of the difference is not wholly below zero). The regression is
  a check that the booster is not broken, not what a clinic uses: a booster that ties
  it still beats the rules, and the report says they cannot be told apart;
- stay calibrated (``retention.evaluation.calibration``: refused only when clearly
  beyond the bound);
- against the model in service, scored on the same rows: the lower end of the
  difference is within ``tolerance`` (AUROC and average precision, all clients and
  still-engaged), so it is not plausibly worse by more than that.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

from retention.evaluation.baselines import LOGISTIC, RULES

BETTER, TIED, WORSE = "better", "cannot be told apart", "worse"


@dataclass(frozen=True)
class GateDecision:
    """Whether a candidate may be promoted, every check made, and the reasons for a refusal."""

    version: str
    passed: bool
    compared_with: str | None
    checks: list[dict[str, Any]] = field(default_factory=list)
    refusals: list[str] = field(default_factory=list)
    advice: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def gate(version: str, evaluation: dict[str, Any], tolerance: float) -> GateDecision:
    """Apply the promotion gate to an evaluation holding ``model`` (and ``current`` if any)."""
    checks: list[dict[str, Any]] = []
    engaged = evaluation["subsets"]["engaged"]
    rule = best_rule(evaluation)
    if rule is None:
        checks.append({"check": "ranks still-engaged clients better than the best clinic rule "
                                "(AUROC)", "candidate": None, "reference": None,
                       "against": "no rule with a finite AUROC", "passed": False})
    else:
        diff = engaged["differences"][rule]["auroc"]
        checks.append(_compared(
            "ranks still-engaged clients better than the best clinic rule (AUROC; the "
            "paired interval of the difference clears zero)", evaluation, "engaged", rule,
            "auroc", passed=_finite(diff["low"]) and diff["low"] > 0))
    if LOGISTIC in engaged["differences"]:
        diff = engaged["differences"][LOGISTIC]["auroc"]
        checks.append(_compared(
            "ranks still-engaged clients no worse than the logistic regression beyond chance "
            "(AUROC; refused when the paired interval is wholly below zero)", evaluation,
            "engaged", LOGISTIC, "auroc",
            passed=_finite(diff["value"]) and not (_finite(diff["high"]) and diff["high"] < 0)))
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
                diff = evaluation["subsets"][subset]["differences"][current][metric]
                checks.append(_compared(
                    f"no worse than the current model beyond {tolerance} ({metric}, {subset}; "
                    "the low end of the paired interval of the difference)",
                    evaluation, subset, current, metric,
                    passed=_finite(diff["value"]) and (not _finite(diff["low"])
                                                       or diff["low"] >= -tolerance)))
    refusals = [_refusal(c) for c in checks if not c["passed"]]
    label = evaluation["scorers"][current]["label"] if current else None
    return GateDecision(version, not refusals, label, checks, refusals,
                        _advice(evaluation, checks, current is not None))


def best_rule(evaluation: dict[str, Any], subset: str = "engaged",
              metric: str = "auroc") -> str | None:
    """The clinic rule with the highest point estimate of ``metric`` on ``subset``."""
    values = {name: v[metric]["value"]
              for name, v in evaluation["subsets"][subset]["metrics"].items()
              if name in RULES and _finite(v[metric]["value"])}
    return max(values, key=lambda k: values[k]) if values else None


def _compared(check: str, evaluation: dict[str, Any], subset: str, other: str, metric: str,
              *, passed: bool) -> dict[str, Any]:
    metrics = evaluation["subsets"][subset]["metrics"]
    diff = evaluation["subsets"][subset]["differences"][other][metric]
    return {
        "check": check, "against": other, "label": evaluation["scorers"][other]["label"],
        "subset": subset, "metric": metric,
        "candidate": metrics["model"][metric]["value"],
        "reference": metrics[other][metric]["value"],
        "difference": diff, "verdict": verdict(diff), "passed": passed,
    }


def verdict(diff: dict[str, Any]) -> str:
    """Better, worse, or cannot be told apart, by the paired interval of a difference."""
    if _finite(diff.get("low")) and diff["low"] > 0:
        return BETTER
    if _finite(diff.get("high")) and diff["high"] < 0:
        return WORSE
    return TIED


def difference_text(diff: dict[str, Any]) -> str:
    """'+0.012 (-0.004 to +0.029)'."""
    def signed(v: Any) -> str:
        return f"{v:+.3f}" if _finite(v) else "n/a"
    return f"{signed(diff.get('value'))} ({signed(diff.get('low'))} to {signed(diff.get('high'))})"


def _refusal(c: dict[str, Any]) -> str:
    if "difference" not in c:
        return (f"{c['check']}: candidate {_fmt(c['candidate'])} vs {c['against']} "
                f"{_fmt(c['reference'])}")
    return (f"{c['check']}: candidate {_fmt(c['candidate'])} vs {c['label']} "
            f"{_fmt(c['reference'])}, difference {difference_text(c['difference'])}: "
            f"{c['verdict']}")


def _advice(evaluation: dict[str, Any], checks: list[dict[str, Any]], has_current: bool) -> str:
    """What the refusal means and what to do, for the commonest case: too little evidence."""
    rule_check = checks[0]
    if rule_check["passed"] or rule_check.get("verdict") != TIED:
        return ""
    engaged = evaluation["subsets"]["engaged"]
    what = ("The model in service stays" if has_current else
            "No list can be published until a model passes")
    return (
        f"On {engaged['clients']:,} still-engaged clients ({engaged['positives']:,} "
        f"disengaged in {engaged['n']:,} snapshot rows) the model cannot yet be told apart "
        f"from the clinic's rule '{rule_check['label']}'. That is too little evidence, not a "
        f"fault: train again when more history has accrued (a longer training window or "
        f"more clients), or promote deliberately with `retention models promote VERSION "
        f"--force --reason ...`. {what}."
    )


def _finite(v: Any) -> bool:
    return isinstance(v, int | float) and math.isfinite(v)


def _fmt(v: Any) -> str:
    return f"{v:.3f}" if _finite(v) else "n/a"
