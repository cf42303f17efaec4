"""What case managers did about the list: calls, texts and visits, and how they went.

Domain code without Flask. Each row says who reached out (key id), to which client
and episode, on which published list (its as-of date, with the risk and tier shown),
whether the client was reached, how, and what came of it, with a short note written
by the case manager. Kept so that two people do not call the same client, and so
that monitoring can measure the model on clients nobody contacted (an outreach that
worked hides the dropout the model predicted). Functions take a connection first and
never commit.

An entry belongs to the clinic it was recorded in. A client who moves clinic keeps one
client id, so what a reader sees is chosen by the entry's clinic (the caller's clinics),
never by the client id alone: a note written in clinic-north is not shown in clinic-east.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

from sqlalchemy import ColumnElement, Connection, false, func, insert, select, true

from retention.access.keys import Caller
from retention.clock import utcnow
from retention.store.tables import NOTE_MAX, outreach

CHANNELS = ("phone", "text", "email", "in_person", "letter")
OUTCOMES = ("re_engaged", "booked", "declined", "other")
# The words the pages and their error messages use for the stored codes.
CHANNEL_WORDS = {"phone": "phone", "text": "text message", "email": "email",
                 "in_person": "in person", "letter": "letter"}
OUTCOME_WORDS = {"re_engaged": "re-engaged", "booked": "booked a session",
                 "declined": "declined", "other": "other"}
# One-click results from the calling list: (reached, outcome).
QUICK_RESULTS = {"no_answer": (False, None), "booked": (True, "booked"),
                 "re_engaged": (True, "re_engaged"), "declined": (True, "declined")}


class OutreachError(ValueError):
    """An outreach entry that cannot be recorded as given."""


@dataclass(frozen=True)
class Outreach:
    """One attempt to reach a client, as the case manager reports it."""

    client_id: str
    episode_id: str
    clinic_id: str
    list_as_of: date
    risk: float
    tier: str
    key_id: str
    reached: bool
    channel: str
    outcome: str | None = None
    note: str | None = None
    case_manager_id: str | None = None


def parse_entry(form: Mapping[str, str]) -> tuple[bool, str, str | None, str | None]:
    """Check a submitted entry; returns (reached, channel, outcome, note) or says what is wrong."""
    quick = form.get("quick")
    if quick:  # one button on the calling list: the result and outcome in one
        if quick not in QUICK_RESULTS:
            raise OutreachError("that call result is not one the list offers")
        reached, outcome = QUICK_RESULTS[quick]
    else:
        result = form.get("result", "")
        if result not in ("reached", "not_reached"):
            raise OutreachError("choose whether you contacted the client or did not reach "
                                "them")
        reached = result == "reached"
        outcome = form.get("outcome") or None
    channel = form.get("channel", "")
    if channel not in CHANNELS:
        raise OutreachError("choose how you reached out: "
                            + _either(CHANNEL_WORDS[c] for c in CHANNELS))
    if reached and outcome not in OUTCOMES:
        raise OutreachError("you chose Contacted: choose what came of it ("
                            + _either(OUTCOME_WORDS[o] for o in OUTCOMES)
                            + "), or choose Not reached")
    if not reached and outcome is not None:
        raise OutreachError("you chose Not reached, so leave the outcome empty, or choose "
                            "Contacted")
    note = " ".join((form.get("note") or "").split()) or None
    if note is not None and len(note) > NOTE_MAX:
        raise OutreachError(f"keep the note to {NOTE_MAX} characters (it has {len(note)})")
    return reached, channel, outcome, note


def _either(words: Iterable[str]) -> str:
    listed = list(words)
    return ", ".join(listed[:-1]) + " or " + listed[-1]


def record_outreach(connection: Connection, entry: Outreach, at: datetime | None = None) -> int:
    """Store one entry; returns its id."""
    if entry.channel not in CHANNELS:
        raise OutreachError(f"unknown channel {entry.channel!r}")
    if entry.outcome is not None and (not entry.reached or entry.outcome not in OUTCOMES):
        raise OutreachError(f"outcome {entry.outcome!r} does not fit this entry")
    if entry.note is not None and len(entry.note) > NOTE_MAX:
        raise OutreachError(f"the note is longer than {NOTE_MAX} characters")
    result = connection.execute(insert(outreach).values(
        recorded_at=at or utcnow(), client_id=entry.client_id,
        episode_id=entry.episode_id, clinic_id=entry.clinic_id, list_as_of=entry.list_as_of,
        risk=entry.risk, tier=entry.tier, key_id=entry.key_id,
        case_manager_id=entry.case_manager_id, reached=entry.reached, channel=entry.channel,
        outcome=entry.outcome, note=entry.note,
    ))
    return int(result.inserted_primary_key[0])  # type: ignore[index]


def clinic_scope(caller: Caller) -> ColumnElement[bool]:
    """The entries ``caller`` may read: those recorded in one of their clinics.

    By clinic, not by caseload: colleagues in one clinic see each other's entries, so two
    of them do not call the same client.
    """
    if not caller.reads_client_data:
        return false()
    if caller.clinics is None:
        return true()
    return outreach.c.clinic_id.in_(caller.clinics)


def client_history(connection: Connection, caller: Caller, client_id: str, limit: int = 50
                   ) -> list[dict[str, Any]]:
    """A client's outreach recorded in the caller's clinics, newest first."""
    rows = connection.execute(
        select(outreach).where(outreach.c.client_id == client_id, clinic_scope(caller))
        .order_by(outreach.c.recorded_at.desc(), outreach.c.outreach_id.desc()).limit(limit)
    )
    return [dict(r._mapping) for r in rows]


def latest_since(
    connection: Connection, caller: Caller, client_ids: Iterable[str], since: datetime
) -> dict[str, dict[str, Any]]:
    """Per client, the newest entry recorded in the caller's clinics at or after ``since``
    (clients without one absent)."""
    ids = sorted(set(client_ids))
    if not ids:
        return {}
    newest = (
        select(outreach.c.client_id, func.max(outreach.c.outreach_id).label("last_id"))
        .where(outreach.c.recorded_at >= since, outreach.c.client_id.in_(ids),
               clinic_scope(caller))
        .group_by(outreach.c.client_id).subquery()
    )
    rows = connection.execute(
        select(outreach).join(newest, outreach.c.outreach_id == newest.c.last_id)
    )
    return {r.client_id: dict(r._mapping) for r in rows}


def attempts_since(
    connection: Connection, caller: Caller, client_ids: Iterable[str], since: datetime
) -> dict[str, int]:
    """Per client, how many entries were recorded in the caller's clinics at or after
    ``since`` (clients without one absent): a third call this week reads differently."""
    ids = sorted(set(client_ids))
    if not ids:
        return {}
    rows = connection.execute(
        select(outreach.c.client_id, func.count().label("n"))
        .where(outreach.c.recorded_at >= since, outreach.c.client_id.in_(ids),
               clinic_scope(caller))
        .group_by(outreach.c.client_id)
    )
    return {r.client_id: int(r.n) for r in rows}


def contacted_episodes(connection: Connection, start: datetime, end: datetime) -> set[str]:
    """Episodes with any outreach recorded in ``[start, end)``: monitoring leaves them out."""
    rows = connection.execute(
        select(outreach.c.episode_id).distinct()
        .where(outreach.c.recorded_at >= start, outreach.c.recorded_at < end)
    )
    return {r.episode_id for r in rows}
