"""No data from the future: features at D equal those computed from the data as it stood at D.

The synthetic clinic is cut back to what its database held at midnight on D:
slots booked later do not exist, statuses recorded later are still
'scheduled', measures taken later do not exist, and episodes discharged on or
after D are still open. Every feature must come out the same.
"""

from __future__ import annotations

from datetime import date

import pandas as pd
import pytest

from retention.clinic.data import ClinicData, as_timestamp, from_frames
from retention.clinic.synth import SynthConfig, generate
from retention.features import build_features


def known_at(data: ClinicData, day: date) -> ClinicData:
    """The clinic's rows as they stood at midnight starting ``day``."""
    cutoff = as_timestamp(day)
    a = data.appointments
    exists = a["booked_at"].lt(cutoff) | (a["booked_at"].isna() & a["scheduled_at"].lt(cutoff))
    appts = a[exists].copy()
    later = appts["updated_at"] >= cutoff
    appts.loc[later, "status"] = "scheduled"
    appts.loc[later, "updated_at"] = appts.loc[later, "booked_at"]
    measures = data.measures[data.measures["administered_at"] < cutoff]
    items = data.items[data.items["measure_id"].isin(measures["measure_id"])]
    episodes = data.episodes[data.episodes["admitted_on"] < cutoff].copy()
    still_open = episodes["discharged_on"] >= cutoff
    episodes.loc[still_open, ["discharged_on", "discharge_reason"]] = None
    episodes["discharged_on"] = pd.to_datetime(episodes["discharged_on"])
    clients = data.clients[data.clients["client_id"].isin(episodes["client_id"])]
    return from_frames({
        "clients": clients, "episodes": episodes, "appointments": appts,
        "alliance_measures": measures, "alliance_items": items,
    })


@pytest.fixture(scope="module")
def clinic() -> ClinicData:
    return from_frames(generate(SynthConfig(end=date(2026, 6, 1), n_clients=300, seed=5)))


@pytest.mark.parametrize("day", [date(2025, 9, 15), date(2026, 1, 5), date(2026, 4, 20)])
def test_features_use_only_what_was_known_at_the_as_of_date(clinic: ClinicData, day: date) -> None:
    full = build_features(clinic, day)
    cut = build_features(known_at(clinic, day), day)
    assert len(full) > 20
    pd.testing.assert_frame_equal(full, cut)


def test_the_cut_really_removes_rows(clinic: ClinicData) -> None:
    """Guards the test above: the cut must differ from the full data."""
    cut = known_at(clinic, date(2026, 1, 5))
    assert len(cut.appointments) < len(clinic.appointments)
    assert len(cut.measures) < len(clinic.measures)
