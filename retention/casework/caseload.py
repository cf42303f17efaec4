"""A case manager's day: the list in their scope with what changed, and one client's story.

Domain code without Flask, read by the case managers' pages. Every query carries the
caller's scope (``access.scope.scope_clause``) so a row outside it is never read. The
client's story reads only the rows of that client's listed episode in the store's clinic
copy, once the scoped read has found the client: the episode's dates, appointments, SRS,
GSRS, WAI-SR and ORS totals, and the therapist's session notes as codes (signs, rupture,
repair steps) -- never demographics, never free text.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Any

import pandas as pd
from sqlalchemy import Connection, func, or_, select

from retention.access.keys import Caller
from retention.access.scope import ListFilter, read_client, read_page, scope_clause
from retention.casework import outreach, repair
from retention.casework.stage import WAI_ESTABLISHED_FROM, AllianceStage, alliance_stage
from retention.clinic import contract
from retention.clinic.instruments import SRS_CUTOFF
from retention.features.observations import SIGN_CODES, noted
from retention.store.tables import copies, publications, scores

SORTS = ("rank", "change", "last_attended", "next_booked")
TIER_ORDER = {"low": 0, "medium": 1, "high": 2}
# A move of this many points of risk (absolute) counts as up or down without a tier change.
CHANGE_POINTS = 5.0
# A session rating this many points below the previous one is a rupture, as is a fall
# from at or above the concern line of 36 to below it: the rule of the ruptures panel
# (``repair.SRS_DROP``, where it is explained).
RUPTURE_DROP = repair.SRS_DROP
MAX_LIST = 5000

appointments = copies["appointments"]
measures = copies["alliance_measures"]
episodes = copies["episodes"]
observations = copies["session_observations"]


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
    """What the client page shows: current row, risk history, timeline and evidence ids;
    the episode's ORS ratings (numbered by session), the therapist's session notes of the
    timeline's weeks, the ruptures and what followed them, and the stage of the alliance."""

    current: dict[str, Any]
    history: list[dict[str, Any]]
    appointments: list[dict[str, Any]]
    measures: list[dict[str, Any]]
    evidence: set[str] = field(default_factory=set)
    ors: list[dict[str, Any]] = field(default_factory=list)
    observations: list[dict[str, Any]] = field(default_factory=list)
    ruptures: list[repair.RuptureCourse] = field(default_factory=list)
    stage: AllianceStage | None = None


def client_story(connection: Connection, caller: Caller, client_id: str, as_of: date,
                 weeks: int = 12, *,
                 wai_from: float = WAI_ESTABLISHED_FROM) -> ClientStory | None:
    """The client on the list of ``as_of`` and the ``weeks`` before; None if out of scope.

    Everything after the scoped read is of that client's listed episode and known at
    ``as_of``; ``wai_from`` is the clinic's WAI-SR concern line (the stage's rule)."""
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
                (*r.get("appointment_ids", []), *r.get("measure_ids", []),
                 *r.get("observation_ids", []))}
    alliance = _episode_frames(connection, client_id, episode, until)
    notes = repair.known_notes(alliance["observations"], as_of)
    course = repair.repair_course(alliance["measures"], alliance["observations"], as_of)
    row = alliance["episode"]
    return ClientStory(current=current, history=history,
                       appointments=[dict(r._mapping) for r in slots],
                       measures=mark_ruptures([dict(r._mapping) for r in rated]),
                       evidence=evidence, ors=ors_by_session(alliance["measures"]),
                       observations=_notes(notes[notes["observed_at"] >= since]),
                       ruptures=course,
                       stage=(alliance_stage({str(k): v for k, v in row.iloc[0].items()},
                                             alliance["appointments"], alliance["measures"],
                                             as_of, wai_from=wai_from)
                              if len(row) else None))


def _episode_frames(connection: Connection, client_id: str, episode: str,
                    until: datetime) -> dict[str, pd.DataFrame]:
    """The episode's row and its whole history before ``until`` (the stage and the
    ruptures look back to the admission, past the timeline's weeks): appointments,
    the client-rated SRS, WAI-SR and ORS, and the session notes."""
    def frame(query: Any) -> pd.DataFrame:
        result = connection.execute(query)
        return pd.DataFrame(result.fetchall(), columns=list(result.keys()))

    mine = (episodes.c.client_id == client_id) & (episodes.c.episode_id == episode)
    return {
        "episode": frame(select(episodes).where(mine)),
        "appointments": frame(
            select(appointments).where(appointments.c.client_id == client_id,
                                       appointments.c.episode_id == episode,
                                       appointments.c.scheduled_at < until)),
        "measures": frame(
            select(measures).where(measures.c.client_id == client_id,
                                   measures.c.episode_id == episode,
                                   measures.c.administered_at < until,
                                   measures.c.rater == "client",
                                   measures.c.instrument.in_(("SRS", "WAI-SR", "ORS")))
            .order_by(measures.c.administered_at, measures.c.measure_id)),
        "observations": frame(
            select(observations).where(
                observations.c.client_id == client_id, observations.c.episode_id == episode,
                observations.c.observed_at < until,
                or_(observations.c.recorded_at.is_(None), observations.c.recorded_at < until))
            .order_by(observations.c.observed_at)),
    }


def ors_by_session(rows: pd.DataFrame) -> list[dict[str, Any]]:
    """The client's ORS totals in order, each numbered by session as the expected course
    numbers them (``clinic.trajectory.session_numbers``): 1 is the intake, the first ORS
    of the episode; n is the n-th."""
    ors = rows[(rows["instrument"] == "ORS") & (rows["rater"] == "client")
               & rows["score_total"].notna()].sort_values(["administered_at", "measure_id"])
    return [{"session": n, "measure_id": str(r["measure_id"]),
             "administered_at": pd.Timestamp(r["administered_at"]).to_pydatetime(),
             "score_total": float(r["score_total"])}
            for n, r in enumerate(ors.to_dict("records"), start=1)]


def _notes(notes: pd.DataFrame) -> list[dict[str, Any]]:
    """Session notes for the page, newest first: signs and repair steps as codes in the
    contract's order (unknown ones left out)."""
    out = []
    newest = notes.sort_values(["observed_at", "observation_id"], ascending=False)
    for r in newest.to_dict("records"):
        out.append({"observation_id": str(r["observation_id"]),
                    "observed_at": pd.Timestamp(r["observed_at"]).to_pydatetime(),
                    "rupture": bool(r["rupture"]),
                    "signs": noted(r["signs"], SIGN_CODES),
                    "repair_steps": noted(r["repair_steps"], contract.REPAIR_STEPS)})
    return out


def mark_ruptures(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Flag session ratings (SRS, GSRS by the client) that fell sharply or crossed under 36."""
    last: dict[str, float] = {}
    for row in rows:
        row["rupture"] = False
        score = row["score_total"]
        if row["instrument"] not in ("SRS", "GSRS") or row["rater"] != "client" or score is None:
            continue
        prev = last.get(row["instrument"])
        if prev is not None and (round(prev - score, 6) >= RUPTURE_DROP
                                 or (prev >= SRS_CUTOFF > score)):
            row["rupture"] = True
        last[row["instrument"]] = score
    return rows
