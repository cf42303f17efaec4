"""The reasons' truth checks: every sentence, prompt and left-out family recomputed from
the source clinic rows with plain pandas, and the way its fact points by the lines read
straight from ``config/reasons.toml`` and from the instrument registry in use
(``config/instruments.toml`` as shipped: the ORS cutoff and reliable change, a clinic's
expected ORS course, the cutoffs of its other alliance forms).

Nothing here asks ``retention`` for the expected numbers, nor on which side of a line a
fact falls. ``tests/reasons/test_phrases.py`` guards these checks on hand-built clinics;
``tests/reasons/test_directions.py`` runs them over several clinics and dates.
"""

from __future__ import annotations

import math
import re
import statistics
import tomllib
from collections.abc import Callable, Mapping
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
CATALOGUE = tomllib.loads(REASONS_TOML.read_text())
LINES = CATALOGUE["thresholds"]
# The instrument registry shipped (its ORS cutoff and reliable change); a run may use another.
INSTRUMENTS_TOML = REASONS_TOML.parent / "instruments.toml"
ATTENDANCE, CONTACT = LINES["attendance"], LINES["contact"]
RATING, ALLIANCE = LINES["session_rating"], LINES["working_alliance"]

CONCERN, REASSURING, CONTEXT, PROMPT = "concern", "reassuring", "context", "prompt"
WANTED = (CONCERN, REASSURING)  # the ways the model can move the risk
CONTEXT_FAMILIES = ("early_treatment", "setting", "measurement")
# Families whose concerns bring a next step of their own in place of the family's: checked
# against the rows by the recomputation (the therapist's notes: the signs' repair prompts).
OWN_SUGGESTIONS = ("observed_strain",)

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
ORS_WORDS = "outcome rating (ORS)"
INSTRUMENT_WORDS = {"SRS": SRS_WORDS, "GSRS": GSRS_WORDS, "WAI-SR": WAI_WORDS, "ORS": ORS_WORDS}
# An instrument named in the plural counts as named in words too.
INSTRUMENT_PLURALS = {"SRS": SRS_PLURAL}
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


def read_registry(path: Path | str = INSTRUMENTS_TOML) -> dict[str, Any]:
    """The ``[instruments.*]`` tables of an instrument registry file, read with tomllib."""
    return dict(tomllib.loads(Path(path).read_text())["instruments"])


SHIPPED_REGISTRY = read_registry()


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
    notes: pd.DataFrame  # the therapist's notes known at the cutoff, oldest first, days_ago
    registry: Mapping[str, Any]  # the instrument registry in use: [instruments.<code>]

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


def facts_of(clinic: ClinicData, episode_id: str, as_of: date,
             registry: Mapping[str, Any] | None = None) -> Facts:
    """``registry``: the ``[instruments.*]`` tables in use (``read_registry``); the shipped."""
    cutoff = pd.Timestamp(as_of)
    order = ["scheduled_at", "appointment_id"]
    a = clinic.appointments[clinic.appointments["episode_id"] == episode_id]
    # A status recorded on or after the as-of date was not known then.
    a = a.assign(status=a["status"].astype(object).where(a["updated_at"] < cutoff, "scheduled"))
    cancelled_by_then = a["status"].isin(CANCELLED) & (a["updated_at"] < cutoff)
    ahead = a[(a["scheduled_at"] >= cutoff) & (a["booked_at"] < cutoff) & ~cancelled_by_then]
    m = clinic.measures
    m = m[(m["episode_id"] == episode_id) & (m["administered_at"] < cutoff)]
    o = clinic.observations
    o = o[o["episode_id"] == episode_id]
    observed, recorded = pd.to_datetime(o["observed_at"]), pd.to_datetime(o["recorded_at"])
    # A note is known once written: recorded_at, or the session itself when that is unknown.
    known = (observed < cutoff) & (recorded.isna() | (recorded < cutoff))
    o = o.assign(observed_at=observed)[known]
    o = o.assign(days_ago=(cutoff - o["observed_at"]).dt.total_seconds() / 86_400)
    episode = clinic.episodes.loc[clinic.episodes["episode_id"] == episode_id]
    assert len(episode) == 1, episode_id
    return Facts(
        cutoff=cutoff,
        episode=episode.iloc[0],
        past=a[a["scheduled_at"] < cutoff].sort_values(order),
        ahead=ahead.sort_values(order),
        measures=m.sort_values(["administered_at", "measure_id"]),
        items=clinic.items[clinic.items["measure_id"].isin(m["measure_id"])],
        notes=o.sort_values(["observed_at", "observation_id"]),
        registry=SHIPPED_REGISTRY if registry is None else registry,
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
    observation_ids: list[str] = field(default_factory=list)
    # The next step shown with it, where the fact brings its own (the repair prompts of the
    # signs a therapist noted); None: the family's, as the catalogue words it.
    suggestion: str | None = None


@dataclass(frozen=True)
class Said:
    """What a phraser or the published list says: the sentence, the way it claims its fact
    points, its evidence, and the next step shown with it (None: a prompt, which has none)."""

    text: str
    direction: str
    appointment_ids: list[str] = field(default_factory=list)
    measure_ids: list[str] = field(default_factory=list)
    observation_ids: list[str] = field(default_factory=list)
    suggestion: str | None = None


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
    need(lead != OTHER_FORM_LEAD, "the lead is another registered alliance form")
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
    return None if any(pd.isna(v) for v in scales) else sum(map(exact, scales), Fraction(0)) / 3


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


# alliance_rupture led by another registered alliance form: its latest total against the
# cutoff the registry in use gives it ([instruments.<code>] cutoff); none, nothing to say.

OTHER_FORM_LEAD = "other_alliance_share"
OWN_FORMS = ("SRS", "GSRS", "WAI-SR", "ORS")  # forms with features of their own


@recomputes("alliance_rupture.OTHER_FORM_LOW", "alliance_rupture.OTHER_FORM_GOOD")
def _other_form(f: Facts, code: str, lead: str, wanted: str) -> Expected:
    """The client's latest rating on any alliance form the model reads besides the SRS, GSRS
    and WAI-SR: past its cutoff (below it, or above it where higher is worse) a concern,
    on the other side reassuring."""
    need(lead == OTHER_FORM_LEAD, "the lead is not another alliance form")
    forms = {c: e for c, e in f.registry.items()
             if e.get("model_input") and e.get("kind") == "alliance" and c not in OWN_FORMS}
    m = f.measures
    rated = m[m["instrument"].isin(list(forms)) & (m["rater"] == "client")
              & m["score_total"].notna()]
    need(len(rated), "no client rating on another registered alliance form")
    last = rated.iloc[-1]
    form = forms[str(last["instrument"])]
    need(form.get("cutoff"), f"{last['instrument']} has no cutoff in the registry")
    score, line = as_read(last["score_total"]), as_read(form["cutoff"]["value"])
    better = form["higher_is"] == "better"
    concern = score < line if better else score > line
    need(code.endswith("_LOW") == concern, "the rating is on the other side of its cutoff")
    side = ("below" if better else "above") if concern else (
        "at or above" if better else "at or below")
    return Expected(
        f"Latest {form['name'].strip()} ({last['instrument']}) was {tenth(float(score))} on "
        f"{on(last['administered_at'])}, {side} its cutoff of {tenth(float(line))}",
        measure_ids=[str(last["measure_id"])], direction=CONCERN if concern else REASSURING)


# not_on_track: the client's ORS against the course expected from the intake, with the
# registry's ORS cutoff and reliable change ([instruments.ORS]) and, where the clinic fitted
# one, its expected course ([instruments.ORS.trajectory]), recomputed here from the table's
# numbers: expected = intake + (rate_at_zero + rate_per_intake x intake) x ln(min(n, last
# session)) within the total's range, the on-track line band x spread below it.

# The published curves (Finch, Lambert & Schaalje 2001) run over sessions 1 to 20: the
# table's last_session when it does not say.
LAST_SESSION = 20
# The ORS features that measure the fall from the intake: with one as lead the fall is named
# first, with any other the course.
FALL_LEADS = ("ors_change", "ors_reliable_deterioration")


def ordinal(n: int) -> str:
    """'1st', '2nd', '3rd', '4th', '11th', '12th', '13th', '21st', '112th'."""
    suffix = "th" if n % 100 in (11, 12, 13) else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


@dataclass(frozen=True)
class Outcome:
    """The intake and latest client ORS, as shown, against the registry's lines."""

    n: int  # ratings so far, the intake the first
    intake: Fraction
    score: Fraction
    expected: Fraction | None  # at the latest rating; None: no course fitted
    lower: Fraction | None  # the on-track line
    cutoff: Fraction
    reliable: Fraction
    head: str  # "Outcome rating (ORS) 16 on 19 Mar"
    measure_ids: list[str]  # the intake and the latest

    @property
    def fall(self) -> Fraction:
        return self.intake - self.score

    @property
    def below(self) -> bool:
        return self.lower is not None and self.score < self.lower

    @property
    def fell(self) -> bool:
        return self.fall >= self.reliable

    @property
    def way(self) -> str | None:
        """Off the course or fallen reliably is a concern."""
        return CONCERN if self.below or self.fell else None

    @property
    def reassuring(self) -> str | None:
        """A good rating (at the course, above the cutoff) reassures only when the client is
        neither off the course nor fallen reliably: else it points neither way."""
        return None if self.way else REASSURING

    @property
    def at(self) -> str:
        return f"{self.head} ({ordinal(self.n)} rating)"


def expected_course(table: Mapping[str, Any], intake: float, n: int,
                    total_range: tuple[float, float]) -> tuple[float, float]:
    """The expected total at rating ``n`` from ``intake`` and the on-track line below it."""
    log_session = math.log(min(n, int(table.get("last_session", LAST_SESSION))))
    rate = float(table["rate_at_zero"]) + float(table["rate_per_intake"]) * intake
    expected = min(max(intake + rate * log_session, total_range[0]), total_range[1])
    return expected, expected - float(table["band"]) * float(table["spread"])


def _outcome(f: Facts) -> Outcome:
    rated = f.rated("ORS")
    need(len(rated) >= 2, "no ORS after the intake")
    ors = f.registry.get("ORS") or SHIPPED_REGISTRY["ORS"]
    shipped = SHIPPED_REGISTRY["ORS"]
    cutoff = (ors.get("cutoff") or shipped["cutoff"])["value"]
    reliable = ors.get("reliable_change", shipped["reliable_change"])
    first, last = rated.iloc[0], rated.iloc[-1]
    expected = lower = None
    if ors.get("trajectory"):
        low, high = ors.get("total_range", shipped["total_range"])
        e, line = expected_course(ors["trajectory"], float(first["score_total"]), len(rated),
                                  (float(low), float(high)))
        expected, lower = as_read(e), as_read(line)
    score = as_read(last["score_total"])
    return Outcome(
        len(rated), as_read(first["score_total"]), score, expected, lower, as_read(cutoff),
        as_read(reliable), f"{_capital(ORS_WORDS)} {tenth(float(score))} on "
        f"{on(last['administered_at'])}", [str(first["measure_id"]), str(last["measure_id"])])


@recomputes("not_on_track.ORS_NONE")
def _ors_none(f: Facts, code: str, lead: str, wanted: str) -> Expected:
    need(f.rated("ORS").empty, "an ORS was recorded")
    return Expected(f"No {ORS_WORDS} recorded yet: consider asking for one at the next session",
                    direction=PROMPT)


@recomputes("not_on_track.ORS_NOT_ON_TRACK")
def _ors_not_on_track(f: Facts, code: str, lead: str, wanted: str) -> Expected:
    o = _outcome(f)
    need(o.below, "not below the on-track line (or no course fitted)")
    need(lead not in FALL_LEADS or not o.fell, "the lead's own fact, the fall, comes first")
    assert o.expected is not None and o.lower is not None
    line, intake = tenth(float(o.lower)), tenth(float(o.intake))
    text = (f"{o.at}, below the on-track line of {line}; {tenth(float(o.expected))} expected "
            f"from an intake of {intake}")
    if len(text) > MAX_SENTENCE:
        text = f"{o.at}, below the on-track line of {line} for an intake of {intake}"
    return Expected(text, measure_ids=o.measure_ids, direction=o.way)


@recomputes("not_on_track.ORS_DETERIORATED")
def _ors_deteriorated(f: Facts, code: str, lead: str, wanted: str) -> Expected:
    o = _outcome(f)
    need(o.fell, "no reliable fall from the intake")
    need(lead in FALL_LEADS or not o.below, "the course comes first for this lead")
    points = "point" if o.fall == 1 else "points"
    return Expected(
        f"{o.head}, {tenth(float(o.fall))} {points} below the intake of "
        f"{tenth(float(o.intake))} ({tenth(float(o.reliable))} or more is a reliable fall)",
        measure_ids=o.measure_ids, direction=o.way)


@recomputes("not_on_track.ORS_ON_COURSE")
def _ors_on_course(f: Facts, code: str, lead: str, wanted: str) -> Expected:
    o = _outcome(f)
    need(o.expected is not None and o.score >= o.expected, "not at the expected course")
    assert o.expected is not None
    return Expected(
        f"{o.at}, at or above the {tenth(float(o.expected))} expected from an intake of "
        f"{tenth(float(o.intake))}",
        measure_ids=o.measure_ids, direction=o.reassuring)


@recomputes("not_on_track.ORS_ABOVE_CUTOFF")
def _ors_above_cutoff(f: Facts, code: str, lead: str, wanted: str) -> Expected:
    """Above the clinical cutoff but under the expected course (or with none fitted)."""
    o = _outcome(f)
    need(o.score > o.cutoff, "not above the clinical cutoff")
    need(o.expected is None or o.score < o.expected, "at the expected course: said as such")
    return Expected(
        f"{o.at}, above the clinical cutoff of {tenth(float(o.cutoff))}, from an intake of "
        f"{tenth(float(o.intake))}",
        measure_ids=o.measure_ids, direction=o.reassuring)


# observed_strain: the therapist's session notes, in the words of [signs.*] and
# [repair_steps.*]. Signs count over the last 4 weeks, ruptures over the last 3 months; a
# rupture is repaired by a repair step on its note or a later one.

# The contract's signs (retention/clinic/contract.py, SIGNS), in its order, with the group of
# each, the groups in their order, and the repair steps in theirs: written out here.
SIGN_GROUP = {
    "lack_of_trust": "lack_of_trust",
    "communication_breakdown": "communication_breakdown",
    "inconsistent_engagement": "inconsistent_engagement",
    "rejects_suggestions": "resistance",
    "tasks_not_done": "resistance",
    "frustration": "negative_reaction",
    "anger": "negative_reaction",
    "withdrawal": "negative_reaction",
}
SIGN_GROUPS = ("lack_of_trust", "communication_breakdown", "inconsistent_engagement",
               "resistance", "negative_reaction")
STEPS = ("acknowledged", "clarified", "took_responsibility", "revisited_goals_tasks",
         "monitored")
SIGN_WORDS = {code: e["words"].strip() for code, e in CATALOGUE["signs"].items()}
SIGN_PROMPTS = {code: e["prompt"].strip() for code, e in CATALOGUE["signs"].items()}
STEP_WORDS = {code: e["words"].strip() for code, e in CATALOGUE["repair_steps"].items()}
SUGGESTIONS = {code: e["suggestion"] for code, e in CATALOGUE["families"].items()}
SIGN_DAYS, RUPTURE_DAYS = 28, 90  # "the last 4 weeks", "the last 3 months"
# The fact each observed_strain feature counts: named first when the notes bear it out;
# then the ruptures not repaired, the recent signs, all ruptures. The share of the sessions
# of 3 months with a sign is named only when it leads (never in place of the 4 weeks' signs).
OBSERVED_FACT = {"signs_sessions_28d": "signs", "sign_groups_28d": "signs",
                 "sign_share_90d": "share", "ruptures_unrepaired_90d": "unrepaired",
                 "ruptures_90d": "ruptures"}
OBSERVED_ORDER = ("unrepaired", "signs", "ruptures")
OBSERVED_VARIANT = {"OBSERVED_SIGNS": "signs", "OBSERVED_SHARE": "share",
                    "OBSERVED_UNREPAIRED": "unrepaired", "OBSERVED_RUPTURES": "ruptures"}


def _codes(text: Any, order: Any) -> list[str]:
    """The codes of ``order`` a space-separated text names, in that order."""
    named = set(text.split()) if isinstance(text, str) else set()
    return [c for c in order if c in named]


def _and(words: list[str]) -> str:
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " and " + words[-1]


def _notes(f: Facts) -> pd.DataFrame:
    """The notes known, oldest first, with their signs and steps, the session each is about
    (its appointment, or the note itself), its day, and whether it is recent, in the 3
    months, and a rupture left unrepaired."""
    n = f.notes
    steps = [_codes(t, STEPS) for t in n["repair_steps"]]
    stamps = n["observed_at"]
    repairs = stamps[[bool(s) for s in steps]]
    rupture = n["rupture"].astype(bool)
    in_window = n["days_ago"] <= RUPTURE_DAYS
    unrepaired = rupture & in_window
    if len(repairs):
        unrepaired &= stamps > repairs.max()
    return n.assign(
        sign_codes=pd.Series([_codes(t, SIGN_GROUP) for t in n["signs"]], n.index, object),
        step_codes=pd.Series(steps, n.index, object),
        rupture=rupture, day=stamps.dt.normalize(), recent=n["days_ago"] <= SIGN_DAYS,
        in_window=in_window, unrepaired=unrepaired,
        session=[f"a:{a}" if pd.notna(a) else f"o:{o}"
                 for a, o in zip(n["appointment_id"], n["observation_id"], strict=True)])


@dataclass(frozen=True)
class NotedDay:
    """The notes of one calendar day among those a sentence lists."""

    day: pd.Timestamp
    signs: list[str]  # in the contract's order
    rupture: bool
    rows: pd.DataFrame


def _noted_days(rows: pd.DataFrame) -> list[NotedDay]:
    """``rows`` by day, most recent first."""
    days = [NotedDay(pd.Timestamp(group["day"].iloc[0]),
                     [s for s in SIGN_GROUP if any(s in c for c in group["sign_codes"])],
                     bool(group["rupture"].any()), group)
            for _, group in rows.groupby("day", sort=True)]
    return days[::-1]


def _fragment(d: NotedDay, short: bool = False) -> str:
    """'frustration and withdrawal on 12 May', 'a rupture with anger on 12 May', 'a rupture
    on 12 May'; ``short``: 'signs of strain' for the signs."""
    signs = ("signs of strain" if short else _and([SIGN_WORDS[s] for s in d.signs])) \
        if d.signs else ""
    if d.rupture:
        return f"a rupture with {signs} on {on(d.day)}" if signs else f"a rupture on {on(d.day)}"
    return f"{signs} on {on(d.day)}"


Sentence = tuple[str, list[str]]  # a sentence (or its ending) and the notes it cites


def _repair(n: pd.DataFrame, listed: pd.DataFrame, latest_only: bool = False) -> list[Sentence]:
    """What was recorded of repairing the latest rupture ``listed``, as endings, fullest
    first: the steps by day from that rupture's day on, or that none was recorded (since
    that rupture, when an earlier one listed was repaired and the sentence lists more than
    the latest day)."""
    ruptured = listed[listed["rupture"]]
    if ruptured.empty:
        return [("", [])]
    latest = ruptured["observed_at"].max()
    after = n[n["step_codes"].map(bool) & (n["observed_at"] >= latest)]
    if after.empty:
        since = not latest_only and not ruptured["unrepaired"].all()
        return [(f"; no repair recorded since {on(latest)}" if since else "; no repair recorded",
                 [])]
    days = [(pd.Timestamp(g["day"].iloc[0]),
             [s for s in STEPS if any(s in c for c in g["step_codes"])],
             ids(g, "observation_id")) for _, g in after.groupby("day", sort=True)]

    def steps_on(shown: list[tuple[pd.Timestamp, list[str], list[str]]]) -> Sentence:
        return ("; " + ", ".join(f"{_and([STEP_WORDS[s] for s in steps])} on {on(day)}"
                                 for day, steps, _ in shown),
                [i for *_, cited in shown for i in cited])

    first_day, _, first_ids = days[0]
    return [steps_on(days), steps_on(days[:1]),
            (f"; repair recorded on {on(first_day)}", first_ids)]


def _first_fitting(candidates: list[Sentence]) -> Sentence:
    """The first sentence (all true, the fullest first) that fits the list's width; if
    none does, the shortest."""
    return next((c for c in candidates if len(c[0]) <= MAX_SENTENCE),
                min(candidates, key=lambda c: len(c[0])))


def _listing(n: pd.DataFrame, rows: pd.DataFrame) -> tuple[list[NotedDay], list[str],
                                                             list[Sentence], list[Sentence]]:
    """The days of ``rows``, the notes listed, the whole list's sentences (with each repair
    ending) and the endings for the latest day alone."""
    days = _noted_days(rows)
    listed = ids(rows, "observation_id")
    full = "Therapist noted " + ", ".join(_fragment(d) for d in days)
    whole = [(full + text, listed + cited) for text, cited in _repair(n, rows)]
    return days, listed, whole, _repair(n, days[0].rows, latest_only=True)


def _signs_sentence(n: pd.DataFrame) -> Sentence | None:
    """Signs noted in the last 4 weeks, the days most recent first, with what was recorded
    of repairing the latest rupture among them."""
    rows = n[n["recent"] & n["sign_codes"].map(bool)]
    if rows.empty:
        return None
    days, listed, candidates, only = _listing(n, rows)
    latest = days[0]
    if len(days) == 1:
        candidates += [("Therapist noted " + _fragment(latest, short=True) + text, listed + c)
                       for text, c in only]
    else:
        sessions = count(rows["session"].nunique(), "session")
        lasts = [_fragment(latest),
                 f"a rupture on {on(latest.day)}" if latest.rupture else f"on {on(latest.day)}"]
        for span in ("of the last 4 weeks", "in 4 weeks"):
            for last in lasts:
                candidates += [(f"Therapist noted signs of strain in {sessions} {span}, most "
                                f"recently {last}{text}", listed + c) for text, c in only]
    return _first_fitting(candidates)


def _share_sentence(n: pd.DataFrame) -> Sentence | None:
    """Of the sessions noted in the last 3 months, how many had a sign, and the latest day
    with one; every note of the 3 months cited."""
    window = n[n["in_window"]]
    rows = window[window["sign_codes"].map(bool)]
    if rows.empty:
        return None
    latest = _noted_days(rows)[0]
    head = (f"Therapist noted signs of strain in {rows['session'].nunique()} of "
            f"{count(window['session'].nunique(), 'noted session')} of the last 3 months")
    noted = ids(window, "observation_id")
    return _first_fitting([(f"{head}; latest: {_fragment(latest)}", noted),
                           (f"{head}; latest on {on(latest.day)}", noted), (head, noted)])


def _ruptures_sentence(n: pd.DataFrame, unrepaired: bool) -> Sentence | None:
    """Ruptures noted in the last 3 months (only those left unrepaired), the days most
    recent first, with what was recorded of repairing the latest."""
    rows = n[n["unrepaired"] if unrepaired else n["rupture"] & n["in_window"]]
    if rows.empty:
        return None
    days, listed, candidates, only = _listing(n, rows)
    latest = days[0]
    if len(days) == 1:
        candidates += [("Therapist noted " + _fragment(latest, short=True) + text, listed + c)
                       for text, c in only]
    else:
        ruptures, when = count(rows["session"].nunique(), "rupture"), on(latest.day)
        lasts = [f"the latest with {_and([SIGN_WORDS[s] for s in latest.signs])} on {when}",
                 f"the latest with signs of strain on {when}"] if latest.signs else []
        for last in [*lasts, f"the latest on {when}"]:
            if unrepaired:
                candidates.append((f"Therapist noted {ruptures} with no repair recorded in the "
                                   f"last 3 months, {last}", listed))
            else:
                candidates += [(f"Therapist noted {ruptures} in the last 3 months, {last}{text}",
                                listed + c) for text, c in only]
    return _first_fitting(candidates)


def repair_suggestion(n: pd.DataFrame) -> str:
    """The repair prompts of the signs noted in the last 4 weeks, each once, by the order of
    the sign groups and then the signs; none, the family's own suggestion."""
    seen = {c for codes in n.loc[n["recent"], "sign_codes"] for c in codes}
    order = sorted(seen, key=lambda c: (SIGN_GROUPS.index(SIGN_GROUP[c]),
                                        list(SIGN_GROUP).index(c)))
    return " ".join(dict.fromkeys(SIGN_PROMPTS[c] for c in order)) or SUGGESTIONS[
        "observed_strain"]


@recomputes(*(f"observed_strain.{variant}" for variant in OBSERVED_VARIANT))
def _observed(f: Facts, code: str, lead: str, wanted: str) -> Expected:
    """A sign or a rupture noted in the last 3 months is a concern; the lead's own fact is
    named first, then the ruptures left unrepaired, the signs of the last 4 weeks, all
    ruptures (the share of the sessions of the 3 months with a sign only as the lead's)."""
    n = _notes(f)
    need(len(n), "no notes")
    fact = OBSERVED_VARIANT[code.split(".")[1]]
    own = OBSERVED_FACT.get(lead)
    sentences: dict[str, Callable[[], Sentence | None]] = {
        "unrepaired": lambda: _ruptures_sentence(n, unrepaired=True),
        "signs": lambda: _signs_sentence(n), "share": lambda: _share_sentence(n),
        "ruptures": lambda: _ruptures_sentence(n, unrepaired=False)}
    for key in ([own] if own else []) + [k for k in OBSERVED_ORDER if k != own]:
        found = sentences[key]()
        if found is not None:
            need(key == fact, f"the {key} fact is named first with lead {lead}")
            text, cited = found
            return Expected(text, observation_ids=sorted(set(cited)), direction=CONCERN,
                            suggestion=repair_suggestion(n))
    raise NotThisVariant("no sign nor rupture noted in the last 3 months")


@recomputes("observed_strain.OBSERVED_CLEAR")
def _observed_clear(f: Facts, code: str, lead: str, wanted: str) -> Expected:
    """True while the notes of the last 4 weeks hold no sign and no rupture; reassuring only
    when no rupture of the last 3 months is left unrepaired either."""
    n = _notes(f)
    recent = n[n["recent"]]
    need(len(recent), "no note in the last 4 weeks")
    need(not recent["sign_codes"].map(bool).any() and not recent["rupture"].any(),
         "a sign or a rupture was noted in the last 4 weeks")
    return Expected(
        "No signs of strain in the therapist's notes of the last 4 weeks "
        f"({count(recent['session'].nunique(), 'session')})",
        observation_ids=ids(recent, "observation_id"),
        direction=None if n["unrepaired"].any() else REASSURING, suggestion="")


@recomputes("observed_strain.OBSERVED_NONE")
def _observed_none(f: Facts, code: str, lead: str, wanted: str) -> Expected:
    need(f.notes.empty, "the therapist wrote notes")
    return Expected("No therapist notes on signs of strain yet: consider recording them after "
                    "sessions", direction=PROMPT)


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


# The stage of the alliance, as the list's context names it; its rule written out here.
STAGE_NAMES = {"engagement": "Engagement stage", "exploration": "Exploration stage",
               "working": "Working phase", "resolution": "Resolution stage"}


def alliance_stage_of(f: Facts) -> tuple[str | None, int]:
    """The stage by the rule of docs/web.md, and the sessions attended in the last 90 days:
    fewer than 3 of them, engagement; a planned end within 28 days (or past), resolution;
    the first 21 days, engagement; then the client's latest SRS (36+) or WAI-SR (item mean,
    as shown, at or above the clinic's line) says working phase or exploration; none, None."""
    p = f.past
    attended = int(((p["status"] == "attended")
                    & (p["scheduled_at"] >= f.cutoff - pd.Timedelta(days=90))).sum())
    days = (f.cutoff - pd.Timestamp(f.episode["admitted_on"])).days
    planned = f.episode.get("planned_discharge_on")
    if attended < 3:
        return "engagement", attended
    if planned is not None and not pd.isna(planned) and (
            pd.Timestamp(planned) - f.cutoff).days <= 28:
        return "resolution", attended
    if days < 21:
        return "engagement", attended
    m = f.measures
    rated = m[(m["rater"] == "client") & m["instrument"].isin(["SRS", "WAI-SR"])
              & m["score_total"].notna()].sort_values(["administered_at", "measure_id"])
    if rated.empty:
        return None, attended
    last = rated.iloc[-1]
    good = (float(last["score_total"]) >= 36 if last["instrument"] == "SRS" else
            round(float(last["score_total"]) / 12, 1) >= ALLIANCE["concern_below"])
    return ("working" if good else "exploration"), attended


@recomputes("early_treatment.ALLIANCE_STAGE")
def _alliance_stage(f: Facts, code: str, lead: str, wanted: str) -> Expected:
    need(lead != "days_to_planned_end", "the planned end should be named")
    stage, attended = alliance_stage_of(f)
    need(stage is not None, "the stage cannot be told without an alliance rating")
    assert stage is not None
    admitted = pd.Timestamp(f.episode["admitted_on"])
    days = (f.cutoff - admitted).days
    return Expected(f"{STAGE_NAMES[stage]} of the alliance: {count(attended, 'session')} "
                    f"attended in the last 3 months, admitted {count(days, 'day')} ago on "
                    f"{on(admitted)}", direction=CONTEXT)


@recomputes("early_treatment.STAGE")
def _stage(f: Facts, code: str, lead: str, wanted: str) -> Expected:
    need(lead != "days_to_planned_end", "the planned end should be named")
    need(alliance_stage_of(f)[0] is None, "the stage of the alliance should be named")
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
    if sorted(map(str, said.observation_ids)) != sorted(expected.observation_ids):
        out.append(f"{code}: notes {said.observation_ids} != {expected.observation_ids}")
    if expected.suggestion is not None and said.suggestion != expected.suggestion:
        out.append(f"{code}: suggests {said.suggestion!r}, the notes call for "
                   f"{expected.suggestion!r}")
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
    prompt for; and stage and setting are never left out.

    So leaving out "not on track" is wrong with no ORS at all (a prompt is due), with the
    latest ORS under the on-track line or a reliable fall below the intake (a concern), or
    with neither and the latest at or above the expected course or above the cutoff
    (reassuring); leaving out "observed strain" is wrong with no note known (a prompt), with
    a sign in the last 4 weeks or a rupture in the last 3 months (a concern), or with recent
    notes clear of both and no rupture left unrepaired (reassuring); and leaving out the
    session ratings led by another alliance form is wrong when that form's latest rating is
    on either side of a cutoff the registry gives it."""
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
    # Shown with the phrase's own suggestion, else the family's (what is going well, none).
    suggestion = result.suggestion or ("" if result.direction == REASSURING
                                       else SUGGESTIONS[family])
    said = Said(result.text, result.direction, [str(i) for i in result.appointment_ids],
                [str(i) for i in result.measure_ids], [str(i) for i in result.observation_ids],
                suggestion)
    listed = CONTEXT if family in CONTEXT_FAMILIES else wanted
    return code, mismatches(code, said, facts, lead, wanted, listed)


def published_mismatches(
    published: Published, source: ClinicData, as_of: date,
    families: tuple[str, ...] | None = None, instruments: Path | str = INSTRUMENTS_TOML,
) -> list[str]:
    """Every published reason, prompt and left-out family checked against the rows, with the
    instrument registry the list was scored with (``Settings.instruments_file``)."""
    problems = []
    facts: dict[str, Facts] = {}
    registry = read_registry(instruments)

    def rows_of(eid: str) -> Facts:
        if eid not in facts:
            facts[eid] = facts_of(source, eid, as_of, registry)
        return facts[eid]

    def moved(eid: str, family: str) -> tuple[str, str]:
        raises = published.family_log_odds(eid, family) > 0
        return published.lead(eid, family, raises), CONCERN if raises else REASSURING

    for row, kind, r in published.entries():
        if families is None or r["family"] in families:
            eid = row["episode_id"]
            lead, wanted = moved(eid, r["family"])
            said = Said(r["text"], r["direction"], r["appointment_ids"], r["measure_ids"],
                        r.get("observation_ids", []), r["suggestion"])
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


