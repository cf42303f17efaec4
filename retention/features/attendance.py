"""Attendance and disengagement features: what the appointment book says before ``as_of``.

Every function takes the open episodes (indexed by episode_id) and returns a
new frame on that index. Only slots scheduled before ``as_of`` count as
history; a future slot counts as booked only if its ``booked_at`` is before
``as_of`` and it had not been cancelled by then.
"""

from __future__ import annotations

from datetime import date

import numpy as np
import pandas as pd

from retention.clinic import contract
from retention.clinic.data import as_timestamp, in_days
from retention.clinic.ids import member, positions

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


# Windows of the attendance counts, in days before the as-of date.
WINDOWS = (7, 14, 28, 90)


def attendance_features(
    episodes: pd.DataFrame, appointments: pd.DataFrame, as_of: date
) -> pd.DataFrame:
    """Attendance, misses and cancellations over the last 7, 14, 28 and 90 days.

    A slot is in the last N days when it was scheduled at most N days before the
    as-of midnight. All counts come from one match of the client-facing slots' episodes.
    """
    slots = past_slots(appointments, episodes.index, as_of)
    facing = slots[slots["status"].isin(contract.CLIENT_STATUSES)]
    status, days_ago = facing["status"], facing["days_ago"]
    attended = status.isin(["attended"]).to_numpy()
    missed = status.isin(contract.MISSED_STATUSES).to_numpy()
    columns: dict[str, np.ndarray] = {}
    for days in WINDOWS:
        within = (days_ago <= days).to_numpy()
        columns[f"scheduled_{days}"] = within
        columns[f"attended_{days}"] = within & attended
        columns[f"missed_{days}"] = within & missed
    columns["client_cancelled_28"] = (
        columns["scheduled_28"] & status.isin(["cancelled_by_client"]).to_numpy())
    counts = _counts(facing, columns, episodes.index)
    out = pd.DataFrame(index=episodes.index)
    for days in (28, 90):
        out[f"miss_rate_{days}d"] = _rate(counts[f"missed_{days}"], counts[f"scheduled_{days}"])
    out["sessions_scheduled_28d"] = counts["scheduled_28"]
    out["attended_28d"] = counts["attended_28"]
    out["missed_28d"] = counts["missed_28"]
    out["client_cancelled_28d"] = counts["client_cancelled_28"]
    for days in (7, 14):
        out[f"attended_{days}d"] = counts[f"attended_{days}"]
        out[f"missed_{days}d"] = counts[f"missed_{days}"]
    out["miss_rate_14d"] = _rate(counts["missed_14"], counts["scheduled_14"])
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
    out["attended_trend_14d"] = attended_trend(episodes, attended, cutoff)
    return out


def attended_trend(episodes: pd.DataFrame, attended: pd.DataFrame,
                   cutoff: pd.Timestamp) -> pd.Series:
    """Sessions attended in the last 14 days minus those in the 14 days before (15-28).

    Missing for an episode admitted less than 28 days before ``cutoff``: the earlier
    fortnight was not all in treatment, so a rise would only say the client is new.
    """
    days_ago = attended["days_ago"]
    columns = {"recent": (days_ago <= 14).to_numpy(),
               "before": ((days_ago > 14) & (days_ago <= 28)).to_numpy()}
    counts = _counts(attended, columns, episodes.index)
    whole = episodes["admitted_on"] <= cutoff - pd.Timedelta(days=28)
    return (counts["recent"] - counts["before"]).where(whole).astype(float)


def setting_features(
    episodes: pd.DataFrame, appointments: pd.DataFrame, as_of: date
) -> pd.DataFrame:
    """How care is delivered: telehealth and group shares over 90 days, the clinic's own
    cancellations over 28 days, and how far ahead sessions were booked."""
    cutoff = as_timestamp(as_of)
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
    by_clinic = slots[(slots["days_ago"] <= 28) & (slots["status"] == "cancelled_by_clinic")]
    out["clinic_cancelled_28d"] = _count(by_clinic, episodes.index)
    out["booking_lead_days_90d"] = booking_lead_days(recent, cutoff, episodes.index)
    return out


def booking_lead_days(slots: pd.DataFrame, cutoff: pd.Timestamp,
                      index: pd.Index) -> np.ndarray:
    """Median calendar days from booking to session per episode of ``index``, of ``slots``
    booked before ``cutoff`` (a booking made on or after it was not known then); missing
    where there are none."""
    booked_at = slots["booked_at"]
    known = (booked_at.notna() & (booked_at < cutoff)).to_numpy()
    lead = (day_numbers(slots["scheduled_at"]) - day_numbers(booked_at))[known]
    return group_median(positions(slots["episode_id"], index)[known], lead, len(index))


def day_numbers(stamps: pd.Series) -> np.ndarray:
    """Calendar days since 1970 of each timestamp (meaningless where it is missing)."""
    return stamps.to_numpy(dtype="datetime64[ns]").astype("datetime64[D]").astype(np.int64)


def group_median(codes: np.ndarray, values: np.ndarray, n: int) -> np.ndarray:
    """The median of ``values`` per code 0..n-1, missing where a code has none."""
    order = np.lexsort((values, codes))
    codes, values = codes[order], values[order].astype(float)
    counts = np.bincount(codes, minlength=n)
    starts = np.cumsum(counts) - counts
    out = np.full(n, np.nan)
    has = counts > 0
    low = starts[has] + (counts[has] - 1) // 2
    high = starts[has] + counts[has] // 2
    out[has] = (values[low] + values[high]) / 2
    return out


def _count(rows: pd.DataFrame, index: pd.Index) -> pd.Series:
    """How many ``rows`` each episode of ``index`` has."""
    return _counts(rows, {"n": np.ones(len(rows), dtype=bool)}, index)["n"]


def _counts(rows: pd.DataFrame, columns: dict[str, np.ndarray], index: pd.Index) -> pd.DataFrame:
    """How many of each episode's ``rows`` each boolean column holds.

    Counted on the episodes' positions in ``index``, found once: grouping on text ids
    cost more than the counting.
    """
    codes = positions(rows["episode_id"], index)
    known = codes >= 0
    return pd.DataFrame({name: np.bincount(codes[flags & known], minlength=len(index))
                         .astype(float) for name, flags in columns.items()}, index=index)


def _rate(part: pd.Series, whole: pd.Series) -> pd.Series:
    """``part`` over ``whole``, missing where ``whole`` is 0."""
    return (part / whole.where(whole > 0)).astype(float)
