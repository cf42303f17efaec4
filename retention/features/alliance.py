"""Alliance features from SRS, GSRS, WAI-SR and other registered alliance forms
administered before ``as_of``.

Totals and subscales are taken from the measure rows; where item responses
exist the SRS items (relationship, goals, approach) are read from them.
"""

from __future__ import annotations

from datetime import date

import numpy as np
import pandas as pd

from retention.clinic.data import MEASURE_ORDER, as_timestamp, in_order
from retention.clinic.ids import member, positions
from retention.clinic.instruments import SRS_CUTOFF, WAI_SR_N_ITEMS, srs_item_frame
from retention.clinic.registry import Registry
from retention.features.attendance import day_numbers, past_slots


def measures_before(measures: pd.DataFrame, episode_index: pd.Index, as_of: date) -> pd.DataFrame:
    """Measures of the given episodes administered strictly before ``as_of``, oldest first
    (``MEASURE_ORDER``: as ``from_frames`` gives them, so sorted only when they are not)."""
    cutoff = as_timestamp(as_of)
    mask = (measures["administered_at"] < cutoff) & member(measures["episode_id"], episode_index)
    before = measures.loc[mask]
    return before if in_order(before, MEASURE_ORDER) else before.sort_values(list(MEASURE_ORDER))


def client_ratings(before: pd.DataFrame, instrument: str) -> pd.DataFrame:
    """The client's ratings on ``instrument`` that have a total, in the order given."""
    rated = before[(before["instrument"] == instrument) & (before["rater"] == "client")]
    return rated.dropna(subset=["score_total"])


def session_rating_features(
    episodes: pd.DataFrame, measures: pd.DataFrame, items: pd.DataFrame, as_of: date
) -> pd.DataFrame:
    """Latest SRS and GSRS, their change from the previous session, SRS items, and the
    course of the last three SRS: lowest, mean, slope and the run below the cutoff."""
    before = measures_before(measures, episodes.index, as_of)
    out = pd.DataFrame(index=episodes.index)
    for instrument, prefix in (("SRS", "srs"), ("GSRS", "gsrs")):
        rated = client_ratings(before, instrument)
        last_two = rated.groupby("episode_id").tail(2)
        grouped = last_two.groupby("episode_id")["score_total"]
        latest = grouped.last()
        # With at most two rows per episode, the first is the previous session's.
        change = (latest - grouped.first()).where(grouped.size() >= 2)
        out[f"{prefix}_latest"] = latest.reindex(episodes.index).astype(float)
        out[f"{prefix}_change"] = change.reindex(episodes.index).astype(float)
        if instrument == "SRS":
            last3 = rated.groupby("episode_id").tail(3)
            below = (last3["score_total"] < SRS_CUTOFF).groupby(last3["episode_id"]).sum()
            out["srs_below_cutoff_last3"] = below.reindex(episodes.index).astype(float)
            for name, values in srs_course(rated, episodes.index).items():
                out[name] = values
            latest_ids = rated.groupby("episode_id")["measure_id"].last()
            item_values = srs_item_frame(rated, items).reindex(latest_ids.to_numpy())
            item_values.index = latest_ids.index
            for item in ("relationship", "goals", "approach"):
                out[f"srs_{item}_latest"] = (
                    item_values[item].reindex(episodes.index).astype(float)
                )
    return out


def srs_course(rated: pd.DataFrame, index: pd.Index) -> dict[str, np.ndarray]:
    """The course of the client's last three SRS totals, per episode of ``index``.

    ``srs_min_last3`` and ``srs_mean_last3`` over the last three (or fewer);
    ``srs_slope_last3`` the least-squares slope per rating over the last three, missing
    with fewer (two ratings are ``srs_change``); ``srs_low_run_last3`` how many of the
    last three in a row up to the latest are below the cutoff (0 when the latest is not).
    All missing without any SRS. The last three are what the nightly run reads of the
    SRS (``store.clinic_copy.read_scoped_copy``): a longer course would differ between
    training and scoring.

    Plain numpy over the last three rows of every episode at once: no per-episode Python
    and no grouping on text ids.
    """
    codes = positions(rated["episode_id"], index)
    # Stable: each episode's rows keep their order (oldest first).
    order = np.argsort(codes, kind="stable")
    codes = codes[order]
    scores = rated["score_total"].to_numpy(dtype=float)[order]
    out = {name: np.full(len(index), np.nan) for name in SRS_COURSE}
    if not len(codes):
        return out
    # Rows after this one in its episode (0 for the latest), and the last three of each.
    starts = np.flatnonzero(np.r_[True, codes[1:] != codes[:-1]])
    sizes = np.diff(np.r_[starts, len(codes)])
    from_end = np.repeat(starts + sizes, sizes) - 1 - np.arange(len(codes))
    last3 = from_end < 3
    owner, n = codes[starts], np.minimum(sizes, 3)
    first = np.r_[0, np.cumsum(n)[:-1]]
    y = scores[last3]
    # x = 0, 1, 2 within each run of the last three: the least-squares slope is
    # (latest - first) / 2, with exactly three.
    out["srs_slope_last3"][owner] = np.where(n == 3, (y[first + n - 1] - y[first]) / 2, np.nan)
    out["srs_min_last3"][owner] = np.minimum.reduceat(y, first)
    out["srs_mean_last3"][owner] = np.add.reduceat(y, first) / n
    # The latest of the last three not below the cutoff (-1 for none): the run follows it.
    row = np.arange(len(y))
    last_ok = np.maximum.reduceat(np.where(y >= SRS_CUTOFF, row, -1), first)
    out["srs_low_run_last3"][owner] = first + n - 1 - np.maximum(last_ok, first - 1)
    return out


SRS_COURSE = ("srs_min_last3", "srs_mean_last3", "srs_slope_last3", "srs_low_run_last3")
# The appointment columns the measurement features read.
SLOT_KEYS = ["episode_id", "scheduled_at", "status", "updated_at"]


def measurement_features(
    episodes: pd.DataFrame, appointments: pd.DataFrame, measures: pd.DataFrame, as_of: date
) -> pd.DataFrame:
    """How the alliance is measured: days since the latest client SRS and the latest WAI-SR
    (either rater), and the sessions attended in the last 90 days on a day after the
    latest client SRS (every one of them when there is none): sessions not rated."""
    cutoff = as_timestamp(as_of)
    n = len(episodes.index)
    # The rows of measures_before, unsorted, as numpy: no rows of text columns are copied.
    m = measures
    codes = positions(m["episode_id"], episodes.index)
    known = (codes >= 0) & (m["administered_at"] < cutoff).to_numpy()
    client = m["rater"].isin(["client"]).to_numpy()
    srs = known & client & m["instrument"].isin(["SRS"]).to_numpy() \
        & m["score_total"].notna().to_numpy()
    wai = known & m["instrument"].isin(["WAI-SR"]).to_numpy()
    days = day_numbers(m["administered_at"])
    today = cutoff.to_datetime64().astype("datetime64[D]").astype(np.int64)
    out = pd.DataFrame(index=episodes.index)
    latest_srs = np.full(n, -1, dtype=np.int64)  # day number; -1: never
    for name, rows in (("days_since_srs", srs), ("days_since_wai", wai)):
        # Calendar days, as a case manager counts them: a rating yesterday is 1 day ago.
        latest = np.full(n, -1, dtype=np.int64)
        np.maximum.at(latest, codes[rows], days[rows])
        out[name] = np.where(latest >= 0, today - latest, np.nan)
        if name == "days_since_srs":
            latest_srs = latest
    slots = past_slots(appointments[SLOT_KEYS], episodes.index, as_of)
    attended = slots[(slots["days_ago"] <= 90) & slots["status"].isin(["attended"])]
    session = positions(attended["episode_id"], episodes.index)
    after = day_numbers(attended["scheduled_at"]) > latest_srs[session]
    out["attended_since_srs_90d"] = np.bincount(session[after], minlength=n).astype(float)
    return out


def wai_item_mean(measures: pd.DataFrame) -> pd.Series:
    """Mean item score (1-5) of WAI-SR measures: the total over 12 items.

    Equal to the mean of the goal, task and bond means (four items each), and
    still known when a clinic sends the total without subscales.
    """
    subscales = measures[["goal", "task", "bond"]].astype(float).mean(axis=1, skipna=False)
    return (measures["score_total"].astype(float) / WAI_SR_N_ITEMS).fillna(subscales)


def working_alliance_features(
    episodes: pd.DataFrame, measures: pd.DataFrame, as_of: date
) -> pd.DataFrame:
    """Latest WAI-SR goal, task and bond by rater, and the client-therapist gap."""
    before = measures_before(measures, episodes.index, as_of)
    wai = before[before["instrument"] == "WAI-SR"]
    out = pd.DataFrame(index=episodes.index)
    means: dict[str, pd.Series] = {}
    for rater in ("client", "therapist"):
        latest = wai[wai["rater"] == rater].groupby("episode_id").tail(1).set_index("episode_id")
        latest = latest.reindex(episodes.index)
        for scale in ("goal", "task", "bond"):
            out[f"wai_{rater}_{scale}"] = latest[scale].astype(float)
        means[rater] = wai_item_mean(latest)
    out["wai_rater_gap"] = (means["client"] - means["therapist"]).astype(float)
    return out.replace([np.inf, -np.inf], np.nan)


def registered_alliance_features(
    episodes: pd.DataFrame, measures: pd.DataFrame, as_of: date, registry: Registry
) -> pd.DataFrame:
    """The latest client rating on any other alliance form the registry lets the model read
    (``model_input``; the TAS as shipped), as a share of its range with 1 the best end.

    One feature for every such form: each clinic uses one or two, and a share of the
    range reads the same whichever it is. Forms nobody registered, or registered to be
    shown only, are never read here.
    """
    codes = [c for c in registry.model_inputs
             if c not in OWN_FEATURES and registry[c].kind == "alliance"]
    before = measures_before(measures, episodes.index, as_of)
    rated = before[before["instrument"].isin(codes) & (before["rater"] == "client")]
    latest = rated.dropna(subset=["score_total"]).groupby("episode_id").tail(1)
    share = pd.Series(np.nan, index=latest.index)
    for code in codes:
        form = registry[code]
        low, high = form.total_range
        mine = latest["instrument"] == code
        position = (latest.loc[mine, "score_total"].astype(float) - low) / (high - low)
        share[mine] = position if form.higher_is == "better" else 1.0 - position
    out = pd.DataFrame(index=episodes.index)
    out["other_alliance_share"] = pd.Series(
        share.to_numpy(), index=latest["episode_id"].to_numpy()).reindex(episodes.index)
    return out


# Forms with features of their own above, and the ORS (retention.features.outcome).
OWN_FEATURES = ("SRS", "GSRS", "WAI-SR", "ORS")
