"""The backtest: a model per origin on what was known then, the episodes open at it, pooled."""

from __future__ import annotations

import json
from datetime import date, timedelta
from itertools import pairwise

import numpy as np
import pandas as pd
import pytest

from retention.clinic.data import ClinicData, from_frames
from retention.clinic.synth import SynthConfig, generate
from retention.evaluation.backtest import (
    Backtest,
    EmptyPeriod,
    LabelWindowOpen,
    OriginResult,
    origin_dates,
    run_backtest,
    training_slice,
)
from retention.evaluation.backtest_report import render_backtest
from retention.evaluation.heldout import engaged_mask
from retention.features.builder import build_features
from retention.settings import Settings, settings_from_mapping

END = date(2026, 6, 1)
HORIZON = 30
WINDOW = 150
# The clinic's data starts 240 days before END (2025-10-04): at the first origin fewer
# than eight snapshots have a known outcome, too few to fit.
EARLY = date(2025, 12, 1)
ORIGINS = [EARLY, date(2026, 4, 4), date(2026, 5, 2)]
SETTINGS: Settings = settings_from_mapping({
    "source_url": "sqlite://", "store_url": "sqlite://", "horizon_days": HORIZON,
    "training_window_days": WINDOW, "snapshot_every_days": 7,
    "evaluation": {"bootstrap_samples": 50},
})

Seen = list[tuple[int, int, OriginResult]]


@pytest.fixture(scope="module")
def clinic() -> ClinicData:
    return from_frames(generate(SynthConfig(end=END, n_clients=400, n_clinics=2,
                                            history_days=240, seed=13)))


@pytest.fixture(scope="module")
def backtest(clinic: ClinicData) -> tuple[Backtest, Seen]:
    seen: Seen = []
    result = run_backtest(clinic, SETTINGS, ORIGINS, END, every_weeks=4,
                          on_origin=lambda done, total, o: seen.append((done, total, o)))
    return result, seen


def test_origins_step_back_from_the_latest_known_outcome() -> None:
    latest = END - timedelta(days=HORIZON)
    default = origin_dates(END, HORIZON, every_weeks=4)
    assert default[-1] == latest and len(default) == 7
    assert all(b - a == timedelta(weeks=4) for a, b in pairwise(default))
    assert default[0] >= latest - timedelta(days=182)
    assert origin_dates(END, HORIZON, every_weeks=2, start=date(2026, 4, 1),
                        end=date(2026, 5, 1)) == [date(2026, 4, 3), date(2026, 4, 17),
                                                  date(2026, 5, 1)]
    assert origin_dates(END, HORIZON, every_weeks=4, start=latest, end=latest) == [latest]


def test_an_origin_whose_outcome_is_not_known_yet_is_refused(clinic: ClinicData) -> None:
    too_late = END - timedelta(days=HORIZON - 1)
    with pytest.raises(LabelWindowOpen, match="latest origin with a known outcome is 2026-05-02"):
        origin_dates(END, HORIZON, every_weeks=4, end=too_late)
    # Refused before any feature is built, however the origins were chosen.
    with pytest.raises(LabelWindowOpen, match=f"origin {too_late}"):
        run_backtest(clinic, SETTINGS, [date(2026, 4, 4), too_late], END)
    with pytest.raises(EmptyPeriod):
        origin_dates(END, HORIZON, every_weeks=4, start=date(2026, 5, 2), end=date(2026, 5, 1))


def test_a_training_slice_holds_only_outcomes_known_at_its_origin() -> None:
    origin = date(2026, 5, 2)
    days = [origin - timedelta(days=d) for d in (WINDOW + 1, WINDOW, HORIZON + 1, HORIZON,
                                                  HORIZON - 1, 0)]
    rows = pd.DataFrame({"as_of": pd.to_datetime(days), "label": 0})
    kept = training_slice(rows, origin, HORIZON, WINDOW)["as_of"].dt.date.tolist()
    assert kept == [origin - timedelta(days=d) for d in (WINDOW, HORIZON + 1, HORIZON)]


@pytest.mark.slow
def test_every_model_learnt_only_outcomes_known_at_its_origin(
    backtest: tuple[Backtest, Seen],
) -> None:
    result, _ = backtest
    assert [o.origin for o in result.scored] == ORIGINS[1:]
    for o in result.scored:
        # The model's own record of the snapshots it was fitted on.
        first = date.fromisoformat(o.window["first_snapshot"])
        last = date.fromisoformat(o.window["last_snapshot"])
        assert last + timedelta(days=HORIZON) <= o.origin, o
        assert first >= o.origin - timedelta(days=WINDOW), o
        assert o.train_rows > 0 and o.train_snapshots >= 8
    # What was scored is the origins themselves, never a training snapshot.
    assert set(result.rows["as_of"].dt.date) == set(ORIGINS[1:])


@pytest.mark.slow
def test_the_pooled_rows_are_every_origins_open_episodes(
    backtest: tuple[Backtest, Seen], clinic: ClinicData,
) -> None:
    result, _ = backtest
    scored = result.scored
    ev = result.evaluation
    assert len(result.rows) == ev["rows"] == sum(o.test_rows for o in scored)
    assert ev["subsets"]["all"]["positives"] == sum(o.positives for o in scored)
    assert ev["subsets"]["engaged"]["n"] == sum(o.engaged_rows for o in scored)
    assert ev["subsets"]["engaged"]["positives"] == sum(o.engaged_positives for o in scored)
    for o in scored:
        at = result.rows[result.rows["as_of"].dt.date == o.origin]
        assert len(at) == o.test_rows
        assert set(at["episode_id"]) == set(build_features(clinic, o.origin).index)
        assert int(engaged_mask(at, SETTINGS.engaged_within_days).sum()) == o.engaged_rows
    assert ev["snapshot_dates"] == {"first": "2026-04-04", "last": "2026-05-02", "count": 2}


@pytest.mark.slow
def test_every_scorer_scores_the_same_rows(backtest: tuple[Backtest, Seen]) -> None:
    result, _ = backtest
    names = [s.name for s in result.scorers]
    assert names == ["model", "missed_2_in_a_row", "srs_rule", "days_since_attended",
                     "logistic_regression"]
    for s in result.scorers:
        assert len(s.score) == len(result.rows), s.name
        if s.probability is not None:
            assert len(s.probability) == len(result.rows), s.name
    for subset in ("all", "engaged"):
        assert list(result.evaluation["subsets"][subset]["metrics"]) == names
    # Aligned row by row: the rule's score is the row's own days since attended.
    days = result.rows["days_since_attended"].to_numpy(float)
    rule = next(s for s in result.scorers if s.name == "days_since_attended")
    known = ~np.isnan(days)
    assert np.array_equal(rule.score[known], days[known])
    # Each origin's own figures come from its slice of the same arrays.
    for o in result.scored:
        assert set(o.metrics["all"]) == set(names)
        assert 0.5 < o.metrics["all"]["model"]["auroc"] <= 1.0


@pytest.mark.slow
def test_a_too_early_origin_is_skipped_with_its_reason(backtest: tuple[Backtest, Seen]) -> None:
    result, seen = backtest
    assert [(done, total, o.origin) for done, total, o in seen] == [
        (1, 3, ORIGINS[0]), (2, 3, ORIGINS[1]), (3, 3, ORIGINS[2])]
    early = result.origins[0]
    assert not early.scored and early.test_rows == 0
    assert early.reason.startswith("cannot fit a model: only ")
    assert "snapshot dates: need at least 8" in early.reason
    record = result.to_dict()
    assert record["period"] == {"from": "2025-12-01", "to": "2026-05-02", "every_weeks": 4,
                                "origins": 3, "scored": 2, "skipped": 1}
    assert record["origins"][0]["status"] == "skipped"


@pytest.mark.slow
def test_an_origin_gives_the_same_answer_again_and_alone(
    backtest: tuple[Backtest, Seen], clinic: ClinicData,
) -> None:
    result, _ = backtest
    last = ORIGINS[-1]
    again = run_backtest(clinic, SETTINGS, [last], END)
    mine = next(o for o in result.origins if o.origin == last)
    assert again.origins[0].model_version == mine.model_version
    assert again.origins[0].window == mine.window
    assert again.origins[0].train_rows == mine.train_rows
    at = (result.rows["as_of"].dt.date == last).to_numpy()
    assert again.rows["episode_id"].tolist() == result.rows.loc[at, "episode_id"].tolist()
    for name in ("model", "logistic_regression"):
        before = next(s for s in result.scorers if s.name == name)
        after = next(s for s in again.scorers if s.name == name)
        assert np.array_equal(after.score, before.score[at]), name
        assert np.array_equal(np.asarray(after.probability), np.asarray(before.probability)[at])
    assert again.origins[0].metrics["all"]["model"] == mine.metrics["all"]["model"]


@pytest.mark.slow
def test_the_record_is_strict_json_and_renders(backtest: tuple[Backtest, Seen]) -> None:
    result, _ = backtest
    record = json.loads(json.dumps(result.to_dict(), allow_nan=False))
    model = record["evaluation"]["subsets"]["engaged"]["metrics"]["model"]
    assert set(model) >= {"auroc", "average_precision", "brier", "ece", "precision_at_k"}
    assert record["evaluation"]["calibration"]["n"] == len(result.rows)
    page = render_backtest(record)
    assert page.count("data:image/png;base64,") == 2
    for text in ("Origin by origin", "2026-04-04", "2026-05-02", "skipped: cannot fit a model",
                 "logistic regression", "2+ consecutive missed sessions", "Calibration"):
        assert text in page, text
