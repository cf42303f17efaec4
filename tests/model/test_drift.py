"""Drift: PSI per feature and score, recorded by every scoring run, readable for the API."""

from __future__ import annotations

from datetime import date, timedelta

import numpy as np
import pandas as pd
import pytest

from retention.features import FEATURE_NAMES
from retention.model import drift
from retention.model.training import training_rows
from retention.store import tables
from retention.store.clinic_copy import read_clinic_copy
from retention.store.lists import latest_drift
from tests.conftest import Scored


def test_psi_is_zero_for_the_same_distribution_and_large_for_a_shift() -> None:
    rng = np.random.default_rng(0)
    base = pd.Series(rng.normal(0, 1, 5000))
    ref = drift._numeric_reference(base)
    same = drift.psi(ref["shares"], drift._numeric_shares(pd.Series(rng.normal(0, 1, 5000)),
                                                          ref["edges"]))
    shifted = drift.psi(ref["shares"], drift._numeric_shares(pd.Series(rng.normal(1.5, 1, 5000)),
                                                             ref["edges"]))
    assert same < 0.02 < 0.25 < shifted
    # Missing values are a bin of their own: a feature that goes missing has drifted.
    gone = drift.psi(ref["shares"], drift._numeric_shares(pd.Series([np.nan] * 100),
                                                          ref["edges"]))
    assert gone > 0.25


def test_each_scoring_run_records_drift_of_every_feature_and_the_score(scored: Scored) -> None:
    with scored.store.connect() as conn:
        latest = latest_drift(conn)
    assert latest["model_version"] == scored.model.version
    assert latest["as_of"] == scored.as_of.isoformat()
    assert set(latest["psi"]) == set(FEATURE_NAMES)
    assert latest["score_psi"] is not None


@pytest.mark.slow
def test_a_shifted_population_is_flagged(scored: Scored) -> None:
    """Rows like the reference's match it; shifting one feature is flagged.

    The reference is the evaluation slice (features and out-of-sample scores), so the
    rows here are that slice's snapshots.
    """
    meta = scored.model.metadata
    start = date.fromisoformat(meta["window"]["evaluate_from"])
    end = date.fromisoformat(meta["window"]["last_snapshot"])
    with scored.store.connect() as conn:
        data = read_clinic_copy(conn)
    step = scored.settings.snapshot_every_days
    dates = [start + timedelta(days=step * i) for i in range((end - start).days // step + 1)]
    rows = training_rows(data, sorted(dates), 30, scored.as_of)
    shifted = rows.copy()
    shifted["days_since_attended"] = shifted["days_since_attended"] + 60
    reference = meta["drift_reference"]

    def table(frame: pd.DataFrame) -> dict:
        risk = scored.model.predict(frame)
        return {r["feature"]: r for r in drift.drift_table(reference, frame, risk, 0.25)}

    before, after = table(rows), table(shifted)
    assert not before["days_since_attended"]["flagged"]
    assert not before["__score__"]["flagged"]
    assert after["days_since_attended"]["flagged"]
    assert after["__score__"]["psi"] > before["__score__"]["psi"]
    assert after["program"]["psi"] == before["program"]["psi"]


def test_latest_drift_without_runs_is_empty(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from sqlalchemy import create_engine

    engine = create_engine(f"sqlite:///{tmp_path / 'empty.db'}")
    with engine.begin() as conn:
        tables.drift.create(conn)
        assert latest_drift(conn)["run_id"] is None
    engine.dispose()


def test_a_small_sample_is_recorded_but_not_flagged(scored: Scored) -> None:
    """PSI over a handful of rows is noise: it is kept, not raised as drift."""
    reference = scored.model.metadata["drift_reference"]
    with scored.store.connect() as conn:
        data = read_clinic_copy(conn)
    rows = training_rows(data, [scored.as_of - timedelta(days=60)], 30, scored.as_of)
    shifted = rows.assign(days_since_attended=rows["days_since_attended"] + 60)
    risk = scored.model.predict(shifted)
    few = {r["feature"]: r for r in drift.drift_table(reference, shifted, risk, 0.25, 200)}
    many = {r["feature"]: r for r in drift.drift_table(reference, shifted, risk, 0.25, 10)}
    assert len(rows) < 200
    assert few["days_since_attended"]["psi"] == many["days_since_attended"]["psi"] > 0.25
    assert not few["days_since_attended"]["flagged"] and many["days_since_attended"]["flagged"]


def test_flagged_drift_is_in_the_run_record() -> None:
    """`retention runs` shows which inputs drifted, from the run's own record."""
    from datetime import datetime

    from retention.pipelines.runs import format_runs

    run = {"run_id": 3, "kind": "score", "as_of": None, "status": "succeeded",
           "rows_read": 74, "rows_changed": 74, "rows_quarantined": 0, "finished_at": None,
           "started_at": datetime(2026, 6, 1, 2, 30), "model_version": "v1", "error": None,
           "detail": '{"drift_flagged": ["score", "days_since_attended"]}'}
    lines = format_runs([run])
    assert lines[-1].strip() == "drift: PSI over the threshold in score, days_since_attended"
