"""Stage-of-treatment features: how far into the episode and its plan the client is."""

from __future__ import annotations

from datetime import date

import pandas as pd

from retention.clinic.data import as_timestamp, in_days


def open_episodes(episodes: pd.DataFrame, as_of: date) -> pd.DataFrame:
    """Episodes open at ``as_of``: admitted before it and not discharged before it."""
    cutoff = as_timestamp(as_of)
    mask = (episodes["admitted_on"] < cutoff) & (
        episodes["discharged_on"].isna() | (episodes["discharged_on"] >= cutoff)
    )
    return episodes.loc[mask].set_index("episode_id", drop=False).rename_axis(None)


def stage_features(episodes: pd.DataFrame, as_of: date) -> pd.DataFrame:
    """Days since admission and days left until the planned discharge."""
    cutoff = as_timestamp(as_of)
    out = pd.DataFrame(index=episodes.index)
    out["days_in_treatment"] = in_days(cutoff - episodes["admitted_on"]).astype(float)
    out["days_to_planned_end"] = in_days(episodes["planned_discharge_on"] - cutoff).astype(float)
    return out


def program_feature(episodes: pd.DataFrame, categories: tuple[str, ...]) -> pd.DataFrame:
    """The program as a categorical with a fixed category list, stable across retrains."""
    out = pd.DataFrame(index=episodes.index)
    out["program"] = pd.Categorical(episodes["program"], categories=list(categories))
    return out
