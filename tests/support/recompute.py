"""The reasons' truth checks: every sentence, prompt and left-out family recomputed from
the source clinic rows with plain pandas, and the way its fact points by the lines read
straight from ``config/reasons.toml``.

Nothing here asks ``retention`` for the expected numbers, nor on which side of a line a
fact falls. ``tests/reasons/test_phrases.py`` guards these checks on hand-built clinics;
``tests/reasons/test_directions.py`` runs them over several clinics and dates.
"""

from __future__ import annotations

import re
import statistics
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date
from fractions import Fraction
from pathlib import Path
from typing import Any

import pandas as pd

from retention.clinic.data import ClinicData
from retention.reasons.phrases import MAX_SENTENCE, Missing, Phrase
from tests.support.reasons import CANCELLED, HEADING, Published

# --- the clinic's vocabulary and lines, written out or read here rather than imported ------

REASONS_TOML = Path(__file__).resolve().parents[2] / "config" / "reasons.toml"
LINES = tomllib.loads(REASONS_TOML.read_text())["thresholds"]
ATTENDANCE, CONTACT = LINES["attendance"], LINES["contact"]
RATING, ALLIANCE = LINES["session_rating"], LINES["working_alliance"]

CONCERN, REASSURING, CONTEXT, PROMPT = "concern", "reassuring", "context", "prompt"
WANTED = (CONCERN, REASSURING)  # the ways the model can move the risk
CONTEXT_FAMILIES = ("early_treatment", "setting", "measurement")

MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
FACING = ("attended", "no_show", "late_cancel", "cancelled_by_client")
MISSED = ("no_show", "late_cancel")
NOT_KEPT = (*MISSED, "cancelled_by_client")
PROGRAM_WORDS = {
    "outpatient": "outpatient",
    "intensive_outpatient": "intensive outpatient",
    "residential": "residential",
    "partial_hospitalization": "partial hospitalization",
    "medication_assisted": "medication-assisted treatment",
    "detox": "detox",
    "other": "other",
}
SRS_WORDS = "session rating (SRS)"
SRS_PLURAL = "session ratings (SRS)"
GSRS_WORDS = "group session rating (GSRS)"
WAI_WORDS = "working alliance questionnaire (WAI-SR)"
INSTRUMENT_WORDS = {"SRS": SRS_WORDS, "GSRS": GSRS_WORDS, "WAI-SR": WAI_WORDS}
SRS_ITEM = {  # feature -> (item number, words in the sentence, variant)
    "srs_relationship_latest": (1, "the relationship", "SRS_RELATIONSHIP"),
    "srs_goals_latest": (2, "goals and topics", "SRS_GOALS"),
    "srs_approach_latest": (3, "the approach", "SRS_APPROACH"),
}
SCALE_WORDS = {"goal": "agreement on goals", "task": "agreement on tasks", "bond": "bond"}
# The measures of the two alliance-item families; client ratings before the therapist's.
MEMBERS = {
    "weak_bond": ("srs_relationship_latest", "wai_client_bond", "wai_therapist_bond"),
    "goal_task_disagreement": ("srs_goals_latest", "srs_approach_latest", "wai_client_goal",
                               "wai_client_task", "wai_therapist_goal", "wai_therapist_task"),
}
DEMOGRAPHIC_WORDS = {
    "age", "aged", "birth", "born", "year-old", "years old", "sex", "gender", "female", "male",
    "woman", "women", "man", "men", "race", "racial", "ethnic", "ethnicity", "white", "black",
    "hispanic", "latino", "latina", "asian", "native", "american", "multiracial",
}
JARGON = re.compile(
    r"log[- ]?odds|logit|shap|contribution|expected value|sigmoid|probabilit|feature",
    re.IGNORECASE,
)
MISSING = re.compile(r"\b(nan|NaN|NAN|None|NaT|null|inf)\b")
SNAKE = re.compile(r"\b[A-Za-z0-9]+_[A-Za-z0-9_]+\b")
LONG_DECIMAL = re.compile(r"\d\.\d{2,}")


def exact(x: Any) -> Fraction:
    """A recorded number as the decimal it stands for, so a line is compared exactly: a
    session rating going from 37.8 to 36.8 fell by 1, not by 0.9999999999999929."""
    return Fraction(str(round(float(x), 6)))


# --- 1. true and pointing the way it is listed: recomputed from the source rows ------------


@dataclass(frozen=True)
class Facts:
    """One episode's source rows as known at the as-of date, selected with plain pandas."""

    cutoff: pd.Timestamp  # midnight starting the as-of date
    episode: pd.Series
    past: pd.DataFrame  # appointments scheduled before the cutoff, oldest first
    ahead: pd.DataFrame  # booked before the cutoff for later, not cancelled by then
    measures: pd.DataFrame  # administered before the cutoff, oldest first
    items: pd.DataFrame  # item responses of those measures

    def facing(self, days: int) -> pd.DataFrame:
        """Client-facing slots in the ``days`` before the cutoff."""
        p = self.past
        recent = p["scheduled_at"] >= self.cutoff - pd.Timedelta(days=days)
        return p[recent & p["status"].isin(FACING)]

    def rated(self, instrument: str) -> pd.DataFrame:
        """The client's ratings on ``instrument`` that have a total."""
        m = self.measures
        keep = (m["instrument"] == instrument) & (m["rater"] == "client")
        return m[keep & m["score_total"].notna()]

    def wai(self, rater: str) -> pd.DataFrame:
        m = self.measures
        return m[(m["instrument"] == "WAI-SR") & (m["rater"] == rater)]


def facts_of(clinic: ClinicData, episode_id: str, as_of: date) -> Facts:
    cutoff = pd.Timestamp(as_of)
    order = ["scheduled_at", "appointment_id"]
    a = clinic.appointments[clinic.appointments["episode_id"] == episode_id]
    # A status recorded on or after the as-of date was not known then.
    a = a.assign(status=a["status"].astype(object).where(a["updated_at"] < cutoff, "scheduled"))
    cancelled_by_then = a["status"].isin(CANCELLED) & (a["updated_at"] < cutoff)
    ahead = a[(a["scheduled_at"] >= cutoff) & (a["booked_at"] < cutoff) & ~cancelled_by_then]
    m = clinic.measures
    m = m[(m["episode_id"] == episode_id) & (m["administered_at"] < cutoff)]
    episode = clinic.episodes.loc[clinic.episodes["episode_id"] == episode_id]
    assert len(episode) == 1, episode_id
    return Facts(
        cutoff=cutoff,
        episode=episode.iloc[0],
        past=a[a["scheduled_at"] < cutoff].sort_values(order),
        ahead=ahead.sort_values(order),
        measures=m.sort_values(["administered_at", "measure_id"]),
        items=clinic.items[clinic.items["measure_id"].isin(m["measure_id"])],
    )


def on(ts: Any) -> str:
    """'3 Mar'."""
    t = pd.Timestamp(ts)
    return f"{t.day} {MONTHS[t.month - 1]}"


def dates(stamps: list[Any]) -> str:
    """'3 Mar, 10 Mar and 17 Mar'; beyond three, the first three and 'and N more'."""
    shown = [on(s) for s in stamps[:3]]
    if len(stamps) > 3:
        return ", ".join(shown) + f" and {len(stamps) - 3} more"
    return shown[0] if len(shown) == 1 else ", ".join(shown[:-1]) + " and " + shown[-1]


def count(n: int, word: str, many: str | None = None) -> str:
    return f"{n} {word if n == 1 else many or word + 's'}"


def tenth(x: float) -> str:
    """Scores to a tenth, whole numbers without '.0'."""
    text = f"{x:.1f}"
    return text[:-2] if text.endswith(".0") else text


def ids(frame: pd.DataFrame, column: str = "appointment_id") -> list[str]:
    return [str(v) for v in frame[column]]


def _capital(text: str) -> str:
    return text[0].upper() + text[1:]


@dataclass(frozen=True)
class Expected:
    """A sentence recomputed from the rows, its evidence, and the way its fact points by the
    clinic's lines: CONCERN, REASSURING, CONTEXT, PROMPT (a measure never taken) or None
    (the fact is on neither side of the lines, so it may not be listed at all)."""

    text: str
    appointment_ids: list[str] = field(default_factory=list)
    measure_ids: list[str] = field(default_factory=list)
    direction: str | None = None


@dataclass(frozen=True)
class Said:
    """What a phraser or the published list says: the sentence, the way it claims its fact
    points, and its evidence."""

    text: str
    direction: str
    appointment_ids: list[str] = field(default_factory=list)
    measure_ids: list[str] = field(default_factory=list)


class NotThisVariant(AssertionError):
    """The rows do not call for the variant that was published."""


def need(condition: Any, why: str) -> None:
    if not condition:
        raise NotThisVariant(why)


# (rows, variant code, lead feature, way the model moved the risk) -> the recomputed sentence
Recompute = Callable[[Facts, str, str, str], Expected]
RECOMPUTE: dict[str, Recompute] = {}


def recomputes(*codes: str) -> Callable[[Recompute], Recompute]:
    def register(fn: Recompute) -> Recompute:
        for code in codes:
            assert code not in RECOMPUTE, code
            RECOMPUTE[code] = fn
        return fn

    return register


# inconsistent_engagement: the share of client-facing sessions not kept ([thresholds.attendance])


# The window of each attendance feature, in days (the rest: 4 weeks), and its words.
WINDOW = {"attended_7d": 7, "missed_7d": 7, "attended_14d": 14, "missed_14d": 14,
          "miss_rate_14d": 14, "miss_rate_90d": 90}
SPAN = {7: "7 days", 14: "2 weeks", 28: "4 weeks", 90: "3 months"}


def _span(f: Facts, lead: str, wanted: str) -> tuple[int, str]:
    """The lead's window; a week or two whose share does not point the wanted way gives way
    to the 4 weeks around it."""
    days = WINDOW.get(lead, 28)
    if days < 28 and attendance_way(f.facing(days)) != wanted:
        days = 28
    return days, SPAN[days]


def attendance_way(facing: pd.DataFrame) -> str | None:
    """More than the usual share missed or client-cancelled is a concern; enough sessions with
    nearly all kept is reassuring; anything between, or no sessions, is neither."""
    n = len(facing)
    if n == 0:
        return None
    share = Fraction(int(facing["status"].isin(NOT_KEPT).sum()), n)
    if share > exact(ATTENDANCE["concern_share_above"]):
        return CONCERN
    if (n >= ATTENDANCE["reassure_sessions_at_least"]
            and share <= exact(ATTENDANCE["reassure_share_at_most"])):
        return REASSURING
    return None


@recomputes("inconsistent_engagement.MISSED_SESSIONS")
def _missed(f: Facts, code: str, lead: str, wanted: str) -> Expected:
    days, span = _span(f, lead, wanted)
    facing = f.facing(days)
    missed = facing[facing["status"].isin(MISSED)]
    cancelled = facing[facing["status"] == "cancelled_by_client"]
    need(len(missed), "no missed sessions")
    head = f"Missed {len(missed)} of {len(facing)} sessions in the last {span}: "
    parts = [
        (count(len(rows), word), f" on {dates(list(rows['scheduled_at']))}")
        for status, word in (("no_show", "no-show"), ("late_cancel", "late cancellation"))
        if len(rows := missed[missed["status"] == status])
    ]
    also = f"; cancelled {len(cancelled)}" if len(cancelled) else ""
    text = head + ", ".join(n + when for n, when in parts) + also
    if len(text) > MAX_SENTENCE:
        text = head + ", ".join(n for n, _ in parts) + also
    return Expected(text, ids(missed) + ids(cancelled), direction=attendance_way(facing))


@recomputes("inconsistent_engagement.CLIENT_CANCELLED")
def _cancelled(f: Facts, code: str, lead: str, wanted: str) -> Expected:
    days, span = _span(f, lead, wanted)
    facing = f.facing(days)
    cancelled = facing[facing["status"] == "cancelled_by_client"]
    need(len(cancelled), "no client cancellations")
    need(not facing["status"].isin(MISSED).any(), "missed sessions come first")
    return Expected(
        f"Cancelled {len(cancelled)} of {len(facing)} sessions in the last {span}, on "
        f"{dates(list(cancelled['scheduled_at']))}",
        ids(cancelled), direction=attendance_way(facing),
    )


@recomputes("inconsistent_engagement.ATTENDED_ALL")
def _attended_all(f: Facts, code: str, lead: str, wanted: str) -> Expected:
    days, span = _span(f, lead, wanted)
    facing = f.facing(days)
    need(len(facing) and (facing["status"] == "attended").all(), "not all sessions attended")
    return Expected(f"Attended all {len(facing)} sessions scheduled in the last {span}",
                    ids(facing), direction=attendance_way(facing))


@recomputes("inconsistent_engagement.ATTENDANCE")
def _attendance(f: Facts, code: str, lead: str, wanted: str) -> Expected:
    days, span = _span(f, lead, wanted)
    facing = f.facing(days)
    attended = facing[facing["status"] == "attended"]
    need(len(attended) < len(facing), "no session, or all attended: ATTENDED_ALL")
    return Expected(
        f"Attended {len(attended)} of {len(facing)} sessions scheduled in the last {span}",
        ids(facing), direction=attendance_way(facing),
    )


# disengagement: gaps in contact ([thresholds.contact])


@dataclass(frozen=True)
class Contact:
    """Last attended session, the misses since, and what is booked in the concern window."""

    text: str  # "last attended 3 days ago, on 17 Mar"
    days: int  # calendar days since the last attended session (since admission if none)
    attended: bool  # some session was attended
    last_ids: list[str]
    streak: pd.DataFrame  # misses since the last attended session
    soon: pd.DataFrame  # booked within the concern window

    def ways(self, ahead: pd.DataFrame) -> dict[str, str | None]:
        """Which way each contact fact points by the clinic's lines."""
        c = CONTACT
        return {
            "streak": CONCERN if len(self.streak) >= c["concern_consecutive_misses_at_least"]
            else None,
            "booking": CONCERN if self.soon.empty else None,
            "gap": CONCERN if self.days > c["concern_days_since_attended_above"] else None,
            # Only a session attended recently, none missed since and one booked soon.
            "engaged": REASSURING if (self.attended and self.streak.empty and len(self.soon)
                                      and self.days <= c["reassure_attended_within_days"])
            else None,
        }


def _contact(f: Facts) -> Contact:
    attended = f.past[f.past["status"] == "attended"]
    if attended.empty:
        admitted = pd.Timestamp(f.episode["admitted_on"])
        days = (f.cutoff - admitted).days
        text = f"no session attended since admission {count(days, 'day')} ago, on {on(admitted)}"
        after, last_ids = f.past, []
    else:
        last = attended.iloc[-1]
        # Calendar days from the session's date to the as-of date, as a reader counts them.
        days = (f.cutoff - pd.Timestamp(last["scheduled_at"]).normalize()).days
        text = f"last attended {count(days, 'day')} ago, on {on(last['scheduled_at'])}"
        after = f.past[f.past["scheduled_at"] > last["scheduled_at"]]
        last_ids = [str(last["appointment_id"])]
    window = pd.Timedelta(days=CONTACT["concern_nothing_booked_within_days"])
    soon = f.ahead[f.ahead["scheduled_at"] < f.cutoff + window]
    return Contact(text, days, not attended.empty, last_ids, after[after["status"].isin(MISSED)],
                   soon)


# The contact fact each disengagement feature measures: named first when it is a concern.
CONTACT_FACT = {"consecutive_misses": "streak", "booked_next_14d": "booking",
                "days_to_next_booked": "booking", "days_since_attended": "gap"}


def _contact_fact(f: Facts, fact: str, lead: str) -> tuple[Contact, str | None]:
    c = _contact(f)
    ways = c.ways(f.ahead)
    own = CONTACT_FACT.get(lead, fact)
    need(own == fact or ways[own] != CONCERN, f"the lead's own fact ({own}) is a concern")
    return c, ways[fact]


def _gap_text(c: Contact) -> str:
    """The time since the last session, added when it is itself a concern."""
    return f"; {c.text}" if c.days > CONTACT["concern_days_since_attended_above"] else ""


@recomputes("disengagement.CONSECUTIVE_MISSES")
def _consecutive(f: Facts, code: str, lead: str, wanted: str) -> Expected:
    c, way = _contact_fact(f, "streak", lead)
    need(len(c.streak), "no run of misses")
    # The last attended session is cited only when the sentence names it (the gap since it
    # is a concern too), as for "Nothing booked ahead".
    text = _gap_text(c)
    return Expected(f"Missed the last {len(c.streak)} sessions in a row{text}",
                    ids(c.streak) + (c.last_ids if text else []), direction=way)


@recomputes("disengagement.NOTHING_BOOKED")
def _nothing_booked(f: Facts, code: str, lead: str, wanted: str) -> Expected:
    c, way = _contact_fact(f, "booking", lead)
    need(f.ahead.empty, "something is booked")
    # The last attended session is cited only when the sentence names it (the gap is a
    # concern too).
    text = _gap_text(c)
    return Expected(f"Nothing booked ahead{text}", c.last_ids if text else [], direction=way)


@recomputes("disengagement.NEXT_BOOKING_FAR")
def _booking_far(f: Facts, code: str, lead: str, wanted: str) -> Expected:
    _, way = _contact_fact(f, "booking", lead)
    need(len(f.ahead), "nothing is booked")
    nxt = f.ahead.iloc[0]
    return Expected(
        f"No session booked in the next {CONTACT['concern_nothing_booked_within_days']} days; "
        f"next booked on {on(nxt['scheduled_at'])}",
        [str(nxt["appointment_id"])], direction=way,
    )


@recomputes("disengagement.NO_RECENT_ATTENDANCE")
def _no_recent(f: Facts, code: str, lead: str, wanted: str) -> Expected:
    c, way = _contact_fact(f, "gap", lead)
    text = _capital(c.text) + ("; nothing booked ahead" if f.ahead.empty else "")
    return Expected(text, c.last_ids, direction=way)  # names the last attended session only


@recomputes("disengagement.ENGAGED")
def _engaged(f: Facts, code: str, lead: str, wanted: str) -> Expected:
    c = _contact(f)
    need(len(f.ahead), "nothing is booked")
    nxt = f.ahead.iloc[0]
    return Expected(
        f"{_capital(c.text)}; next session booked for {on(nxt['scheduled_at'])}",
        [*c.last_ids, str(nxt["appointment_id"])], direction=c.ways(f.ahead)["engaged"],
    )


# alliance_rupture: session rating totals ([thresholds.session_rating])


def _instrument(code: str, lead: str) -> tuple[str, str]:
    """The instrument a rating variant is about; it must be the one the lead measures."""
    instrument = "GSRS" if code.split(".")[1].startswith("GSRS") else "SRS"
    need(lead.startswith("gsrs") == (instrument == "GSRS"), f"the lead is not about {instrument}")
    return instrument, GSRS_WORDS if instrument == "GSRS" else SRS_WORDS


@dataclass(frozen=True)
class Ratings:
    """The client's latest ratings on one instrument and which way each fact points."""

    rated: pd.DataFrame
    latest: pd.Series
    prev: pd.Series | None
    below: int  # of the last three, how many were under the line
    run: int  # of the last three, the latest in a row under the line
    mean3: Fraction  # of the last three (or fewer), as recorded
    falling: pd.DataFrame | None  # the last three SRS, when they fell
    ways: dict[str, str | None]


def _fell_over(rated: pd.DataFrame) -> pd.DataFrame | None:
    """The last three ratings when they fell: the latest at least the clinic's drop below
    the first of them (the least-squares line through the three goes down with it)."""
    last3 = rated.tail(3)
    if len(last3) < 3:
        return None
    scores = [exact(v) for v in last3["score_total"]]
    middle = Fraction(len(scores) - 1, 2)
    slope = sum((x - middle) * y for x, y in enumerate(scores))
    drop = scores[0] - scores[-1]
    return last3 if drop >= exact(RATING["concern_drop_at_least"]) and slope < 0 else None


def _ratings(f: Facts, instrument: str) -> Ratings:
    rated = f.rated(instrument)
    need(len(rated), f"no {instrument} recorded")
    latest = rated.iloc[-1]
    prev = rated.iloc[-2] if len(rated) >= 2 else None
    line = exact(RATING["concern_below"])
    fell = prev is not None and (exact(prev["score_total"]) - exact(latest["score_total"])
                                 >= exact(RATING["concern_drop_at_least"]))
    low = exact(latest["score_total"]) < line
    last3 = [exact(v) for v in rated.tail(3)["score_total"]]
    below = sum(v < line for v in last3)
    run = 0  # only the last three SRS are read by the nightly run
    for v in reversed(list(rated.tail(3)["score_total"])):
        if exact(v) >= line:
            break
        run += 1
    mean3 = sum(last3, Fraction(0)) / len(last3)
    srs = instrument == "SRS"
    falling = _fell_over(rated) if srs else None
    # The course of the last few SRS is a strain only while the latest is under the line
    # too (a good latest rating ends the strain), and over two ratings or more.
    course = srs and low and len(last3) >= 2
    ways = {
        "fell": CONCERN if fell else None,
        # "Repeated": two or more of the last three SRS (the catalogue sets no count), and
        # only while the latest is under the line too: a good latest rating ends the strain.
        "repeated": CONCERN if srs and below >= 2 and low else None,
        "low": CONCERN if low else None,
        "lowest": CONCERN if course else None,
        # The mean as the sentence shows it, to a tenth.
        "mean": CONCERN if course and as_read(mean3) < line else None,
        "run": CONCERN if srs and run >= 2 else None,
        "falling": CONCERN if falling is not None else None,
        # Neither fall, from the previous rating or over the last four, is going well.
        "good": REASSURING if not low and not fell and falling is None else None,
    }
    return Ratings(rated, latest, prev, below, run, mean3, falling, ways)


# The rating fact each alliance_rupture feature measures: named first when a concern.
RATING_FACT = {"srs_change": "fell", "gsrs_change": "fell", "srs_below_cutoff_last3": "repeated",
               "srs_latest": "low", "gsrs_latest": "low", "srs_min_last3": "lowest",
               "srs_mean_last3": "mean", "srs_low_run_last3": "run",
               "srs_slope_last3": "falling"}


def _rating_fact(f: Facts, code: str, lead: str, fact: str) -> tuple[str, Ratings]:
    instrument, words = _instrument(code, lead)
    r = _ratings(f, instrument)
    lead_fact = RATING_FACT.get(lead, fact)
    need(lead_fact == fact or r.ways[lead_fact] != CONCERN,
         f"the lead's own fact ({lead_fact}) is a concern")
    return words, r


@recomputes("alliance_rupture.SRS_NONE", "alliance_rupture.GSRS_NONE")
def _rating_none(f: Facts, code: str, lead: str, wanted: str) -> Expected:
    instrument, words = _instrument(code, lead)
    need(f.rated(instrument).empty, f"a {instrument} was recorded")
    return Expected(f"No {words} recorded yet: consider asking for one at the next session",
                    direction=PROMPT)


@recomputes("alliance_rupture.SRS_FELL", "alliance_rupture.GSRS_FELL")
def _rating_fell(f: Facts, code: str, lead: str, wanted: str) -> Expected:
    words, r = _rating_fact(f, code, lead, "fell")
    need(r.prev is not None, "no previous rating")
    assert r.prev is not None
    a, b = float(r.prev["score_total"]), float(r.latest["score_total"])
    need(b < a, "the rating did not fall")
    when = on(r.latest["administered_at"])
    return Expected(
        f"{_capital(words)} fell from {tenth(a)} to {tenth(b)} on {when}",
        measure_ids=[str(r.prev["measure_id"]), str(r.latest["measure_id"])],
        direction=r.ways["fell"],
    )


@recomputes("alliance_rupture.SRS_BELOW_CUTOFF_REPEATED")
def _below_repeated(f: Facts, code: str, lead: str, wanted: str) -> Expected:
    _, r = _rating_fact(f, code, lead, "repeated")
    last3 = r.rated.tail(3)
    return Expected(
        f"{r.below} of the last {len(last3)} {SRS_PLURAL} were below "
        f"{tenth(RATING['concern_below'])}",
        measure_ids=ids(last3, "measure_id"), direction=r.ways["repeated"],
    )


@recomputes("alliance_rupture.SRS_LOW", "alliance_rupture.GSRS_LOW")
def _rating_low(f: Facts, code: str, lead: str, wanted: str) -> Expected:
    words, r = _rating_fact(f, code, lead, "low")
    return Expected(
        f"Latest {words} was {tenth(r.latest['score_total'])} on "
        f"{on(r.latest['administered_at'])}, below {tenth(RATING['concern_below'])}",
        measure_ids=[str(r.latest["measure_id"])], direction=r.ways["low"],
    )


@recomputes("alliance_rupture.SRS_LOWEST")
def _rating_lowest(f: Facts, code: str, lead: str, wanted: str) -> Expected:
    """The most recent of the lowest of the last three, with the latest when it is another."""
    _, r = _rating_fact(f, code, lead, "lowest")
    last3 = r.rated.tail(3)
    need(len(last3) >= 2, "fewer than two ratings")
    scores = [exact(v) for v in last3["score_total"]]
    at = max(i for i, v in enumerate(scores) if v == min(scores))
    lowest, latest = last3.iloc[at], r.latest
    line = tenth(RATING["concern_below"])
    if at == len(scores) - 1:
        return Expected(
            f"{_capital(SRS_WORDS)} of {tenth(latest['score_total'])} on "
            f"{on(latest['administered_at'])} was the lowest of the last {len(scores)}, below "
            f"{line}", measure_ids=[str(latest["measure_id"])], direction=r.ways["lowest"])
    return Expected(
        f"{_capital(SRS_WORDS)} was {tenth(lowest['score_total'])} on "
        f"{on(lowest['administered_at'])}, the lowest of the last {len(scores)}; latest "
        f"{tenth(latest['score_total'])} on {on(latest['administered_at'])}, below {line}",
        measure_ids=[str(lowest["measure_id"]), str(latest["measure_id"])],
        direction=r.ways["lowest"])


@recomputes("alliance_rupture.SRS_MEAN_LOW")
def _rating_mean(f: Facts, code: str, lead: str, wanted: str) -> Expected:
    _, r = _rating_fact(f, code, lead, "mean")
    last3 = r.rated.tail(3)
    need(len(last3) >= 2, "fewer than two ratings")
    return Expected(
        f"{_capital(SRS_WORDS)} averaged {tenth(float(as_read(r.mean3)))} over the last "
        f"{len(last3)} ratings, below {tenth(RATING['concern_below'])}; latest "
        f"{tenth(r.latest['score_total'])} on {on(r.latest['administered_at'])}",
        measure_ids=ids(last3, "measure_id"), direction=r.ways["mean"])


@recomputes("alliance_rupture.SRS_LOW_RUN")
def _rating_run(f: Facts, code: str, lead: str, wanted: str) -> Expected:
    _, r = _rating_fact(f, code, lead, "run")
    need(r.run >= 2, "no run of low ratings")
    return Expected(
        f"{_capital(SRS_WORDS)} was below {tenth(RATING['concern_below'])} the last {r.run} "
        f"times in a row, latest {tenth(r.latest['score_total'])} on "
        f"{on(r.latest['administered_at'])}",
        measure_ids=ids(r.rated.tail(r.run), "measure_id"), direction=r.ways["run"])


@recomputes("alliance_rupture.SRS_FALLING")
def _rating_falling(f: Facts, code: str, lead: str, wanted: str) -> Expected:
    _, r = _rating_fact(f, code, lead, "falling")
    need(r.falling is not None, "the last ratings did not fall")
    assert r.falling is not None
    scores = [tenth(v) for v in r.falling["score_total"]]
    return Expected(
        f"{_capital(SRS_WORDS)} fell over the last {len(scores)} ratings: "
        f"{', '.join(scores[:-1])} and {scores[-1]} on {on(r.latest['administered_at'])}",
        measure_ids=ids(r.falling, "measure_id"), direction=r.ways["falling"])


@recomputes("alliance_rupture.SRS_GOOD", "alliance_rupture.GSRS_GOOD")
def _rating_good(f: Facts, code: str, lead: str, wanted: str) -> Expected:
    instrument, words = _instrument(code, lead)
    r = _ratings(f, instrument)
    b, when = float(r.latest["score_total"]), on(r.latest["administered_at"])
    line = tenth(RATING["concern_below"])
    if r.prev is not None and b > float(r.prev["score_total"]):
        a = float(r.prev["score_total"])
        return Expected(
            f"{_capital(words)} rose from {tenth(a)} to {tenth(b)} on {when}, at or above {line}",
            measure_ids=[str(r.prev["measure_id"]), str(r.latest["measure_id"])],
            direction=r.ways["good"],
        )
    return Expected(f"Latest {words} was {tenth(b)} on {when}, at or above {line}",
                    measure_ids=[str(r.latest["measure_id"])], direction=r.ways["good"])


# weak_bond and goal_task_disagreement: SRS items and WAI-SR subscales


def measure_fact(f: Facts, member: str) -> tuple[float, pd.Series] | None:
    """A bond, goal or task measure's latest value and the measure it comes from; None when
    it was never taken or has no score for this item or subscale."""
    if member in SRS_ITEM:
        rated = f.rated("SRS")
        if rated.empty:
            return None
        last = rated.iloc[-1]
        rows = f.items[(f.items["measure_id"] == last["measure_id"])
                       & (f.items["item_number"] == SRS_ITEM[member][0])]
        return (float(rows["response"].iloc[0]), last) if len(rows) else None
    _, rater, scale = member.split("_")
    wai = f.wai(rater)
    if wai.empty or pd.isna(wai.iloc[-1][scale]):
        return None
    return float(wai.iloc[-1][scale]), wai.iloc[-1]


def as_read(x: Any) -> Fraction:
    """A score as its sentence shows it, to one decimal: the lines are compared with what a
    person reads ('3.0 of 5' is not below 3)."""
    return Fraction(f"{float(x):.1f}")


def wai_way(value: Any) -> str | None:
    """A WAI-SR mean below 'fairly often' is a concern, from 'very often' reassuring, and
    between them neither."""
    if as_read(value) < exact(ALLIANCE["concern_below"]):
        return CONCERN
    return REASSURING if as_read(value) >= exact(ALLIANCE["reassure_from"]) else None


def measure_way(member: str, value: float) -> str | None:
    """An SRS item below its line is a concern and at or above it reassuring (the catalogue
    sets one line for items); a WAI-SR subscale by ``wai_way``."""
    if member in SRS_ITEM:
        return CONCERN if exact(value) < exact(RATING["item_concern_below"]) else REASSURING
    return wai_way(value)


def member_way(f: Facts, member: str) -> str | None:
    fact = measure_fact(f, member)
    return None if fact is None else measure_way(member, fact[0])


def client_members(family: str) -> list[str]:
    """The family's client-rated measures: SRS items and the client's WAI-SR subscales."""
    return [m for m in MEMBERS[family] if "therapist" not in m]


def client_way(f: Facts, member: str) -> str | None:
    """Which way the client's latest score of ``member`` points, scanning back past
    questionnaires recorded without it; where none has the item or subscale, the latest
    total stands in (the SRS total against its cutoff, the WAI-SR mean item score).
    ``"never"`` when the client gave no score at all."""
    if member in SRS_ITEM:
        rated = f.rated("SRS")
        for _, m in rated[::-1].iterrows():
            rows = f.items[(f.items["measure_id"] == m["measure_id"])
                           & (f.items["item_number"] == SRS_ITEM[member][0])]
            if len(rows):
                return measure_way(member, float(rows["response"].iloc[0]))
        if rated.empty:
            return "never"
        low = exact(rated.iloc[-1]["score_total"]) < exact(RATING["concern_below"])
        return CONCERN if low else REASSURING
    _, rater, scale = member.split("_")
    wai = f.wai(rater)
    for _, m in wai[::-1].iterrows():
        if pd.notna(m[scale]):
            return wai_way(m[scale])
    for _, m in wai[::-1].iterrows():
        mean = item_mean(m)
        if mean is not None:
            return wai_way(mean)
    return "never"


def client_not_reassuring(f: Facts, family: str) -> list[str]:
    """The family's client ratings that were given but are not reassuring: a concern, or
    (a WAI-SR) between the two lines."""
    return [m for m in client_members(family) if client_way(f, m) not in ("never", REASSURING)]


def client_blocks(f: Facts, family: str, wanted: str) -> None:
    """Nothing of the family is reassuring unless every rating the client gave of it is
    reassuring too (or was never given, or has no score): a therapist's (or another
    item's) good rating never outweighs the client's own concern, nor a client rating
    between the lines."""
    if wanted == REASSURING:
        held = client_not_reassuring(f, family)
        need(not held, f"the client's own {', '.join(held)} is not reassuring")


def _first_member(f: Facts, family: str, member: str, lead: str, wanted: str) -> None:
    """The lead's own measure is named when it points the wanted way; otherwise a client
    rating that does comes before any therapist rating."""
    client_blocks(f, family, wanted)
    if member == lead:
        return
    need(member_way(f, lead) != wanted, f"the lead's own measure ({lead}) points {wanted}")
    if "therapist" in member:
        need(all(member_way(f, m) != wanted for m in client_members(family)),
             f"a client rating points {wanted}")


MEMBER_OF = {variant: name for name, (_, _, variant) in SRS_ITEM.items()} | {
    f"WAI_{rater.upper()}_{scale.upper()}": f"wai_{rater}_{scale}"
    for rater in ("client", "therapist") for scale in SCALE_WORDS
}


@recomputes("weak_bond.SRS_RELATIONSHIP", "goal_task_disagreement.SRS_GOALS",
            "goal_task_disagreement.SRS_APPROACH",
            "weak_bond.WAI_CLIENT_BOND", "weak_bond.WAI_THERAPIST_BOND",
            "goal_task_disagreement.WAI_CLIENT_GOAL", "goal_task_disagreement.WAI_CLIENT_TASK",
            "goal_task_disagreement.WAI_THERAPIST_GOAL",
            "goal_task_disagreement.WAI_THERAPIST_TASK")
def _alliance_member(f: Facts, code: str, lead: str, wanted: str) -> Expected:
    family, variant = code.split(".")
    member = MEMBER_OF[variant]
    need(lead in MEMBERS[family], f"{lead} is not a {family} measure")
    fact = measure_fact(f, member)
    need(fact is not None, f"no {member} score")
    assert fact is not None
    value, m = fact
    way = measure_way(member, value)
    _first_member(f, family, member, lead, wanted)
    when = on(m["administered_at"])
    if member in SRS_ITEM:
        line = tenth(RATING["item_concern_below"])
        side = f"below {line}" if way == CONCERN else f"at or above {line}"
        text = (f"Rated {SRS_ITEM[member][1]} {tenth(value)} of 10 on the {SRS_WORDS} of "
                f"{when}, {side}")
    else:
        _, rater, scale = member.split("_")
        side = (f"below {tenth(ALLIANCE['concern_below'])}" if way == CONCERN
                else f"at or above {tenth(ALLIANCE['reassure_from'])}")
        who = "Client" if rater == "client" else "Therapist"
        text = f"{who}-rated {SCALE_WORDS[scale]}, {WAI_WORDS}: {value:.1f} of 5 on {when}, {side}"
    return Expected(text, measure_ids=[str(m["measure_id"])], direction=way)


@recomputes("weak_bond.SRS_NONE", "goal_task_disagreement.SRS_NONE",
            "weak_bond.WAI_NONE", "goal_task_disagreement.WAI_NONE")
def _member_never_taken(f: Facts, code: str, lead: str, wanted: str) -> Expected:
    family, variant = code.split(".")
    need(lead in MEMBERS[family], f"{lead} is not a {family} measure")
    if lead in SRS_ITEM:
        need(variant == "SRS_NONE" and f.rated("SRS").empty, "an SRS was recorded")
        text = f"No {SRS_WORDS} recorded yet: consider asking for one at the next session"
    else:
        rater = lead.split("_")[1]
        need(variant == "WAI_NONE" and f.wai(rater).empty, f"a {rater} WAI-SR was recorded")
        text = f"No {rater}-rated {WAI_WORDS} yet: consider one at a coming session"
    if not (wanted == REASSURING and client_not_reassuring(f, family)):
        # (a client rating holding the family back leaves the prompt standing)
        need(all(member_way(f, m) != wanted for m in MEMBERS[family]),
             f"another measure of the family points {wanted}")
    return Expected(text, direction=PROMPT)


# rater_gap: client against therapist on the WAI-SR


def item_mean(row: pd.Series) -> Fraction | None:
    """A WAI-SR's mean item score (1-5): its 12-item total over 12, or without a total the
    mean of its goal, task and bond means; None with neither."""
    if pd.notna(row["score_total"]):
        return exact(row["score_total"]) / 12
    scales = [row[s] for s in SCALE_WORDS]
    return None if any(pd.isna(v) for v in scales) else sum(map(exact, scales)) / 3


def _pair(f: Facts) -> tuple[pd.Series, pd.Series, Fraction, Fraction]:
    need(len(f.wai("client")) and len(f.wai("therapist")), "no WAI-SR pair")
    c, t = f.wai("client").iloc[-1], f.wai("therapist").iloc[-1]
    cm, tm = item_mean(c), item_mean(t)
    need(cm is not None and tm is not None, "a WAI-SR of the pair has no score")
    assert cm is not None and tm is not None
    return c, t, cm, tm


@recomputes("rater_gap.WAI_PAIR_NONE")
def _pair_none(f: Facts, code: str, lead: str, wanted: str) -> Expected:
    need(f.wai("client").empty or f.wai("therapist").empty, "both raters have a WAI-SR")
    return Expected(f"No client and therapist {WAI_WORDS} pair yet: consider both rating the "
                    "same session", direction=PROMPT)


def _pair_sentence(f: Facts, direction: Callable[[Fraction, Fraction], str | None]) -> Expected:
    """Both rater-gap sentences read the same: the client's mean item score, then the
    therapist's, on the later of the two days; ``direction(cm, tm)`` says which way the
    pair points."""
    c, t, cm, tm = _pair(f)
    cm, tm = as_read(cm), as_read(tm)  # the lines are compared with the means as shown
    when = on(max(c["administered_at"], t["administered_at"]))
    return Expected(
        f"Client rates the alliance {float(cm):.1f} of 5 on the {WAI_WORDS}, the therapist "
        f"{float(tm):.1f} ({when})",
        measure_ids=[str(c["measure_id"]), str(t["measure_id"])],
        direction=direction(cm, tm),
    )


def _apart(cm: Fraction, tm: Fraction) -> Fraction:
    """How far the client's mean is below the therapist's (negative when above)."""
    return tm - cm


@recomputes("rater_gap.WAI_CLIENT_BELOW")
def _client_below(f: Facts, code: str, lead: str, wanted: str) -> Expected:
    """A client half a response category or more below the therapist is a concern."""
    line = exact(ALLIANCE["concern_client_below_therapist_by"])
    return _pair_sentence(f, lambda cm, tm: CONCERN if _apart(cm, tm) >= line else None)


@recomputes("rater_gap.WAI_ALIKE")
def _alike(f: Facts, code: str, lead: str, wanted: str) -> Expected:
    """Reassuring only when the two see the alliance alike, closer than the concern line
    either way (a client far above the therapist does not see it alike either), and the
    client's own mean is at least 'very often'."""
    line = exact(ALLIANCE["concern_client_below_therapist_by"])
    strong = exact(ALLIANCE["reassure_from"])
    return _pair_sentence(f, lambda cm, tm: REASSURING
                          if abs(_apart(cm, tm)) < line and cm >= strong else None)


# early_treatment: context, whichever way the model moved the risk


def _planned(f: Facts, lead: str) -> Any:
    need(lead == "days_to_planned_end", "not about the planned end")
    return f.episode["planned_discharge_on"]


@recomputes("early_treatment.NO_PLANNED_END")
def _no_planned_end(f: Facts, code: str, lead: str, wanted: str) -> Expected:
    need(pd.isna(_planned(f, lead)), "a planned discharge was recorded")
    return Expected("No planned discharge date recorded", direction=CONTEXT)


@recomputes("early_treatment.PAST_PLANNED_END")
def _past_planned_end(f: Facts, code: str, lead: str, wanted: str) -> Expected:
    planned = _planned(f, lead)
    need(not pd.isna(planned) and planned < f.cutoff, "not past the planned end")
    days = (f.cutoff - pd.Timestamp(planned)).days
    return Expected(f"Past the planned discharge date of {on(planned)} by {count(days, 'day')}",
                    direction=CONTEXT)


@recomputes("early_treatment.PLANNED_END")
def _planned_end(f: Facts, code: str, lead: str, wanted: str) -> Expected:
    planned = _planned(f, lead)
    need(not pd.isna(planned) and planned >= f.cutoff, "no planned end ahead")
    days = (pd.Timestamp(planned) - f.cutoff).days
    when = "today" if days == 0 else f"in {count(days, 'day')}"
    return Expected(f"Planned discharge {when}, on {on(planned)}", direction=CONTEXT)


@recomputes("early_treatment.STAGE")
def _stage(f: Facts, code: str, lead: str, wanted: str) -> Expected:
    need(lead != "days_to_planned_end", "the planned end should be named")
    admitted = pd.Timestamp(f.episode["admitted_on"])
    days = (f.cutoff - admitted).days
    stage = "In the first weeks of treatment" if days < 6 * 7 else "In treatment"
    weeks = f" ({count(days // 7, 'week')})" if days >= 7 else ""
    return Expected(f"{stage}: admitted {count(days, 'day')} ago{weeks}, on {on(admitted)}",
                    direction=CONTEXT)


# setting: context, whichever way the model moved the risk


@recomputes("setting.NO_RECENT_SESSIONS")
def _no_recent_sessions(f: Facts, code: str, lead: str, wanted: str) -> Expected:
    recent = f.facing(90)
    if lead == "telehealth_share_90d":
        need((recent["status"] != "attended").all(), "sessions were attended")
        return Expected("No sessions attended in the last 3 months", direction=CONTEXT)
    need(lead == "group_share_90d" and recent.empty, "sessions were scheduled")
    return Expected("No sessions scheduled in the last 3 months", direction=CONTEXT)


@recomputes("setting.TELEHEALTH")
def _telehealth(f: Facts, code: str, lead: str, wanted: str) -> Expected:
    recent = f.facing(90)
    attended = recent[recent["status"] == "attended"]
    need(lead == "telehealth_share_90d" and len(attended), "not about attended telehealth")
    tele = attended[attended["telehealth"].astype(bool)]
    return Expected(
        f"{len(tele)} of {len(attended)} sessions attended in the last 3 months were by "
        "telehealth",
        ids(tele), direction=CONTEXT,
    )


@recomputes("setting.GROUP")
def _group(f: Facts, code: str, lead: str, wanted: str) -> Expected:
    recent = f.facing(90)
    need(lead == "group_share_90d" and len(recent), "not about recent groups")
    groups = recent[recent["service_type"] == "group"]
    return Expected(
        f"{len(groups)} of {len(recent)} sessions in the last 3 months were group sessions",
        ids(groups), direction=CONTEXT,
    )


@recomputes("setting.CLINIC_CANCELLED", "setting.NO_CLINIC_CANCELLATIONS")
def _clinic_cancelled(f: Facts, code: str, lead: str, wanted: str) -> Expected:
    need(lead == "clinic_cancelled_28d", "not about the clinic's cancellations")
    p = f.past
    rows = p[(p["scheduled_at"] >= f.cutoff - pd.Timedelta(days=28))
             & (p["status"] == "cancelled_by_clinic")]
    if code.endswith(".NO_CLINIC_CANCELLATIONS"):
        need(rows.empty, "the clinic cancelled sessions")
        return Expected("The clinic cancelled no session in the last 4 weeks", direction=CONTEXT)
    need(len(rows), "the clinic cancelled no session")
    return Expected(f"The clinic cancelled {count(len(rows), 'session')} in the last 4 weeks, on "
                    f"{dates(list(rows['scheduled_at']))}", ids(rows), direction=CONTEXT)


@recomputes("setting.BOOKING_LEAD", "setting.NO_BOOKINGS")
def _booking_lead(f: Facts, code: str, lead: str, wanted: str) -> Expected:
    """Client-facing sessions of the last 3 months booked before the as-of date: the median
    of the calendar days from the day booked to the day of the session."""
    need(lead == "booking_lead_days_90d", "not about booking")
    recent = f.facing(90)
    booked = recent[recent["booked_at"].notna() & (recent["booked_at"] < f.cutoff)]
    if code.endswith(".NO_BOOKINGS"):
        need(booked.empty, "sessions have booking dates")
        return Expected("No booking dates for the sessions of the last 3 months",
                        direction=CONTEXT)
    need(len(booked), "no booking dates")
    days = [(pd.Timestamp(s).normalize() - pd.Timestamp(b).normalize()).days
            for s, b in zip(booked["scheduled_at"], booked["booked_at"], strict=True)]
    median = statistics.median(days)
    return Expected(f"Sessions in the last 3 months were booked a median of {tenth(median)} "
                    f"{'day' if median == 1 else 'days'} ahead ({count(len(days), 'session')})",
                    ids(booked), direction=CONTEXT)


@recomputes("setting.PROGRAM")
def _program(f: Facts, code: str, lead: str, wanted: str) -> Expected:
    need(lead not in ("telehealth_share_90d", "group_share_90d", "clinic_cancelled_28d",
                      "booking_lead_days_90d"), "another fact of the setting should be named")
    return Expected(f"In the {PROGRAM_WORDS[f.episode['program']]} program", direction=CONTEXT)


# measurement: context, whichever way the model moved the risk


@recomputes("measurement.SRS_LAST", "measurement.SRS_NEVER", "measurement.WAI_LAST",
            "measurement.WAI_NEVER")
def _last_rating(f: Facts, code: str, lead: str, wanted: str) -> Expected:
    need(lead != "attended_since_srs_90d", "the sessions since the last rating should be named")
    wai = lead == "days_since_wai"
    need(code.split(".")[1].startswith("WAI" if wai else "SRS"), "not the lead's measure")
    m = f.measures
    rows = m[m["instrument"] == "WAI-SR"] if wai else f.rated("SRS")
    words = WAI_WORDS if wai else SRS_WORDS
    if code.endswith("_NEVER"):
        need(rows.empty, "one was recorded")
        return Expected(f"No {words} recorded yet", direction=CONTEXT)
    need(len(rows), "none was recorded")
    last = rows.iloc[-1]
    days = (f.cutoff - pd.Timestamp(last["administered_at"]).normalize()).days
    return Expected(f"Last {words} {count(days, 'day')} ago, on {on(last['administered_at'])}",
                    measure_ids=[str(last["measure_id"])], direction=CONTEXT)


@recomputes("measurement.ATTENDED_SINCE_SRS", "measurement.NONE_RATED",
            "measurement.NO_RECENT_SESSIONS")
def _attended_since(f: Facts, code: str, lead: str, wanted: str) -> Expected:
    """Sessions attended in the last 3 months on a day after the latest client SRS; named
    with that SRS when it is within the 3 months."""
    need(lead == "attended_since_srs_90d", "not about sessions since the last rating")
    recent = f.facing(90)
    attended = recent[recent["status"] == "attended"]
    srs = f.rated("SRS")
    last = srs.iloc[-1] if len(srs) else None
    day = None if last is None else pd.Timestamp(last["administered_at"]).normalize()
    since = attended if day is None else attended[attended["scheduled_at"].dt.normalize() > day]
    if day is not None and day >= f.cutoff - pd.Timedelta(days=90):
        need(code.endswith(".ATTENDED_SINCE_SRS"), "the last SRS is within 3 months")
        assert last is not None
        counted = _capital(count(len(since), "session")) if len(since) else "No session"
        return Expected(f"{counted} attended since the last {SRS_WORDS}, on {on(day)}",
                        ids(since), [str(last["measure_id"])], direction=CONTEXT)
    if code.endswith(".NO_RECENT_SESSIONS"):
        need(attended.empty, "sessions were attended")
        return Expected("No sessions attended in the last 3 months", direction=CONTEXT)
    need(code.endswith(".NONE_RATED") and len(attended), "no session attended")
    return Expected(f"{_capital(count(len(since), 'session'))} attended in the last 3 months, "
                    f"none on a day with a {SRS_WORDS}", ids(since), direction=CONTEXT)


# comparing


def mismatches(code: str, said: Said, facts: Facts, lead: str, wanted: str,
               listed: str) -> list[str]:
    """What differs between a sentence and its recomputation from the source rows.

    ``wanted`` is the way the model moved the risk (it picks the lead and the variant);
    ``listed`` the way the place the sentence is shown requires its fact to point:
    ``concern`` under "Why", ``reassuring`` under "Going well", ``context`` for stage and
    setting, ``prompt`` for a measure never taken.
    """
    recompute = RECOMPUTE.get(code)
    if recompute is None:
        return [f"{code}: no recomputation in tests/support/recompute.py; add one"]
    try:
        expected = recompute(facts, code, lead, wanted)
    except NotThisVariant as exc:
        return [f"{code} (lead {lead}, {wanted}) does not fit the rows: {exc}"]
    out = []
    if said.text != expected.text:
        out.append(f"{code}: {said.text!r} != recomputed {expected.text!r}")
    if sorted(map(str, said.appointment_ids)) != sorted(expected.appointment_ids):
        out.append(f"{code}: appointments {said.appointment_ids} != {expected.appointment_ids}")
    if sorted(map(str, said.measure_ids)) != sorted(expected.measure_ids):
        out.append(f"{code}: measures {said.measure_ids} != {expected.measure_ids}")
    if said.direction != expected.direction:
        out.append(f"{code}: says its fact is {said.direction}, the rows and lines say "
                   f"{expected.direction or 'neither'}: {said.text!r}")
    if expected.direction != listed:
        out.append(f"{code}: listed as {listed} but its fact is "
                   f"{expected.direction or 'neither'}: {said.text!r}")
    return out


def wrongly_left_out(family: str, facts: Facts, lead: str, wanted: str) -> list[str]:
    """A family left out (its phraser gave None) must have no variant whose fact points the
    way the model moved the risk (by the recomputations, so bond, goals and tasks are never
    reassuring while a client rating of them is not reassuring), nor a measure never taken to
    prompt for; and stage and setting are never left out."""
    if family in CONTEXT_FAMILIES:
        return [f"{family}: context is never left out"]
    out = []
    for code, recompute in RECOMPUTE.items():
        if not code.startswith(family + "."):
            continue
        try:
            expected = recompute(facts, code, lead, wanted)
        except NotThisVariant:
            continue
        if expected.direction == wanted:
            out.append(f"{family} left out (lead {lead}), but {code} states a {wanted} fact: "
                       f"{expected.text!r}")
        elif expected.direction == PROMPT:
            out.append(f"{family} left out (lead {lead}, {wanted}), but {code} prompts for a "
                       f"measure never taken: {expected.text!r}")
    return out


def phrased_mismatches(result: Phrase | Missing | None, family: str, facts: Facts, lead: str,
                       wanted: str) -> tuple[str | None, list[str]]:
    """A phraser's answer checked against the rows: its code (if any) and what is wrong."""
    if result is None:
        return None, wrongly_left_out(family, facts, lead, wanted)
    code = f"{family}.{result.variant}"
    if isinstance(result, Missing):
        return code, mismatches(code, Said(result.text, PROMPT), facts, lead, wanted, PROMPT)
    said = Said(result.text, result.direction, [str(i) for i in result.appointment_ids],
                [str(i) for i in result.measure_ids])
    listed = CONTEXT if family in CONTEXT_FAMILIES else wanted
    return code, mismatches(code, said, facts, lead, wanted, listed)


def published_mismatches(
    published: Published, source: ClinicData, as_of: date,
    families: tuple[str, ...] | None = None,
) -> list[str]:
    """Every published reason, prompt and left-out family checked against the rows."""
    problems = []
    facts: dict[str, Facts] = {}

    def rows_of(eid: str) -> Facts:
        if eid not in facts:
            facts[eid] = facts_of(source, eid, as_of)
        return facts[eid]

    def moved(eid: str, family: str) -> tuple[str, str]:
        raises = published.family_log_odds(eid, family) > 0
        return published.lead(eid, family, raises), CONCERN if raises else REASSURING

    for row, kind, r in published.entries():
        if families is None or r["family"] in families:
            eid = row["episode_id"]
            lead, wanted = moved(eid, r["family"])
            said = Said(r["text"], r["direction"], r["appointment_ids"], r["measure_ids"])
            problems += [f"{eid}: {p}" for p in mismatches(r["code"], said, rows_of(eid), lead,
                                                           wanted, HEADING[kind])]
    for row, p in published.prompts():
        if families is None or p["family"] in families:
            eid = row["episode_id"]
            lead, wanted = moved(eid, p["family"])
            problems += [f"{eid}: {m}" for m in mismatches(p["code"], Said(p["text"], PROMPT),
                                                           rows_of(eid), lead, wanted, PROMPT)]
    for row in published.rows:
        for family in row["left_out"]:
            if families is None or family in families:
                eid = row["episode_id"]
                lead, wanted = moved(eid, family)
                problems += [f"{eid}: {m}"
                             for m in wrongly_left_out(family, rows_of(eid), lead, wanted)]
    return problems


def published_codes(published: Published) -> set[str]:
    return ({r["code"] for _, _, r in published.entries()}
            | {p["code"] for _, p in published.prompts()})


