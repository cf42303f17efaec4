"""The expected ORS course (``retention.clinic.trajectory``): anchored at the intake, smaller
gains from a higher intake, exact lines, a fit that finds known parameters, and the config
table read back as written."""

from __future__ import annotations

import math
import tomllib
from dataclasses import replace
from datetime import date

import numpy as np
import pandas as pd
import pytest

from retention.clinic.trajectory import (
    METHOD,
    Trajectory,
    TrajectoryError,
    fit_from_clinic,
    fit_trajectory,
    session_numbers,
    trajectory_toml,
)
from tests.support.factories import ClinicBuilder, at

T = Trajectory(rate_at_zero=8.0, rate_per_intake=-0.25, spread=3.0, band=1.5, source="test")


def by_hand(intake: float, session: int) -> float:
    """The published form, written out: intake + (a + b * intake) * ln(session)."""
    return intake + (8.0 - 0.25 * intake) * math.log(min(session, 20))


def test_expected_at_the_intake_session_is_the_intake() -> None:
    intakes = np.array([0.0, 3.7, 12.5, 25.0, 33.3, 40.0])
    assert np.array_equal(T.expected(intakes, np.ones(len(intakes))), intakes)
    assert float(T.expected(18.2, 1)) == 18.2


def test_expected_is_log_linear_in_the_session_and_flat_after_the_last() -> None:
    for intake in (4.0, 15.0, 26.5):
        for session in (2, 3, 5, 8, 13, 20):
            assert float(T.expected(intake, session)) == pytest.approx(by_hand(intake, session))
    # Vectorised over both arguments at once.
    got = T.expected(np.array([15.0, 26.5]), np.array([5, 8]))
    assert got == pytest.approx([by_hand(15.0, 5), by_hand(26.5, 8)])
    # Curves are estimated for sessions 1-20: later ratings meet the course at 20.
    assert float(T.expected(15.0, 35)) == float(T.expected(15.0, 20))
    assert float(T.lower(15.0, 5)) == pytest.approx(by_hand(15.0, 5) - 1.5 * 3.0)


def test_higher_intake_gives_smaller_expected_gain() -> None:
    intakes = np.arange(0.0, 40.5, 2.5)
    for session in (2, 4, 10, 20):
        gain = T.expected(intakes, np.full(len(intakes), session)) - intakes
        assert np.all(np.diff(gain) < 0), session
    # A fitted curve too (below).
    fitted = fit_trajectory(simulated(np.random.default_rng(5)))
    gain = fitted.expected(intakes, 6) - intakes
    assert np.all(np.diff(gain) < 0)


def test_expected_stays_within_the_scale() -> None:
    steep = replace(T, rate_at_zero=30.0)
    assert float(steep.expected(30.0, 20)) == 40.0
    assert float(replace(T, rate_at_zero=-5.0).expected(2.0, 20)) == 0.0


def test_sessions_start_at_one() -> None:
    with pytest.raises(ValueError, match="numbered from 1"):
        T.expected(15.0, 0)


def test_not_on_track_is_strictly_below_the_lower_line() -> None:
    line = float(T.lower(15.0, 5))
    just_under = np.nextafter(line, -math.inf)
    got = T.not_on_track(np.full(3, 15.0), np.full(3, 5), np.array([just_under, line, 40.0]))
    assert got.tolist() == [True, False, False]
    # The intake itself is never off track.
    assert not T.not_on_track(15.0, 1, 15.0)
    # At each session its own line: 17.5 is off track at session 8 (line 17.8), not at 3.
    assert float(T.lower(15.0, 3)) < 17.5 < float(T.lower(15.0, 8))
    assert T.not_on_track([15.0, 15.0], [3, 8], [17.5, 17.5]).tolist() == [False, True]


def test_reliable_deterioration_is_five_points_or_more_below_the_intake() -> None:
    intake = np.array([23.0, 23.0, 23.0, 19.9, 19.9, 10.0])
    score = np.array([18.0, 18.1, 17.0, 14.9, 15.0, 14.0])
    assert T.reliable_deterioration(intake, score).tolist() == [True, False, True, True,
                                                                False, False]
    # 19.9 - 14.9 is 4.999999999999998 in floats: the fall is compared as recorded.
    assert 19.9 - 14.9 < 5


# --- fitting ---------------------------------------------------------------------------


def simulated(rng: np.random.Generator, episodes: int = 1500, a: float = 8.0, b: float = -0.25,
              sd: float = 3.0) -> pd.DataFrame:
    """Ratings following ``intake + (a + b * intake) * ln(session)`` with normal noise."""
    intake = rng.uniform(5.0, 35.0, episodes)
    count = rng.integers(2, 15, episodes)
    episode = np.repeat(np.arange(episodes), count)
    session = np.concatenate([np.arange(1, c + 1) for c in count])
    x = intake[episode]
    t = np.log(np.minimum(session, 20))
    score = x + (a + b * x) * t + np.where(session > 1, rng.normal(0.0, sd, len(x)), 0.0)
    return pd.DataFrame({"episode_id": [f"E{e}" for e in episode], "session": session,
                         "score": score})


def test_fit_recovers_known_parameters() -> None:
    fitted = fit_trajectory(simulated(np.random.default_rng(20260320)))
    assert fitted.rate_at_zero == pytest.approx(8.0, abs=0.25)
    assert fitted.rate_per_intake == pytest.approx(-0.25, abs=0.012)
    assert fitted.spread == pytest.approx(3.0, abs=0.08)
    # Normal residuals: the lowest 10% lie 1.28 standard deviations below the curve.
    assert fitted.band == pytest.approx(1.2816, abs=0.06)
    assert fitted.method == METHOD and "fit_trajectory" in fitted.source
    # Another curve, to show the fit is not anchored on the first.
    other = fit_trajectory(simulated(np.random.default_rng(1), a=5.0, b=-0.1, sd=2.0),
                           tail=0.25)
    assert (other.rate_at_zero, other.rate_per_intake, other.spread) == pytest.approx(
        (5.0, -0.1, 2.0), abs=0.15)
    assert other.band == pytest.approx(0.6745, abs=0.06)


def test_fit_refuses_too_little_history_and_a_curve_against_the_published_one() -> None:
    few = simulated(np.random.default_rng(2), episodes=20)
    with pytest.raises(TrajectoryError, match="at least 30"):
        fit_trajectory(few)
    assert fit_trajectory(few, min_episodes=20).spread > 0
    rising = simulated(np.random.default_rng(3), a=0.0, b=0.2)
    with pytest.raises(TrajectoryError, match="rate_per_intake"):
        fit_trajectory(rising)


def test_session_numbers_count_each_episodes_ratings_from_one() -> None:
    rated = pd.DataFrame({"episode_id": ["A", "A", "A", "B", "B"],
                          "score_total": [10.0, 12.0, 15.0, 30.0, 28.0]})
    got = session_numbers(rated)
    assert got["session"].tolist() == [1, 2, 3, 1, 2]
    assert got["score"].tolist() == [10.0, 12.0, 15.0, 30.0, 28.0]


def ors_clinic(rng: np.random.Generator, episodes: int, admitted: str, first_day: str,
               prefix: str, b: ClinicBuilder | None = None) -> tuple[ClinicBuilder, list[str]]:
    """Episodes with weekly client ORS following the test curve with noise."""
    b = b or ClinicBuilder()
    ids = []
    start = pd.Timestamp(first_day)
    for e in range(episodes):
        eid = f"{prefix}{e}"
        b.client(f"C{eid}")
        b.episode(eid, f"C{eid}", admitted)
        intake = round(float(rng.uniform(6.0, 34.0)), 1)
        for s in range(1, int(rng.integers(2, 9)) + 1):
            score = intake if s == 1 else by_hand(intake, s) + float(rng.normal(0.0, 3.0))
            score = min(max(round(score, 1), 0.0), 40.0)
            day = (start + pd.Timedelta(days=7 * (s - 1))).date().isoformat()
            ids.append(b.srs(eid, at(day, 11), [score / 4] * 4, instrument="ORS"))
    return b, ids


def test_fit_from_clinic_reads_only_episodes_and_ratings_before_the_date() -> None:
    before = date(2026, 1, 1)
    rng = np.random.default_rng(11)
    b, kept = ors_clinic(rng, 40, "2025-06-02", "2025-06-03", "K")
    clean = fit_from_clinic(b.build(), before)
    # What it must have read: the kept ratings, numbered in time order.
    m = b.build().measures.set_index("measure_id").loc[kept].reset_index()
    by_hand_fit = fit_trajectory(session_numbers(m.sort_values(
        ["episode_id", "administered_at", "measure_id"])))
    assert (clean.rate_at_zero, clean.rate_per_intake, clean.spread, clean.band) == \
        pytest.approx((by_hand_fit.rate_at_zero, by_hand_fit.rate_per_intake,
                       by_hand_fit.spread, by_hand_fit.band))
    assert clean.rate_per_intake == pytest.approx(-0.25, abs=0.1)
    assert "before 2026-01-01" in clean.source
    # Episodes admitted on or after the date, later ratings of the kept episodes, a
    # therapist's ORS and an ORS without a total all change nothing.
    ors_clinic(rng, 40, "2026-01-01", "2026-01-02", "L", b)
    late = b.srs("K0", at("2025-12-31", 23), [0, 0, 0, 0], instrument="ORS")  # before: read
    b.srs("K1", at("2026-01-01", 0), [0, 0, 0, 0], instrument="ORS")  # at midnight: not read
    b.srs("K2", at("2026-02-01"), [0, 0, 0, 0], instrument="ORS")
    therapist = b.srs("K3", at("2025-12-01"), [0, 0, 0, 0], instrument="ORS")
    blank = b.srs("K4", at("2025-12-01"), [0, 0, 0, 0], instrument="ORS")
    for row in b.rows["alliance_measures"]:
        if row["measure_id"] == therapist:
            row["rater"] = "therapist"
        if row["measure_id"] == blank:
            row["score_total"] = None
    data = b.build()
    noisy = fit_from_clinic(data, before)
    m = data.measures[data.measures["measure_id"].isin([*kept, late])]
    expected = fit_trajectory(session_numbers(
        m.sort_values(["episode_id", "administered_at", "measure_id"])))
    assert (noisy.rate_at_zero, noisy.rate_per_intake, noisy.spread, noisy.band) == \
        pytest.approx((expected.rate_at_zero, expected.rate_per_intake, expected.spread,
                       expected.band))
    assert noisy.spread != pytest.approx(clean.spread), "the rating at 23:00 is read"


# --- the config table -------------------------------------------------------------------


def test_mapping_and_toml_round_trip() -> None:
    fitted = fit_trajectory(simulated(np.random.default_rng(7)), about="a test history")
    assert Trajectory.from_mapping(fitted.to_mapping()) == fitted
    table = tomllib.loads(trajectory_toml(fitted))["instruments"]["ORS"]["trajectory"]
    assert Trajectory.from_mapping(table) == fitted
    assert table["method"] == METHOD and "a test history" in table["source"]
    # The reliable change is the instrument's ([instruments.ORS]), not the curve's.
    assert "reliable_change" not in table
    assert fitted.reliable_change == 5.0
    assert Trajectory.from_mapping(table, reliable_change=6.0).reliable_deterioration(
        23.0, 18.0).tolist() is False


@pytest.mark.parametrize(("change", "message"), [
    ({"spread": None}, "lacks spread"),
    ({"bands": 1.0}, "does not know bands"),
    ({"reliable_change": 5.0}, "does not know reliable_change"),
    ({"band": True}, "band must be a number"),
    ({"band": "1.3"}, "band must be a number"),
    ({"source": 3}, "source must be text"),
    ({"source": " "}, "source of its numbers"),
    ({"method": "linear"}, "not known"),
    ({"spread": 0.0}, "positive"),
    ({"band": -0.1}, "not negative"),
    ({"rate_per_intake": 0.1}, "rate_per_intake"),
    ({"rate_at_zero": math.nan}, "finite"),
    ({"last_session": 12.5}, "whole number"),
    ({"last_session": 1}, "2 or more"),
])
def test_from_mapping_refuses_a_bad_table(change: dict[str, object], message: str) -> None:
    mapping = {**T.to_mapping(), **change}
    mapping = {k: v for k, v in mapping.items() if v is not None}
    with pytest.raises(TrajectoryError, match=message):
        Trajectory.from_mapping(mapping)
