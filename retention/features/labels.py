"""The outcome: disengagement within the horizon after an as-of date.

An episode open at ``as_of`` is labelled 1 when the client attends no
appointment in ``[as_of, as_of + horizon)`` and is not discharged as completed
or transferred in that window. Only rows whose window ends before the data's
cut-off have a label: every label is observed, none is guessed.
"""

from __future__ import annotations

from datetime import date, timedelta

import pandas as pd

from retention.clinic import contract
from retention.clinic.data import ClinicData, as_timestamp
from retention.features.treatment import open_episodes


def label_observable(as_of: date, horizon_days: int, data_until: date) -> bool:
    """True when the whole horizon after ``as_of`` lies before ``data_until``."""
    return as_of + timedelta(days=horizon_days) <= data_until


def disengagement_labels(data: ClinicData, as_of: date, horizon_days: int) -> pd.Series:
    """1 for disengagement in the horizon, 0 otherwise, for episodes open at ``as_of``."""
    start = as_timestamp(as_of)
    end = as_timestamp(as_of + timedelta(days=horizon_days))
    episodes = open_episodes(data.episodes, as_of)
    a = data.appointments
    attended = a[
        (a["status"] == "attended") & (a["scheduled_at"] >= start) & (a["scheduled_at"] < end)
    ]
    came = episodes.index.isin(attended["episode_id"])
    good_end = (
        episodes["discharge_reason"].isin(contract.GOOD_DISCHARGES)
        & (episodes["discharged_on"] >= start)
        & (episodes["discharged_on"] < end)
    ).to_numpy()
    return pd.Series((~came & ~good_end).astype(int), index=episodes.index, name="label")
