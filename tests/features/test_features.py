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


def test_disengagement(row: pd.Series) -> None:
    assert row["days_since_attended"] == 24  # calendar days from 24 Feb to 20 Mar
    assert row["consecutive_misses"] == 3
    assert row["booked_next_14d"] == 2  # 24 and 31 Mar; 27 Mar was cancelled on 19 Mar
    assert row["days_to_next_booked"] == pytest.approx(4 + 10 / 24)


def test_stage_and_setting(row: pd.Series) -> None:
    assert row["days_in_treatment"] == 74
    assert row["days_to_planned_end"] == 46
    assert row["program"] == "outpatient"
    assert row["telehealth_share_90d"] == pytest.approx(1 / 2)
    assert row["group_share_90d"] == pytest.approx(1 / 6)  # clinic cancellations left out


def test_session_ratings(row: pd.Series) -> None:
    assert row["srs_latest"] == 29
    assert row["srs_change"] == -7
    assert row["srs_below_cutoff_last3"] == 1
    assert (row["srs_relationship_latest"], row["srs_goals_latest"],
            row["srs_approach_latest"]) == (8, 7, 6)
    assert np.isnan(row["gsrs_latest"]) and np.isnan(row["gsrs_change"])


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
    row = build_features(b.build(), AS_OF).loc["E1"]
    assert row["missed_28d"] == 3
    assert row["consecutive_misses"] == 3


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
