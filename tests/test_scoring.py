"""Scoring (``retention.scoring``): reproducible rows, reasons for the top of the list and of
each caseload, the same in parallel, the run's count of families left out, tiers, and blind
to demographics."""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

import numpy as np
import pandas as pd
import pytest
from sqlalchemy import select

from retention.clinic.data import ClinicData
from retention.reasons.explain import Limits
from retention.scoring import explain_rows, limits, reasons_summary, score_rows, tier_names
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
            payload = json.loads(row["reasons_json"])
            if explained:
                assert row == full
            else:
                assert payload["points"] is None, row["episode_id"]
                assert all(payload[k] == [] for k in ("reasons", "protective", "context",
                                                       "prompts", "left_out"))
            assert {k: v for k, v in row.items() if k != "reasons_json"} == {
                k: v for k, v in full.items() if k != "reasons_json"}


@pytest.mark.parametrize("lim", [None, Limits(max_reasons=1, min_share=0.0, min_points=0.5)],
                         ids=["settings", "one each, low floor"])
def test_reasons_worded_in_parallel_equal_those_worded_in_one_process(
    scored: Scored, lim: Limits | None,
) -> None:
    """Guards: splitting the wording over worker processes changes nothing, with the list's
    own limits and calibrator and with other limits (the workers use the ones given)."""
    with scored.store.connect() as conn:
        features = read_features(conn, scored.as_of, scored.model.feature_names)
        data = read_scoped_copy(conn, scored.as_of)
    contributions = scored.model.contributions(features)
    families = {f["name"]: f["family"] for f in scored.model.metadata["features"]}
    args = (data, features, contributions, families, scored.catalogue, scored.as_of,
            scored.model.calibrator.predict, lim or limits(scored.settings))
    one = explain_rows(*args, workers=1)
    two = explain_rows(*args, workers=2, min_rows_per_worker=1)
    assert list(two) == list(one) and two == one
    shown = [e for e in one.values() if e.reasons or e.protective or e.context]
    assert shown and any(e.left_out for e in one.values())
    if lim is not None:
        assert all(len(e.reasons) <= 1 and len(e.protective) <= 1 for e in one.values())


def test_score_rows_show_what_the_settings_allow(
    scored: Scored, store_inputs: tuple[pd.DataFrame, ClinicData],
) -> None:
    """Guards: the list's limits come from the settings (max_reasons, min_reason_share,
    min_reason_points), not the defaults."""
    features, data = store_inputs
    settings = scored.settings.with_overrides(max_reasons=1, min_reason_share=0.0,
                                              min_reason_points=4.0)
    rows = score_rows(settings, scored.model, scored.catalogue, data, features, scored.as_of,
                      run_id=1)
    shown = 0
    for row in rows:
        payload = json.loads(row["reasons_json"])
        for kind in ("reasons", "protective", "context"):
            assert len(payload[kind]) <= 1, (row["episode_id"], kind)
            assert all(abs(r["percentage_points"]) >= 4.0 - 0.05 for r in payload[kind])
            shown += len(payload[kind])
    assert shown


def row_with(points: dict[str, float] | None, left_out: list[str]) -> dict[str, Any]:
    """A published row as ``reasons_summary`` reads it: only its reasons JSON matters."""
    return {"reasons_json": json.dumps({"reasons": [], "protective": [], "context": [],
                                        "prompts": [], "points": points,
                                        "left_out": left_out})}


def test_reasons_summary_counts_explained_rows_and_families_left_out() -> None:
    """Guards the run record's count: rows with an explanation (points), and how often each
    family was left out, over all rows, by family in code order."""
    points = {"start": 5.0, "reasons": 10.0, "protective": 0.0, "context": 0.0,
              "other": 1.0, "risk": 16.0}
    rows = [row_with(points, ["rater_gap", "disengagement"]), row_with(points, []),
            row_with(None, []), row_with(points, ["disengagement"])]
    summary = reasons_summary(rows)
    assert summary == {"explained": 3, "left_out": {"disengagement": 2, "rater_gap": 1}}
    assert list(summary["left_out"]) == ["disengagement", "rater_gap"]
    assert reasons_summary([]) == {"explained": 0, "left_out": {}}
    # A list published before points and left-out families were kept counts nothing.
    old = {"reasons_json": json.dumps({"raw_score": 0.1, "reasons": [], "protective": []})}
    assert reasons_summary([old]) == {"explained": 0, "left_out": {}}


def test_the_score_run_records_the_reasons_summary_of_its_rows(
    scored: Scored, store_inputs: tuple[pd.DataFrame, ClinicData],
) -> None:
    """Guards: the scoring run's record holds the summary of the rows it published: every
    explained row, and the left-out families counted from those rows."""
    features, data = store_inputs
    rows = score_rows(scored.settings, scored.model, scored.catalogue, data, features,
                      scored.as_of, run_id=1)
    payloads = [json.loads(r["reasons_json"]) for r in rows]
    counted = Counter(f for p in payloads for f in p["left_out"])
    summary = reasons_summary(rows)
    assert summary["explained"] == sum(p["points"] is not None for p in payloads) > 0
    assert summary["left_out"] == dict(sorted(counted.items())) != {}
    with scored.store.connect() as conn:
        details = conn.execute(
            select(tables.runs.c.detail)
            .where((tables.runs.c.kind == "score") & (tables.runs.c.as_of == scored.as_of)
                   & (tables.runs.c.status == "succeeded"))
            .order_by(tables.runs.c.run_id)
        ).scalars().all()
    # A later run on unchanged inputs keeps the list as published and words nothing.
    worded = [d["reasons"] for d in map(json.loads, details) if "reasons" in d]
    assert worded, "the session's clinic was scored"
    assert worded[-1] == summary


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
