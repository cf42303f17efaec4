"""Reasons from the model's contributions (``retention.reasons.explain``): faithful to the
model, ranked by size, deterministic, and stored as plain JSON.

The first part checks the list published by the session's scored synthetic clinic
(``tests/conftest.py``; the fixtures are in ``tests/reasons/conftest.py``), the second
``explain`` on hand-made contributions.
"""

from __future__ import annotations

import inspect
import json
import math
from collections.abc import Mapping
from dataclasses import asdict
from typing import Any

import numpy as np
import pandas as pd
import pytest

from retention.clinic.data import ClinicData
from retention.features import FEATURE_NAMES, build_features, spec
from retention.reasons.catalogue import Catalogue, Family
from retention.reasons.explain import Explanation, explain, family_contributions
from retention.reasons.history import histories
from retention.scoring import explain_rows
from retention.store.clinic_copy import read_scoped_copy
from retention.store.features import read_features
from tests.conftest import Scored
from tests.support.reasons import AS_OF, Published, rich_clinic


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


# --- 1. faithful: the model's own contributions, summed by family ---------------------------


def test_contributions_add_up_to_the_models_score(scored: Any, published: Published) -> None:
    """Guards: per-feature contributions plus the expected value are the model's log-odds,
    the published raw score and expected value are those numbers, the risk the model's."""
    c = published.contributions
    features = list(scored.model.feature_names)
    assert list(c.columns) == [*features, "expected_value"]
    summed = c[features].sum(axis=1) + c["expected_value"]
    np.testing.assert_allclose(summed, published.raw, rtol=0, atol=1e-6)
    assert {r["episode_id"] for r in published.rows} == set(published.features.index)
    risk = pd.Series(scored.model.predict(published.features), index=published.features.index)
    for row in published.rows:
        eid = row["episode_id"]
        assert row["raw_score"] == pytest.approx(published.raw[eid], abs=1e-6), eid
        assert row["expected_value"] == pytest.approx(c.loc[eid, "expected_value"], abs=1e-6)
        assert row["risk"] == pytest.approx(risk[eid], abs=1e-6), eid


def test_family_contributions_are_sums_of_their_features(published: Published) -> None:
    """Guards: each family's log-odds is the sum of exactly its own features' contributions."""
    by_family = family_contributions(published.contributions, published.families)
    assert sorted(by_family.columns) == sorted(set(published.families.values()))
    for family in by_family.columns:
        expected = published.contributions[published.members(family)].sum(axis=1)
        np.testing.assert_allclose(by_family[family], expected, rtol=0, atol=1e-12)


def test_reasons_are_the_largest_families_in_order(scored: Any, published: Published) -> None:
    """Guards: reasons are the families raising risk most (largest first, at most
    ``max_reasons``), protective factors those lowering it most; log-odds and points match."""
    threshold = inspect.signature(explain).parameters["min_log_odds"].default
    most = scored.settings.max_reasons
    by_family = family_contributions(published.contributions, published.families)
    for row in published.rows:
        eid = row["episode_id"]
        values = by_family.loc[eid]
        up = sorted((f for f in values.index if values[f] >= threshold), key=lambda f: -values[f])
        down = sorted((f for f in values.index if values[f] <= -threshold), key=lambda f: values[f])
        assert [r["family"] for r in row["reasons"]] == up[:most], eid
        assert [r["family"] for r in row["protective"]] == down[:most], eid
        raw, base = published.raw[eid], published.contributions.loc[eid, "expected_value"]
        for kind, sign in (("reasons", 1), ("protective", -1)):
            logged = [r["log_odds"] for r in row[kind]]
            assert all(sign * v > 0 for v in logged), (eid, kind)
            assert logged == sorted(logged, reverse=sign > 0), (eid, kind)
            for r in row[kind]:
                value = values[r["family"]]
                assert r["log_odds"] == pytest.approx(value, abs=5e-5 + 1e-9), (eid, r["code"])
                points = 100 * (sigmoid(raw) - sigmoid(base)) * value / (raw - base)
                assert r["percentage_points"] == pytest.approx(points, abs=0.05 + 1e-9), eid
                assert r["code"].startswith(r["family"] + "."), r["code"]


# --- 2. deterministic -----------------------------------------------------------------------


def test_explain_is_deterministic(scored: Any, published: Published,
                                  store_inputs: tuple[pd.DataFrame, ClinicData]) -> None:
    """Guards: the same inputs give the same reasons in the same order, whatever the order
    of the rows, and those are the reasons that were published."""
    features, data = store_inputs
    contributions = scored.model.contributions(features)
    hist = histories(data, list(features.index), scored.as_of)

    def run(frame: pd.DataFrame) -> dict[str, Explanation]:
        return explain(frame, published.families, hist, scored.catalogue,
                               max_reasons=scored.settings.max_reasons)

    first, second = run(contributions), run(contributions)
    assert list(first) == list(second)
    assert first == second
    shuffled = run(contributions.iloc[::-1])
    assert {k: shuffled[k] for k in first} == first
    for row in published.rows:
        e = first[row["episode_id"]]
        assert [r.to_dict() for r in e.reasons] == row["reasons"]
        assert [r.to_dict() for r in e.protective] == row["protective"]


# --- explain on hand-made contributions -----------------------------------------------------


def hand_contributions(values: Mapping[str, float], expected: float = -1.0) -> pd.DataFrame:
    row = {name: 0.0 for name in FEATURE_NAMES} | dict(values) | {"expected_value": expected}
    return pd.DataFrame([row], index=["E1"])


def explain_one(values: Mapping[str, float], **kwargs: Any) -> Explanation:
    data = rich_clinic().build()
    features = build_features(data, AS_OF)
    hist = histories(data, list(features.index), AS_OF)
    families = {f.name: f.family for f in spec.FEATURES}
    catalogue = Catalogue({
        fam: Family(fam, f"title {fam}", f"suggest {fam}") for fam in spec.FAMILIES
    })
    return explain(hand_contributions(values), families, hist, catalogue, **kwargs)["E1"]


def test_explain_ranks_by_size_breaks_ties_by_code_and_drops_tiny_families() -> None:
    """Guards ranking: largest first, equal families in code order, at most ``max_reasons``,
    families under ``min_log_odds`` left out, and the lead feature choosing the wording."""
    e = explain_one({
        "telehealth_share_90d": 0.5, "srs_change": 0.5, "missed_28d": 0.5,
        "consecutive_misses": 0.9, "wai_rater_gap": 0.005,
        "wai_client_bond": -0.3, "days_in_treatment": -0.3,
    }, max_reasons=3)
    assert [r.code for r in e.reasons] == [
        "disengagement.CONSECUTIVE_MISSES", "alliance_rupture.SRS_CHANGE",
        "inconsistent_engagement.MISSED_SESSIONS",
    ]
    assert [r.log_odds for r in e.reasons] == [0.9, 0.5, 0.5]
    assert [r.family for r in e.protective] == ["early_treatment", "weak_bond"]
    assert e.raw_score == pytest.approx(-1.0 + 0.5 * 3 + 0.9 + 0.005 - 0.6)
    for r in e.reasons + e.protective:
        points = 100 * (sigmoid(e.raw_score) - sigmoid(-1.0)) * r.log_odds / (e.raw_score + 1)
        assert r.percentage_points == pytest.approx(points, abs=0.05)


def test_reason_serialises_to_plain_json() -> None:
    """Guards: a reason's dict survives JSON unchanged, as the published list stores it."""
    e = explain_one({"missed_28d": 1.2, "wai_client_bond": -0.4})
    for r in e.reasons + e.protective:
        assert json.loads(json.dumps(r.to_dict())) == r.to_dict()


def test_reason_json_is_that_of_to_dict(scored: Scored) -> None:
    with scored.store.connect() as conn:
        features = read_features(conn, scored.as_of, scored.model.feature_names)
        data = read_scoped_copy(conn, scored.as_of)
    contributions = scored.model.contributions(features.iloc[:20])
    families = {f["name"]: f["family"] for f in scored.model.metadata["features"]}
    explained = explain_rows(data, features.iloc[:20], contributions, families,
                             scored.catalogue, scored.as_of, 3)
    shown = [r for e in explained.values() for r in [*e.reasons, *e.protective]]
    assert shown
    assert all(json.dumps(r.to_dict()) == json.dumps(asdict(r)) for r in shown)
