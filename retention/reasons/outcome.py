"""Reasons in words for the "not on track" family: the client's Outcome Rating Scale (ORS)
against the course expected from their intake (``retention.clinic.trajectory``).

The same contract as the phrasers of ``retention.reasons.phrases``: a sentence whose fact
points the way wanted, citing the ratings behind it; ``Missing`` when the client never
gave an ORS; None when the facts do not point that way. Numbers are shown as
``score_text`` shows them and every line is compared with what is shown.

A concern: the latest rating below the lower line of the expected course (not on track),
or a reliable fall from the intake. Reassuring: neither of those, and the latest rating at
or above the expected course, or above the clinical cutoff. A single rating (the intake)
has no course yet, and says neither.
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np

from retention.clinic.instruments import ORS_CUTOFF, ORS_RELIABLE_CHANGE
from retention.clinic.trajectory import ORS, Trajectory
from retention.reasons.catalogue import OutcomeLines, Thresholds
from retention.reasons.history import History, Rows
from retention.reasons.phrases import (
    CONCERN,
    MAX_SENTENCE,
    REASSURING,
    Missing,
    Phrase,
    Phraser,
    capital,
    day_text,
    score_text,
    shown,
)

ORS_WORDS = "outcome rating (ORS)"
# The fact each ORS feature measures, named first when it points the way wanted; the
# others lead with the course.
LEAD_FACTS = {"ors_change": "deteriorated", "ors_reliable_deterioration": "deteriorated"}
SUFFIXES = {1: "st", 2: "nd", 3: "rd"}


def ordinal(n: int) -> str:
    """'1st', '2nd', '3rd', '4th', '11th', '22nd'."""
    if n % 100 in (11, 12, 13):
        return f"{n}th"
    return f"{n}{SUFFIXES.get(n % 10, 'th')}"


def client_ors(h: History) -> Rows:
    """The client's ORS with a total, oldest first: the first is the intake."""
    m = h.measures
    return m.where((m["instrument"] == ORS) & (m["rater"] == "client")
                   & ~np.isnan(m["score_total"].astype(float)))


def phrase_not_on_track(h: History, lead: str, wanted: str,
                        t: Thresholds) -> Phrase | Missing | None:
    """The latest ORS against the course expected from the intake (``t.outcome``: the
    clinic's fitted course, or None when there is none, so that only the fall from the
    intake and the clinical cutoff are spoken of), and its fall from the intake."""
    trajectory, cutoff = t.outcome.trajectory, t.outcome.cutoff
    rated = client_ors(h)
    if rated.empty:
        return Missing("ORS_NONE", f"No {ORS_WORDS} recorded yet: consider asking for one "
                       "at the next session")
    n = len(rated)
    if n < 2:
        return None  # the intake alone: no course yet
    first, last = rated.row(0), rated.row(-1)
    raw_intake = float(first["score_total"])
    intake, score = shown(raw_intake), shown(float(last["score_total"]))
    if trajectory is not None:
        expected = shown(float(trajectory.expected(raw_intake, n)))
        lower = shown(float(trajectory.lower(raw_intake, n)))
        reliable = shown(trajectory.reliable_change)
    else:  # no course to be on or off: never "below the line", never "at or above"
        expected, lower, reliable = math.inf, -math.inf, shown(t.outcome.reliable_change)
    fall = round(intake - score, 6)  # as shown
    below, fell = score < lower, fall >= reliable
    head = (f"{capital(ORS_WORDS)} {score_text(score)} on "
            f"{day_text(last['administered_at'])}")
    at = f"{head} ({ordinal(n)} rating)"
    ids = [str(first["measure_id"]), str(last["measure_id"])]
    if wanted == REASSURING:
        if below or fell:
            return None
        if score >= expected:
            return Phrase("ORS_ON_COURSE", f"{at}, at or above the {score_text(expected)} "
                          f"expected from an intake of {score_text(intake)}", REASSURING,
                          measure_ids=ids)
        if score > shown(cutoff):
            return Phrase("ORS_ABOVE_CUTOFF", f"{at}, above the clinical cutoff of "
                          f"{score_text(cutoff)}, from an intake of {score_text(intake)}",
                          REASSURING, measure_ids=ids)
        return None
    if wanted != CONCERN:
        return None
    facts: dict[str, Phrase] = {}
    if below:
        text = (f"{at}, below the on-track line of {score_text(lower)}; "
                f"{score_text(expected)} expected from an intake of {score_text(intake)}")
        if len(text) > MAX_SENTENCE:
            text = (f"{at}, below the on-track line of {score_text(lower)} for an intake "
                    f"of {score_text(intake)}")
        facts["not_on_track"] = Phrase("ORS_NOT_ON_TRACK", text, CONCERN, measure_ids=ids)
    if fell:
        facts["deteriorated"] = Phrase(
            "ORS_DETERIORATED", f"{head}, {score_text(fall)} "
                f"{'point' if fall == 1 else 'points'} below the intake of "
            f"{score_text(intake)} ({score_text(reliable)} or more is a reliable fall)",
            CONCERN, measure_ids=ids)
    own = LEAD_FACTS.get(lead, "not_on_track")
    if own in facts:
        return facts[own]
    return next(iter(facts.values()), None)


def outcome_phraser(trajectory: Trajectory | None, cutoff: float = ORS_CUTOFF,
                    reliable_change: float = ORS_RELIABLE_CHANGE) -> Phraser:
    """``phrase_not_on_track`` with these ORS lines rather than the catalogue's."""
    lines = OutcomeLines(cutoff, reliable_change, trajectory)

    def phrase(h: History, lead: str, wanted: str, t: Thresholds) -> Phrase | Missing | None:
        return phrase_not_on_track(h, lead, wanted, replace(t, outcome=lines))

    return phrase

