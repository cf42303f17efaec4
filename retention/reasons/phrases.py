"""Reasons in words: one phraser per family, from the client's own rows, pointing one way.

A phraser gets the episode's history, the feature that leads the family's contribution,
the direction the model moved the risk (``CONCERN`` when the family raises it,
``REASSURING`` when it lowers it) and the clinic's thresholds. It returns a sentence
whose fact points that way by the thresholds, with the ids of the rows behind it;
``Missing`` when the family's measure was never taken (a prompt, not a cause); or None
when the client's facts do not point the way the model moved the risk (the family is
then left out, and counted). Context families (stage of treatment, how care is
delivered) always return a ``CONTEXT`` sentence. Every sentence names an instrument in
words the first time it uses it.
"""

from __future__ import annotations

import calendar
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import date
from typing import Any

import numpy as np
import pandas as pd

from retention.casework.stage import SESSION_WINDOW_DAYS, stage_of
from retention.clinic import contract
from retention.clinic.data import as_timestamp
from retention.clinic.instruments import SRS_CUTOFF, WAI_SR_N_ITEMS
from retention.features import spec
from retention.reasons.catalogue import SessionRating, Thresholds
from retention.reasons.history import History, Rows

MAX_SENTENCE = 120
CONCERN = "concern"
REASSURING = "reassuring"
CONTEXT = "context"

SRS_WORDS = "session rating (SRS)"
GSRS_WORDS = "group session rating (GSRS)"
WAI_WORDS = "working alliance questionnaire (WAI-SR)"


@dataclass(frozen=True)
class Phrase:
    """A variant code, its sentence, which way its fact points, and the rows behind it."""

    variant: str
    text: str
    direction: str
    appointment_ids: list[str] = field(default_factory=list)
    measure_ids: list[str] = field(default_factory=list)
    observation_ids: list[str] = field(default_factory=list)
    # A next step tied to this fact (the repair prompts of the signs a therapist noted);
    # empty: the family's own suggestion.
    suggestion: str = ""


@dataclass(frozen=True)
class Missing:
    """The family's measure was never taken: a prompt to collect it, never a cause."""

    variant: str
    text: str


Phraser = Callable[[History, str, str, Thresholds], "Phrase | Missing | None"]


# --- wording -----------------------------------------------------------------------


def day_text(ts: Any) -> str:
    """A date as a case manager writes it: '3 Mar'."""
    d = pd.Timestamp(ts)
    # The month as '%b' writes it; formatting the Timestamp itself is slower.
    return f"{d.day} {calendar.month_abbr[d.month]}"


def days_list(stamps: Sequence[Any], most: int = 3) -> str:
    """'3 Mar, 10 Mar and 17 Mar' -- at most ``most`` dates, then 'and N more'."""
    shown = [day_text(s) for s in stamps[:most]]
    extra = len(stamps) - len(shown)
    if extra > 0:
        return ", ".join(shown) + f" and {extra} more"
    if len(shown) == 1:
        return shown[0]
    return ", ".join(shown[:-1]) + " and " + shown[-1]


def calendar_days(earlier: Any, as_of: date) -> int:
    """Whole calendar days from ``earlier``'s date to ``as_of``."""
    return int((as_timestamp(as_of) - pd.Timestamp(earlier).normalize()).days)


def plural(n: int, word: str, many: str | None = None) -> str:
    """'1 no-show', '2 no-shows'."""
    return f"{n} {word if n == 1 else (many or word + 's')}"


def score_text(x: float) -> str:
    """SRS totals are recorded to a tenth; show whole numbers without '.0'."""
    return f"{x:.1f}".removesuffix(".0")


def shown(x: float) -> float:
    """A score as the sentence shows it (one decimal): lines are compared with what is read,
    so '3.0 of 5' is never called 'below 3' and two means shown 0.5 apart are 0.5 apart."""
    return float(f"{x:.1f}")


def capital(text: str) -> str:
    return text[0].upper() + text[1:]


def _recent_facing(h: History, days: int) -> Rows:
    s = h.slots
    return s.where((s["days_ago"] <= days) & s.isin("status", contract.CLIENT_STATUSES))


# --- attendance ----------------------------------------------------------------------


# The window each attendance feature counts over, in days; the rest count over 4 weeks.
ENGAGEMENT_WINDOWS = {"attended_7d": 7, "missed_7d": 7, "attended_14d": 14, "missed_14d": 14,
                      "miss_rate_14d": 14, "miss_rate_90d": 90}
SPANS = {7: "7 days", 14: "2 weeks", 28: "4 weeks", 90: "3 months"}


def phrase_inconsistent_engagement(h: History, lead: str, wanted: str,
                                   t: Thresholds) -> Phrase | Missing | None:
    """Misses and cancellations over the lead feature's window: the last 7 days, 2 weeks,
    4 weeks or 3 months.

    A concern when more than the usual share of client-facing sessions were missed or
    cancelled by the client; reassuring when nearly all were kept. A week or two that
    says nothing either way (often no session at all) gives way to the 4 weeks around it.
    """
    days = ENGAGEMENT_WINDOWS.get(lead, 28)
    found = _engagement(h, days, wanted, t)
    if found is None and days < 28:
        found = _engagement(h, 28, wanted, t)
    return found


def _engagement(h: History, days: int, wanted: str, t: Thresholds) -> Phrase | None:
    span = SPANS[days]
    facing = _recent_facing(h, days)
    n = len(facing)
    if n == 0:
        return None  # no sessions to judge: contact gaps are the disengagement family's
    missed = facing.where(facing.isin("status", contract.MISSED_STATUSES))
    cancelled = facing.where(facing["status"] == "cancelled_by_client")
    share = (len(missed) + len(cancelled)) / n
    if wanted == CONCERN:
        if share <= t.attendance.concern_share_above:
            return None
        if len(missed):
            parts = []
            for status, word in (("no_show", "no-show"), ("late_cancel", "late cancellation")):
                rows = missed.where(missed["status"] == status)
                if len(rows):
                    parts.append(f"{plural(len(rows), word)} on "
                                 f"{days_list(list(rows['scheduled_at']))}")
            # Cancellations with notice are not misses: said apart, so the kinds listed
            # after the colon add up to the number missed.
            also = f"; cancelled {len(cancelled)}" if len(cancelled) else ""
            head = f"Missed {len(missed)} of {n} sessions in the last {span}: "
            text = head + ", ".join(parts) + also
            if len(text) > MAX_SENTENCE:
                text = head + ", ".join(p.split(" on ")[0] for p in parts) + also
            return Phrase("MISSED_SESSIONS", text, CONCERN,
                          missed.ids("appointment_id") + cancelled.ids("appointment_id"))
        return Phrase(
            "CLIENT_CANCELLED",
            f"Cancelled {len(cancelled)} of {n} sessions in the last {span}, on "
            f"{days_list(list(cancelled['scheduled_at']))}",
            CONCERN, cancelled.ids("appointment_id"),
        )
    if n < t.attendance.reassure_sessions_at_least or share > t.attendance.reassure_share_at_most:
        return None
    attended = facing.where(facing["status"] == "attended")
    if len(attended) == n:
        return Phrase("ATTENDED_ALL", f"Attended all {n} sessions scheduled in the last {span}",
                      REASSURING, attended.ids("appointment_id"))
    return Phrase("ATTENDANCE", f"Attended {len(attended)} of {n} sessions scheduled in the "
                  f"last {span}", REASSURING, facing.ids("appointment_id"))


# --- contact -------------------------------------------------------------------------


@dataclass(frozen=True)
class _ContactFacts:
    last_text: str  # "last attended 20 days ago, on 3 Mar"
    days_since: int
    last_ids: list[str]
    streak: Rows  # misses since the last attended session
    ahead: Rows
    soon: int  # sessions booked within the concern window


def _contact_facts(h: History, t: Thresholds) -> _ContactFacts:
    s = h.slots
    attended = np.flatnonzero(s["status"] == "attended")
    last = s.row(attended[-1]) if len(attended) else None
    since = last["scheduled_at"] if last is not None else None
    missed = s.isin("status", contract.MISSED_STATUSES)
    streak = s.where(missed if since is None else missed & (s["scheduled_at"] > since))
    # Calendar days, as the date beside them reads: a session yesterday is 1 day ago.
    if since is None:
        admitted = pd.Timestamp(h.episode["admitted_on"])
        days = calendar_days(admitted, h.as_of)
        text = f"no session attended since admission {plural(days, 'day')} ago, on " \
               f"{day_text(admitted)}"
    else:
        days = calendar_days(since, h.as_of)
        text = f"last attended {plural(days, 'day')} ago, on {day_text(since)}"
    window = t.contact.concern_nothing_booked_within_days
    return _ContactFacts(text, days, [str(last["appointment_id"])] if last is not None else [],
                         streak, h.ahead, int(np.count_nonzero(h.ahead["days_ahead"] < window)))


def phrase_disengagement(h: History, lead: str, wanted: str,
                         t: Thresholds) -> Phrase | Missing | None:
    """Time since last attended, the current run of misses, and what is booked.

    A concern: misses in a row, nothing booked soon, or too long since the last
    session (the lead feature's fact first, then the others). Reassuring: attended
    recently and booked soon.
    """
    f = _contact_facts(h, t)
    c = t.contact
    window = c.concern_nothing_booked_within_days
    if wanted == REASSURING:
        if (not f.last_ids or f.days_since > c.reassure_attended_within_days or f.soon == 0
                or len(f.streak)):
            return None
        nxt = f.ahead.row(0)
        return Phrase("ENGAGED", f"{capital(f.last_text)}; next session booked for "
                      f"{day_text(nxt['scheduled_at'])}", REASSURING,
                      [*f.last_ids, str(nxt["appointment_id"])])
    gap = f.days_since > c.concern_days_since_attended_above
    facts: dict[str, Phrase] = {}
    if len(f.streak) >= c.concern_consecutive_misses_at_least:
        run = ("Missed the last session" if len(f.streak) == 1
               else f"Missed the last {len(f.streak)} sessions in a row")
        facts["consecutive_misses"] = Phrase(
            "CONSECUTIVE_MISSES", run + (f"; {f.last_text}" if gap else ""), CONCERN,
            f.streak.ids("appointment_id") + (f.last_ids if gap else []))
    if f.soon == 0:
        if len(f.ahead) == 0:
            booked = Phrase("NOTHING_BOOKED", "Nothing booked ahead"
                            + (f"; {f.last_text}" if gap else ""), CONCERN,
                            f.last_ids if gap else [])
        else:
            nxt = f.ahead.row(0)
            booked = Phrase("NEXT_BOOKING_FAR", f"No session booked in the next {window} days; "
                            f"next booked on {day_text(nxt['scheduled_at'])}", CONCERN,
                            [str(nxt["appointment_id"])])
        facts["booked_next_14d"] = facts["days_to_next_booked"] = booked
    if gap:
        facts["days_since_attended"] = Phrase(
            "NO_RECENT_ATTENDANCE", capital(f.last_text)
            + ("; nothing booked ahead" if len(f.ahead) == 0 else ""), CONCERN, f.last_ids)
    if lead in facts:
        return facts[lead]
    for key in ("consecutive_misses", "booked_next_14d", "days_since_attended"):
        if key in facts:
            return facts[key]
    return None


# --- session ratings ------------------------------------------------------------------


def _rated(h: History, instrument: str, rater: str = "client") -> Rows:
    m = h.measures
    return m.where((m["instrument"] == instrument) & (m["rater"] == rater)
                   & ~np.isnan(m["score_total"]))


# The fact each session-rating feature measures: named first when it points the way wanted.
RUPTURE_FACTS = {
    "srs_change": "fell", "gsrs_change": "fell", "srs_below_cutoff_last3": "repeated",
    "srs_latest": "low", "gsrs_latest": "low", "srs_min_last3": "lowest",
    "srs_mean_last3": "mean", "srs_low_run_last3": "run", "srs_slope_last3": "falling",
}


def values_list(values: Sequence[float]) -> str:
    """'39, 38.5, 38 and 37.5'."""
    shown_values = [score_text(v) for v in values]
    return ", ".join(shown_values[:-1]) + " and " + shown_values[-1]


def _falling(rated: Rows, r: SessionRating) -> Rows | None:
    """The last three ratings when they fell: the latest at least the clinic's drop below
    the first of them (the least-squares line through three is then going down). None
    otherwise, or with fewer than three."""
    last3 = rated.tail(3)
    if len(last3) < 3:
        return None
    # Totals are sums of float items: compare the drop as recorded (to a tenth).
    drop = round(float(last3["score_total"][0]) - float(last3["score_total"][-1]), 6)
    return last3 if drop >= r.concern_drop_at_least else None


def phrase_alliance_rupture(h: History, lead: str, wanted: str,
                            t: Thresholds) -> Phrase | Missing | None:
    """Session ratings: a concern below the cutoff, after a fall from the previous rating or
    over the last three; reassuring at or above the cutoff without either fall.

    The lead feature's fact first (the lowest or mean of the last three, the run of low
    ratings among them, the fall over them), then the others. Only the last three SRS are
    read: what the nightly run holds.
    """
    if lead == "other_alliance_share":
        return _other_form(h, wanted, t)
    instrument, words = ("GSRS", GSRS_WORDS) if lead.startswith("gsrs") else ("SRS", SRS_WORDS)
    r = t.session_rating
    rated = _rated(h, instrument)
    if rated.empty:
        return Missing(f"{instrument}_NONE",
                       f"No {words} recorded yet: consider asking for one at the next session")
    latest = rated.row(-1)
    score = float(latest["score_total"])
    when = day_text(latest["administered_at"])
    prev = rated.row(-2) if len(rated) >= 2 else None
    # Totals are sums of float items: compare the drop as recorded (to a tenth), not as summed.
    drop = round(float(prev["score_total"]) - score, 6) if prev is not None else 0.0
    fell = prev is not None and drop >= r.concern_drop_at_least
    falling = _falling(rated, r) if instrument == "SRS" else None
    cutoff = score_text(r.concern_below)
    low = score < r.concern_below
    if wanted == REASSURING:
        if low or fell or falling is not None:
            return None
        rose = prev is not None and drop < 0
        text = (f"{capital(words)} rose from {score_text(prev['score_total'])} to "
                f"{score_text(score)} on {when}, at or above {cutoff}" if rose and prev is not None
                else f"Latest {words} was {score_text(score)} on {when}, at or above {cutoff}")
        ids = [prev["measure_id"], latest["measure_id"]] if rose and prev is not None \
            else [latest["measure_id"]]
        return Phrase(f"{instrument}_GOOD", text, REASSURING, measure_ids=ids)
    facts: dict[str, Phrase] = {}
    if fell and prev is not None:
        facts["fell"] = Phrase(
            f"{instrument}_FELL", f"{capital(words)} fell from {score_text(prev['score_total'])} "
            f"to {score_text(score)} on {when}", CONCERN,
            measure_ids=[prev["measure_id"], latest["measure_id"]])
    last3 = rated.tail(3)
    below = int(np.count_nonzero(last3["score_total"] < r.concern_below))
    if instrument == "SRS" and below >= 2 and low:
        facts["repeated"] = Phrase(
            "SRS_BELOW_CUTOFF_REPEATED", f"{below} of the last {len(last3)} session ratings "
            f"(SRS) were below {cutoff}", CONCERN, measure_ids=last3.ids("measure_id"))
    if low:
        facts["low"] = Phrase(
            f"{instrument}_LOW", f"Latest {words} was {score_text(score)} on {when}, below "
            f"{cutoff}", CONCERN, measure_ids=[latest["measure_id"]])
    if instrument == "SRS" and low:
        facts.update(_srs_course(rated, r, cutoff))
    if falling is not None:
        facts["falling"] = Phrase(
            "SRS_FALLING", f"{capital(words)} fell over the last {len(falling)} ratings: "
            f"{values_list(list(falling['score_total']))} on {when}", CONCERN,
            measure_ids=falling.ids("measure_id"))
    own = RUPTURE_FACTS.get(lead)
    if own in facts:
        return facts[own]
    return next(iter(facts.values()), None)


def _other_form(h: History, wanted: str, t: Thresholds) -> Phrase | None:
    """The latest rating on another registered alliance form, by its published cutoff.

    A form without one (the TAS as shipped) has no line between a concern and a
    reassuring total: nothing is said of it, either way.
    """
    forms = t.outcome.other_forms
    m = h.measures
    rated = m.where(m.isin("instrument", list(forms)) & (m["rater"] == "client")
                    & ~np.isnan(m["score_total"].astype(float)))
    if rated.empty:
        return None
    latest = rated.row(-1)
    form = forms[str(latest["instrument"])]
    if form.cutoff is None:
        return None
    score, line = shown(float(latest["score_total"])), shown(form.cutoff.value)
    concern = score < line if form.higher_is == "better" else score > line
    better = form.higher_is == "better"
    side = ("below" if better else "above") if concern else (
        "at or above" if better else "at or below")
    text = (f"Latest {form.name} ({form.code}) was {score_text(score)} on "
            f"{day_text(latest['administered_at'])}, {side} its cutoff of {score_text(line)}")
    direction = CONCERN if concern else REASSURING
    if direction != wanted:
        return None
    return Phrase("OTHER_FORM_LOW" if concern else "OTHER_FORM_GOOD", text, direction,
                  measure_ids=[str(latest["measure_id"])])


def _srs_course(rated: Rows, r: SessionRating, cutoff: str) -> dict[str, Phrase]:
    """The lowest and mean of the last three SRS and the run of low ones, while the latest
    is below the cutoff (a good latest rating ends the strain)."""
    latest = rated.row(-1)
    score, when = score_text(latest["score_total"]), day_text(latest["administered_at"])
    last3 = rated.tail(3)
    facts: dict[str, Phrase] = {}
    if len(last3) >= 2:
        scores = last3["score_total"].astype(float)
        # The most recent of the lowest ratings.
        at = len(scores) - 1 - int(np.argmin(scores[::-1]))
        lowest = last3.row(at)
        if at == len(scores) - 1:
            text = (f"{capital(SRS_WORDS)} of {score} on {when} was the lowest of the last "
                    f"{len(scores)}, below {cutoff}")
            ids = [latest["measure_id"]]
        else:
            text = (f"{capital(SRS_WORDS)} was {score_text(lowest['score_total'])} on "
                    f"{day_text(lowest['administered_at'])}, the lowest of the last "
                    f"{len(scores)}; latest {score} on {when}, below {cutoff}")
            ids = [lowest["measure_id"], latest["measure_id"]]
        facts["lowest"] = Phrase("SRS_LOWEST", text, CONCERN, measure_ids=ids)
        # The mean as recorded (totals to a tenth) and compared with the line as shown.
        mean = shown(round(float(np.sum(scores)), 6) / len(scores))
        if mean < r.concern_below:
            facts["mean"] = Phrase(
                "SRS_MEAN_LOW", f"{capital(SRS_WORDS)} averaged {score_text(mean)} over the "
                f"last {len(scores)} ratings, below {cutoff}; latest {score} on {when}",
                CONCERN, measure_ids=last3.ids("measure_id"))
    # The run of low ratings up to the latest, among the last three.
    low = last3["score_total"] < r.concern_below
    run = len(low) - 1 - int(np.flatnonzero(~low)[-1]) if (~low).any() else len(low)
    if run >= 2:
        facts["run"] = Phrase(
            "SRS_LOW_RUN", f"{capital(SRS_WORDS)} was below {cutoff} the last {run} times in a "
            f"row, latest {score} on {when}", CONCERN,
            measure_ids=last3.tail(run).ids("measure_id"))
    return facts


# --- bond, goals and tasks -------------------------------------------------------------

SRS_ITEM_WORDS = {
    "srs_relationship_latest": ("relationship", "the relationship"),
    "srs_goals_latest": ("goals", "goals and topics"),
    "srs_approach_latest": ("approach", "the approach"),
}
SCALE_WORDS = {"goal": "agreement on goals", "task": "agreement on tasks", "bond": "bond"}


def _srs_item(h: History, lead: str, wanted: str, t: Thresholds) -> Phrase | Missing | None:
    item, words = SRS_ITEM_WORDS[lead]
    rated = _rated(h, "SRS")
    if rated.empty:
        return Missing("SRS_NONE", f"No {SRS_WORDS} recorded yet: consider asking for one at "
                       "the next session")
    latest = rated.row(-1)
    value = float(latest[f"srs_{item}"])
    if math.isnan(value):
        return None  # a total without items: the total is the alliance family's fact
    line = t.session_rating.item_concern_below
    direction = CONCERN if value < line else REASSURING
    if direction != wanted:
        return None
    side = "below" if direction == CONCERN else "at or above"
    return Phrase(f"SRS_{item.upper()}", f"Rated {words} {score_text(value)} of 10 on the "
                  f"{SRS_WORDS} of {day_text(latest['administered_at'])}, {side} "
                  f"{score_text(line)}", direction, measure_ids=[latest["measure_id"]])


def _wai(h: History, rater: str) -> Rows:
    m = h.measures
    return m.where((m["instrument"] == "WAI-SR") & (m["rater"] == rater))


def _wai_scale(h: History, rater: str, scale: str, wanted: str,
               t: Thresholds) -> Phrase | Missing | None:
    wai = _wai(h, rater)
    if wai.empty:
        return Missing("WAI_NONE", f"No {rater}-rated {WAI_WORDS} yet: consider one at a "
                       "coming session")
    latest = wai.row(-1)
    if pd.isna(latest[scale]):
        return None
    value = shown(float(latest[scale]))
    w = t.working_alliance
    direction = CONCERN if value < w.concern_below else REASSURING if value >= w.reassure_from \
        else None
    if direction != wanted:
        return None
    side = (f"below {score_text(w.concern_below)}" if direction == CONCERN
            else f"at or above {score_text(w.reassure_from)}")
    who = "Client" if rater == "client" else "Therapist"
    return Phrase(f"WAI_{rater.upper()}_{scale.upper()}",
                  f"{who}-rated {SCALE_WORDS[scale]}, {WAI_WORDS}: {value:.1f} of 5 on "
                  f"{day_text(latest['administered_at'])}, {side}", direction,
                  measure_ids=[latest["measure_id"]])


def _latest_value(rows: Rows, *columns: str) -> float:
    """The latest recorded value of the first column that has one, scanning back in time.

    A later questionnaire recorded without this score does not hide an earlier low one.
    """
    for i in range(len(rows) - 1, -1, -1):
        row = rows.row(i)
        for column in columns:
            if not pd.isna(row[column]):
                return float(row[column])
    return math.nan


def _client_reassuring(h: History, feature: str, t: Thresholds) -> bool:
    """Whether the client's latest rating behind ``feature`` is reassuring, or was never given.

    Where the client's questionnaire has no item or subscale score, its total stands in
    (the SRS total against its cutoff, the WAI-SR item mean for a subscale).
    """
    if feature.startswith("srs_"):
        r = t.session_rating
        rated = _rated(h, "SRS")
        item = _latest_value(rated, f"srs_{SRS_ITEM_WORDS[feature][0]}")
        if not math.isnan(item):
            return item >= r.item_concern_below
        total = _latest_value(rated, "score_total")
        return math.isnan(total) or total >= r.concern_below
    _, rater, scale = feature.split("_")
    value = _latest_value(_wai(h, rater), scale, "wai_item_mean")
    return math.isnan(value) or shown(value) >= t.working_alliance.reassure_from


def _alliance_fact(h: History, feature: str, wanted: str,
                   t: Thresholds) -> Phrase | Missing | None:
    if feature.startswith("srs_"):
        return _srs_item(h, feature, wanted, t)
    _, rater, scale = feature.split("_")
    return _wai_scale(h, rater, scale, wanted, t)


def phrase_alliance_item(h: History, lead: str, wanted: str,
                         t: Thresholds) -> Phrase | Missing | None:
    """Bond, goals and tasks: an SRS item or a WAI-SR subscale by rater.

    Serves two families: weak bond or trust (WAI-SR bond, SRS relationship) and
    disagreement on goals or tasks (WAI-SR goal and task, SRS goals and approach). The
    lead feature's fact first; if it does not point the way wanted, another measure of
    the same family that does (client ratings before the therapist's).
    """
    family = spec.BY_NAME[lead].family
    members = [f.name for f in spec.FEATURES if f.family == family and f.name != lead]
    members.sort(key=lambda name: ("therapist" in name, name))
    first = _alliance_fact(h, lead, wanted, t)
    if wanted == REASSURING and not all(
            _client_reassuring(h, name, t) for name in [lead, *members]
            if "therapist" not in name):
        # Therapists tend to rate the alliance above their clients: a reassuring rating
        # (the therapist's, or another item's) is listed only when every rating the
        # client gave in this family is reassuring too (or was never given). A prompt
        # for the lead's measure never taken still stands.
        return first if isinstance(first, Missing) else None
    if isinstance(first, Phrase):
        return first
    for name in members:
        found = _alliance_fact(h, name, wanted, t)
        if isinstance(found, Phrase):
            return found
    return first  # a Missing prompt for the lead's measure, or None


def phrase_rater_gap(h: History, lead: str, wanted: str,
                     t: Thresholds) -> Phrase | Missing | None:
    """Client and therapist rating the working alliance differently.

    A concern when the client rates it clearly below the therapist; reassuring when the
    two see it alike (closer than that) and the client's rating is strong.
    """
    client, therapist = _wai(h, "client"), _wai(h, "therapist")
    if client.empty or therapist.empty:
        return Missing("WAI_PAIR_NONE", f"No client and therapist {WAI_WORDS} pair yet: "
                       "consider both rating the same session")
    c, th = client.row(-1), therapist.row(-1)
    if pd.isna(c["wai_item_mean"]) or pd.isna(th["wai_item_mean"]):
        return None
    cm, tm = shown(float(c["wai_item_mean"])), shown(float(th["wai_item_mean"]))
    w = t.working_alliance
    when = day_text(max(c["administered_at"], th["administered_at"]))
    ids = [c["measure_id"], th["measure_id"]]
    gap = round(tm - cm, 6)  # the gap between the means as shown
    if wanted == CONCERN and gap >= w.concern_client_below_therapist_by:
        return Phrase("WAI_CLIENT_BELOW", f"Client rates the alliance {cm:.1f} of 5 on the "
                      f"{WAI_WORDS}, the therapist {tm:.1f} ({when})", CONCERN,
                      measure_ids=ids)
    alike = abs(gap) < w.concern_client_below_therapist_by
    if wanted == REASSURING and alike and cm >= w.reassure_from:
        return Phrase("WAI_ALIKE", f"Client rates the alliance {cm:.1f} of 5 on the "
                      f"{WAI_WORDS}, the therapist {tm:.1f} ({when})", REASSURING,
                      measure_ids=ids)
    return None


# --- context ---------------------------------------------------------------------------


def phrase_early_treatment(h: History, lead: str, wanted: str,
                           t: Thresholds) -> Phrase | Missing | None:
    """Where the client is in the episode: first weeks, or near the planned end."""
    cutoff = as_timestamp(h.as_of)
    if lead == "days_to_planned_end":
        planned = h.episode.get("planned_discharge_on")
        if planned is None or pd.isna(planned):
            return Phrase("NO_PLANNED_END", "No planned discharge date recorded", CONTEXT)
        days = int((pd.Timestamp(planned) - cutoff).days)
        if days < 0:
            return Phrase("PAST_PLANNED_END", f"Past the planned discharge date of "
                          f"{day_text(planned)} by {plural(-days, 'day')}", CONTEXT)
        when = "today" if days == 0 else f"in {plural(days, 'day')}"
        return Phrase("PLANNED_END", f"Planned discharge {when}, on {day_text(planned)}",
                      CONTEXT)
    admitted = pd.Timestamp(h.episode["admitted_on"])
    days = int((cutoff - admitted).days)
    weeks = f" ({plural(days // 7, 'week')})" if days >= 7 else ""
    since = f"admitted {plural(days, 'day')} ago{weeks}, on {day_text(admitted)}"
    s = h.slots
    attended = int(np.count_nonzero((s["status"] == "attended")
                                    & (s["days_ago"] <= SESSION_WINDOW_DAYS)))
    stage = _alliance_stage(h, attended, days, t)
    if stage is not None:
        return Phrase("ALLIANCE_STAGE", f"{capital(STAGE_PHRASES[stage])} of the alliance: "
                      f"{plural(attended, 'session')} attended in the last 3 months, admitted "
                      f"{plural(days, 'day')} ago on {day_text(admitted)}", CONTEXT)
    words = "In the first weeks of treatment" if days < 42 else "In treatment"
    return Phrase("STAGE", f"{words}: {since}", CONTEXT)


# The four stages as a context sentence names them.
STAGE_PHRASES = {"engagement": "engagement stage", "exploration": "exploration stage",
                 "working": "working phase", "resolution": "resolution stage"}


def _alliance_stage(h: History, attended: int, days: int, t: Thresholds) -> str | None:
    """The stage of the alliance by the rule the client page shows (``casework.stage``),
    from the rows the reasons hold: None when the data cannot tell."""
    planned = h.episode.get("planned_discharge_on")
    to_planned = (None if planned is None or pd.isna(planned)
                  else int((pd.Timestamp(planned) - as_timestamp(h.as_of)).days))
    m = h.measures
    rated = m.where((m["rater"] == "client") & m.isin("instrument", ("SRS", "WAI-SR"))
                    & ~np.isnan(m["score_total"].astype(float)))
    established = None
    if not rated.empty:
        last = rated.row(-1)
        score = float(last["score_total"])
        established = (score >= SRS_CUTOFF if last["instrument"] == "SRS" else
                       round(score / WAI_SR_N_ITEMS, 1) >= t.working_alliance.concern_below)
    return stage_of(attended, days, to_planned, established)


PROGRAM_WORDS = {
    "outpatient": "outpatient",
    "intensive_outpatient": "intensive outpatient",
    "residential": "residential",
    "partial_hospitalization": "partial hospitalization",
    "medication_assisted": "medication-assisted treatment",
    "detox": "detox",
    "other": "other",
}


def phrase_setting(h: History, lead: str, wanted: str,
                   t: Thresholds) -> Phrase | Missing | None:
    """How care is delivered: program, telehealth and group shares, the clinic's own
    cancellations, and how far ahead sessions were booked."""
    recent = _recent_facing(h, 90)
    if lead == "telehealth_share_90d":
        att = recent.where(recent["status"] == "attended")
        tele = att.where(att["telehealth"].astype(bool))
        if att.empty:
            return Phrase("NO_RECENT_SESSIONS", "No sessions attended in the last 3 months",
                          CONTEXT)
        return Phrase("TELEHEALTH", f"{len(tele)} of {len(att)} sessions attended in the last 3 "
                      "months were by telehealth", CONTEXT, tele.ids("appointment_id"))
    if lead == "group_share_90d":
        groups = recent.where(recent["service_type"] == "group")
        if recent.empty:
            return Phrase("NO_RECENT_SESSIONS", "No sessions scheduled in the last 3 months",
                          CONTEXT)
        return Phrase("GROUP", f"{len(groups)} of {len(recent)} sessions in the last 3 months "
                      "were group sessions", CONTEXT, groups.ids("appointment_id"))
    if lead == "clinic_cancelled_28d":
        s = h.slots
        by_clinic = s.where((s["days_ago"] <= 28) & (s["status"] == "cancelled_by_clinic"))
        if by_clinic.empty:
            return Phrase("NO_CLINIC_CANCELLATIONS",
                          "The clinic cancelled no session in the last 4 weeks", CONTEXT)
        return Phrase("CLINIC_CANCELLED", f"The clinic cancelled "
                      f"{plural(len(by_clinic), 'session')} in the last 4 weeks, on "
                      f"{days_list(list(by_clinic['scheduled_at']))}",
                      CONTEXT, by_clinic.ids("appointment_id"))
    if lead == "booking_lead_days_90d":
        # A booking counts only if it was made before the as-of date.
        at = recent["booked_at"].astype("datetime64[ns]")
        booked = recent.where(~np.isnat(at) & (at < as_timestamp(h.as_of).to_datetime64()))
        if booked.empty:
            return Phrase("NO_BOOKINGS", "No booking dates for the sessions of the last 3 months",
                          CONTEXT)
        # Calendar days from the day booked to the day of the session.
        leads = (booked["scheduled_at"].astype("datetime64[D]")
                 - booked["booked_at"].astype("datetime64[D]")).astype(np.int64)
        median = float(np.median(leads))
        return Phrase("BOOKING_LEAD", f"Sessions in the last 3 months were booked a median of "
                      f"{score_text(median)} {'day' if median == 1 else 'days'} ahead "
                      f"({plural(len(leads), 'session')})", CONTEXT,
                      booked.ids("appointment_id"))
    program = PROGRAM_WORDS.get(str(h.episode["program"]), str(h.episode["program"]))
    return Phrase("PROGRAM", f"In the {program} program", CONTEXT)


def phrase_measurement(h: History, lead: str, wanted: str,
                       t: Thresholds) -> Phrase | Missing | None:
    """How the alliance is measured: when the latest session rating and working alliance
    questionnaire were taken, and the sessions attended since the latest session rating."""
    if lead == "attended_since_srs_90d":
        return _attended_since_rating(h)
    if lead == "days_since_wai":
        m = h.measures
        rows, words, code = m.where(m["instrument"] == "WAI-SR"), WAI_WORDS, "WAI"
    else:
        rows, words, code = _rated(h, "SRS"), SRS_WORDS, "SRS"
    if rows.empty:
        return Phrase(f"{code}_NEVER", f"No {words} recorded yet", CONTEXT)
    last = rows.row(-1)
    days = calendar_days(last["administered_at"], h.as_of)
    return Phrase(f"{code}_LAST", f"Last {words} {plural(days, 'day')} ago, on "
                  f"{day_text(last['administered_at'])}", CONTEXT,
                  measure_ids=[last["measure_id"]])


def _attended_since_rating(h: History) -> Phrase:
    """Sessions attended in the last 3 months on a day after the latest session rating."""
    recent = _recent_facing(h, 90)
    attended = recent.where(recent["status"] == "attended")
    srs = _rated(h, "SRS")
    last = srs.row(-1) if len(srs) else None
    day = pd.Timestamp(last["administered_at"]).normalize() if last is not None else None
    since = attended if day is None else attended.where(
        attended["scheduled_at"].astype("datetime64[D]") > day.to_datetime64())
    ids = since.ids("appointment_id")
    window = as_timestamp(h.as_of) - pd.Timedelta(days=90)
    if last is not None and day is not None and day >= window:
        counted = capital(plural(len(since), "session")) if len(since) else "No session"
        return Phrase("ATTENDED_SINCE_SRS", f"{counted} attended since the last {SRS_WORDS}, "
                      f"on {day_text(day)}", CONTEXT, ids, [last["measure_id"]])
    if attended.empty:
        return Phrase("NO_RECENT_SESSIONS", "No sessions attended in the last 3 months",
                      CONTEXT)
    return Phrase("NONE_RATED", f"{capital(plural(len(since), 'session'))} attended in the last "
                  f"3 months, none on a day with a {SRS_WORDS}", CONTEXT, ids)


PHRASERS: dict[str, Phraser] = {
    spec.INCONSISTENT_ENGAGEMENT: phrase_inconsistent_engagement,
    spec.DISENGAGEMENT: phrase_disengagement,
    spec.ALLIANCE_RUPTURE: phrase_alliance_rupture,
    spec.WEAK_BOND: phrase_alliance_item,
    spec.GOAL_TASK_DISAGREEMENT: phrase_alliance_item,
    spec.RATER_GAP: phrase_rater_gap,
    spec.EARLY_TREATMENT: phrase_early_treatment,
    spec.SETTING: phrase_setting,
    spec.MEASUREMENT: phrase_measurement,
}
