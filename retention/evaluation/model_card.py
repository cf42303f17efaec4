"""The model card: the source attributes ONC HTI-1 asks of predictive decision support.

45 CFR 170.315(b)(11) lists source attributes a certified EHR must let users
review for a predictive decision support intervention. Every value here is
read from the version's own metadata, evaluation and gate record; the fixed
texts (intended use, limitations) describe this service and are kept next to
the code that makes them true.
"""

from __future__ import annotations

import html
from typing import Any

from retention.evaluation.heldout import best_baseline

DEVELOPER = "retention service maintainers (open-source project 'retention')"
FUNDING = "not recorded in this repository"


def build_card(
    metadata: dict[str, Any],
    evaluation: dict[str, Any],
    gate: dict[str, Any] | None,
    external: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The card as a dict: HTI-1 source attributes filled from the training run."""
    horizon = metadata["horizon_days"]
    window = metadata["window"]
    all_rows = evaluation["subsets"]["all"]
    engaged = evaluation["subsets"]["engaged"]
    demographics_in_inputs = sorted(
        {f["name"] for f in metadata["features"]} & {"sex", "birth_year", "race_ethnicity", "age"}
    )
    return {
        "name": f"retention disengagement model {metadata['version']}",
        "version": metadata["version"],
        "source_attributes": {
            "developer": DEVELOPER,
            "funding_source": FUNDING,
            "intervention_details": {
                "output": (f"probability that a client with an open episode attends no "
                           f"session in the next {horizon} days and is not discharged as "
                           "completed or transferred (calibrated), with reasons"),
                "model": "LightGBM gradient-boosted trees with monotone constraints, "
                         f"{metadata['calibration']['method']} calibration",
                "inputs": [f["name"] for f in metadata["features"]],
            },
            "intended_use": (
                "Rank clients of addiction-treatment programs by risk of disengagement so "
                "case managers can prioritise outreach; refreshed nightly."
            ),
            "intended_patient_population": (
                "Clients with an open episode in outpatient, intensive outpatient, "
                "residential, partial hospitalisation, medication-assisted or detox "
                "programs of the deploying clinic, as described by its own records."
            ),
            "intended_users": "Case managers, counsellors and clinical supervisors.",
            "decision_role": (
                "Supports, never replaces, clinical judgement: it orders an outreach list "
                "and explains itself; it makes no treatment, discharge or eligibility decision."
            ),
            "out_of_scope_uses": [
                "discharging, sanctioning or denying services to a client",
                "judging clinicians or programs",
                "use in populations or programs absent from the training data",
                "individual prognosis beyond the stated horizon",
            ],
            "known_limitations": _limitations(metadata, evaluation),
            "training_data": {
                "source": "the deploying clinic's records in the clinic data contract v1",
                "window": window,
                "rows": metadata.get("rows"),
                "clients": metadata.get("clients"),
                "data_fingerprint": metadata["data_fingerprint"],
                "inclusion_criteria": (
                    f"every episode open at each weekly snapshot date from "
                    f"{window['first_snapshot']} to {window['train_until']} whose "
                    f"{horizon}-day outcome window was fully observed; features use only "
                    "data recorded before the snapshot date"
                ),
            },
            "use_of_demographic_variables": (
                "none: sex, age and race/ethnicity are not model inputs"
                if not demographics_in_inputs
                else f"inputs include {demographics_in_inputs}"
            ) + "; they are used only to report performance by group",
            "representativeness": _representativeness(evaluation),
            "fairness_approach": (
                "Demographics excluded from inputs; AUROC, calibration (mean risk vs observed "
                "rate) and recall at capacity reported per sex, age band, race/ethnicity and "
                f"program; gaps beyond {evaluation['fairness']['all']['tolerance']} flagged "
                f"for groups with at least {evaluation['fairness']['all']['min_outcomes']} "
                "outcomes of each kind."
            ),
            "fairness_flags": evaluation["fairness"]["all"]["flags"],
            "validation": {
                "process": (
                    "Time-ordered split: train on the oldest snapshots, calibrate on a later "
                    "slice, evaluate on the most recent, each a full horizon apart. 95% "
                    f"intervals from {evaluation['bootstrap']['samples']} bootstrap resamples "
                    "of clients. Compared on the same rows with the clinic's rules and a "
                    "logistic regression."
                ),
                "internal": {
                    "window": evaluation["snapshot_dates"],
                    "all_open_episodes": _headline(all_rows),
                    "still_engaged": _headline(engaged),
                    "best_baseline_still_engaged": _baseline(evaluation),
                },
                "external": external or "none recorded for this version",
            },
            "monitoring_and_updates": (
                "Each scoring run records the population stability index of every input "
                "and of the score against the training rows and flags drift; a weekly job "
                "retrains, evaluates and promotes only through the gate (better than the "
                "clinic's rules on still-engaged clients and no worse than the current model, "
                "each by a paired bootstrap interval); every "
                "promotion and rollback is logged with its reason."
            ),
            "promotion_gate": gate,
        },
        "libraries": metadata["libraries"],
        "hashes": metadata["sha256"],
    }


def _headline(subset: dict[str, Any]) -> dict[str, Any]:
    model = subset["metrics"]["model"]
    return {"n": subset["n"], "positives": subset["positives"],
            **{k: model[k] for k in ("auroc", "average_precision", "brier", "ece",
                                     "precision_at_k", "recall_at_k")}}


def _baseline(evaluation: dict[str, Any]) -> dict[str, Any]:
    name, value = best_baseline(evaluation)
    return {"name": name, "label": evaluation["scorers"][name]["label"], "auroc": value}


def _representativeness(evaluation: dict[str, Any]) -> dict[str, Any]:
    groups = evaluation["fairness"]["all"]["groups"]
    return {dim: {g["group"]: g["n"] for g in table} for dim, table in groups.items()}


def _limitations(metadata: dict[str, Any], evaluation: dict[str, Any]) -> list[str]:
    out = [
        "Trained on one clinic's history; performance elsewhere is unknown until "
        "validated there.",
        _fit_limitation(metadata),
        "Rules and reasons reflect associations in records, not causes.",
    ]
    if evaluation["fairness"]["all"]["flags"]:
        out.append("Subgroup gaps beyond tolerance: "
                   + "; ".join(evaluation["fairness"]["all"]["flags"]))
    return out


def _fit_limitation(metadata: dict[str, Any]) -> str:
    """Which fit the numbers describe and which one serves."""
    judged_until = metadata["window"]["train_until"]
    if "fits" not in metadata:
        return (f"The deployed model's training data ends at {judged_until}, about a horizon "
                "and a calibration slice before the training date, so its numbers are honest "
                "held-out numbers rather than those of a model refit on all data.")
    return (f"The numbers are those of the evaluated fit, trained on data to {judged_until}; "
            "the deployed model was refit with the same settings on every labelled snapshot "
            f"(to {metadata['window']['last_snapshot']}) and calibrated out of fold, so it "
            "has no held-out numbers of its own beyond its out-of-fold metrics.")


def render_html(card: dict[str, Any]) -> str:
    """The card as a standalone HTML page (nested values as definition lists)."""
    body = _html_value(card["source_attributes"])
    return (
        "<!doctype html><html><head><meta charset='utf-8'>"
        f"<title>{html.escape(card['name'])}</title>"
        "<style>body{font-family:sans-serif;max-width:60em;margin:2em auto}"
        "dt{font-weight:bold;margin-top:.6em}dd{margin-left:1.5em}</style></head><body>"
        f"<h1>Model card: {html.escape(card['name'])}</h1>"
        "<p>Source attributes per ONC HTI-1, 45 CFR 170.315(b)(11).</p>"
        f"{body}<h2>Libraries</h2>{_html_value(card['libraries'])}"
        f"<h2>Hashes (SHA-256)</h2>{_html_value(card['hashes'])}</body></html>"
    )


def _html_value(value: Any) -> str:
    if isinstance(value, dict):
        items = "".join(
            f"<dt>{html.escape(str(k).replace('_', ' '))}</dt><dd>{_html_value(v)}</dd>"
            for k, v in value.items()
        )
        return f"<dl>{items}</dl>"
    if isinstance(value, list):
        return "<ul>" + "".join(f"<li>{_html_value(v)}</li>" for v in value) + "</ul>"
    if isinstance(value, float):
        return f"{value:.3f}"
    return html.escape("n/a" if value is None else str(value))
