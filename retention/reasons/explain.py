"""Reasons a case manager can act on, derived from the model's own contributions.

For each scored episode the exact per-feature contributions (TreeSHAP, in
log-odds) are summed into reason families. The families that raise risk most
become the reasons, those that lower it most the protective factors. Each is
put in words from the client's own rows -- dates, counts, scores -- with the
ids of the appointments and measures that back it, and carries the clinic's
suggested next step for that family.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np
import pandas as pd

from retention.reasons.catalogue import Catalogue
from retention.reasons.history import History
from retention.reasons.phrases import PHRASERS


@dataclass(frozen=True)
class Reason:
    """One family's share of a client's risk, in words, with its evidence."""

    code: str
    family: str
    title: str
    text: str
    log_odds: float
    percentage_points: float
    suggestion: str
    appointment_ids: list[str] = field(default_factory=list)
    measure_ids: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """The fields as plain JSON values (what ``asdict`` gives, without its deep copy,
        which is costly in the scoring loop; the evidence lists are copied)."""
        return {f.name: (list(v) if isinstance(v := getattr(self, f.name), list) else v)
                for f in fields(self)}


@dataclass(frozen=True)
class Explanation:
    """The reasons behind one episode's score."""

    raw_score: float
    expected_value: float
    reasons: list[Reason]
    protective: list[Reason]


def family_contributions(
    contributions: pd.DataFrame, families: Mapping[str, str]
) -> pd.DataFrame:
    """Sum per-feature contributions into families (columns), one row per episode."""
    features = [c for c in contributions.columns if c != "expected_value"]
    by_family = contributions[features].T.groupby(lambda f: families[f]).sum().T
    return by_family.reindex(columns=sorted(set(families.values())), fill_value=0.0)


def explain(
    contributions: pd.DataFrame,
    families: Mapping[str, str],
    histories: Mapping[str, History],
    catalogue: Catalogue,
    max_reasons: int = 3,
    min_log_odds: float = 0.01,
) -> dict[str, Explanation]:
    """Reasons and protective factors for each episode (the contributions' index).

    Families are ranked by their summed contribution; ties break on the family
    code so the order is deterministic. Contributions below ``min_log_odds``
    in size are too small to be worth a case manager's attention.
    """
    catalogue.check_covers(sorted(set(families.values())))
    by_family = family_contributions(contributions, families)
    features = [c for c in contributions.columns if c != "expected_value"]
    # Plain arrays: label lookups on a row cost more than the wording itself.
    values = contributions.loc[by_family.index, features].to_numpy(dtype=float)
    expected_values = contributions.loc[by_family.index, "expected_value"].to_numpy(dtype=float)
    family_values = by_family.to_numpy(dtype=float)
    family_names = [str(c) for c in by_family.columns]
    members = {fam: np.flatnonzero([families[f] == fam for f in features])
               for fam in family_names}
    out = {}
    for pos, episode_id in enumerate(by_family.index):
        contrib, expected = values[pos], float(expected_values[pos])
        raw = float(contrib.sum() + expected)
        row = dict(zip(family_names, family_values[pos].tolist(), strict=True))
        ranked = sorted(row.items(), key=lambda kv: (-abs(kv[1]), kv[0]))
        reasons: list[Reason] = []
        protective: list[Reason] = []
        for family, value in ranked:
            raises = value > 0
            bucket = reasons if raises else protective
            if abs(value) < min_log_odds or len(bucket) >= max_reasons:
                continue
            own = members[family]
            pick = np.argmax(contrib[own]) if raises else np.argmin(contrib[own])
            lead = features[int(own[pick])]
            phrase = PHRASERS[family](histories[str(episode_id)], lead, raises)
            entry = catalogue.families[family]
            bucket.append(
                Reason(
                    code=f"{family}.{phrase.variant}",
                    family=family,
                    title=entry.title,
                    text=phrase.text,
                    log_odds=round(float(value), 4),
                    percentage_points=round(
                        _percentage_points(raw, expected, float(value)), 1
                    ),
                    suggestion=entry.suggestion,
                    appointment_ids=phrase.appointment_ids,
                    measure_ids=phrase.measure_ids,
                )
            )
        out[str(episode_id)] = Explanation(
            raw_score=raw,
            expected_value=expected,
            reasons=reasons,
            protective=protective,
        )
    return out


def _percentage_points(raw: float, expected: float, contribution: float) -> float:
    """This contribution's share, in points of risk, of the gap from the average risk.

    Log-odds add up but probabilities do not; sharing the gap between the
    client's risk and the average risk in proportion to the log-odds keeps the
    points additive: all families' points sum to that gap.
    """
    gap = _sigmoid(raw) - _sigmoid(expected)
    total = raw - expected
    return 0.0 if total == 0 else 100.0 * gap * contribution / total


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))
