"""Features from the therapist's session notes: signs of strain, ruptures and their repair.

A note is known from when it was written (``recorded_at``; from the session itself,
``observed_at``, when the EHR does not say): a note written on or after the as-of date
about an earlier session was not there to read. An episode without any note known at the
as-of date has no value (NaN), not zero: a clinic or therapist that does not record
observations says nothing about the client.

A rupture counts as repaired when a repair step is recorded on its note or on a later
note of the episode (one about the same or a later session) known at the as-of date.
Notes about the same appointment are one session.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from retention.clinic import contract
from retention.clinic.data import as_timestamp, in_days
from retention.clinic.ids import positions
from retention.features.spec import FEATURES as ALL_FEATURES
from retention.features.spec import OBSERVED_STRAIN, FeatureSpec

FAMILY = OBSERVED_STRAIN
# Signs count over the last 4 weeks, ruptures over the last 3 months: a note is in the last
# N days when its session was at most N days before the as-of midnight (as for slots).
SIGN_WINDOW_DAYS = 28
RUPTURE_WINDOW_DAYS = 90

# The notes' features, as spec.py lists them (the one list of the model's inputs).
FEATURES: tuple[FeatureSpec, ...] = tuple(f for f in ALL_FEATURES if f.family == FAMILY)
FEATURE_NAMES: tuple[str, ...] = tuple(f.name for f in FEATURES)


def notes_known(observations: pd.DataFrame, episode_index: pd.Index, as_of: date) -> pd.DataFrame:
    """Notes of the given episodes known at ``as_of``, unsorted, with ``days_ago`` (days from
    the session to the as-of midnight): about a session before it, and written before it
    (or, without a ``recorded_at``, from the session itself)."""
    cutoff = as_timestamp(as_of)
    o = observations
    observed, recorded = _stamps(o["observed_at"]), _stamps(o["recorded_at"])
    known = ((positions(o["episode_id"], episode_index) >= 0)
             & (observed < cutoff).to_numpy()
             & (recorded.isna() | (recorded < cutoff)).to_numpy())
    notes = o.loc[known].copy()
    notes["observed_at"] = observed[known]
    notes["days_ago"] = in_days(cutoff - notes["observed_at"]).astype(float)
    return notes


def _stamps(values: pd.Series) -> pd.Series:
    """Timestamps as datetime64 (an empty table that was never parsed holds objects)."""
    if pd.api.types.is_datetime64_any_dtype(values):
        return values
    return pd.to_datetime(values).astype("datetime64[ns]")


def code_flags(text: pd.Series, codes: Sequence[str]) -> np.ndarray:
    """Which of ``codes`` each space-separated text names: rows x codes. Unknown codes and
    missing text name nothing. Split and matched in Arrow: no Python per note."""
    words = pa.array(text.astype("str"), from_pandas=True)
    if isinstance(words, pa.ChunkedArray):
        words = words.combine_chunks()
    if pa.types.is_null(words.type):
        words = words.cast(pa.string())
    lists = pc.utf8_split_whitespace(words)
    found = pc.index_in(pc.list_flatten(lists), value_set=pa.array(list(codes), pa.string()))
    rows = np.asarray(pc.list_parent_indices(lists), dtype=np.int64)
    columns = np.asarray(found.fill_null(-1), dtype=np.int64)
    out = np.zeros((len(text), len(codes)), dtype=bool)
    named = columns >= 0
    out[rows[named], columns[named]] = True
    return out


def noted(text: object, codes: Sequence[str]) -> list[str]:
    """The codes of ``codes`` one space-separated text names, in the order of ``codes``:
    ``code_flags`` for one note."""
    if not isinstance(text, str):
        return []
    named = set(text.split())
    return [code for code in codes if code in named]


SIGN_CODES = tuple(contract.SIGNS)
# Signs x groups: which recognised sign belongs to which of the five.
GROUP_OF = np.array([[contract.SIGNS[s] == g for g in contract.SIGN_GROUPS]
                     for s in SIGN_CODES], dtype=bool)


def session_keys(notes: pd.DataFrame) -> np.ndarray:
    """Which session each note is about, as an integer: its appointment, or the note itself
    without one."""
    appointment = notes["appointment_id"].astype("str")
    keys = ("a:" + appointment).fillna("o:" + notes["observation_id"].astype("str"))
    return np.asarray(pd.factorize(keys)[0], dtype=np.int64)


def _per_session(codes: np.ndarray, keys: np.ndarray, rows: np.ndarray, n: int) -> np.ndarray:
    """How many distinct sessions of each episode the ``rows`` (a mask) cover."""
    width = int(keys.max()) + 1 if len(keys) else 1
    pairs = np.unique(codes[rows] * width + keys[rows])
    return np.bincount(pairs // width, minlength=n).astype(float)


def observation_features(
    episodes: pd.DataFrame, observations: pd.DataFrame, as_of: date
) -> pd.DataFrame:
    """Signs of strain in the last 28 days (sessions, and how many of the five signs), the
    share of noted sessions with one in the last 90 days, and ruptures in the last 90 days
    (all, and those not repaired), from the notes known at ``as_of``; NaN for an episode
    without any (the share also without a note in the 90 days)."""
    index = episodes.index
    n = len(index)
    notes = notes_known(observations, index, as_of)
    codes = positions(notes["episode_id"], index)
    keys = session_keys(notes)
    days_ago = notes["days_ago"].to_numpy(dtype=float)
    groups = code_flags(notes["signs"], SIGN_CODES) @ GROUP_OF.astype(int) > 0
    rupture = notes["rupture"].to_numpy(dtype=bool)
    repaired = code_flags(notes["repair_steps"], contract.REPAIR_STEPS).any(axis=1)
    stamps = notes["observed_at"].to_numpy(dtype="datetime64[ns]").astype(np.int64)

    recent = days_ago <= SIGN_WINDOW_DAYS
    seen = np.zeros((n, len(contract.SIGN_GROUPS)), dtype=bool)
    np.logical_or.at(seen, codes[recent], groups[recent])
    ruptures = rupture & (days_ago <= RUPTURE_WINDOW_DAYS)
    # A rupture is repaired by a repair step on a note at or after it: it is unrepaired when
    # it came after the episode's latest note with one.
    last_repair = np.full(n, np.iinfo(np.int64).min, dtype=np.int64)
    np.maximum.at(last_repair, codes[repaired], stamps[repaired])
    unrepaired = ruptures & (stamps > last_repair[codes])

    # Of the sessions noted in the last 90 days, the share with a sign: a client who comes
    # less has fewer notes, so a count of signs reads attendance as much as strain.
    quarter = days_ago <= RUPTURE_WINDOW_DAYS
    noted = _per_session(codes, keys, quarter, n)
    with np.errstate(invalid="ignore", divide="ignore"):
        share = _per_session(codes, keys, quarter & groups.any(axis=1), n) / noted
    out = pd.DataFrame({
        "signs_sessions_28d": _per_session(codes, keys, recent & groups.any(axis=1), n),
        "sign_share_90d": np.where(noted > 0, share, np.nan),
        "sign_groups_28d": seen.sum(axis=1).astype(float),
        "ruptures_90d": _per_session(codes, keys, ruptures, n),
        "ruptures_unrepaired_90d": _per_session(codes, keys, unrepaired, n),
    }, index=index)
    any_note = np.bincount(codes, minlength=n) > 0
    return out.where(pd.Series(any_note, index=index), axis=0)
