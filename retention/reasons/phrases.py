"""Reasons in words: one phraser per family, from the client's own rows.

Each phraser gets the episode's history, the feature that leads the family's
contribution, and whether the family raises risk, and returns a sentence with the
ids of the appointments and measures behind it.
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

from retention.clinic import contract
from retention.clinic.data import as_timestamp
from retention.clinic.instruments import SRS_CUTOFF
from retention.features import spec
from retention.reasons.history import History, Rows

MAX_SENTENCE = 120


@dataclass(frozen=True)
class Phrase:
    """A variant code, its sentence, and the rows behind it."""

    variant: str
    text: str
    appointment_ids: list[str] = field(default_factory=list)
    measure_ids: list[str] = field(default_factory=list)


Phraser = Callable[[History, str, bool], Phrase]


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


def _recent_facing(h: History, days: int) -> Rows:
    s = h.slots
    return s.where((s["days_ago"] <= days) & s.isin("status", contract.CLIENT_STATUSES))


def phrase_inconsistent_engagement(h: History, lead: str, raises: bool) -> Phrase:
    """Misses and cancellations in the last 4 weeks (or 3 months when that drives risk)."""
    days, span = (90, "3 months") if lead == "miss_rate_90d" else (28, "4 weeks")
    facing = _recent_facing(h, days)
    n = len(facing)
    missed = facing.where(facing.isin("status", contract.MISSED_STATUSES))
    if raises and len(missed):
        parts = []
        for status, word in (("no_show", "no-show"), ("late_cancel", "late cancellation")):
            rows = missed.where(missed["status"] == status)
            if len(rows):
                on = days_list(list(rows["scheduled_at"]))
                parts.append(f"{plural(len(rows), word)} on {on}")
        text = f"Missed {len(missed)} of {n} sessions in the last {span}: " + ", ".join(parts)
        if len(text) > MAX_SENTENCE:
            counts = [p.split(" on ")[0] for p in parts]
            text = f"Missed {len(missed)} of {n} sessions in the last {span}: " + ", ".join(counts)
        return Phrase("MISSED_SESSIONS", text, missed.ids("appointment_id"))
    cancelled = facing.where(facing["status"] == "cancelled_by_client")
    if raises and len(cancelled):
        return Phrase(
            "CLIENT_CANCELLED",
            f"Cancelled {len(cancelled)} of {n} sessions in the last {span}, on "
            f"{days_list(list(cancelled['scheduled_at']))}",
            cancelled.ids("appointment_id"),
        )
    if n == 0:
        return Phrase("NO_SESSIONS", f"No sessions were scheduled in the last {span}")
    attended = facing.where(facing["status"] == "attended")
    if not raises and len(attended) == n:
        what = f"all {n} sessions" if n > 1 else "the one session"
        return Phrase(
            "ATTENDED_ALL",
            f"Attended {what} scheduled in the last {span}",
            attended.ids("appointment_id"),
        )
    return Phrase(
        "ATTENDANCE",
        f"Attended {len(attended)} of {n} sessions scheduled in the last {span}",
        facing.ids("appointment_id"),
    )


def phrase_disengagement(h: History, lead: str, raises: bool) -> Phrase:
    """Time since last attended, the current run of misses, and what is booked."""
    s = h.slots
    attended = np.flatnonzero(s["status"] == "attended")
    last = s.row(attended[-1]) if len(attended) else None
    since = last["scheduled_at"] if last is not None else None
    missed = s.isin("status", contract.MISSED_STATUSES)
    streak = s.where(missed if since is None else missed & (s["scheduled_at"] > since))
    last_ids = [str(last["appointment_id"])] if last is not None else []
    # Calendar days, as the date beside them reads: a session yesterday is 1 day ago.
    if since is None:
        admitted = pd.Timestamp(h.episode["admitted_on"])
        ago = plural(calendar_days(admitted, h.as_of), "day")
        last_text = f"no session attended since admission {ago} ago, on {day_text(admitted)}"
    else:
        ago = plural(calendar_days(since, h.as_of), "day")
        last_text = f"last attended {ago} ago, on {day_text(since)}"
    soon = np.count_nonzero(h.ahead["days_ahead"] < 14)
    if raises:
        if lead == "consecutive_misses" and len(streak):
            return Phrase(
                "CONSECUTIVE_MISSES",
                (f"Missed the last {len(streak)} sessions in a row; {last_text}"
                 if len(streak) > 1 else f"Missed the last session; {last_text}"),
                streak.ids("appointment_id") + last_ids,
            )
        if lead in ("booked_next_14d", "days_to_next_booked"):
            if soon == 0 and len(h.ahead) == 0:
                return Phrase("NOTHING_BOOKED", f"Nothing booked ahead; {last_text}", last_ids)
            if soon == 0:
                nxt = h.ahead.row(0)
                return Phrase(
                    "NEXT_BOOKING_FAR",
                    "No session in the next 2 weeks; next booked on "
                    + day_text(nxt["scheduled_at"]),
                    [str(nxt["appointment_id"])],
                )
        text = last_text[0].upper() + last_text[1:]
        if len(h.ahead) == 0:
            text += "; nothing booked ahead"
        return Phrase("NO_RECENT_ATTENDANCE", text, streak.ids("appointment_id") + last_ids)
    text = last_text[0].upper() + last_text[1:]
    if len(h.ahead):
        nxt = h.ahead.row(0)
        text += f"; next session booked for {day_text(nxt['scheduled_at'])}"
        return Phrase("ENGAGED", text, [*last_ids, str(nxt["appointment_id"])])
    return Phrase("ENGAGED", text, last_ids)


def _rated(h: History, instrument: str, rater: str = "client") -> Rows:
    m = h.measures
    return m.where((m["instrument"] == instrument) & (m["rater"] == rater)
                   & ~np.isnan(m["score_total"]))


def phrase_alliance_rupture(h: History, lead: str, raises: bool) -> Phrase:
    """Session ratings: a drop from the previous session, or scores under 36."""
    instrument, label = ("GSRS", "group session rating (GSRS)") if lead.startswith(
        "gsrs"
    ) else ("SRS", "session rating (SRS)")
    rated = _rated(h, instrument)
    if rated.empty:
        return Phrase(f"{instrument}_NONE", f"No {label} recorded yet")
    latest = rated.row(-1)
    when = day_text(latest["administered_at"])
    if lead.endswith("_change") and len(rated) >= 2:
        prev = rated.row(-2)
        a, b = score_text(prev["score_total"]), score_text(latest["score_total"])
        verb = "fell" if latest["score_total"] < prev["score_total"] else (
            "rose" if latest["score_total"] > prev["score_total"] else "stayed"
        )
        text = (f"{label[0].upper() + label[1:]} {verb} from {a} to {b} on {when}"
                if verb != "stayed" else
                f"{label[0].upper() + label[1:]} stayed at {b} on {when}")
        ids = [prev["measure_id"], latest["measure_id"]]
        return Phrase(f"{instrument}_CHANGE", text, measure_ids=ids)
    if lead == "srs_below_cutoff_last3":
        last3 = rated.tail(3)
        below = int(np.count_nonzero(last3["score_total"] < SRS_CUTOFF))
        return Phrase(
            "SRS_BELOW_36_REPEATED",
            f"{below} of the last {len(last3)} session ratings (SRS) were below 36",
            measure_ids=last3.ids("measure_id"),
        )
    score = float(latest["score_total"])
    side = "below" if score < SRS_CUTOFF else "at or above"
    return Phrase(
        f"{instrument}_LATEST",
        f"Latest {label} was {score_text(score)} on {when}, {side} the concern line of 36",
        measure_ids=[latest["measure_id"]],
    )


SRS_ITEM_WORDS = {
    "srs_relationship_latest": ("relationship", "the relationship"),
    "srs_goals_latest": ("goals", "goals and topics"),
    "srs_approach_latest": ("approach", "the approach"),
}
WAI_WORDS = {"goal": "agreement on goals", "task": "agreement on tasks", "bond": "bond"}


def _phrase_srs_item(h: History, lead: str) -> Phrase:
    item, words = SRS_ITEM_WORDS[lead]
    rated = _rated(h, "SRS")
    if rated.empty:
        return Phrase("SRS_NONE", "No session rating (SRS) recorded yet")
    latest = rated.row(-1)
    mid = latest["measure_id"]
    value = float(latest[f"srs_{item}"])
    if math.isnan(value):
        return Phrase("SRS_ITEMS_NONE", "Latest session rating (SRS) has no item scores",
                      measure_ids=[mid])
    return Phrase(
        f"SRS_{item.upper()}",
        f"Rated {words} {score_text(value)} of 10 on the session rating (SRS) of "
        f"{day_text(latest['administered_at'])}",
        measure_ids=[mid],
    )


def _wai(h: History, rater: str) -> Rows:
    m = h.measures
    return m.where((m["instrument"] == "WAI-SR") & (m["rater"] == rater))


def _phrase_wai(h: History, rater: str, scale: str) -> Phrase:
    wai = _wai(h, rater)
    who = "Client" if rater == "client" else "Therapist"
    if wai.empty:
        return Phrase("WAI_NONE", f"No {rater}-rated working alliance (WAI-SR) recorded yet")
    latest = wai.row(-1)
    if pd.isna(latest[scale]):
        return Phrase(
            "WAI_UNSCORED",
            f"{who}-rated working alliance (WAI-SR) of {day_text(latest['administered_at'])} "
            "has no subscale scores",
            measure_ids=[latest["measure_id"]],
        )
    return Phrase(
        f"WAI_{rater.upper()}_{scale.upper()}",
        f"{who}-rated {WAI_WORDS[scale]} (WAI-SR) was {latest[scale]:.1f} of 5 on "
        f"{day_text(latest['administered_at'])}",
        measure_ids=[latest["measure_id"]],
    )


def phrase_alliance_item(h: History, lead: str, raises: bool) -> Phrase:
    """Bond, goals and tasks: an SRS item or a WAI-SR subscale by rater, whichever leads.

    Serves two families: weak bond or trust (WAI-SR bond, SRS relationship) and
    disagreement on goals or tasks (WAI-SR goal and task, SRS goals and approach).
    """
    if lead.startswith("srs_"):
        return _phrase_srs_item(h, lead)
    _, rater, scale = lead.split("_")
    return _phrase_wai(h, rater, scale)


def phrase_rater_gap(h: History, lead: str, raises: bool) -> Phrase:
    """Client and therapist rating the working alliance differently."""
    client, therapist = _wai(h, "client"), _wai(h, "therapist")
    if client.empty or therapist.empty:
        return Phrase("WAI_PAIR_NONE", "No client and therapist working alliance (WAI-SR) pair yet")
    c, t = client.row(-1), therapist.row(-1)
    cm, tm = float(c["wai_item_mean"]), float(t["wai_item_mean"])
    if math.isnan(cm) or math.isnan(tm):
        return Phrase("WAI_PAIR_UNSCORED",
                      "Latest client and therapist working alliance (WAI-SR) pair has no scores",
                      measure_ids=[c["measure_id"], t["measure_id"]])
    return Phrase(
        "WAI_GAP",
        f"Working alliance (WAI-SR): client rates it {cm:.1f}, therapist {tm:.1f} of 5 "
        f"({day_text(max(c['administered_at'], t['administered_at']))})",
        measure_ids=[c["measure_id"], t["measure_id"]],
    )


def phrase_early_treatment(h: History, lead: str, raises: bool) -> Phrase:
    """Where the client is in the episode: first weeks, or near the planned end."""
    cutoff = as_timestamp(h.as_of)
    if lead == "days_to_planned_end":
        planned = h.episode.get("planned_discharge_on")
        if planned is None or pd.isna(planned):
            return Phrase("NO_PLANNED_END", "No planned discharge date recorded")
        days = int((pd.Timestamp(planned) - cutoff).days)
        if days < 0:
            return Phrase(
                "PAST_PLANNED_END",
                f"Past the planned discharge date of {day_text(planned)} by {plural(-days, 'day')}",
            )
        return Phrase("PLANNED_END",
                      f"Planned discharge in {plural(days, 'day')}, on {day_text(planned)}")
    admitted = pd.Timestamp(h.episode["admitted_on"])
    days = int((cutoff - admitted).days)
    weeks = f" ({plural(days // 7, 'week')})" if days >= 7 else ""
    stage = "In the first weeks of treatment" if days < 42 else "In treatment"
    return Phrase(
        "STAGE",
        f"{stage}: admitted {plural(days, 'day')} ago{weeks}, on {day_text(admitted)}",
    )


PROGRAM_WORDS = {
    "outpatient": "outpatient",
    "intensive_outpatient": "intensive outpatient",
    "residential": "residential",
    "partial_hospitalization": "partial hospitalization",
    "medication_assisted": "medication-assisted treatment",
    "detox": "detox",
    "other": "other",
}


def phrase_setting(h: History, lead: str, raises: bool) -> Phrase:
    """How care is delivered: program, telehealth and group shares."""
    recent = _recent_facing(h, 90)
    if lead == "telehealth_share_90d":
        att = recent.where(recent["status"] == "attended")
        tele = att.where(att["telehealth"].astype(bool))
        if att.empty:
            return Phrase("NO_RECENT_SESSIONS", "No sessions attended in the last 3 months")
        return Phrase(
            "TELEHEALTH",
            f"{len(tele)} of {len(att)} sessions attended in the last 3 months were by telehealth",
            tele.ids("appointment_id"),
        )
    if lead == "group_share_90d":
        groups = recent.where(recent["service_type"] == "group")
        if recent.empty:
            return Phrase("NO_RECENT_SESSIONS", "No sessions scheduled in the last 3 months")
        return Phrase(
            "GROUP",
            f"{len(groups)} of {len(recent)} sessions in the last 3 months were group sessions",
            groups.ids("appointment_id"),
        )
    program = PROGRAM_WORDS.get(str(h.episode["program"]), str(h.episode["program"]))
    return Phrase("PROGRAM", f"In the {program} program")


PHRASERS: dict[str, Phraser] = {
    spec.INCONSISTENT_ENGAGEMENT: phrase_inconsistent_engagement,
    spec.DISENGAGEMENT: phrase_disengagement,
    spec.ALLIANCE_RUPTURE: phrase_alliance_rupture,
    spec.WEAK_BOND: phrase_alliance_item,
    spec.GOAL_TASK_DISAGREEMENT: phrase_alliance_item,
    spec.RATER_GAP: phrase_rater_gap,
    spec.EARLY_TREATMENT: phrase_early_treatment,
    spec.SETTING: phrase_setting,
}
