"""Scoring (``retention.scoring``): reproducible rows, reasons for the top of the list and of
each caseload, the same in parallel, tiers, and blind to demographics."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pandas as pd
import pytest
from sqlalchemy import select

from retention.clinic.data import ClinicData
from retention.scoring import explain_rows, score_rows, tier_names
from retention.store import tables
from retention.store.clinic_copy import read_scoped_copy
from retention.store.features import read_features
from tests.conftest import Scored
from tests.support.factories import with_other_demographics
from tests.support.reasons import read_store_inputs


@pytest.fixture(scope="module")
def store_inputs(scored: Scored) -> tuple[pd.DataFrame, ClinicData]:
    """What the scoring job reads: stored features and the store's copy of the clinic."""
    return read_store_inputs(scored)


def test_score_rows_are_reproducible(scored: Any,
                                     store_inputs: tuple[pd.DataFrame, ClinicData]) -> None:
    """Guards: re-running the scoring step on the same inputs gives identical rows, and the
    same ranking and reasons as the published list."""
    features, data = store_inputs

    def run() -> list[dict[str, Any]]:
        return score_rows(scored.settings, scored.model, scored.catalogue, data, features,
                          scored.as_of, run_id=7)

    first, second = run(), run()
    assert first == second
    with scored.store.connect() as conn:
        stored = conn.execute(
            select(tables.scores).where(tables.scores.c.as_of == scored.as_of)
        ).mappings().all()
    keys = ("rank", "risk", "tier", "reasons_json")
    assert {r["episode_id"]: tuple(r[k] for k in keys) for r in stored} == {
        r["episode_id"]: tuple(r[k] for k in keys) for r in first
    }


def test_reasons_are_worded_for_the_top_of_the_list_and_of_each_caseload(
    scored: Scored,
) -> None:
    with scored.store.connect() as conn:
        features = read_features(conn, scored.as_of, scored.model.feature_names)
        data = read_scoped_copy(conn, scored.as_of)
    every = score_rows(scored.settings, scored.model, scored.catalogue, data, features,
                       scored.as_of, run_id=1)
    for per_caseload in (0, 2):
        settings = scored.settings.with_overrides(etl={"reasons_per_caseload": per_caseload})
        rows = score_rows(settings, scored.model, scored.catalogue, data, features,
                          scored.as_of, run_id=1, reasons_top_n=5)
        assert [r["episode_id"] for r in rows] == [r["episode_id"] for r in every]
        assert rows[:5] == every[:5]
        seen: dict[str, int] = {}
        for row, full in zip(rows, every, strict=True):
            caseload = str(row["case_manager_id"] or "clinic:" + row["clinic_id"])
            seen[caseload] = seen.get(caseload, 0) + 1
            explained = row["rank"] <= 5 or seen[caseload] <= per_caseload
            assert row == full if explained else json.loads(row["reasons_json"])["reasons"] == []
            assert {k: v for k, v in row.items() if k != "reasons_json"} == {
                k: v for k, v in full.items() if k != "reasons_json"}


def test_reasons_worded_in_parallel_equal_those_worded_in_one_process(scored: Scored) -> None:
    with scored.store.connect() as conn:
        features = read_features(conn, scored.as_of, scored.model.feature_names)
        data = read_scoped_copy(conn, scored.as_of)
    contributions = scored.model.contributions(features)
    families = {f["name"]: f["family"] for f in scored.model.metadata["features"]}
    args = (data, features, contributions, families, scored.catalogue, scored.as_of, 3)
    one = explain_rows(*args, workers=1)
    two = explain_rows(*args, workers=2, min_rows_per_worker=1)
    assert list(two) == list(one) and two == one


def tier(risk: float, thresholds: dict[str, float]) -> str:
    """The tier rule one risk at a time, as written before the list's were computed at once."""
    for name, cut in sorted(thresholds.items(), key=lambda kv: -kv[1]):
        if risk >= cut:
            return name
    return "low"


def test_tiers_of_a_whole_list_are_those_of_each_risk() -> None:
    thresholds = {"high": 0.5, "medium": 0.2}
    risk = np.array([0.0, 0.19999, 0.2, 0.35, 0.5, 0.99, np.nan])
    assert tier_names(risk, thresholds) == [tier(float(r), thresholds) for r in risk]


def test_reasons_ignore_demographics(scored: Any,
                                     store_inputs: tuple[pd.DataFrame, ClinicData]) -> None:
    """Guards: changing every client's demographics leaves the published rows unchanged."""
    features, data = store_inputs

    def run(d: ClinicData) -> list[dict[str, Any]]:
        return score_rows(scored.settings, scored.model, scored.catalogue, d, features,
                          scored.as_of, run_id=1)

    assert run(with_other_demographics(data)) == run(data)
