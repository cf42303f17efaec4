"""Reads of the published list limited to a caller's scope, with filters and paging.

The scope is part of every query, never a filter applied after reading, so a row
outside it cannot reach the API layer by mistake. Ranks are positions within what the
caller sees (their scope and filters): 1, 2, 3 ... with no gaps, so nothing read
reveals how many clients of other clinics or caseloads rank above.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Connection,
    FromClause,
    Select,
    and_,
    bindparam,
    exists,
    false,
    func,
    select,
    true,
)

from retention.access import consent
from retention.access.audit import Condition
from retention.access.keys import Caller
from retention.store.lists import score_row
from retention.store.tables import publications, scores


@dataclass(frozen=True)
class ListFilter:
    """What the caller asked to narrow the list to."""

    clinic_id: str | None = None
    case_manager_id: str | None = None
    program: str | None = None
    tier: str | None = None
    min_risk: float | None = None
    still_engaged: bool | None = None
    # How many rows of this filtered view earlier pages held (the next page's first
    # position is one more).
    offset: int = 0


def scope_clause(caller: Caller, table: FromClause = scores,
                 policy: consent.Policy | None = None) -> ColumnElement[bool]:
    """The SQL condition for the rows of ``table`` (the scores, or an alias) this caller
    may see. An outside recipient sees only clients consented under ``policy`` (none
    without one)."""
    if not caller.reads_client_data:
        return false()
    conditions: list[ColumnElement[bool]] = []
    if consent.is_outside(caller):
        if policy is None:
            return false()
        conditions.append(consent.consented_clause(caller, table.c.client_id, policy))
    if caller.clinics is not None:
        conditions.append(table.c.clinic_id.in_(caller.clinics))
    if caller.case_manager_id is not None:
        conditions.append(table.c.case_manager_id == caller.case_manager_id)
    return and_(*conditions) if conditions else true()


def scope_of(caller: Caller) -> tuple[bool, tuple[str, ...] | None, str | None]:
    """What ``scope_clause`` depends on: callers with equal scopes see the same rows."""
    return caller.reads_client_data, caller.clinics, caller.case_manager_id


_p = publications
_SAME_PUBLICATION = exists().where(
    _p.c.as_of == bindparam("claim_as_of"), _p.c.run_id == bindparam("claim_run_id"),
    _p.c.published_at == bindparam("claim_published_at"),
)
_NONE_NEWER = ~exists().where(_p.c.as_of > bindparam("claim_as_of"))
_LATEST = and_(_SAME_PUBLICATION, _NONE_NEWER)  # built once: every API request names it


def still_published(pub: dict[str, Any], latest: bool) -> Condition:
    """``pub`` is still the list served: not replaced, and (if ``latest``) none newer since.

    A list is replaced as a whole under a new run id (``store.lists.publish_scores``), so
    while this holds every row read from it earlier is still what it holds.
    """
    params = {"claim_as_of": pub["as_of"], "claim_run_id": pub["run_id"],
              "claim_published_at": pub["published_at"]}
    if latest:
        return Condition("latest_list", _LATEST, params)
    return Condition("list", _SAME_PUBLICATION, params)


def read_page(
    connection: Connection, caller: Caller, as_of: date, flt: ListFilter, limit: int,
    policy: consent.Policy | None = None,
) -> tuple[list[dict[str, Any]], bool]:
    """One page of the filtered list in rank order from ``flt.offset``; and whether more
    follow. Each row's ``rank`` is its position in the caller's filtered view."""
    query: Select[Any] = select(scores).where(scores.c.as_of == as_of,
                                              scope_clause(caller, policy=policy))
    for column, value in (("clinic_id", flt.clinic_id), ("case_manager_id", flt.case_manager_id),
                          ("program", flt.program), ("tier", flt.tier),
                          ("still_engaged", flt.still_engaged)):
        if value is not None:
            query = query.where(scores.c[column] == value)
    if flt.min_risk is not None:
        query = query.where(scores.c.risk >= flt.min_risk)
    rows = connection.execute(
        query.order_by(scores.c.rank).offset(flt.offset).limit(limit + 1)).fetchall()
    page = []
    for position, r in enumerate(rows[:limit], start=flt.offset + 1):
        row = score_row(r._mapping)
        row["rank"] = position
        page.append(row)
    return page, len(rows) > limit


def read_client(
    connection: Connection, caller: Caller, client_id: str, until: date, limit: int = 12,
    policy: consent.Policy | None = None,
) -> list[dict[str, Any]]:
    """A client's published rows up to ``until`` inside the caller's scope, newest first.

    Each row's ``rank`` is its position among the rows the caller sees on that list.
    """
    other = scores.alias("seen")
    position = (
        select(func.count()).select_from(other)
        .where(other.c.as_of == scores.c.as_of, other.c.rank <= scores.c.rank,
               scope_clause(caller, other, policy))
        .scalar_subquery()
    )
    published = select(publications.c.as_of)
    query = (
        select(scores, position.label("scope_rank"))
        .where(scores.c.client_id == client_id, scores.c.as_of <= until,
               scores.c.as_of.in_(published), scope_clause(caller, policy=policy))
        .order_by(scores.c.as_of.desc(), scores.c.risk.desc())
        .limit(limit)
    )
    out = []
    for r in connection.execute(query):
        values = dict(r._mapping)
        scope_rank = values.pop("scope_rank")
        row = score_row(values)
        row["rank"] = int(scope_rank)
        out.append(row)
    return out


def client_exists(connection: Connection, client_id: str, as_of: date | None = None) -> bool:
    """Whether the client is on a list (that of ``as_of``, or any), to audit a denial as one."""
    query = select(scores.c.episode_id).where(scores.c.client_id == client_id)
    if as_of is not None:
        query = query.where(scores.c.as_of == as_of)
    return connection.execute(query.limit(1)).first() is not None

