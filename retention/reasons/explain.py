"""Reasons a case manager can act on, derived from the model's own contributions.

For each scored episode the exact per-feature contributions (TreeSHAP, in log-odds)
are summed into reason families and shared out, in points of the displayed
(calibrated) risk, between the starting point (the risk of an average client, the
model's expected score) and the client's risk. Then:

- families that raise the risk become reasons ("Why") when their fact is a concern
  by the clinic's thresholds; families that lower it become what is going well
  when their fact is reassuring; a family whose fact points the other way is left
  out and counted, never listed under a heading that contradicts it;
- stage of treatment and how care is delivered are context, under their own heading;
- a family moved by a measure that was never taken becomes a prompt to take it;
- a family under the minimum share of the movement from the starting point is not
  shown, and at most ``max_reasons`` of each kind are.

The points of everything shown and of the rest add up exactly to the risk shown.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np
import pandas as pd

from retention.features.spec import CONTEXT_FAMILIES, NOT_ON_TRACK
from retention.reasons.catalogue import Catalogue
from retention.reasons.history import History
from retention.reasons.observed import PHRASERS as OBSERVED_PHRASERS
from retention.reasons.outcome import phrase_not_on_track
from retention.reasons.phrases import CONCERN, PHRASERS, REASSURING, Missing, Phrase, Phraser

RiskOf = Callable[[np.ndarray], np.ndarray]


# Every family's phraser: the notes' and the ORS's live in modules of their own.
ALL_PHRASERS: dict[str, Phraser] = {**PHRASERS, NOT_ON_TRACK: phrase_not_on_track,
                                    **OBSERVED_PHRASERS}


@dataclass(frozen=True)
class Limits:
    """How much is shown: at most ``max_reasons`` of each kind, none under the floor.

    A family is shown only if its points are at least ``min_share`` of the client's
    movement from the starting point, and at least ``min_points``.
    """

    max_reasons: int = 3
    min_share: float = 0.1
    min_points: float = 1.0


@dataclass(frozen=True)
class Reason:
    """One family's share of a client's risk, in words, with its evidence."""

    code: str
    family: str
    direction: str  # "concern", "reassuring" or "context": the way its fact points
    title: str
    text: str
    log_odds: float
    percentage_points: float  # of the displayed risk; all of an explanation's add up
    suggestion: str
    appointment_ids: list[str] = field(default_factory=list)
    measure_ids: list[str] = field(default_factory=list)
    observation_ids: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """The fields as plain JSON values (what ``asdict`` gives, without its deep copy,
        which is costly in the scoring loop; the evidence lists are copied)."""
        return {f.name: (list(v) if isinstance(v := getattr(self, f.name), list) else v)
                for f in fields(self)}


@dataclass(frozen=True)
class Prompt:
    """A measure that was never taken but moves this client's risk: ask for it."""

    code: str
    family: str
    text: str

    def to_dict(self) -> dict[str, Any]:
        return {"code": self.code, "family": self.family, "text": self.text}


@dataclass(frozen=True)
class Explanation:
    """The reasons behind one episode's score, and how their points add up."""

    raw_score: float
    expected_value: float
    start: float  # the displayed risk of an average client (the model's expected score)
    risk: float  # the displayed risk of this client
    reasons: list[Reason]
    protective: list[Reason]
    context: list[Reason]
    prompts: list[Prompt]
    # Points of the movement from ``start`` not in any item shown.
    other_points: float
    # Families moved by the model but whose facts point the other way: never shown.
    left_out: list[str]

    def points(self) -> dict[str, float]:
        """Where the displayed risk comes from, in points: these add up to it exactly."""
        return {
            "start": round(100 * self.start, 1),
            "reasons": round(sum(r.percentage_points for r in self.reasons), 1),
            "protective": round(sum(r.percentage_points for r in self.protective), 1),
            "context": round(sum(r.percentage_points for r in self.context), 1),
            "other": round(self.other_points, 1),
            "risk": round(100 * self.risk, 1),
        }


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
    risk_of: RiskOf,
    limits: Limits = Limits(),
) -> dict[str, Explanation]:
    """Reasons, what is going well, context and prompts for each episode.

    ``risk_of`` maps raw scores to the displayed (calibrated) risk. Families are
    considered by the size of their contribution (ties on the family code, so the
    order is deterministic); one under the ``limits`` is not shown.
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
    raws = values.sum(axis=1) + expected_values
    risks = risk_of(raws)
    starts = risk_of(expected_values)
    out = {}
    for pos, episode_id in enumerate(by_family.index):
        contrib, expected = values[pos], float(expected_values[pos])
        raw, risk, start = float(raws[pos]), float(risks[pos]), float(starts[pos])
        total = raw - expected
        movement = 100.0 * (risk - start)
        floor = max(limits.min_points, limits.min_share * abs(movement))
        row = dict(zip(family_names, family_values[pos].tolist(), strict=True))
        ranked = sorted(row.items(), key=lambda kv: (-abs(kv[1]), kv[0]))
        reasons: list[Reason] = []
        protective: list[Reason] = []
        context: list[Reason] = []
        prompts: list[Prompt] = []
        left_out: list[str] = []
        for family, value in ranked:
            if value == 0:
                continue  # the model did not move this family: nothing to say
            points = 0.0 if total == 0 else movement * value / total
            if abs(points) < floor:
                continue
            in_context = family in CONTEXT_FAMILIES
            wanted = CONCERN if value > 0 else REASSURING
            bucket = context if in_context else reasons if value > 0 else protective
            if len(bucket) >= limits.max_reasons:
                continue
            own = members[family]
            pick = np.argmax(contrib[own]) if value > 0 else np.argmin(contrib[own])
            lead = features[int(own[pick])]
            found = ALL_PHRASERS[family](histories[str(episode_id)], lead, wanted,
                                         catalogue.thresholds)
            if isinstance(found, Missing):
                asked = {p.text for p in prompts}
                if len(prompts) < limits.max_reasons and found.text not in asked:
                    prompts.append(Prompt(f"{family}.{found.variant}", family, found.text))
                continue
            if found is None or (not in_context and found.direction != wanted):
                left_out.append(family)
                continue
            bucket.append(_reason(family, found, value, points, catalogue))
        shown = sum(r.percentage_points for r in (*reasons, *protective, *context))
        out[str(episode_id)] = Explanation(
            raw_score=raw, expected_value=expected, start=start, risk=risk,
            reasons=reasons, protective=protective, context=context, prompts=prompts,
            other_points=movement - shown, left_out=left_out,
        )
    return out


def _reason(family: str, phrase: Phrase, value: float, points: float,
            catalogue: Catalogue) -> Reason:
    entry = catalogue.families[family]
    return Reason(
        code=f"{family}.{phrase.variant}", family=family, direction=phrase.direction,
        title=entry.reassuring_title if phrase.direction == REASSURING else entry.title,
        text=phrase.text, log_odds=round(float(value), 4),
        percentage_points=round(points, 1),
        # A next step for a concern or a context to weigh; what is going well needs none.
        suggestion="" if phrase.direction == REASSURING else (
            phrase.suggestion or entry.suggestion),
        appointment_ids=phrase.appointment_ids, measure_ids=phrase.measure_ids,
        observation_ids=phrase.observation_ids,
    )
