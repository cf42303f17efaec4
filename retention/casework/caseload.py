"""A case manager's day: the list in their scope with what changed, and one client's story.

Domain code without Flask, read by the case managers' pages. Every query carries the
caller's scope (``access.scope.scope_clause``) so a row outside it is never read. The
client's story reads only that client's rows of the store's clinic copy: appointments,
and SRS, GSRS and WAI-SR totals (never demographics, never free text).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Any

from sqlalchemy import Connection, func, select

from retention.access.keys import Caller
from retention.access.scope import ListFilter, read_client, read_page, scope_clause
from retention.casework import outreach
from retention.clinic.instruments import SRS_CUTOFF
from retention.store.tables import copies, publications, scores

SORTS = ("rank", "change", "last_attended", "next_booked")
TIER_ORDER = {"low": 0, "medium": 1, "high": 2}
# A move of this many points of risk (absolute) counts as up or down without a tier change.
CHANGE_POINTS = 5.0
# A session rating this many points below the previous one is a rupture, as is a fall
# from at or above the concern line of 36 to below it.
RUPTURE_DROP = 5.0
MAX_LIST = 5000

appointments = copies["appointments"]
measures = copies["alliance_measures"]


SHOWS = ("engaged", "all")


@dataclass(frozen=True)
class DailyFilter:
    """What the case manager narrowed and ordered the list by.

    ``show``: "engaged" (the default) keeps the clients still attending, where a call can
    still change the outcome; "all" adds those who have already stopped coming.
    ``case_manager``: one caseload, for a caller who sees a whole clinic.
    """

    program: str | None = None
    tier: str | None = None
    show: str = "engaged"
    sort: str = "rank"
    case_manager: str | None = None


@dataclass
class DailyList:
    """The rows to show, the counts behind the view switch, and the list compared against."""

    as_of: date
    rows: list[dict[str, Any]]
    previous_as_of: date | None
    # Rows the filters allow, still engaged and all of them; and the caller's whole scope.
    engaged_count: int = 0
    everyone_count: int = 0
    scope_count: int = 0
    # The caseloads in the caller's scope on this list (for a clinic lead to pick one).
    case_managers: list[str] = field(default_factory=list)


def previous_publication(connection: Connection, as_of: date) -> date | None:
    """The as-of date of the list published before ``as_of``, if any."""
    value = connection.execute(
        select(publications.c.as_of).where(publications.c.as_of < as_of)
        .order_by(publications.c.as_of.desc()).limit(1)
    ).scalar()
    return value if isinstance(value, date) else None


def change_since(row: dict[str, Any], before: tuple[float, str] | None,
                 compared: bool) -> tuple[str, float | None]:
    """("new" | "up" | "down" | "same" | "none", points of risk moved) against the previous list."""
    if not compared:
        return "none", None
    if before is None:
        return "new", None
    risk, tier = before
    points = round((row["risk"] - risk) * 100, 1)
    step = TIER_ORDER.get(row["tier"], 0) - TIER_ORDER.get(tier, 0)
    if step > 0 or (step == 0 and points >= CHANGE_POINTS):
        return "up", points
    if step < 0 or (step == 0 and points <= -CHANGE_POINTS):
        return "down", points
    return "same", points


def daily_list(connection: Connection, caller: Caller, as_of: date, flt: DailyFilter,
               calls_since: datetime) -> DailyList:
    """The list of ``as_of`` in the caller's scope, filtered and sorted, with what changed,
    the calls made since ``calls_since`` and the last outcome recorded for each client."""
    every, _ = read_page(connection, caller, as_of, ListFilter(
        program=flt.program, tier=flt.tier, case_manager_id=flt.case_manager), MAX_LIST)
    engaged = [r for r in every if r["still_engaged"]]
    rows = engaged if flt.show == "engaged" else every
    for position, row in enumerate(rows, start=1):  # positions in this view, as the API
        row["rank"] = position
    before_as_of = previous_publication(connection, as_of)
    before: dict[str, tuple[float, str]] = {}
    if before_as_of is not None:
        found = connection.execute(
            select(scores.c.episode_id, scores.c.risk, scores.c.tier)
            .where(scores.c.as_of == before_as_of, scope_clause(caller))
        )
        before = {r.episode_id: (r.risk, r.tier) for r in found}
    ids = [r["client_id"] for r in rows]
    last = outreach.latest_since(connection, caller, ids, datetime.min)
    attempts = outreach.attempts_since(connection, caller, ids, calls_since)
    for row in rows:
        row["change"], row["change_points"] = change_since(
            row, before.get(row["episode_id"]), before_as_of is not None)
        row["outreach"] = last.get(row["client_id"])
        row["attempts"] = attempts.get(row["client_id"], 0)
    rows.sort(key=_sort_key(flt.sort))
    in_scope = select(scores.c.case_manager_id).where(scores.c.as_of == as_of,
                                                      scope_clause(caller))
    scope_count = connection.execute(
        select(func.count()).select_from(in_scope.subquery())).scalar_one()
    case_managers = sorted(connection.execute(
        in_scope.where(scores.c.case_manager_id.is_not(None)).distinct()).scalars())
    return DailyList(as_of=as_of, rows=rows, previous_as_of=before_as_of,
                     engaged_count=len(engaged), everyone_count=len(every),
                     scope_count=int(scope_count), case_managers=case_managers)


def _sort_key(sort: str) -> Any:
    far = datetime.max
    if sort == "change":
        order = {"new": 0, "up": 1, "same": 2, "none": 2, "down": 3}
        return lambda r: (order[r["change"]], r["rank"])
    if sort == "last_attended":  # longest since last attended first; never attended first of all
        return lambda r: (r["last_attended_on"] or date.min, r["rank"])
    if sort == "next_booked":  # nothing booked first, then the soonest
        return lambda r: (r["next_booked_at"] is not None, r["next_booked_at"] or far, r["rank"])
    return lambda r: r["rank"]


@dataclass
class ClientStory:
    """What the client page shows: current row, risk history, timeline and evidence ids."""

    current: dict[str, Any]
    history: list[dict[str, Any]]
    appointments: list[dict[str, Any]]
    measures: list[dict[str, Any]]
    evidence: set[str] = field(default_factory=set)


def client_story(connection: Connection, caller: Caller, client_id: str, as_of: date,
                 weeks: int = 12) -> ClientStory | None:
    """The client on the list of ``as_of`` and the ``weeks`` before; None if out of scope."""
    start = as_of - timedelta(weeks=weeks)
    history = [h for h in read_client(connection, caller, client_id, as_of,
                                                   limit=weeks * 7 * 2)
               if h["as_of"] >= start]
    current = next((h for h in history if h["as_of"] == as_of), None)
    if current is None:
        return None
    episode = current["episode_id"]
    history = [h for h in history if h["episode_id"] == episode]
    history.sort(key=lambda h: h["as_of"])
    since = datetime.combine(start, datetime.min.time())
    until = datetime.combine(as_of, datetime.min.time())
    slots = connection.execute(
        select(appointments.c.appointment_id, appointments.c.scheduled_at,
               appointments.c.status, appointments.c.service_type, appointments.c.telehealth)
        .where(appointments.c.client_id == client_id, appointments.c.episode_id == episode,
               appointments.c.scheduled_at >= since,
               appointments.c.scheduled_at < until + timedelta(days=28))
        .order_by(appointments.c.scheduled_at)
    )
    rated = connection.execute(
        select(measures.c.measure_id, measures.c.instrument, measures.c.rater,
               measures.c.administered_at, measures.c.score_total)
        .where(measures.c.client_id == client_id, measures.c.episode_id == episode,
               measures.c.administered_at >= since, measures.c.administered_at < until,
               measures.c.instrument.in_(("SRS", "GSRS", "WAI-SR")))
        .order_by(measures.c.administered_at, measures.c.measure_id)
    )
    evidence = {i for r in current.get("reasons", []) for i in
                (*r.get("appointment_ids", []), *r.get("measure_ids", []))}
    return ClientStory(current=current, history=history,
                       appointments=[dict(r._mapping) for r in slots],
                       measures=mark_ruptures([dict(r._mapping) for r in rated]),
                       evidence=evidence)


def mark_ruptures(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Flag session ratings (SRS, GSRS by the client) that fell sharply or crossed under 36."""
    last: dict[str, float] = {}
    for row in rows:
        row["rupture"] = False
        score = row["score_total"]
        if row["instrument"] not in ("SRS", "GSRS") or row["rater"] != "client" or score is None:
            continue
        prev = last.get(row["instrument"])
        if prev is not None and (prev - score >= RUPTURE_DROP
                                 or (prev >= SRS_CUTOFF > score)):
            row["rupture"] = True
        last[row["instrument"]] = score
    return rows
