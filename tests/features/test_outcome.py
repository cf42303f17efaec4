"""ORS features (``retention.features.outcome``) on hand-built clients whose numbers are worked
out by hand: nothing from the as-of date on, missing where there is no course yet."""

from __future__ import annotations

import math
from datetime import date

import numpy as np
import pandas as pd
import pytest

from retention.clinic.data import ClinicData
from retention.clinic.trajectory import Trajectory
from retention.features.outcome import FEATURE_NAMES, FEATURES, NOT_ON_TRACK, outcome_features
from tests.support.factories import ClinicBuilder, at

AS_OF = date(2026, 3, 20)
# Expected at rating n from intake x: x + (8 - 0.25 x) ln n; the band 1.5 x 3 = 4.5 below.
T = Trajectory(rate_at_zero=8.0, rate_per_intake=-0.25, spread=3.0, band=1.5, source="test")


def ors(b: ClinicBuilder, episode: str, day: str, total: float, hour: int = 11) -> str:
    return b.srs(episode, at(day, hour), [total / 4] * 4, instrument="ORS")


def clinic() -> ClinicBuilder:
    """E1 off track at its 5th rating, then an ORS on the as-of date; E2 the intake only; E3
    no ORS (an SRS only); E4 exactly 5 below its intake; E5 on course with a therapist's ORS
    and a blank one; E6 a fall of 4.9."""
    b = ClinicBuilder()
    for n in range(1, 7):
        b.client(f"C{n}")
        b.episode(f"E{n}", f"C{n}", "2026-01-05")
    for day, total in (("02-10", 15.0), ("02-17", 17.0), ("02-24", 18.0), ("03-03", 17.0),
                       ("03-19", 16.0)):
        ors(b, "E1", f"2026-{day}", total, hour=23)
    ors(b, "E1", "2026-03-20", 40, hour=0)  # on the as-of date: not known yet
    ors(b, "E2", "2026-03-02", 20)
    b.srs("E3", at("2026-03-02"), [9, 9, 9, 9])
    ors(b, "E4", "2026-03-02", 25)
    ors(b, "E4", "2026-03-09", 20)
    for day, total in (("02-16", 12), ("02-23", 19), ("03-02", 21.5)):
        ors(b, "E5", f"2026-{day}", total)
    therapist = ors(b, "E5", "2026-03-09", 2)
    blank = ors(b, "E5", "2026-03-10", 3)
    for row in b.rows["alliance_measures"]:
        if row["measure_id"] == therapist:
            row["rater"] = "therapist"
        if row["measure_id"] == blank:
            row["score_total"] = None
    ors(b, "E6", "2026-03-02", 19.9)
    ors(b, "E6", "2026-03-09", 15)
    return b


def features(data: ClinicData, as_of: date = AS_OF) -> pd.DataFrame:
    episodes = data.episodes.set_index("episode_id", drop=False)
    return outcome_features(episodes, data.measures, as_of, T)


def expected(intake: float, n: int) -> float:
    return intake + (8.0 - 0.25 * intake) * math.log(n)


def test_values_match_the_hand_computation() -> None:
    f = features(clinic().build())
    assert list(f.columns) == list(FEATURE_NAMES)
    e1 = f.loc["E1"]
    # 15, 17, 18, 17, 16: expected at the 5th 15 + 4.25 ln 5 = 21.84, the line 17.34.
    assert (e1["ors_intake"], e1["ors_latest"], e1["ors_sessions"], e1["ors_change"]) == \
        (15.0, 16.0, 5.0, 1.0)
    assert e1["ors_expected_gap"] == pytest.approx(16.0 - expected(15.0, 5))
    assert e1["ors_expected_gap"] == pytest.approx(-5.84, abs=0.005)
    assert (e1["ors_not_on_track"], e1["ors_reliable_deterioration"]) == (1.0, 0.0)
    e4 = f.loc["E4"]  # 25 then 20: 5 below the intake, and under the line (26.4 - 4.5)
    assert (e4["ors_change"], e4["ors_reliable_deterioration"], e4["ors_not_on_track"]) == \
        (-5.0, 1.0, 1.0)
    assert e4["ors_expected_gap"] == pytest.approx(20.0 - expected(25.0, 2))
    e5 = f.loc["E5"]  # 12, 19, 21.5: the therapist's and the blank ORS are not the client's
    assert (e5["ors_sessions"], e5["ors_latest"], e5["ors_change"]) == (3.0, 21.5, 9.5)
    assert e5["ors_expected_gap"] == pytest.approx(21.5 - expected(12.0, 3))  # 21.5 - 17.49
    assert (e5["ors_not_on_track"], e5["ors_reliable_deterioration"]) == (0.0, 0.0)
    e6 = f.loc["E6"]  # 19.9 to 15: a fall of 4.9, not reliable
    assert (e6["ors_change"], e6["ors_reliable_deterioration"]) == (-4.9, 0.0)


def test_one_rating_has_no_course_and_no_rating_has_nothing() -> None:
    f = features(clinic().build())
    e2 = f.loc["E2"]
    assert (e2["ors_intake"], e2["ors_latest"], e2["ors_sessions"]) == (20.0, 20.0, 1.0)
    for name in ("ors_change", "ors_expected_gap", "ors_not_on_track",
                 "ors_reliable_deterioration"):
        assert np.isnan(e2[name]), name
    e3 = f.loc["E3"]
    assert e3["ors_sessions"] == 0.0
    assert e3.drop("ors_sessions").isna().all()


def test_a_rating_on_the_as_of_date_is_not_seen() -> None:
    data = clinic().build()
    f = features(data)
    # E1's ORS of 40 at midnight of the as-of date would put it back on track.
    assert (f.loc["E1", "ors_sessions"], f.loc["E1", "ors_latest"]) == (5.0, 16.0)
    later = features(data, date(2026, 3, 21)).loc["E1"]
    assert (later["ors_sessions"], later["ors_latest"], later["ors_not_on_track"]) == \
        (6.0, 40.0, 0.0)
    # Nothing dated on or after the as-of date changes any value.
    known = data.measures["administered_at"] < pd.Timestamp(AS_OF)
    trimmed = ClinicData(clients=data.clients, episodes=data.episodes,
                         appointments=data.appointments, measures=data.measures[known],
                         items=data.items)
    pd.testing.assert_frame_equal(features(trimmed), f)


def test_episodes_come_back_in_the_order_given() -> None:
    data = clinic().build()
    episodes = data.episodes.set_index("episode_id", drop=False).loc[["E5", "E3", "E1"]]
    f = outcome_features(episodes, data.measures, AS_OF, T)
    assert list(f.index) == ["E5", "E3", "E1"]
    assert f["ors_latest"].tolist()[0::2] == [21.5, 16.0]


def test_feature_specs() -> None:
    assert {f.family for f in FEATURES} == {NOT_ON_TRACK}
    assert {f.name: f.monotone for f in FEATURES} == {
        "ors_intake": 0, "ors_latest": 0, "ors_sessions": 0, "ors_change": 0,
        "ors_expected_gap": -1, "ors_not_on_track": 1, "ors_reliable_deterioration": 1}
    assert all(f.kind == "numeric" and f.description for f in FEATURES)
