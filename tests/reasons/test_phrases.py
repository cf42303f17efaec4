"""Reasons in words (``retention.reasons.phrases``): true to the client's rows, blind to
demographics and readable by a case manager.

The first part checks the list published by the session's scored synthetic clinic
(``tests/conftest.py``; the fixtures are in ``tests/reasons/conftest.py``). Every sentence
is recomputed here, from the source clinic rows, with plain pandas: nothing below asks
``retention`` for the expected numbers. The second part checks the wording on small
hand-built clinics where the sentence can be read off.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date
from typing import Any

import numpy as np
import pandas as pd
import pytest

from retention.clinic.data import ClinicData
from retention.features import FEATURE_NAMES, build_features, spec
from retention.reasons.history import History, histories
from retention.reasons.phrases import MAX_SENTENCE, PHRASERS, Phrase
from tests.support.factories import ClinicBuilder, at
from tests.support.reasons import AS_OF, CANCELLED, Published, rich_clinic

# --- the clinic's vocabulary, written out here rather than imported ------------------------

MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
FACING = ("attended", "no_show", "late_cancel", "cancelled_by_client")
MISSED = ("no_show", "late_cancel")
PROGRAM_WORDS = {
    "outpatient": "outpatient",
    "intensive_outpatient": "intensive outpatient",
    "residential": "residential",
    "partial_hospitalization": "partial hospitalization",
    "medication_assisted": "medication-assisted treatment",
    "detox": "detox",
    "other": "other",
}
SRS_ITEM = {  # lead feature -> (item number, words in the sentence)
    "srs_relationship_latest": (1, "the relationship"),
    "srs_goals_latest": (2, "goals and topics"),
    "srs_approach_latest": (3, "the approach"),
}
WAI_WORDS = {"goal": "agreement on goals", "task": "agreement on tasks", "bond": "bond"}
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


# --- 1. true: recomputed from the source rows -----------------------------------------------


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


@dataclass(frozen=True)
class Expected:
    text: str
    appointment_ids: list[str] = field(default_factory=list)
    measure_ids: list[str] = field(default_factory=list)


class NotThisVariant(AssertionError):
    """The rows do not call for the variant that was published."""


def need(condition: Any, why: str) -> None:
    if not condition:
        raise NotThisVariant(why)


Recompute = Callable[[Facts, str, bool], Expected]
RECOMPUTE: dict[str, Recompute] = {}


def recomputes(*codes: str) -> Callable[[Recompute], Recompute]:
    def register(fn: Recompute) -> Recompute:
        for code in codes:
            assert code not in RECOMPUTE, code
            RECOMPUTE[code] = fn
        return fn

    return register


# inconsistent_engagement


def _span(lead: str) -> tuple[int, str]:
    return (90, "3 months") if lead == "miss_rate_90d" else (28, "4 weeks")


@recomputes("inconsistent_engagement.MISSED_SESSIONS")
def _missed(f: Facts, lead: str, raises: bool) -> Expected:
    days, span = _span(lead)
    facing = f.facing(days)
    missed = facing[facing["status"].isin(MISSED)]
    need(raises and len(missed), "no missed sessions to raise risk with")
    head = f"Missed {len(missed)} of {len(facing)} sessions in the last {span}: "
    parts = [
        (count(len(rows), word), dates(list(rows["scheduled_at"])))
        for status, word in (("no_show", "no-show"), ("late_cancel", "late cancellation"))
        if len(rows := missed[missed["status"] == status])
    ]
    text = head + ", ".join(f"{n} on {when}" for n, when in parts)
    if len(text) > MAX_SENTENCE:
        text = head + ", ".join(n for n, _ in parts)
    return Expected(text, ids(missed))


@recomputes("inconsistent_engagement.CLIENT_CANCELLED")
def _cancelled(f: Facts, lead: str, raises: bool) -> Expected:
    days, span = _span(lead)
    facing = f.facing(days)
    cancelled = facing[facing["status"] == "cancelled_by_client"]
    need(raises and len(cancelled), "no client cancellations to raise risk with")
    need(not facing["status"].isin(MISSED).any(), "missed sessions come first")
    return Expected(
        f"Cancelled {len(cancelled)} of {len(facing)} sessions in the last {span}, on "
        f"{dates(list(cancelled['scheduled_at']))}",
        ids(cancelled),
    )


def _not_missed_or_cancelled(facing: pd.DataFrame, raises: bool) -> None:
    bad = facing["status"].isin([*MISSED, "cancelled_by_client"]).any()
    need(not (raises and bad), "misses or cancellations should have been named")


@recomputes("inconsistent_engagement.NO_SESSIONS")
def _no_sessions(f: Facts, lead: str, raises: bool) -> Expected:
    days, span = _span(lead)
    need(f.facing(days).empty, "sessions were scheduled")
    return Expected(f"No sessions were scheduled in the last {span}")


@recomputes("inconsistent_engagement.ATTENDED_ALL")
def _attended_all(f: Facts, lead: str, raises: bool) -> Expected:
    days, span = _span(lead)
    facing = f.facing(days)
    need(not raises and len(facing) and (facing["status"] == "attended").all(),
         "not a protective full attendance")
    what = f"all {len(facing)} sessions" if len(facing) > 1 else "the one session"
    return Expected(f"Attended {what} scheduled in the last {span}", ids(facing))


@recomputes("inconsistent_engagement.ATTENDANCE")
def _attendance(f: Facts, lead: str, raises: bool) -> Expected:
    days, span = _span(lead)
    facing = f.facing(days)
    attended = facing[facing["status"] == "attended"]
    need(len(facing), "no sessions were scheduled")
    need(raises or len(attended) < len(facing), "all attended: ATTENDED_ALL")
    _not_missed_or_cancelled(facing, raises)
    return Expected(
        f"Attended {len(attended)} of {len(facing)} sessions scheduled in the last {span}",
        ids(facing),
    )


# disengagement


@dataclass(frozen=True)
class Contact:
    """Last attended session, the misses since, and what is booked in the next 2 weeks."""

    text: str
    last_ids: list[str]
    streak: pd.DataFrame
    soon: pd.DataFrame


def _contact(f: Facts) -> Contact:
    attended = f.past[f.past["status"] == "attended"]
    if attended.empty:
        admitted = pd.Timestamp(f.episode["admitted_on"])
        text = (f"no session attended since admission {count((f.cutoff - admitted).days, 'day')}"
                f" ago, on {on(admitted)}")
        after, last_ids = f.past, []
    else:
        last = attended.iloc[-1]
        # Calendar days from the session's date to the as-of date, as a reader counts them.
        days = (f.cutoff - pd.Timestamp(last["scheduled_at"]).normalize()).days
        text = f"last attended {count(days, 'day')} ago, on {on(last['scheduled_at'])}"
        after = f.past[f.past["scheduled_at"] > last["scheduled_at"]]
        last_ids = [str(last["appointment_id"])]
    soon = f.ahead[f.ahead["scheduled_at"] < f.cutoff + pd.Timedelta(days=14)]
    return Contact(text, last_ids, after[after["status"].isin(MISSED)], soon)


BOOKING_LEADS = ("booked_next_14d", "days_to_next_booked")


def _capital(text: str) -> str:
    return text[0].upper() + text[1:]


@recomputes("disengagement.CONSECUTIVE_MISSES")
def _consecutive(f: Facts, lead: str, raises: bool) -> Expected:
    c = _contact(f)
    need(raises and lead == "consecutive_misses" and len(c.streak), "no run of misses")
    run = (f"the last {len(c.streak)} sessions in a row" if len(c.streak) > 1
           else "the last session")
    return Expected(f"Missed {run}; {c.text}", ids(c.streak) + c.last_ids)


@recomputes("disengagement.NOTHING_BOOKED")
def _nothing_booked(f: Facts, lead: str, raises: bool) -> Expected:
    c = _contact(f)
    need(raises and lead in BOOKING_LEADS and f.ahead.empty, "something is booked")
    return Expected(f"Nothing booked ahead; {c.text}", c.last_ids)


@recomputes("disengagement.NEXT_BOOKING_FAR")
def _booking_far(f: Facts, lead: str, raises: bool) -> Expected:
    c = _contact(f)
    need(raises and lead in BOOKING_LEADS and len(f.ahead) and c.soon.empty,
         "not booked only beyond 2 weeks")
    nxt = f.ahead.iloc[0]
    return Expected(
        f"No session in the next 2 weeks; next booked on {on(nxt['scheduled_at'])}",
        [str(nxt["appointment_id"])],
    )


@recomputes("disengagement.NO_RECENT_ATTENDANCE")
def _no_recent(f: Facts, lead: str, raises: bool) -> Expected:
    c = _contact(f)
    need(raises, "protective contact is ENGAGED")
    need(not (lead == "consecutive_misses" and len(c.streak)), "a run of misses to name")
    need(not (lead in BOOKING_LEADS and c.soon.empty), "booking gap to name")
    text = _capital(c.text) + ("; nothing booked ahead" if f.ahead.empty else "")
    return Expected(text, ids(c.streak) + c.last_ids)


@recomputes("disengagement.ENGAGED")
def _engaged(f: Facts, lead: str, raises: bool) -> Expected:
    c = _contact(f)
    need(not raises, "ENGAGED raising risk")
    if f.ahead.empty:
        return Expected(_capital(c.text), c.last_ids)
    nxt = f.ahead.iloc[0]
    return Expected(
        f"{_capital(c.text)}; next session booked for {on(nxt['scheduled_at'])}",
        [*c.last_ids, str(nxt["appointment_id"])],
    )


# alliance_rupture


def _instrument(lead: str) -> tuple[str, str]:
    if lead.startswith("gsrs"):
        return "GSRS", "group session rating (GSRS)"
    return "SRS", "session rating (SRS)"


@recomputes("alliance_rupture.SRS_NONE", "alliance_rupture.GSRS_NONE")
def _rating_none(f: Facts, lead: str, raises: bool) -> Expected:
    instrument, label = _instrument(lead)
    need(f.rated(instrument).empty, f"a {instrument} was recorded")
    return Expected(f"No {label} recorded yet")


@recomputes("alliance_rupture.SRS_CHANGE", "alliance_rupture.GSRS_CHANGE")
def _rating_change(f: Facts, lead: str, raises: bool) -> Expected:
    instrument, label = _instrument(lead)
    rated = f.rated(instrument)
    need(lead.endswith("_change") and len(rated) >= 2, "no change to describe")
    prev, last = rated.iloc[-2], rated.iloc[-1]
    a, b = float(prev["score_total"]), float(last["score_total"])
    when = on(last["administered_at"])
    if a == b:
        text = f"{_capital(label)} stayed at {tenth(b)} on {when}"
    else:
        verb = "fell" if b < a else "rose"
        text = f"{_capital(label)} {verb} from {tenth(a)} to {tenth(b)} on {when}"
    return Expected(text, measure_ids=[str(prev["measure_id"]), str(last["measure_id"])])


@recomputes("alliance_rupture.SRS_BELOW_36_REPEATED")
def _below_repeated(f: Facts, lead: str, raises: bool) -> Expected:
    rated = f.rated("SRS")
    need(lead == "srs_below_cutoff_last3" and len(rated), "not about the last three SRS")
    last3 = rated.tail(3)
    below = int((last3["score_total"] < 36).sum())
    return Expected(
        f"{below} of the last {len(last3)} session ratings (SRS) were below 36",
        measure_ids=ids(last3, "measure_id"),
    )


@recomputes("alliance_rupture.SRS_LATEST", "alliance_rupture.GSRS_LATEST")
def _rating_latest(f: Facts, lead: str, raises: bool) -> Expected:
    instrument, label = _instrument(lead)
    rated = f.rated(instrument)
    need(len(rated), f"no {instrument} recorded")
    need(not (lead.endswith("_change") and len(rated) >= 2), "the change should be named")
    need(lead != "srs_below_cutoff_last3", "the last three should be named")
    last = rated.iloc[-1]
    score = float(last["score_total"])
    side = "below" if score < 36 else "at or above"
    return Expected(
        f"Latest {label} was {tenth(score)} on {on(last['administered_at'])}, "
        f"{side} the concern line of 36",
        measure_ids=[str(last["measure_id"])],
    )


# weak_bond and goal_task_disagreement: SRS items and WAI-SR scales


@recomputes("weak_bond.SRS_NONE", "goal_task_disagreement.SRS_NONE")
def _item_no_srs(f: Facts, lead: str, raises: bool) -> Expected:
    need(lead in SRS_ITEM and f.rated("SRS").empty, "an SRS was recorded")
    return Expected("No session rating (SRS) recorded yet")


def _latest_item(f: Facts, lead: str) -> tuple[pd.Series, float]:
    rated = f.rated("SRS")
    need(lead in SRS_ITEM and len(rated), "no SRS item to name")
    last = rated.iloc[-1]
    number = SRS_ITEM[lead][0]
    rows = f.items[(f.items["measure_id"] == last["measure_id"])
                   & (f.items["item_number"] == number)]
    return last, float(rows["response"].iloc[0]) if len(rows) else float("nan")


@recomputes("weak_bond.SRS_ITEMS_NONE", "goal_task_disagreement.SRS_ITEMS_NONE")
def _item_missing(f: Facts, lead: str, raises: bool) -> Expected:
    last, value = _latest_item(f, lead)
    need(math.isnan(value), "the item was recorded")
    return Expected("Latest session rating (SRS) has no item scores",
                    measure_ids=[str(last["measure_id"])])


@recomputes("weak_bond.SRS_RELATIONSHIP", "goal_task_disagreement.SRS_GOALS",
            "goal_task_disagreement.SRS_APPROACH")
def _item(f: Facts, lead: str, raises: bool) -> Expected:
    last, value = _latest_item(f, lead)
    need(not math.isnan(value), "the item is missing")
    return Expected(
        f"Rated {SRS_ITEM[lead][1]} {tenth(value)} of 10 on the session rating (SRS) of "
        f"{on(last['administered_at'])}",
        measure_ids=[str(last["measure_id"])],
    )


def _wai_lead(lead: str) -> tuple[str, str]:
    need(lead.startswith("wai_") and lead.count("_") == 2, f"{lead} is not a WAI-SR scale")
    _, rater, scale = lead.split("_")
    return rater, scale


@recomputes("weak_bond.WAI_NONE", "goal_task_disagreement.WAI_NONE")
def _wai_none(f: Facts, lead: str, raises: bool) -> Expected:
    rater, _ = _wai_lead(lead)
    wai = f.wai(rater)
    need(wai.empty, "a WAI-SR was recorded")
    return Expected(f"No {rater}-rated working alliance (WAI-SR) recorded yet")


@recomputes("weak_bond.WAI_UNSCORED", "goal_task_disagreement.WAI_UNSCORED")
def _wai_unscored(f: Facts, lead: str, raises: bool) -> Expected:
    rater, scale = _wai_lead(lead)
    wai = f.wai(rater)
    need(len(wai) and pd.isna(wai.iloc[-1][scale]), "the latest WAI-SR has this subscale")
    last = wai.iloc[-1]
    who = "Client" if rater == "client" else "Therapist"
    return Expected(
        f"{who}-rated working alliance (WAI-SR) of {on(last['administered_at'])} "
        "has no subscale scores",
        measure_ids=[str(last["measure_id"])],
    )


@recomputes("weak_bond.WAI_CLIENT_BOND", "weak_bond.WAI_THERAPIST_BOND",
            "goal_task_disagreement.WAI_CLIENT_GOAL", "goal_task_disagreement.WAI_CLIENT_TASK",
            "goal_task_disagreement.WAI_THERAPIST_GOAL",
            "goal_task_disagreement.WAI_THERAPIST_TASK")
def _wai_scale(f: Facts, lead: str, raises: bool) -> Expected:
    rater, scale = _wai_lead(lead)
    wai = f.wai(rater)
    need(len(wai) and not pd.isna(wai.iloc[-1][scale]), "no WAI-SR scale recorded")
    last = wai.iloc[-1]
    who = "Client" if rater == "client" else "Therapist"
    return Expected(
        f"{who}-rated {WAI_WORDS[scale]} (WAI-SR) was {float(last[scale]):.1f} of 5 on "
        f"{on(last['administered_at'])}",
        measure_ids=[str(last["measure_id"])],
    )


# rater_gap


@recomputes("rater_gap.WAI_PAIR_NONE")
def _pair_none(f: Facts, lead: str, raises: bool) -> Expected:
    need(f.wai("client").empty or f.wai("therapist").empty, "both raters have a WAI-SR")
    return Expected("No client and therapist working alliance (WAI-SR) pair yet")


@recomputes("rater_gap.WAI_PAIR_UNSCORED")
def _pair_unscored(f: Facts, lead: str, raises: bool) -> Expected:
    need(len(f.wai("client")) and len(f.wai("therapist")), "no WAI-SR pair")
    c, t = f.wai("client").iloc[-1], f.wai("therapist").iloc[-1]
    need(pd.isna(c["score_total"]) or pd.isna(t["score_total"]), "both have totals")
    return Expected(
        "Latest client and therapist working alliance (WAI-SR) pair has no scores",
        measure_ids=[str(c["measure_id"]), str(t["measure_id"])],
    )


@recomputes("rater_gap.WAI_GAP")
def _gap(f: Facts, lead: str, raises: bool) -> Expected:
    need(len(f.wai("client")) and len(f.wai("therapist")), "no WAI-SR pair")
    c, t = f.wai("client").iloc[-1], f.wai("therapist").iloc[-1]
    # The mean item score: the total over 12 items (the mean of the three subscale means).
    cm, tm = float(c["score_total"]) / 12, float(t["score_total"]) / 12
    need(not (np.isnan(cm) or np.isnan(tm)), "a WAI-SR of the pair has no total")
    when = on(max(c["administered_at"], t["administered_at"]))
    return Expected(
        f"Working alliance (WAI-SR): client rates it {cm:.1f}, therapist {tm:.1f} of 5 ({when})",
        measure_ids=[str(c["measure_id"]), str(t["measure_id"])],
    )


# early_treatment


def _planned(f: Facts, lead: str) -> Any:
    need(lead == "days_to_planned_end", "not about the planned end")
    return f.episode["planned_discharge_on"]


@recomputes("early_treatment.NO_PLANNED_END")
def _no_planned_end(f: Facts, lead: str, raises: bool) -> Expected:
    need(pd.isna(_planned(f, lead)), "a planned discharge was recorded")
    return Expected("No planned discharge date recorded")


@recomputes("early_treatment.PAST_PLANNED_END")
def _past_planned_end(f: Facts, lead: str, raises: bool) -> Expected:
    planned = _planned(f, lead)
    need(not pd.isna(planned) and planned < f.cutoff, "not past the planned end")
    days = (f.cutoff - pd.Timestamp(planned)).days
    return Expected(f"Past the planned discharge date of {on(planned)} by {count(days, 'day')}")


@recomputes("early_treatment.PLANNED_END")
def _planned_end(f: Facts, lead: str, raises: bool) -> Expected:
    planned = _planned(f, lead)
    need(not pd.isna(planned) and planned >= f.cutoff, "no planned end ahead")
    days = (pd.Timestamp(planned) - f.cutoff).days
    return Expected(f"Planned discharge in {count(days, 'day')}, on {on(planned)}")


@recomputes("early_treatment.STAGE")
def _stage(f: Facts, lead: str, raises: bool) -> Expected:
    need(lead != "days_to_planned_end", "the planned end should be named")
    admitted = pd.Timestamp(f.episode["admitted_on"])
    days = (f.cutoff - admitted).days
    stage = "In the first weeks of treatment" if days < 6 * 7 else "In treatment"
    weeks = f" ({count(days // 7, 'week')})" if days >= 7 else ""
    return Expected(f"{stage}: admitted {count(days, 'day')} ago{weeks}, on {on(admitted)}")


# setting


@recomputes("setting.NO_RECENT_SESSIONS")
def _no_recent_sessions(f: Facts, lead: str, raises: bool) -> Expected:
    recent = f.facing(90)
    if lead == "telehealth_share_90d":
        need((recent["status"] != "attended").all(), "sessions were attended")
        return Expected("No sessions attended in the last 3 months")
    need(lead == "group_share_90d" and recent.empty, "sessions were scheduled")
    return Expected("No sessions scheduled in the last 3 months")


@recomputes("setting.TELEHEALTH")
def _telehealth(f: Facts, lead: str, raises: bool) -> Expected:
    recent = f.facing(90)
    attended = recent[recent["status"] == "attended"]
    need(lead == "telehealth_share_90d" and len(attended), "not about attended telehealth")
    tele = attended[attended["telehealth"].astype(bool)]
    return Expected(
        f"{len(tele)} of {len(attended)} sessions attended in the last 3 months were by "
        "telehealth",
        ids(tele),
    )


@recomputes("setting.GROUP")
def _group(f: Facts, lead: str, raises: bool) -> Expected:
    recent = f.facing(90)
    need(lead == "group_share_90d" and len(recent), "not about recent groups")
    groups = recent[recent["service_type"] == "group"]
    return Expected(
        f"{len(groups)} of {len(recent)} sessions in the last 3 months were group sessions",
        ids(groups),
    )


@recomputes("setting.PROGRAM")
def _program(f: Facts, lead: str, raises: bool) -> Expected:
    need(lead not in ("telehealth_share_90d", "group_share_90d"), "a share should be named")
    return Expected(f"In the {PROGRAM_WORDS[f.episode['program']]} program")


# comparing


def mismatches(
    code: str, text: str, appointment_ids: list[str], measure_ids: list[str],
    facts: Facts, lead: str, raises: bool,
) -> list[str]:
    """What differs between a reason and its recomputation from the source rows."""
    recompute = RECOMPUTE.get(code)
    if recompute is None:
        return [f"{code}: no recomputation in tests/reasons/test_phrases.py; add one"]
    try:
        expected = recompute(facts, lead, raises)
    except NotThisVariant as exc:
        return [f"{code} (lead {lead}, raises={raises}) does not fit the rows: {exc}"]
    out = []
    if text != expected.text:
        out.append(f"{code}: {text!r} != recomputed {expected.text!r}")
    if sorted(appointment_ids) != sorted(expected.appointment_ids):
        out.append(f"{code}: appointments {appointment_ids} != {expected.appointment_ids}")
    if sorted(measure_ids) != sorted(expected.measure_ids):
        out.append(f"{code}: measures {measure_ids} != {expected.measure_ids}")
    return out


def published_mismatches(
    published: Published, source: ClinicData, as_of: date,
    families: tuple[str, ...] | None = None,
) -> list[str]:
    problems = []
    facts: dict[str, Facts] = {}
    for row, kind, r in published.entries():
        if families is not None and r["family"] not in families:
            continue
        eid = row["episode_id"]
        if eid not in facts:
            facts[eid] = facts_of(source, eid, as_of)
        raises = kind == "reasons"
        lead = published.lead(eid, r["family"], raises)
        problems += [
            f"{eid}: {p}"
            for p in mismatches(r["code"], r["text"], r["appointment_ids"], r["measure_ids"],
                                facts[eid], lead, raises)
        ]
    return problems


def test_every_published_variant_has_a_recomputation(published: Published) -> None:
    """Guards: a new wording variant cannot reach the list without a truth check here."""
    codes = {r["code"] for _, _, r in published.entries()}
    assert codes, "the synthetic clinic publishes reasons"
    assert sorted(codes - set(RECOMPUTE)) == []


@pytest.mark.slow
def test_sentences_are_true_to_the_source_rows(scored: Any, published: Published,
                                               source: ClinicData) -> None:
    """Guards: every count, score, date and day number in every reason and protective
    factor, and the rows cited as evidence, match the client's own source rows."""
    problems = published_mismatches(published, source, scored.as_of)
    assert problems == [], "\n".join(problems[:20])


# --- 2. no demographics ---------------------------------------------------------------------


def test_no_reason_mentions_demographics(published: Published, source: ClinicData) -> None:
    """Guards: no title, sentence or suggestion names a demographic group or attribute."""
    values = {
        str(v).lower() for col in ("sex", "race_ethnicity")
        for v in source.clients[col].dropna().unique()
    } - {"other", "unknown"}
    words = DEMOGRAPHIC_WORDS | values | {v.replace("_", " ") for v in values}
    pattern = re.compile(r"\b(" + "|".join(map(re.escape, sorted(words))) + r")\b", re.I)
    for _, _, r in published.entries():
        for key in ("title", "text", "suggestion"):
            assert not pattern.search(r[key]), (r["code"], key, r[key])


# --- 3. readable ----------------------------------------------------------------------------


def unreadable(text: str, feature_names: list[str]) -> list[str]:
    """Why a sentence would confuse a case manager (empty if it would not)."""
    problems = []
    if not text or len(text) > MAX_SENTENCE:
        problems.append(f"length {len(text)}")
    # Single-word names ('program') are plain English; compound names are code.
    problems += [f"feature name {n}" for n in feature_names if "_" in n and n in text]
    problems += [f"code word {m}" for m in SNAKE.findall(text)]
    problems += [f"missing value {m}" for m in MISSING.findall(text)]
    problems += [f"jargon {m}" for m in JARGON.findall(text)]
    problems += [f"long decimal {m}" for m in LONG_DECIMAL.findall(text)]
    return problems


def test_sentences_are_readable(scored: Any, published: Published) -> None:
    """Guards: short plain sentences with no code names, missing-value markers, model jargon
    or raw floats; each reason carries its family's title and suggestion from the catalogue."""
    names = list(scored.model.feature_names)
    problems = []
    for row, _, r in published.entries():
        for why in unreadable(r["text"], names):
            problems.append(f"{row['episode_id']} {r['code']}: {why}: {r['text']!r}")
        entry = scored.catalogue.families[r["family"]]
        assert r["title"] and r["title"] == entry.title, r["code"]
        assert r["suggestion"] and r["suggestion"] == entry.suggestion, r["code"]
    assert problems == [], "\n".join(problems[:20])


# --- wording on hand-built clinics ----------------------------------------------------------


def history(data: ClinicData, episode_id: str, as_of: date = AS_OF) -> History:
    features = build_features(data, as_of)
    return histories(data, list(features.index), as_of)[episode_id]


def phrase(b: ClinicBuilder, episode_id: str, family: str, lead: str,
           raises: bool = True) -> Phrase:
    return PHRASERS[family](history(b.build(), episode_id), lead, raises)


def test_recomputations_agree_with_the_phrasers_on_every_variant() -> None:
    """Guards the truth checks themselves: on hand-built clients, for every feature as lead
    in both directions, the recomputation matches the sentence and its evidence, and every
    recomputation is exercised (none is dead code that would pass unchecked)."""
    data = rich_clinic().build()
    features = build_features(data, AS_OF)
    hist = histories(data, list(features.index), AS_OF)
    seen, problems = set(), []
    for eid, h in hist.items():
        facts = facts_of(data, eid, AS_OF)
        for name in FEATURE_NAMES:
            family = next(f.family for f in spec.FEATURES if f.name == name)
            for raises in (True, False):
                p = PHRASERS[family](h, name, raises)
                code = f"{family}.{p.variant}"
                seen.add(code)
                problems += [
                    f"{eid} {name} raises={raises}: {m}"
                    for m in mismatches(code, p.text, [str(i) for i in p.appointment_ids],
                                        [str(i) for i in p.measure_ids], facts, name, raises)
                ]
    assert problems == [], "\n".join(problems[:20])
    assert sorted(set(RECOMPUTE) - seen) == []


def test_missed_sessions_name_each_kind_with_dates() -> None:
    """Guards the example sentence: 2 no-shows on 3 and 10 Mar and a late cancellation."""
    b = rich_clinic()
    p = phrase(b, "E1", "inconsistent_engagement", "missed_28d")
    assert p.variant == "MISSED_SESSIONS"
    assert p.text == (
        "Missed 3 of 5 sessions in the last 4 weeks: "
        "2 no-shows on 3 Mar and 10 Mar, 1 late cancellation on 13 Mar"
    )
    assert len(p.appointment_ids) == 3


def test_many_misses_list_three_dates_then_a_count() -> None:
    """Guards: past three dates the sentence says 'and N more'; too long, counts only."""
    b = ClinicBuilder()
    b.client("C1")
    b.episode("E1", "C1", "2026-01-05")
    for day in range(2, 18, 3):  # 2, 5, 8, 11, 14, 17 Mar
        b.appointment("E1", at(f"2026-03-{day:02d}"), "no_show")
    p = phrase(b, "E1", "inconsistent_engagement", "missed_28d")
    assert p.text == (
        "Missed 6 of 6 sessions in the last 4 weeks: 6 no-shows on 2 Mar, 5 Mar, 8 Mar and 3 more"
    )
    for day in range(3, 19, 3):
        b.appointment("E1", at(f"2026-03-{day:02d}"), "late_cancel")
    p = phrase(b, "E1", "inconsistent_engagement", "missed_28d")
    assert p.text == (
        "Missed 12 of 12 sessions in the last 4 weeks: 6 no-shows, 6 late cancellations"
    )


def test_protective_attendance_and_a_quiet_start() -> None:
    """Guards the protective and empty attendance sentences."""
    b = rich_clinic()
    full = phrase(b, "E3", "inconsistent_engagement", "attended_28d", raises=False)
    assert full.text == "Attended all 3 sessions scheduled in the last 4 weeks"
    cancelled = phrase(b, "E4", "inconsistent_engagement", "client_cancelled_28d")
    assert cancelled.text == "Cancelled 2 of 3 sessions in the last 4 weeks, on 10 Mar and 17 Mar"
    none = phrase(b, "E2", "inconsistent_engagement", "miss_rate_90d")
    assert none.text == "No sessions were scheduled in the last 3 months"


def test_disengagement_sentences() -> None:
    """Guards runs of misses, nothing booked and a far booking, counted from admission when
    nothing was attended (admission dates are midnights, so the day count is exact)."""
    b = ClinicBuilder()
    b.client("C1")
    b.episode("E1", "C1", "2026-03-02")
    b.appointment("E1", at("2026-03-03"), "no_show")
    b.appointment("E1", at("2026-03-10"), "late_cancel")
    streak = phrase(b, "E1", "disengagement", "consecutive_misses")
    assert streak.text == (
        "Missed the last 2 sessions in a row; no session attended since admission 18 days ago, "
        "on 2 Mar"
    )
    nothing = phrase(b, "E1", "disengagement", "booked_next_14d")
    assert nothing.text == (
        "Nothing booked ahead; no session attended since admission 18 days ago, on 2 Mar"
    )
    b.appointment("E1", at("2026-04-08"), "scheduled", booked_at=at("2026-03-18"))
    far = phrase(b, "E1", "disengagement", "days_to_next_booked")
    assert (far.variant, far.text) == (
        "NEXT_BOOKING_FAR", "No session in the next 2 weeks; next booked on 8 Apr"
    )


def test_last_attended_counts_calendar_days() -> None:
    """Guards: 'N days ago, on D' agrees with the calendar from D to the as-of date."""
    b = ClinicBuilder()
    b.client("C1")
    b.episode("E1", "C1", "2026-03-02")
    b.appointment("E1", at("2026-03-17"))
    b.appointment("E1", at("2026-03-24"), "scheduled", booked_at=at("2026-03-17"))
    p = phrase(b, "E1", "disengagement", "days_since_attended", raises=False)
    assert p.text == "Last attended 3 days ago, on 17 Mar; next session booked for 24 Mar"


def test_alliance_rupture_sentences() -> None:
    """Guards the drop, the repeated low ratings and the latest group rating."""
    b = rich_clinic()
    drop = phrase(b, "E1", "alliance_rupture", "srs_change")
    assert drop.text == "Session rating (SRS) fell from 36.5 to 28.5 on 24 Feb"
    below = phrase(b, "E1", "alliance_rupture", "srs_below_cutoff_last3")
    assert below.text == "1 of the last 3 session ratings (SRS) were below 36"
    group = phrase(b, "E1", "alliance_rupture", "gsrs_latest")
    assert group.text == (
        "Latest group session rating (GSRS) was 32 on 13 Mar, below the concern line of 36"
    )
    none = phrase(b, "E2", "alliance_rupture", "srs_latest")
    assert none.text == "No session rating (SRS) recorded yet"


def test_bond_goal_and_gap_sentences() -> None:
    """Guards SRS item, WAI-SR scale and rater-gap sentences."""
    b = rich_clinic()
    item = phrase(b, "E1", "goal_task_disagreement", "srs_approach_latest")
    assert item.text == "Rated the approach 6.5 of 10 on the session rating (SRS) of 24 Feb"
    bond = phrase(b, "E1", "weak_bond", "wai_client_bond")
    assert bond.text == "Client-rated bond (WAI-SR) was 2.5 of 5 on 17 Feb"
    gap = phrase(b, "E1", "rater_gap", "wai_rater_gap")
    assert gap.text == "Working alliance (WAI-SR): client rates it 3.8, therapist 4.0 of 5 (18 Feb)"
    bare = phrase(b, "E3", "weak_bond", "srs_relationship_latest")
    assert bare.text == "Latest session rating (SRS) has no item scores"


def test_rater_gap_never_says_nan() -> None:
    """Guards: a WAI-SR without subscale scores is not worded as 'nan'."""
    b = rich_clinic()
    for row in b.rows["alliance_measures"]:
        if row["episode_id"] == "E1" and row["rater"] == "client":
            row.update(goal=None, task=None, bond=None)
    p = phrase(b, "E1", "rater_gap", "wai_rater_gap")
    assert unreadable(p.text, list(FEATURE_NAMES)) == [], p.text
    # The total still gives the mean item score: 12-item sum over 12.
    assert p.text.startswith("Working alliance (WAI-SR): client rates it 3.8, therapist 4.0")


def test_stage_and_setting_sentences() -> None:
    """Guards stage of treatment, planned end, telehealth, group and program sentences."""
    b = rich_clinic()
    stage = phrase(b, "E2", "early_treatment", "days_in_treatment")
    assert stage.text == "In the first weeks of treatment: admitted 5 days ago, on 15 Mar"
    planned = phrase(b, "E1", "early_treatment", "days_to_planned_end")
    assert planned.text == "Planned discharge in 46 days, on 5 May"
    past = phrase(b, "E3", "early_treatment", "days_to_planned_end", raises=False)
    assert past.text == "Past the planned discharge date of 1 Mar by 19 days"
    tele = phrase(b, "E1", "setting", "telehealth_share_90d")
    assert tele.text == "1 of 2 sessions attended in the last 3 months were by telehealth"
    group = phrase(b, "E1", "setting", "group_share_90d")
    assert group.text == "1 of 6 sessions in the last 3 months were group sessions"
    program = phrase(b, "E1", "setting", "program")
    assert program.text == "In the intensive outpatient program"


def test_one_day_is_singular() -> None:
    """Guards: a count of one day reads '1 day'."""
    b = rich_clinic()
    p = phrase(b, "E4", "early_treatment", "days_to_planned_end")
    assert p.text == "Planned discharge in 1 day, on 21 Mar"


def phrase_every_lead(data: ClinicData, episode_id: str) -> list[str]:
    """Mismatches with the recomputation for one episode, every feature as lead both ways."""
    h = histories(data, [episode_id], AS_OF)[episode_id]
    facts = facts_of(data, episode_id, AS_OF)
    problems = []
    for f in spec.FEATURES:
        for raises in (True, False):
            p = PHRASERS[f.family](h, f.name, raises)
            problems += [
                f"{f.name} raises={raises}: {m}"
                for m in mismatches(f"{f.family}.{p.variant}", p.text, p.appointment_ids,
                                    p.measure_ids, facts, f.name, raises)
            ]
    return problems


def test_a_clinic_with_no_appointments_measures_or_items_is_worded() -> None:
    """Guards the empty edge: with no appointment, measure or item row in the whole clinic,
    every lead is still worded truly ('nothing recorded'), citing no rows."""
    b = ClinicBuilder()
    b.client("C1")
    b.episode("E1", "C1", "2026-03-02")
    assert phrase_every_lead(b.build(), "E1") == []


def test_ratings_without_any_item_responses_are_worded() -> None:
    """Guards: a clinic that sends SRS totals but no item responses at all (the table is
    optional) gets 'no item scores', not an error; the totals are still worded."""
    b = ClinicBuilder()
    b.client("C1")
    b.episode("E1", "C1", "2026-03-02")
    b.appointment("E1", at("2026-03-10"))
    b.srs("E1", at("2026-03-10", 11), [9, 9, 9, 9])
    b.srs("E1", at("2026-03-17", 11), [8, 8, 8, 8])
    b.rows["alliance_items"] = []
    data = b.build()
    assert phrase_every_lead(data, "E1") == []
    h = histories(data, ["E1"], AS_OF)["E1"]
    item = PHRASERS["weak_bond"](h, "srs_relationship_latest", True)
    assert (item.variant, item.text) == (
        "SRS_ITEMS_NONE", "Latest session rating (SRS) has no item scores")
    change = PHRASERS["alliance_rupture"](h, "srs_change", True)
    assert change.text == "Session rating (SRS) fell from 36 to 32 on 17 Mar"
