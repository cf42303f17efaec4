"""Reasons in words from the therapist's session notes: signs of strain, ruptures, repairs.

``phrase_observed_strain`` is the phraser of the "observed_strain" family, with the
signature and contract of ``retention.reasons.phrases``: a sentence whose fact points the
way wanted, with the notes behind it; ``Missing`` when the episode has no note known at
the as-of date (a prompt, not a cause); None when the notes do not point that way. It
reads the notes exactly as the features count them (``retention.features.observations``):
signs over the last 4 weeks, ruptures over the last 3 months, a rupture repaired by a
repair step on its note or a later one. ``repair_prompts`` gives the catalogue's prompts
tied to the signs noted in the last 4 weeks, for the page and the API to show beside it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd

from retention.clinic import contract
from retention.features.observations import (
    FAMILY,
    RUPTURE_WINDOW_DAYS,
    SIGN_WINDOW_DAYS,
    noted,
)
from retention.reasons.catalogue import Catalogue, ObservedWords, Thresholds
from retention.reasons.history import History, Rows
from retention.reasons.phrases import (
    CONCERN,
    MAX_SENTENCE,
    REASSURING,
    Missing,
    Phrase,
    Phraser,
    day_text,
    plural,
)

SIGN_SPAN = "4 weeks"  # SIGN_WINDOW_DAYS as a case manager says it
RUPTURE_SPAN = "3 months"  # RUPTURE_WINDOW_DAYS


@dataclass(frozen=True)
class _Notes:
    """One episode's notes as the features read them, row by row."""

    rows: Rows
    signs: list[list[str]]  # recognised sign codes of each note, in the contract's order
    steps: list[list[str]]  # recognised repair steps of each note
    sessions: list[str]  # which session each note is about
    recent: np.ndarray  # in the last 4 weeks
    in_window: np.ndarray  # in the last 3 months
    rupture: np.ndarray
    unrepaired: np.ndarray  # a rupture of the last 3 months with no repair at or after it


def _read(h: History) -> _Notes:
    rows = h.observations
    signs = [noted(text, tuple(contract.SIGNS)) for text in rows["signs"]]
    steps = [noted(text, contract.REPAIR_STEPS) for text in rows["repair_steps"]]
    sessions = [f"a:{a}" if isinstance(a, str) else f"o:{o}"
                for a, o in zip(rows["appointment_id"], rows["observation_id"], strict=True)]
    days_ago = rows["days_ago"].astype(float)
    stamps = rows["observed_at"].astype("datetime64[ns]")
    in_window = days_ago <= RUPTURE_WINDOW_DAYS
    rupture = rows["rupture"].astype(bool)
    repaired_at = stamps[np.fromiter(map(bool, steps), bool, len(steps))]
    last_repair = repaired_at.max() if len(repaired_at) else None
    unrepaired = rupture & in_window
    if last_repair is not None:
        unrepaired &= stamps > last_repair
    return _Notes(rows, signs, steps, sessions, days_ago <= SIGN_WINDOW_DAYS, in_window,
                  rupture, unrepaired)


def _sessions(n: _Notes, mask: np.ndarray) -> int:
    return len({s for s, m in zip(n.sessions, mask, strict=True) if m})


def _words(shown: Sequence[str]) -> str:
    """'withdrawal', 'anger and withdrawal', 'lack of trust, anger and withdrawal'."""
    return shown[0] if len(shown) == 1 else ", ".join(shown[:-1]) + " and " + shown[-1]


@dataclass(frozen=True)
class _Day:
    """The notes of one calendar day among those a sentence lists."""

    day: pd.Timestamp
    signs: list[str]
    rupture: bool
    positions: list[int]


def _by_day(n: _Notes, mask: np.ndarray) -> list[_Day]:
    """The notes of ``mask`` grouped by the day of their session, most recent first."""
    days: dict[pd.Timestamp, _Day] = {}
    for i in np.flatnonzero(mask).tolist():
        day = pd.Timestamp(n.rows["observed_at"][i]).normalize()
        found = days.setdefault(day, _Day(day, [], False, []))
        signs = [s for s in contract.SIGNS if s in found.signs or s in n.signs[i]]
        days[day] = _Day(day, signs, found.rupture or bool(n.rupture[i]),
                         [*found.positions, i])
    return [days[d] for d in sorted(days, reverse=True)]


def _signs_words(day: _Day, words: ObservedWords) -> str:
    return _words([words.signs[s].words for s in day.signs])


def _fragment(day: _Day, words: ObservedWords, short: bool = False) -> str:
    """'frustration and withdrawal on 12 May', 'a rupture with anger on 12 May'; ``short``:
    'signs of strain on 12 May', 'a rupture with signs of strain on 12 May'."""
    signs = ("signs of strain" if short else _signs_words(day, words)) if day.signs else ""
    when = day_text(day.day)
    if day.rupture:
        return f"a rupture with {signs} on {when}" if signs else f"a rupture on {when}"
    return f"{signs} on {when}"


# A sentence ending and the notes it cites beyond those listed before it.
Ending = tuple[str, list[int]]


def _repair(n: _Notes, days: list[_Day], words: ObservedWords,
            latest_only: bool = False) -> list[Ending]:
    """What was recorded about repairing the latest rupture among ``days``, as sentence
    endings, fullest first: the repair steps by day, or that none was recorded (since the
    latest, when an earlier one listed was repaired and ``latest_only`` is false: the
    sentence names more than the latest). Nothing without a rupture."""
    ruptured = [i for d in days for i in d.positions if n.rupture[i]]
    if not ruptured:
        return [("", [])]
    stamps = n.rows["observed_at"].astype("datetime64[ns]")
    latest = max(ruptured, key=lambda i: stamps[i])
    has_steps = np.fromiter(map(bool, n.steps), bool, len(n.steps))
    after = has_steps & (stamps >= stamps[latest])
    if not after.any():
        # An earlier rupture listed may have been repaired before the latest came.
        since = not latest_only and any(not n.unrepaired[i] for i in ruptured)
        return [(f"; no repair recorded since {day_text(stamps[latest])}" if since
                 else "; no repair recorded", [])]
    repairs = list(reversed(_by_day_steps(n, after)))  # oldest first
    endings = [("; " + ", ".join(f"{_words([words.repair_steps[c] for c in s])} on "
                                 f"{day_text(d)}" for d, s, _ in shown),
                [i for _, _, ids in shown for i in ids])
               for shown in (repairs, repairs[:1])]
    first_day, _, first_ids = repairs[0]
    return [*endings, (f"; repair recorded on {day_text(first_day)}", first_ids)]


def _by_day_steps(n: _Notes, mask: np.ndarray) -> list[tuple[pd.Timestamp, list[str],
                                                               list[int]]]:
    """The repair steps of the notes of ``mask`` by day, most recent first."""
    days: dict[pd.Timestamp, tuple[list[str], list[int]]] = {}
    for i in np.flatnonzero(mask).tolist():
        day = pd.Timestamp(n.rows["observed_at"][i]).normalize()
        steps, ids = days.setdefault(day, ([], []))
        steps[:] = [s for s in contract.REPAIR_STEPS if s in steps or s in n.steps[i]]
        ids.append(i)
    return [(d, *days[d]) for d in sorted(days, reverse=True)]


# A sentence and the notes it cites.
Candidate = tuple[str, list[int]]


def _with(head: str, cited: list[int], endings: list[Ending]) -> list[Candidate]:
    return [(head + text, cited + ids) for text, ids in endings]


def _phrase(variant: str, candidates: list[Candidate], n: _Notes) -> Phrase:
    """The first of the candidate sentences (all true, the fullest first) that fits in
    ``MAX_SENTENCE``, with the notes it cites."""
    text, cited = next((c for c in candidates if len(c[0]) <= MAX_SENTENCE),
                       min(candidates, key=lambda c: len(c[0])))
    ids = n.rows["observation_id"]
    return Phrase(variant, text, CONCERN,
                  observation_ids=[str(ids[i]) for i in sorted(set(cited))])


def _listed(n: _Notes, mask: np.ndarray, words: ObservedWords
            ) -> tuple[list[_Day], list[int], list[Candidate], list[Ending]]:
    """The days of the notes of ``mask`` (most recent first), the notes they cite, the
    sentences listing every day (with the repair of the latest rupture), and the endings
    that speak of the latest day alone; for one day, also its short sentence."""
    days = _by_day(n, mask)
    listed = [i for d in days for i in d.positions]
    candidates = _with("Therapist noted " + ", ".join(_fragment(d, words) for d in days),
                       listed, _repair(n, days, words))
    # Shorter: the count of sessions (all of them cited) and the latest day alone.
    only = _repair(n, days[:1], words, latest_only=True)
    if len(days) == 1:
        candidates += _with("Therapist noted " + _fragment(days[0], words, short=True),
                            listed, only)
    return days, listed, candidates, only


def _signs_fact(n: _Notes, words: ObservedWords) -> Phrase | None:
    """Signs noted in the last 4 weeks, most recent first, with what was recorded of the
    repair of the latest rupture among them."""
    mask = n.recent & np.fromiter(map(bool, n.signs), bool, len(n.signs))
    if not mask.any():
        return None
    days, listed, candidates, only = _listed(n, mask, words)
    latest = days[0]
    if len(days) > 1:
        sessions = plural(_sessions(n, mask), "session")
        lasts = [_fragment(latest, words), f"a rupture on {day_text(latest.day)}"
                 if latest.rupture else f"on {day_text(latest.day)}"]
        for span in (f"of the last {SIGN_SPAN}", f"in {SIGN_SPAN}"):
            for last in lasts:
                candidates += _with(f"Therapist noted signs of strain in {sessions} {span}, "
                                    f"most recently {last}", listed, only)
    return _phrase("OBSERVED_SIGNS", candidates, n)


def _share_fact(n: _Notes, words: ObservedWords) -> Phrase | None:
    """Of the sessions noted in the last 3 months, how many had a sign of strain, and the
    latest of them."""
    has_signs = np.fromiter(map(bool, n.signs), bool, len(n.signs))
    mask = n.in_window & has_signs
    if not mask.any():
        return None
    latest = _by_day(n, mask)[0]
    noted = np.flatnonzero(n.in_window).tolist()
    # Of the sessions with a note: the others say nothing either way.
    head = (f"Therapist noted signs of strain in {_sessions(n, mask)} of "
            f"{plural(_sessions(n, n.in_window), 'noted session')} of the last {RUPTURE_SPAN}")
    candidates = [(f"{head}; latest: {_fragment(latest, words)}", noted),
                  (f"{head}; latest on {day_text(latest.day)}", noted), (head, noted)]
    return _phrase("OBSERVED_SHARE", candidates, n)


def _ruptures_fact(n: _Notes, words: ObservedWords, unrepaired: bool) -> Phrase | None:
    """Ruptures noted in the last 3 months (or only those not repaired), most recent first,
    with what was recorded of the repair of the latest."""
    mask = n.unrepaired if unrepaired else n.rupture & n.in_window
    if not mask.any():
        return None
    days, listed, candidates, only = _listed(n, mask, words)
    latest = days[0]
    if len(days) > 1:
        ruptures = plural(_sessions(n, mask), "rupture")
        when = day_text(latest.day)
        lasts = ([f"the latest with {_signs_words(latest, words)} on {when}",
                  f"the latest with signs of strain on {when}"] if latest.signs else [])
        for last in [*lasts, f"the latest on {when}"]:
            if unrepaired:  # none of them repaired: said in the head
                candidates.append((f"Therapist noted {ruptures} with no repair recorded in the "
                                   f"last {RUPTURE_SPAN}, {last}", listed))
            else:
                candidates += _with(f"Therapist noted {ruptures} in the last {RUPTURE_SPAN}, "
                                    f"{last}", listed, only)
    return _phrase("OBSERVED_UNREPAIRED" if unrepaired else "OBSERVED_RUPTURES", candidates, n)


# The fact each feature counts: named first when the notes bear it out.
OBSERVED_FACTS = {"signs_sessions_28d": "signs", "sign_groups_28d": "signs",
                  "sign_share_90d": "share",
                  "ruptures_unrepaired_90d": "unrepaired", "ruptures_90d": "ruptures"}


def phrase_observed_strain(h: History, lead: str, wanted: str,
                           t: Thresholds) -> Phrase | Missing | None:
    """The therapist's notes: a concern when signs of strain were noted in the last 4 weeks
    or a rupture in the last 3 months (with what was recorded of its repair); reassuring
    only when there are notes in the last 4 weeks, none with a sign or a rupture, and no
    rupture of the last 3 months is left without a repair.

    The lead feature's fact first (signs, ruptures not repaired, all ruptures), then the
    others, the ones not repaired first; the share of noted sessions with a sign over 3
    months only when it leads. A concern carries the repair prompts tied to the
    signs of the last 4 weeks as its suggestion (none: the family's own).
    """
    if h.observations.empty:
        return Missing("OBSERVED_NONE", "No therapist notes on signs of strain yet: consider "
                       "recording them after sessions")
    n = _read(h)
    words = t.observed
    if wanted == REASSURING:
        has_signs = np.fromiter(map(bool, n.signs), bool, len(n.signs))
        if (not n.recent.any() or (n.recent & (has_signs | n.rupture)).any()
                or n.unrepaired.any()):
            return None
        ids = n.rows["observation_id"][n.recent]
        return Phrase(
            "OBSERVED_CLEAR", f"No signs of strain in the therapist's notes of the last "
            f"{SIGN_SPAN} ({plural(_sessions(n, n.recent), 'session')})", REASSURING,
            observation_ids=[str(i) for i in ids])
    if wanted != CONCERN:
        return None
    facts: dict[str, Callable[[], Phrase | None]] = {
        "unrepaired": lambda: _ruptures_fact(n, words, unrepaired=True),
        "signs": lambda: _signs_fact(n, words),
        "ruptures": lambda: _ruptures_fact(n, words, unrepaired=False),
    }
    # The share of noted sessions speaks over 3 months: said only when it leads, never in
    # place of the 4 weeks' signs another feature led with.
    facts["share"] = lambda: _share_fact(n, words)
    own = OBSERVED_FACTS.get(lead)
    order = ([own] if own else []) + [k for k in facts if k not in (own, "share")]
    for key in order:
        found = facts[key]()
        if found is not None:
            return replace(found, suggestion=" ".join(_prompts(h, words)))
    return None


def repair_prompts(h: History, catalogue: Catalogue) -> list[str]:
    """The catalogue's prompts tied to the signs noted in the last 4 weeks, each once, in
    the order of the five signs (``contract.SIGN_GROUPS``)."""
    return _prompts(h, catalogue.observed)


def _prompts(h: History, words: ObservedWords) -> list[str]:
    rows = h.observations
    if rows.empty:
        return []
    recent = rows["days_ago"].astype(float) <= SIGN_WINDOW_DAYS
    seen = {code for text in rows["signs"][recent] for code in noted(text, tuple(contract.SIGNS))}
    signs = words.signs
    order = sorted(seen, key=lambda code: (contract.SIGN_GROUPS.index(signs[code].group),
                                           list(contract.SIGNS).index(code)))
    return list(dict.fromkeys(signs[code].prompt for code in order))


# For the registry of phrasers (``retention.reasons.phrases.PHRASERS``).
PHRASERS: dict[str, Phraser] = {FAMILY: phrase_observed_strain}
