"""Everything a reviewer needs about a candidate, computed on its evaluation slice.

One call gathers the evaluation against baselines (and the current model if
there is one), the subgroup report, and the top features, in one JSON-ready
dict that is saved with the version and rendered by ``retention.evaluation.report``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from retention.evaluation.baselines import fit_logistic, logistic_baseline, rule_baselines
from retention.evaluation.calibration import calibration_report
from retention.evaluation.fairness import fairness_report, group_columns
from retention.evaluation.heldout import (
    baseline_scorer,
    engaged_mask,
    evaluate,
    json_safe,
    model_scorer,
    top_k_flags,
)
from retention.model.booster import TrainedModel
from retention.model.training import Split
from retention.settings import EvaluationSettings

TOP_FEATURES = 15


def assess(
    model: TrainedModel,
    split: Split,
    clients: pd.DataFrame,
    ms: EvaluationSettings,
    *,
    engaged_within_days: int,
    seed: int,
    current: TrainedModel | None = None,
) -> dict[str, Any]:
    """Evaluation with baselines and CIs, fairness by group, top features.

    The candidate is judged by its evaluated fit (``TrainedModel.judged``): a model refit
    for serving has learnt the evaluation rows. ``current`` must be the current
    version's evaluated fit too (``artifacts.load(..., fit="evaluated")``), trained before
    the candidate's evaluation slice.
    """
    rows = split.evaluate.reset_index(drop=True)
    candidate = model_scorer(model.judged, rows)
    scorers = [candidate]
    if current is not None:
        scorers.append(model_scorer(current.judged, rows, name="current", kind="current"))
    scorers += [baseline_scorer(b) for b in rule_baselines(rows)]
    logistic = fit_logistic(split.train, seed)
    scorers.append(baseline_scorer(logistic_baseline(logistic, rows)))
    evaluation = evaluate(rows, scorers, engaged_within_days=engaged_within_days,
                          capacity_k=ms.capacity_k, samples=ms.bootstrap_samples,
                          seed=ms.bootstrap_seed)
    y = rows["label"].to_numpy(float)
    groups = group_columns(rows, clients)
    assert candidate.probability is not None
    fairness = {}
    for subset, mask in (("all", np.ones(len(rows), dtype=bool)),
                         ("engaged", engaged_mask(rows, engaged_within_days))):
        flags = top_k_flags(rows[mask], candidate.score[mask], ms.capacity_k)
        fairness[subset] = fairness_report(
            y[mask], candidate.score[mask], candidate.probability[mask], flags,
            groups[mask], tolerance=ms.fairness_tolerance, min_outcomes=ms.fairness_min_outcomes,
        )
    evaluation["fairness"] = fairness
    evaluation["calibration"] = calibration_report(y, candidate.probability,
                                                   rows["client_id"].to_numpy(), ms)
    evaluation["top_features"] = top_features(model)
    evaluation["version"] = model.version
    if current is not None:
        evaluation["current_version"] = current.version
        evaluation["current_window"] = current.metadata.get("window")
    return json_safe(evaluation)


def top_features(model: TrainedModel, n: int = TOP_FEATURES) -> list[dict[str, Any]]:
    """Features by total gain in the booster, with their share of all gain."""
    gain = model.booster.feature_importance(importance_type="gain")
    names = model.booster.feature_name()
    total = float(gain.sum()) or 1.0
    order = np.argsort(-gain, kind="mergesort")[:n]
    return [{"feature": names[i], "gain_share": round(float(gain[i]) / total, 4)}
            for i in order]
