"""The CTN-0027 loader (benchmarks/): contract-shaped, and no slot's existence leaks the outcome."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
import pytest

from benchmarks.ctn0094_loader import WEEKS, load_frames
from retention.clinic import contract

DATA = Path("/work/shared/data/ctn0094-trial27")

pytestmark = pytest.mark.skipif(
    not DATA.exists() and not os.environ.get("CI"),
    reason="CTN-0027 files not on this machine (see benchmarks/ctn0094_loader.py)",
)


@pytest.fixture(scope="module")
def frames() -> dict[str, pd.DataFrame]:
    return load_frames(DATA)


@pytest.mark.slow
def test_frames_follow_the_contract(frames: dict[str, pd.DataFrame]) -> None:
    for name, table in contract.TABLES.items():
        assert list(frames[name].columns) == [c.name for c in table.columns], name
    episodes, appts = frames["episodes"], frames["appointments"]
    assert len(episodes) == 1269  # randomised participants
    assert set(appts["status"]) <= set(contract.APPOINTMENT_STATUSES)
    assert set(episodes["discharge_reason"]) == {"completed", "dropped_out"}
    assert frames["alliance_measures"].empty


def test_every_episode_has_the_whole_protocol_schedule_booked_at_admission(
    frames: dict[str, pd.DataFrame],
) -> None:
    """Weekly visits exist for every week whatever happened, so their existence says nothing."""
    visits = frames["appointments"][frames["appointments"]["service_type"] == "individual"]
    assert (visits.groupby("episode_id").size() == WEEKS + 1).all()
    admitted = visits["episode_id"].map(frames["episodes"].set_index("episode_id")["admitted_on"])
    # Booked on admission (or when held, for a WK0 visit held before randomisation).
    assert (visits["booked_at"].dt.date <= admitted).all()
    assert (visits["booked_at"] <= visits["scheduled_at"]).all()
    # Doses are walk-ins: never counted as booked ahead.
    doses = frames["appointments"][frames["appointments"]["service_type"] == "medication"]
    assert doses["booked_at"].isna().all() and (doses["status"] == "attended").all()


def test_slots_after_discharge_are_cancelled_as_of_discharge(
    frames: dict[str, pd.DataFrame],
) -> None:
    appts = frames["appointments"]
    discharged = appts["episode_id"].map(
        frames["episodes"].set_index("episode_id")["discharged_on"])
    after = appts["scheduled_at"].dt.date >= discharged
    assert (appts.loc[after, "status"] == "cancelled_by_clinic").all()
    assert (appts.loc[after, "updated_at"].dt.date == discharged[after]).all()
    assert not (appts.loc[~after, "status"] == "cancelled_by_clinic").any()
