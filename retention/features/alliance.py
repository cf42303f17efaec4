"""Alliance features from SRS, GSRS and WAI-SR measures administered before ``as_of``.

Totals and subscales are taken from the measure rows; where item responses
exist the SRS items (relationship, goals, approach) are read from them.
"""

from __future__ import annotations

from datetime import date

import numpy as np
import pandas as pd

from retention.clinic.data import as_timestamp
from retention.clinic.ids import member
from retention.clinic.instruments import SRS_CUTOFF, WAI_SR_N_ITEMS, srs_item_frame


def measures_before(measures: pd.DataFrame, episode_index: pd.Index, as_of: date) -> pd.DataFrame:
    """Measures of the given episodes administered strictly before ``as_of``, oldest first."""
    cutoff = as_timestamp(as_of)
    mask = (measures["administered_at"] < cutoff) & member(measures["episode_id"], episode_index)
    return measures.loc[mask].sort_values(["episode_id", "administered_at", "measure_id"])


def session_rating_features(
    episodes: pd.DataFrame, measures: pd.DataFrame, items: pd.DataFrame, as_of: date
) -> pd.DataFrame:
    """Latest SRS and GSRS, their change from the previous session, and SRS items."""
    before = measures_before(measures, episodes.index, as_of)
    out = pd.DataFrame(index=episodes.index)
    for instrument, prefix in (("SRS", "srs"), ("GSRS", "gsrs")):
        rated = before[(before["instrument"] == instrument) & (before["rater"] == "client")]
        rated = rated.dropna(subset=["score_total"])
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
            latest_ids = rated.groupby("episode_id")["measure_id"].last()
            item_values = srs_item_frame(rated, items).reindex(latest_ids.to_numpy())
            item_values.index = latest_ids.index
            for item in ("relationship", "goals", "approach"):
                out[f"srs_{item}_latest"] = (
                    item_values[item].reindex(episodes.index).astype(float)
                )
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
