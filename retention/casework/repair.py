"""Alliance ruptures in one episode and what followed each: the repair steps the therapist
recorded, and the client's next session rating.

A rupture is a tension or breakdown in the collaborative relationship between client
and therapist (Safran, Muran & Eubanks-Carter, Psychotherapy 2011); ruptures that are
repaired go with better outcomes than unresolved ones (Eubanks, Muran & Safran,
Psychotherapy 2018;55(4):508-519). The data show one in two ways:

* **noted**: the therapist's session note says a rupture happened
  (``session_observations.rupture``), with the signs noted (``contract.SIGNS``);
* **a drop in the session rating**: the client's Session Rating Scale (SRS) total falls
  from at or above the cutoff of 36 (Duncan et al., Journal of Brief Therapy
  2003;3(1):3-12) to under it, or by ``SRS_DROP`` points or more from the previous SRS.

``SRS_DROP`` (5 points) is this service's rule, the same fall the timeline has always
marked (``caseload.mark_ruptures``), not a published threshold: no published size of an
SRS fall that makes a rupture could be verified. It is a parameter (``drop``). The
clinic's line for a fall worth talking over in the reasons is a separate setting
(``concern_drop_at_least`` in ``config/reasons.toml``). Only the SRS counts: a group
session rating (GSRS) rates the group, not the work with one therapist.

A noted rupture and a drop on the same day are one rupture shown both ways. For each:

* **repair steps**: the ``contract.REPAIR_STEPS`` on any note of the episode from the
  rupture's day up to the next rating (its session included: the SRS is given at the
  end of the session it rates), or up to ``as_of`` when there is none yet;
* **next rating**: the first client SRS on a later day than the rupture;
* **recovered**: that rating is at or above the cutoff, or back to at least the rating
  before the rupture (for a drop, the SRS it fell from; for a noted rupture, the last SRS
  on an earlier day) -- back to where it was, even if that is under the cutoff. No
  later rating: not known (None), never "not recovered".

Only what was known at ``as_of`` is read (``retention.clinic.data.as_timestamp``): an SRS
given before it, and a note observed before it and written (``recorded_at``, or the
session's time when the EHR does not say) before it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date

import numpy as np
import pandas as pd

from retention.clinic import contract
from retention.clinic.data import as_timestamp
from retention.clinic.instruments import SRS_CUTOFF
from retention.features.observations import SIGN_CODES, noted, notes_known

# A fall of this many points or more from the previous SRS is a rupture (see above).
SRS_DROP = 5.0

HOW = ("noted", "fell_below", "fell_by")


@dataclass(frozen=True)
class RuptureCourse:
    """One rupture and what followed it (see the module's docstring for each rule).

    ``how``: what showed it, any of "noted" (a session note), "fell_below" (the SRS fell
    from at or above the cutoff to under it) and "fell_by" (it fell by ``drop`` or more).
    """

    on: date
    how: tuple[str, ...]
    signs: tuple[str, ...]
    rating_before: float | None
    rating_that_day: float | None
    repair_steps: tuple[str, ...]
    next_rating: float | None
    next_on: date | None
    recovered: bool | None
    cutoff: float = SRS_CUTOFF
    measure_ids: tuple[str, ...] = ()
    observation_ids: tuple[str, ...] = ()

    @property
    def noted(self) -> bool:
        return "noted" in self.how

    def shown_by(self, sign_words: Mapping[str, str]) -> str:
        """What showed the rupture, its signs in the clinic's words (``Catalogue.observed``):
        "Noted by the therapist in the session note (signs: anger); the session rating (SRS)
        fell from 38 to 31 (7 points, under 36)"."""
        parts = []
        if self.noted:
            words = "Noted by the therapist in the session note"
            if self.signs:
                words += " (signs: " + ", ".join(sign_words.get(s, s) for s in self.signs) + ")"
            parts.append(words)
        before, after = self.rating_before, self.rating_that_day
        if ("fell_below" in self.how or "fell_by" in self.how) and before is not None \
                and after is not None:
            under = f", under {self.cutoff:g}" if after < self.cutoff else ""
            parts.append(f"the session rating (SRS) fell from {before:g} to {after:g} "
                         f"({round(before - after, 6):g} points{under})")
        elif self.noted and after is not None:
            parts.append(f"the session rating (SRS) that day was {after:g}")
        text = "; ".join(parts)
        return text[:1].upper() + text[1:]

    def step_words(self, words: Mapping[str, str]) -> list[str]:
        """The recorded repair steps in the clinic's words, in the contract's order."""
        return [words.get(s, s) for s in self.repair_steps]

    def next_words(self) -> str:
        """The next rating and whether it recovered, in words."""
        if self.next_rating is None or self.next_on is None:
            return "No session rating since."
        head = f"Next session rating {self.next_rating:g} on {self.next_on:%d %b %Y}"
        cut, before, score = self.cutoff, self.rating_before, self.next_rating
        if score >= cut:
            return f"{head}: at or above {cut:g} (recovered)."
        if before is not None and score == before:
            return (f"{head}: back to {before:g}, where it was before, though under "
                    f"{cut:g} (recovered).")
        if before is not None and score > before:
            return (f"{head}: above the {before:g} before, though under {cut:g} "
                    "(recovered).")
        if before is not None:
            return f"{head}: under {cut:g} and below the {before:g} before (not recovered)."
        return f"{head}: under {cut:g} (not recovered)."


def known_notes(observations: pd.DataFrame, as_of: date) -> pd.DataFrame:
    """The notes known at ``as_of``, by the features' rule
    (``features.observations.notes_known``), oldest first."""
    observations = observations.reset_index(drop=True)
    episodes = pd.Index(observations["episode_id"].unique())
    return notes_known(observations, episodes, as_of).sort_values(
        ["observed_at", "observation_id"], kind="stable")


def known_srs(measures: pd.DataFrame, as_of: date) -> pd.DataFrame:
    """The client's SRS totals given before ``as_of``, oldest first."""
    measures = measures.reset_index(drop=True)
    administered = pd.to_datetime(measures["administered_at"])
    keep = ((measures["instrument"] == "SRS") & (measures["rater"] == "client")
            & measures["score_total"].notna() & (administered < as_timestamp(as_of)))
    out = measures.loc[keep, ["measure_id", "score_total"]].copy()
    out["administered_at"] = administered[keep]
    out["score_total"] = out["score_total"].astype(float)
    return out.sort_values(["administered_at", "measure_id"], kind="stable")


@dataclass
class _Event:
    """What showed a rupture on one day, gathered before its course is read."""

    how: set[str]
    signs: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()
    measure: str | None = None
    before: float | None = None
    that_day: float | None = None
    dropped: bool = False


def repair_course(measures: pd.DataFrame, observations: pd.DataFrame, as_of: date, *,
                  cutoff: float = SRS_CUTOFF, drop: float = SRS_DROP) -> list[RuptureCourse]:
    """The ruptures of one episode known at ``as_of``, most recent first, each with its
    repair steps, next rating and whether it recovered (the module's docstring has the
    rules). ``measures`` and ``observations`` are contract rows of that episode."""
    episodes = set(measures["episode_id"]) | set(observations["episode_id"])
    if len(episodes) > 1:
        raise ValueError(f"repair_course reads one episode, got {len(episodes)}")
    srs = known_srs(measures, as_of)
    notes = known_notes(observations, as_of)
    scores = srs["score_total"].to_numpy()
    previous = srs["score_total"].shift(1).to_numpy()
    fell_below = (previous >= cutoff) & (scores < cutoff)
    # compared as recorded, to a tenth: 36.3 to 31.3 is a fall of 5, not of 4.999999999999996
    fell_by = np.round(previous - scores, 6) >= drop
    events: dict[date, _Event] = {}
    for i in (fell_below | fell_by).nonzero()[0]:
        event = events.setdefault(srs["administered_at"].iloc[i].date(), _Event(set()))
        event.how.update(h for h, on in (("fell_below", fell_below[i]), ("fell_by", fell_by[i]))
                         if on)
        event.before, event.that_day = float(previous[i]), float(scores[i])
        event.measure, event.dropped = str(srs["measure_id"].iloc[i]), True
    ruptured = notes[notes["rupture"].astype(bool)]
    for day, group in ruptured.groupby(ruptured["observed_at"].dt.date, sort=True):
        event = events.setdefault(day, _Event(set()))
        event.how.add("noted")
        signs = {s for v in group["signs"] for s in noted(v, SIGN_CODES)}
        event.signs = tuple(s for s in contract.SIGNS if s in signs)
        event.notes = tuple(str(i) for i in group["observation_id"])
    return [_course(day, events[day], srs, notes, cutoff)
            for day in sorted(events, reverse=True)]


def _course(day: date, event: _Event, srs: pd.DataFrame, notes: pd.DataFrame,
            cutoff: float) -> RuptureCourse:
    start = pd.Timestamp(day)
    rated_day = srs["administered_at"].dt.date
    before, that_day = event.before, event.that_day
    if not event.dropped:  # noted only: the last rating on an earlier day, and that day's
        earlier = srs[srs["administered_at"] < start]
        before = float(earlier["score_total"].iloc[-1]) if len(earlier) else None
        same = srs[rated_day == day]
        that_day = float(same["score_total"].iloc[-1]) if len(same) else None
    later = srs[rated_day > day]
    following = later.iloc[0] if len(later) else None
    until = following["administered_at"] if following is not None else pd.Timestamp.max
    window = notes[(notes["observed_at"] >= start) & (notes["observed_at"] <= until)]
    steps = {s for v in window["repair_steps"] for s in noted(v, contract.REPAIR_STEPS)}
    next_rating = float(following["score_total"]) if following is not None else None
    recovered = None
    if next_rating is not None:
        recovered = next_rating >= cutoff or (before is not None and next_rating >= before)
    return RuptureCourse(
        on=day, how=tuple(h for h in HOW if h in event.how), signs=event.signs,
        rating_before=before, rating_that_day=that_day,
        repair_steps=tuple(s for s in contract.REPAIR_STEPS if s in steps),
        next_rating=next_rating,
        next_on=following["administered_at"].date() if following is not None else None,
        recovered=recovered, cutoff=cutoff,
        measure_ids=(event.measure,) if event.measure else (),
        observation_ids=event.notes,
    )
