"""The rows behind each episode's reasons: selected and sorted once for all episodes.

An episode has a few dozen rows that each phraser filters several times, so they are
held as small numpy columns (``Rows``) rather than data frames.
"""

from __future__ import annotations

import itertools
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import date
from typing import Any

import numpy as np
import pandas as pd

from retention.clinic.data import ClinicData
from retention.clinic.ids import positions
from retention.clinic.instruments import srs_item_frame
from retention.features.alliance import measures_before, wai_item_mean
from retention.features.attendance import booked_ahead, past_slots
from retention.features.observations import notes_known


class Rows:
    """Some rows of one table as named numpy columns of equal length, in a set order.

    An episode has a few dozen rows that each phraser filters several times: a filter
    on numpy columns costs a small fraction of one on a small Arrow-backed DataFrame.
    """

    __slots__ = ("columns",)

    def __init__(self, columns: Mapping[str, np.ndarray]) -> None:
        self.columns = columns

    def __len__(self) -> int:
        return len(next(iter(self.columns.values())))

    def __getitem__(self, name: str) -> np.ndarray:
        return self.columns[name]

    def __repr__(self) -> str:
        return f"Rows({len(self)} rows of {', '.join(self.columns)})"

    @property
    def empty(self) -> bool:
        return len(self) == 0

    def where(self, mask: np.ndarray) -> Rows:
        """The rows where ``mask`` holds, in the same order."""
        return Rows({name: values[mask] for name, values in self.columns.items()})

    def tail(self, n: int) -> Rows:
        """The last ``n`` rows, or all of them when there are fewer."""
        start = max(len(self) - n, 0)
        return Rows({name: values[start:] for name, values in self.columns.items()})

    def row(self, position: int) -> dict[str, Any]:
        """One row by column name; ``-1`` is the last."""
        return {name: values[position] for name, values in self.columns.items()}

    def isin(self, name: str, values: Collection[str]) -> np.ndarray:
        """Where column ``name`` holds one of ``values``."""
        column = self.columns[name]
        return np.fromiter(map(frozenset(values).__contains__, column), bool, len(column))

    def ids(self, name: str) -> list[str]:
        """Column ``name`` as a list, the evidence a phrase cites."""
        return list(self.columns[name])


@dataclass(frozen=True)
class History:
    """The rows of one episode known at the as-of date, for wording and evidence."""

    as_of: date
    episode: Mapping[str, Any]
    slots: Rows  # scheduled before as_of, oldest first
    ahead: Rows  # booked at as_of for later, soonest first
    measures: Rows  # administered before as_of, oldest first; see _with_item_scores
    observations: Rows  # the therapist's notes known at as_of, oldest first


def histories(data: ClinicData, episode_ids: Sequence[str], as_of: date) -> dict[str, History]:
    """The rows behind each episode's reasons, selected and sorted once for all episodes."""
    index = pd.Index(episode_ids)
    episodes = data.episodes.set_index("episode_id").loc[index].to_dict("records")
    by_time = ["scheduled_at", "appointment_id"]
    slots = _by_episode(past_slots(data.appointments, index, as_of), index, by_time,
                        SLOT_COLUMNS)
    ahead = _by_episode(booked_ahead(data.appointments, index, as_of), index, by_time,
                        AHEAD_COLUMNS)
    measures = _by_episode(
        _with_item_scores(measures_before(data.measures, index, as_of), data.items), index,
        ["administered_at", "measure_id"], MEASURE_COLUMNS)
    notes = _by_episode(notes_known(data.observations, index, as_of), index,
                        ["observed_at", "observation_id"], OBSERVATION_COLUMNS)
    return {
        str(eid): History(as_of, {str(k): v for k, v in episode.items()}, s, a, m, o)
        for eid, episode, s, a, m, o in zip(index, episodes, slots, ahead, measures, notes,
                                            strict=True)
    }


# The columns phrasers read.
SLOT_COLUMNS = ("appointment_id", "scheduled_at", "status", "days_ago", "telehealth",
                "service_type", "booked_at")
AHEAD_COLUMNS = ("appointment_id", "scheduled_at", "days_ahead")
MEASURE_COLUMNS = ("measure_id", "instrument", "rater", "administered_at", "score_total",
                   "goal", "task", "bond", "wai_item_mean",
                   "srs_relationship", "srs_goals", "srs_approach")
# ``signs`` and ``repair_steps`` as written (space-separated codes, NaN when none);
# ``days_ago`` from the session to the as-of midnight; notes about one appointment are one
# session.
OBSERVATION_COLUMNS = ("observation_id", "appointment_id", "observed_at", "days_ago", "signs",
                       "rupture", "repair_steps")


def _with_item_scores(measures: pd.DataFrame, items: pd.DataFrame) -> pd.DataFrame:
    """Measures with their SRS/GSRS item responses and WAI-SR mean item score as columns.

    Worked out once for all episodes; an item not recorded, or a measure without
    items, reads as NaN.
    """
    wide = srs_item_frame(measures, items).add_prefix("srs_")
    scored = measures.join(wide, on="measure_id")
    scored["wai_item_mean"] = wai_item_mean(measures)
    return scored


def _by_episode(frame: pd.DataFrame, index: pd.Index, order: list[str],
                columns: Sequence[str]) -> list[Rows]:
    """Each episode's rows of ``frame`` (in ``index`` order), sorted by ``order``.

    One sort for all episodes, then each episode's rows are one slice of each column.
    """
    ordered = frame.sort_values(order)
    episode = positions(ordered["episode_id"], index)
    by_episode = np.argsort(episode, kind="stable")
    bounds = np.searchsorted(episode[by_episode], np.arange(len(index) + 1))
    arrays = {name: _array(ordered[name])[by_episode] for name in columns}
    return [Rows({name: values[start:stop] for name, values in arrays.items()})
            for start, stop in itertools.pairwise(bounds.tolist())]


def _array(column: pd.Series) -> np.ndarray:
    """A column as numpy: text as Python strings, which compare fastest on a few rows."""
    if isinstance(column.dtype, pd.StringDtype | pd.CategoricalDtype):
        return column.to_numpy(dtype=object)
    return column.to_numpy()
