"""Scoring of the instruments the service reads by name, from their items.

SRS and GSRS (Duncan, Miller et al.): four visual-analogue items scored 0-10 --
relationship, goals and topics, approach or method, overall -- summed to 0-40;
a total below 36 signals a concern.

WAI-SR (Hatcher & Gillaspy, 2006): twelve items scored 1-5, no reversed items.
Published subscale key: goal = items 4, 6, 8, 11; task = items 1, 2, 10, 12;
bond = items 3, 5, 7, 9. Subscales are reported as item means (1-5).

ORS (Miller, Duncan, Brown, Sparks & Claud, 2003): four visual-analogue items scored
0-10 -- individually, interpersonally, socially, overall -- summed to 0-40, higher is
better; the adult clinical cutoff is 25 and a change of 5 points is reliable change.

These constants are what ``config/instruments.toml`` registers for these codes: the
registry refuses a file that says otherwise (``retention.clinic.registry``), and
``tests/clinic/test_registry.py`` keeps the shipped file equal to them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from retention.clinic.ids import member

SRS_CUTOFF = 36.0
SRS_ITEMS = {1: "relationship", 2: "goals", 3: "approach", 4: "overall"}
SRS_ITEM_RANGE = (0.0, 10.0)

WAI_SR_KEY: Mapping[str, tuple[int, ...]] = {
    "goal": (4, 6, 8, 11),
    "task": (1, 2, 10, 12),
    "bond": (3, 5, 7, 9),
}
WAI_SR_ITEM_RANGE = (1.0, 5.0)
WAI_SR_N_ITEMS = 12

ORS_ITEMS = {1: "individually", 2: "interpersonally", 3: "socially", 4: "overall"}
ORS_ITEM_RANGE = (0.0, 10.0)
# Miller et al. (2003), Duncan (2012): the adult clinical cutoff and the reliable change
# index (see config/instruments.toml for what each means and how it was checked).
ORS_CUTOFF = 25.0
ORS_RELIABLE_CHANGE = 5.0


@dataclass(frozen=True)
class Scored:
    """A measure's scores as computed from its items."""

    score_total: float
    goal: float | None = None
    task: float | None = None
    bond: float | None = None
    # Every subscale the instrument's key defines, by name (goal, task and bond among
    # them where it has those).
    subscales: Mapping[str, float] = field(default_factory=dict)


def score_srs(items: Mapping[int, float]) -> Scored:
    """Score an SRS or GSRS from its four items; raises ValueError when incomplete."""
    _check_items(items, set(SRS_ITEMS), SRS_ITEM_RANGE, "SRS")
    return Scored(score_total=float(sum(items.values())))


def score_wai_sr(items: Mapping[int, float]) -> Scored:
    """Score a WAI-SR: total is the sum (12-60), subscales are item means (1-5)."""
    _check_items(items, set(range(1, WAI_SR_N_ITEMS + 1)), WAI_SR_ITEM_RANGE, "WAI-SR")
    means = {name: float(np.mean([items[i] for i in key])) for name, key in WAI_SR_KEY.items()}
    return Scored(score_total=float(sum(items.values())), **means, subscales=means)


def score_ors(items: Mapping[int, float]) -> Scored:
    """Score an ORS from its four items (0-10 each): the total is their sum (0-40)."""
    _check_items(items, set(ORS_ITEMS), ORS_ITEM_RANGE, "ORS")
    return Scored(score_total=float(sum(items.values())))


def _check_items(
    items: Mapping[int, float], expected: set[int], bounds: tuple[float, float], name: str
) -> None:
    if set(items) != expected:
        raise ValueError(f"{name} needs items {sorted(expected)}, got {sorted(items)}")
    low, high = bounds
    bad = [n for n, v in items.items() if not low <= v <= high]
    if bad:
        raise ValueError(f"{name} items {bad} are outside {low:g}-{high:g}")


def srs_item_frame(measures: pd.DataFrame, items: pd.DataFrame) -> pd.DataFrame:
    """Wide SRS/GSRS item responses per measure: columns relationship, goals, approach, overall.

    Measures without items are absent from the result.
    """
    srs_ids = measures.loc[measures["instrument"].isin(["SRS", "GSRS"]), "measure_id"]
    sub = items[member(items["measure_id"], srs_ids) & items["item_number"].isin(list(SRS_ITEMS))]
    wide = sub.pivot_table(
        index="measure_id", columns="item_number", values="response", aggfunc="first"
    )
    wide = wide.rename(columns=SRS_ITEMS)
    for name in SRS_ITEMS.values():
        if name not in wide.columns:
            wide[name] = np.nan
    return wide[list(SRS_ITEMS.values())]
