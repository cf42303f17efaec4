"""Bootstrap metrics: point values agree with scikit-learn, resamples draw clients not rows."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, brier_score_loss, roc_auc_score

from retention.evaluation import bootstrap as m


def test_point_metrics_match_scikit_learn_with_ties_and_weights() -> None:
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 500).astype(float)
    score = np.round(rng.random(500) + 0.3 * y, 1)  # many ties
    w = rng.integers(0, 4, 500).astype(float)
    for weights in (np.ones(500), w):
        got = m.ranking_metrics(weights[None, :], y, score)
        assert got["auroc"][0] == pytest.approx(roc_auc_score(y, score, sample_weight=weights))
        assert got["average_precision"][0] == pytest.approx(
            average_precision_score(y, score, sample_weight=weights))
        p = np.clip(score / 1.5, 0, 1)
        prob = m.probability_metrics(weights[None, :], y, p)
        assert prob["brier"][0] == pytest.approx(brier_score_loss(y, p, sample_weight=weights))


def test_bootstrap_resamples_clients_not_rows() -> None:
    clients = np.array(["a", "a", "a", "b", "b", "c"])
    w = m.client_weights(clients, 50, seed=1)
    assert w.shape == (50, 6)
    assert np.all(w[:, 0] == w[:, 1]) and np.all(w[:, 3] == w[:, 4])
    # Each resample draws as many clients as there are.
    per_client = w[:, [0, 3, 5]]
    assert np.all(per_client.sum(axis=1) == 3)
