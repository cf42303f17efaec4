"""Attendance and disengagement features: what the appointment book says before ``as_of``.

Every function takes the open episodes (indexed by episode_id) and returns a
new frame on that index. Only slots scheduled before ``as_of`` count as
history; a future slot counts as booked only if its ``booked_at`` is before
``as_of`` and it had not been cancelled by then.
"""

from __future__ import annotations

from datetime import date

import pandas as pd

from retention.clinic import contract
from retention.clinic.data import as_timestamp, in_days
from retention.clinic.ids import member

CANCELLED = ("cancelled_by_client", "cancelled_by_clinic")


def past_slots(appointments: pd.DataFrame, episode_index: pd.Index, as_of: date) -> pd.DataFrame:
    """Appointments of the given episodes scheduled strictly before ``as_of``.

    A status recorded on or after ``as_of`` was not known then: such a slot
    reads as still 'scheduled' (unrecorded), as it did on the day.
    """
    cutoff = as_timestamp(as_of)
    mask = (appointments["scheduled_at"] < cutoff) & member(
        appointments["episode_id"], episode_index)
    slots = appointments.loc[mask].copy()
    unknown = slots["updated_at"] >= cutoff
    if unknown.any():
        status = slots["status"]
        categorical = isinstance(status.dtype, pd.CategoricalDtype)
        if categorical and "scheduled" not in status.cat.categories:
            slots["status"] = status.cat.add_categories(["scheduled"])
        slots.loc[unknown, "status"] = "scheduled"
    slots["days_ago"] = in_days(cutoff - slots["scheduled_at"])
    return slots


def booked_ahead(appointments: pd.DataFrame, episode_index: pd.Index, as_of: date) -> pd.DataFrame:
    """Future slots that were booked, and not yet cancelled, at ``as_of``.

    A cancellation is dated by ``updated_at``: the row's last change, which for
    a cancelled slot is the cancellation itself or later.
    """
    cutoff = as_timestamp(as_of)
    a = appointments
    known = a["booked_at"].notna() & (a["booked_at"] < cutoff)
    cancelled_before = a["status"].isin(CANCELLED) & (a["updated_at"] < cutoff)
    mask = (
        member(a["episode_id"], episode_index)
        & (a["scheduled_at"] >= cutoff)
        & known
        & ~cancelled_before
    )
    ahead = a.loc[mask].copy()
    ahead["days_ahead"] = in_days(ahead["scheduled_at"] - cutoff)
    return ahead


def attendance_features(
    episodes: pd.DataFrame, appointments: pd.DataFrame, as_of: date
) -> pd.DataFrame:
    """Attendance, misses and cancellations over the last 28 and 90 days."""
    slots = past_slots(appointments, episodes.index, as_of)
    facing = slots[slots["status"].isin(contract.CLIENT_STATUSES)]
    out = pd.DataFrame(index=episodes.index)
    for days in (28, 90):
        window = facing[facing["days_ago"] <= days]
        scheduled = _count(window, episodes.index)
        missed = _count(window[window["status"].isin(contract.MISSED_STATUSES)], episodes.index)
        out[f"miss_rate_{days}d"] = (missed / scheduled.where(scheduled > 0)).astype(float)
        if days == 28:
            out["sessions_scheduled_28d"] = scheduled
            out["attended_28d"] = _count(window[window["status"] == "attended"], episodes.index)
            out["missed_28d"] = missed
            out["client_cancelled_28d"] = _count(
                window[window["status"] == "cancelled_by_client"], episodes.index
            )
    return out


def disengagement_features(
    episodes: pd.DataFrame, appointments: pd.DataFrame, as_of: date
) -> pd.DataFrame:
    """Days since last attended, the current run of misses, and what is booked ahead."""
    cutoff = as_timestamp(as_of)
    slots = past_slots(appointments, episodes.index, as_of)
    attended = slots[slots["status"] == "attended"]
    last_attended = attended.groupby("episode_id")["scheduled_at"].max()
    last_attended = last_attended.reindex(episodes.index)
    # Calendar days, as a case manager counts them: a session yesterday is 1 day ago.
    since = last_attended.dt.normalize().fillna(episodes["admitted_on"])
    out = pd.DataFrame(index=episodes.index)
    out["days_since_attended"] = in_days(cutoff - since).astype(float)

    missed = slots[slots["status"].isin(contract.MISSED_STATUSES)]
    # reindex, not map: pandas cannot map an empty column through datetimes (a clinic
    # with no open episode failed here).
    previous = last_attended.reindex(missed["episode_id"].to_numpy()).fillna(pd.Timestamp.min)
    after_last = missed["scheduled_at"].to_numpy() > previous.to_numpy()
    out["consecutive_misses"] = _count(missed[after_last], episodes.index)

    ahead = booked_ahead(appointments, episodes.index, as_of)
    out["booked_next_14d"] = _count(ahead[ahead["days_ahead"] < 14], episodes.index)
    out["days_to_next_booked"] = (
        ahead.groupby("episode_id")["days_ahead"].min().reindex(episodes.index).astype(float)
    )
    return out


def setting_features(
    episodes: pd.DataFrame, appointments: pd.DataFrame, as_of: date
) -> pd.DataFrame:
    """How care is delivered: telehealth and group shares over 90 days."""
    slots = past_slots(appointments, episodes.index, as_of)
    recent = slots[(slots["days_ago"] <= 90) & slots["status"].isin(contract.CLIENT_STATUSES)]
    attended = recent[recent["status"] == "attended"]
    out = pd.DataFrame(index=episodes.index)
    n_attended = _count(attended, episodes.index)
    n_tele = _count(attended[attended["telehealth"]], episodes.index)
    out["telehealth_share_90d"] = (n_tele / n_attended.where(n_attended > 0)).astype(float)
    n_recent = _count(recent, episodes.index)
    n_group = _count(recent[recent["service_type"] == "group"], episodes.index)
    out["group_share_90d"] = (n_group / n_recent.where(n_recent > 0)).astype(float)
    return out


def _count(rows: pd.DataFrame, index: pd.Index) -> pd.Series:
    return rows.groupby("episode_id").size().reindex(index, fill_value=0).astype(float)
