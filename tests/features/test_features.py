"""Feature families on a hand-built client whose numbers can be checked by eye, and blind to
demographics on the session's synthetic clinic."""

from __future__ import annotations

from datetime import date
from typing import Any

import numpy as np
import pandas as pd
import pytest

from retention.clinic import contract
from retention.clinic.data import ClinicData, from_frames
from retention.features import FEATURE_NAMES, build_features
from retention.features.spec import META_COLUMNS
from tests.support.factories import ClinicBuilder, at, with_other_demographics

AS_OF = date(2026, 3, 20)
WAI_CLIENT = [4, 4, 2, 5, 3, 5, 2, 5, 3, 4, 5, 4]  # goal 4,6,8,11 / task 1,2,10,12 / bond 3,5,7,9
WAI_THERAPIST = [4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4]


def clinic(with_future: bool = False) -> ClinicBuilder:
    b = ClinicBuilder()
    b.client("C1")
    b.episode("E1", "C1", "2026-01-05", planned_discharge_on="2026-05-05")
    b.appointment("E1", at("2026-02-17"))
    b.appointment("E1", at("2026-02-24"), telehealth=True)
    b.appointment("E1", at("2026-03-03"), "no_show")
    b.appointment("E1", at("2026-03-10"), "no_show")
    b.appointment("E1", at("2026-03-13"), "late_cancel", service_type="group")
    b.appointment("E1", at("2026-03-17"), "cancelled_by_client")
    b.appointment("E1", at("2026-03-18"), "cancelled_by_clinic")
    # Booked before the as-of date: counts as booked ahead, whatever happened later.
    b.appointment("E1", at("2026-03-24"), "attended", booked_at=at("2026-03-10"))
    b.appointment("E1", at("2026-03-31"), "cancelled_by_client", booked_at=at("2026-03-12"),
                  updated_at=at("2026-03-22"))
    # Cancelled before the as-of date: no longer booked.
    b.appointment("E1", at("2026-03-27"), "cancelled_by_client", booked_at=at("2026-03-12"),
                  updated_at=at("2026-03-19"))
    b.srs("E1", at("2026-02-17", 11), [9, 9, 9, 9])
    b.srs("E1", at("2026-02-24", 11), [8, 7, 6, 8])
    b.wai("E1", at("2026-02-17", 11), "client", WAI_CLIENT)
    b.wai("E1", at("2026-02-18", 11), "therapist", WAI_THERAPIST)
    # A closed episode and one admitted on the as-of date: neither is open.
    b.client("C2")
    b.episode("E2", "C2", "2025-10-01", discharged_on="2026-03-19", discharge_reason="completed")
    b.client("C3")
    b.episode("E3", "C3", "2026-03-20")
    if with_future:
        add_future_rows(b)
    return b


def add_future_rows(b: ClinicBuilder) -> None:
    """Rows that exist only because time went on past the as-of date."""
    b.appointment("E1", at("2026-03-20", 9), "attended", booked_at=at("2026-03-20", 8))
    b.appointment("E1", at("2026-03-26"), "attended", booked_at=at("2026-03-21"))
    b.appointment("E1", at("2026-04-02"), "no_show", booked_at=at("2026-03-25"))
    b.srs("E1", at("2026-03-20", 9), [2, 2, 2, 2])
    b.srs("E1", at("2026-03-26", 11), [10, 10, 10, 10])
    b.wai("E1", at("2026-03-26", 11), "client", [1] * 12)
    b.wai("E1", at("2026-03-27", 11), "therapist", [5] * 12)
    b.wai("E1", at("2026-03-20", 8), "therapist", [5] * 12)
    # Cancelled by the clinic on the evening of the 19th, recorded on the 20th.
    b.appointment("E1", at("2026-03-19", 18), "cancelled_by_clinic",
                  updated_at=at("2026-03-20", 8))


@pytest.fixture
def row() -> pd.Series:
    frame = build_features(clinic().build(), AS_OF)
    assert list(frame.index) == ["E1"]
    return frame.loc["E1"]


def test_columns_are_meta_then_spec_order() -> None:
    frame = build_features(clinic().build(), AS_OF)
    assert tuple(frame.columns) == META_COLUMNS + FEATURE_NAMES


def test_attendance_counts_last_28_and_90_days(row: pd.Series) -> None:
    # 28 days back from midnight 20 Mar reaches 20 Feb: 24 Feb to 17 Mar, clinic cancellation out.
    assert row["sessions_scheduled_28d"] == 5
    assert row["attended_28d"] == 1
    assert row["missed_28d"] == 3
    assert row["client_cancelled_28d"] == 1
    assert row["miss_rate_28d"] == pytest.approx(3 / 5)
    assert row["miss_rate_90d"] == pytest.approx(3 / 6)


def test_attendance_counts_last_7_and_14_days(row: pd.Series) -> None:
    # 7 days back from midnight 20 Mar reach 13 Mar: the late cancellation of the 13th.
    assert (row["attended_7d"], row["missed_7d"]) == (0, 1)
    # 14 days reach 6 Mar: the no-show of the 10th too, and the client's cancellation.
    assert (row["attended_14d"], row["missed_14d"]) == (0, 2)
    assert row["miss_rate_14d"] == pytest.approx(2 / 3)


def test_disengagement(row: pd.Series) -> None:
    assert row["days_since_attended"] == 24  # calendar days from 24 Feb to 20 Mar
    assert row["consecutive_misses"] == 3
    assert row["booked_next_14d"] == 2  # 24 and 31 Mar; 27 Mar was cancelled on 19 Mar
    assert row["days_to_next_booked"] == pytest.approx(4 + 10 / 24)
    # None attended in the last 14 days, one (24 Feb) in the 14 before.
    assert row["attended_trend_14d"] == -1


def test_stage_and_setting(row: pd.Series) -> None:
    assert row["days_in_treatment"] == 74
    assert row["days_to_planned_end"] == 46
    assert row["program"] == "outpatient"
    assert row["telehealth_share_90d"] == pytest.approx(1 / 2)
    assert row["group_share_90d"] == pytest.approx(1 / 6)  # clinic cancellations left out
    assert row["clinic_cancelled_28d"] == 1
    assert row["booking_lead_days_90d"] == 7  # every slot booked a week ahead


def test_session_ratings(row: pd.Series) -> None:
    assert row["srs_latest"] == 29
    assert row["srs_change"] == -7
    assert row["srs_below_cutoff_last3"] == 1
    assert (row["srs_relationship_latest"], row["srs_goals_latest"],
            row["srs_approach_latest"]) == (8, 7, 6)
    assert np.isnan(row["gsrs_latest"]) and np.isnan(row["gsrs_change"])
    # Two ratings, 36 then 29: too few for a slope; the latest alone is below 36.
    assert (row["srs_min_last3"], row["srs_mean_last3"]) == (29, 32.5)
    assert np.isnan(row["srs_slope_last3"])
    assert row["srs_low_run_last3"] == 1


def test_measurement(row: pd.Series) -> None:
    assert row["days_since_srs"] == 24  # 24 Feb
    assert row["days_since_wai"] == 30  # the therapist's of 18 Feb, after the client's
    assert row["attended_since_srs_90d"] == 0  # both sessions attended had an SRS


def test_working_alliance_by_rater_and_gap(row: pd.Series) -> None:
    assert row["wai_client_goal"] == pytest.approx(5.0)
    assert row["wai_client_task"] == pytest.approx(4.0)
    assert row["wai_client_bond"] == pytest.approx(2.5)
    assert row["wai_therapist_bond"] == pytest.approx(4.0)
    assert row["wai_rater_gap"] == pytest.approx((5 + 4 + 2.5) / 3 - 4)


def test_rows_after_the_as_of_date_change_no_feature() -> None:
    before = build_features(clinic().build(), AS_OF)
    after = build_features(clinic(with_future=True).build(), AS_OF)
    pd.testing.assert_frame_equal(before, after)


def test_open_means_admitted_before_and_not_discharged_before() -> None:
    frame = build_features(clinic().build(), date(2026, 3, 19))
    assert set(frame.index) == {"E1", "E2"}  # E2 is discharged on the 19th, not before it


def test_a_status_recorded_after_the_as_of_date_is_not_known() -> None:
    b = clinic()
    # Held on the evening of the 19th, recorded as a no-show only on the 20th.
    b.appointment("E1", at("2026-03-19", 19), "no_show", updated_at=at("2026-03-20", 9))
    # Cancelled by the clinic on the 19th, recorded only on the 20th.
    b.appointment("E1", at("2026-03-19", 12), "cancelled_by_clinic", updated_at=at("2026-03-20"))
    row = build_features(b.build(), AS_OF).loc["E1"]
    assert row["missed_28d"] == 3
    assert row["consecutive_misses"] == 3
    assert (row["missed_7d"], row["missed_14d"]) == (1, 2)
    assert row["miss_rate_14d"] == pytest.approx(2 / 3)
    assert row["clinic_cancelled_28d"] == 1


def course_clinic() -> ClinicBuilder:
    """Clients for the short windows, the course of the SRS, clinic cancellations, booking
    lead times and how the alliance is measured, each value checkable by eye at 20 Mar.

    E1 rates five sessions 38, 36, 35, 33 and 30, attends one more unrated; E2 was admitted
    18 days ago, rates 30, 40 and 34, with varied booking dates; E3 has no session and no
    SRS with a total; E4's slots sit on the edges of the 7, 14 and 28-day windows; E5 was
    rated 4 months ago.
    """
    b = ClinicBuilder()
    b.client("C1")
    b.episode("E1", "C1", "2026-01-05")
    for day, item in (("02-20", 9.5), ("02-27", 9), ("03-06", 8.75), ("03-13", 8.25),
                      ("03-17", 7.5)):
        b.appointment("E1", at(f"2026-{day}"))
        b.srs("E1", at(f"2026-{day}", 11), [item] * 4)
    b.appointment("E1", at("2026-03-18"))
    b.appointment("E1", at("2026-02-20", 0), "cancelled_by_clinic")  # 28 days: in
    b.appointment("E1", at("2026-02-19", 23), "cancelled_by_clinic")  # just over: out
    b.wai("E1", at("2026-03-06", 12), "therapist", [4] * 12)
    b.client("C2")
    b.episode("E2", "C2", "2026-03-02")
    b.appointment("E2", at("2026-03-03"), booked_at=at("2026-03-01", 23))  # 2 calendar days
    b.appointment("E2", at("2026-03-10"), booked_at=at("2026-03-05"))  # 5
    unbooked = b.appointment("E2", at("2026-03-10", 14), service_type="group")
    b.appointment("E2", at("2026-03-13"), booked_at=at("2026-02-27"))  # 14
    b.appointment("E2", at("2026-03-17"), "no_show", booked_at=at("2026-03-16", 9))  # 1
    # Recorded on the as-of day: still unrecorded, so neither missed nor client-facing.
    b.appointment("E2", at("2026-03-19"), "no_show", updated_at=at("2026-03-20", 9))
    b.appointment("E2", at("2026-03-05"), "cancelled_by_clinic", booked_at=at("2026-02-20"))
    for row in b.rows["appointments"]:
        if row["appointment_id"] == unbooked:
            row["booked_at"] = None
    b.srs("E2", at("2026-03-03", 11), [7.5] * 4)
    b.srs("E2", at("2026-03-10", 11), [10] * 4)
    b.srs("E2", at("2026-03-16", 11), [8.5] * 4)
    b.client("C3")
    b.episode("E3", "C3", "2026-01-05")
    b.srs("E3", at("2026-03-10", 11), [9] * 4, instrument="GSRS")
    b.srs("E3", at("2026-03-12", 11), [5] * 4)
    for row in b.rows["alliance_measures"]:
        if row["episode_id"] == "E3" and row["instrument"] == "SRS":
            row["score_total"] = None
    b.client("C4")
    b.episode("E4", "C4", "2026-01-05")
    b.appointment("E4", at("2026-03-13", 0))  # 7 days before: in the last 7
    b.appointment("E4", at("2026-03-12", 23), "no_show")  # just over 7 days
    b.appointment("E4", at("2026-03-06", 0))  # 14 days: in the last 14
    b.appointment("E4", at("2026-02-20", 0))  # 28 days: in the 14 before those
    b.appointment("E4", at("2026-02-19", 23))  # just over 28 days
    b.client("C5")
    b.episode("E5", "C5", "2025-10-01")
    b.srs("E5", at("2025-11-20", 11), [9] * 4)
    b.appointment("E5", at("2026-03-02"))
    b.appointment("E5", at("2026-03-09"))
    return b


@pytest.fixture(scope="module")
def course() -> pd.DataFrame:
    return build_features(course_clinic().build(), AS_OF)


def test_short_windows_and_the_trend(course: pd.DataFrame) -> None:
    """Guards the 7 and 14-day counts (a slot exactly N days before the as-of midnight is
    in the last N days) and the trend, missing for an episode shorter than 28 days."""
    e1, e2, e3, e4 = (course.loc[e] for e in ("E1", "E2", "E3", "E4"))
    assert (e1["attended_7d"], e1["attended_14d"], e1["missed_14d"]) == (3, 4, 0)
    assert e1["miss_rate_14d"] == 0
    assert e1["attended_trend_14d"] == 4 - 2  # 6, 13, 17, 18 Mar against 20 and 27 Feb
    assert (e2["attended_7d"], e2["missed_7d"], e2["attended_14d"], e2["missed_14d"]) == (
        1, 1, 3, 1)
    assert e2["miss_rate_14d"] == pytest.approx(1 / 4)
    assert np.isnan(e2["attended_trend_14d"])  # admitted 18 days ago
    assert (e3["attended_7d"], e3["missed_7d"], e3["attended_trend_14d"]) == (0, 0, 0)
    assert np.isnan(e3["miss_rate_14d"])
    assert (e4["attended_7d"], e4["missed_7d"], e4["attended_14d"], e4["missed_14d"]) == (
        1, 0, 2, 1)
    assert e4["miss_rate_14d"] == pytest.approx(1 / 3)
    assert e4["attended_trend_14d"] == 2 - 1


def test_the_course_of_the_last_three_srs(course: pd.DataFrame) -> None:
    """Guards lowest, mean, slope and run over the last three SRS totals (older ones and
    group ratings do not count), all missing without an SRS total."""
    e1, e2 = course.loc["E1"], course.loc["E2"]
    # E1's last three: 35, 33, 30.
    assert (e1["srs_min_last3"], e1["srs_low_run_last3"]) == (30, 3)
    assert e1["srs_mean_last3"] == pytest.approx(98 / 3)
    assert e1["srs_slope_last3"] == pytest.approx(-2.5)
    # E2's: 30, 40, 34.
    assert (e2["srs_min_last3"], e2["srs_low_run_last3"]) == (30, 1)
    assert e2["srs_mean_last3"] == pytest.approx(104 / 3)
    assert e2["srs_slope_last3"] == pytest.approx(2.0)
    for name in ("srs_min_last3", "srs_mean_last3", "srs_slope_last3", "srs_low_run_last3"):
        assert np.isnan(course.loc["E3", name]), name  # a GSRS and an SRS without a total


def test_a_good_latest_rating_ends_the_run() -> None:
    b = ClinicBuilder()
    b.client("C1")
    b.episode("E1", "C1", "2026-01-05")
    for day, item in (("03-03", 7.5), ("03-10", 7.5), ("03-17", 10)):
        b.srs("E1", at(f"2026-{day}", 11), [item] * 4)
    row = build_features(b.build(), AS_OF).loc["E1"]
    assert (row["srs_low_run_last3"], row["srs_min_last3"], row["srs_slope_last3"]) == (0, 30, 5)


def test_clinic_cancellations_and_booking_lead(course: pd.DataFrame) -> None:
    """Guards the clinic's cancellations over 28 days (a slot exactly 28 days back in) and
    the median calendar days from booking to session of client-facing sessions, leaving out
    slots without a booking date, clinic cancellations and statuses not yet recorded."""
    assert course.loc["E1", "clinic_cancelled_28d"] == 1
    assert course.loc["E2", "clinic_cancelled_28d"] == 1
    assert course.loc["E2", "booking_lead_days_90d"] == (2 + 5) / 2  # of 1, 2, 5 and 14
    assert course.loc["E4", "booking_lead_days_90d"] == 7
    assert np.isnan(course.loc["E3", "booking_lead_days_90d"])  # no session


def test_a_booking_made_on_or_after_the_as_of_date_is_not_counted() -> None:
    b = course_clinic()
    # A session held on the 18th but only entered, as booked, on the 21st.
    b.appointment("E2", at("2026-03-18"), booked_at=at("2026-03-21"))
    assert build_features(b.build(), AS_OF).loc["E2", "booking_lead_days_90d"] == 3.5


def test_how_the_alliance_is_measured(course: pd.DataFrame) -> None:
    """Guards calendar days since the latest SRS total and WAI-SR (either rater), missing
    when never taken, and the sessions attended in the last 90 days after the latest SRS."""
    e1, e2, e3, e4, e5 = (course.loc[e] for e in ("E1", "E2", "E3", "E4", "E5"))
    assert (e1["days_since_srs"], e1["days_since_wai"], e1["attended_since_srs_90d"]) == (
        3, 14, 1)  # the session of 18 Mar had no SRS
    assert (e2["days_since_srs"], e2["attended_since_srs_90d"]) == (4, 0)
    assert np.isnan(e2["days_since_wai"])
    assert np.isnan(e3["days_since_srs"]) and np.isnan(e3["days_since_wai"])
    assert e3["attended_since_srs_90d"] == 0  # nothing attended
    assert e4["attended_since_srs_90d"] == 4  # never rated: every session in 90 days
    assert (e5["days_since_srs"], e5["attended_since_srs_90d"]) == (120, 2)


@pytest.mark.parametrize("categorical", [False, True])
def test_a_clinic_where_nobody_has_attended_yet(categorical: bool) -> None:
    """No session attended anywhere: days count from admission.

    The ETL reads code columns as categoricals whose categories are the codes
    seen; a status recorded late must still read as unrecorded.
    """
    b = ClinicBuilder()
    b.client("C1")
    b.episode("E1", "C1", "2026-03-10")
    b.appointment("E1", at("2026-03-12"), "no_show")
    b.appointment("E1", at("2026-03-19"), "no_show", updated_at=at("2026-03-20", 9))
    data = b.build()
    if categorical:
        appts = data.appointments.astype({"episode_id": "category", "status": "category"})
        data = ClinicData(data.clients, data.episodes, appts, data.measures, data.items)
    row = build_features(data, AS_OF).loc["E1"]
    assert row["days_since_attended"] == 10
    assert row["consecutive_misses"] == 1


def test_a_clinic_with_no_open_episode_has_no_rows() -> None:
    """A new clinic, or one whose last client left: an empty frame, not an error."""
    empty = from_frames({name: pd.DataFrame(columns=[c.name for c in table.columns])
                         for name, table in contract.TABLES.items()})
    features = build_features(empty, date(2026, 6, 1))
    assert len(features) == 0
    assert tuple(features.columns) == META_COLUMNS + FEATURE_NAMES


@pytest.fixture(scope="module")
def source(scored: Any) -> ClinicData:
    return scored.clinic()


def test_features_ignore_demographics(scored: Any, source: ClinicData) -> None:
    """Guards: changing every client's demographics leaves the features unchanged."""
    changed = with_other_demographics(source)
    for col in ("sex", "race_ethnicity", "birth_year"):
        assert (changed.clients[col].astype(str) != source.clients[col].astype(str)).all(), col
    pd.testing.assert_frame_equal(build_features(source, scored.as_of),
                                  build_features(changed, scored.as_of))
