"""Version 1 of the JSON API: the ranked list and one client's risk, inside the caller's scope."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import date, datetime, timedelta
from typing import Any

import orjson
from flask import Blueprint, Response, jsonify, request
from flask.typing import ResponseReturnValue
from itsdangerous import BadData, URLSafeSerializer
from sqlalchemy import Engine

from retention.access.consent import NOTICE
from retention.access.identifiers import client_by_identifier, identifiers_of
from retention.access.keys import Caller, signing_key
from retention.access.scope import ListFilter, client_exists, read_client, read_page, scope_of
from retention.api.auth import (
    CLIENT_DATA,
    caller,
    claim_publication,
    connection,
    consent_scope,
    disclosable,
    disclosure_policy,
    outside,
    read_cache,
    requires,
    returning,
)
from retention.api.cache import Page
from retention.api.errors import Problem
from retention.api.services import services
from retention.model.drift import drift_explanation
from retention.settings import Settings
from retention.store.lists import latest_publication, run_drift

bp = Blueprint("v1", __name__)

LIST_FIELDS = (
    "rank", "client_id", "episode_id", "clinic_id", "case_manager_id", "program", "risk",
    "tier", "still_engaged", "last_attended_on", "next_booked_at", "reasons", "protective",
    "context", "prompts", "points",
)
TIERS = ("high", "medium", "low")
LIST_PARAMS = {"limit", "cursor", "as_of", "clinic_id", "case_manager_id", "program", "tier",
               "min_risk", "engaged_only"}
INVALID = "Invalid query parameter"
# Cursors are signed (itsdangerous, HMAC-SHA256) with the store's "cursor" key, for
# one view: the caller's scope and the filters. A position is at most this (an int4).
CURSOR_SALT = "retention.cursor"
MAX_POSITION = 2**31 - 1
MAX_CURSOR_LENGTH = 256
# What the signer writes (URL-safe base64 and dots): the FHIR page tokens' form too.
CURSOR_PATTERN = "^[A-Za-z0-9_.-]+$"


def settings() -> Settings:
    return services().settings


def store_engine() -> Engine:
    return services().store


def today() -> date:
    """Today by the app's clock."""
    return services().clock.today()


def parse_date(name: str, args: Mapping[str, str] | None = None) -> date | None:
    raw = (request.args if args is None else args).get(name)
    if raw is None:
        return None
    try:
        return date.fromisoformat(raw)
    except ValueError:
        raise Problem(400, f"{name} must be a date as YYYY-MM-DD, got {raw!r}", INVALID) from None


def parse_limit(args: Mapping[str, str], maximum: int, default: int = 50) -> int:
    """A page size from 1 to ``maximum``: ASCII digits only ('²' passes str.isdigit())."""
    raw = args.get("limit", str(default))
    if not (raw.isascii() and raw.isdigit() and len(raw) <= 9 and 1 <= int(raw) <= maximum):
        raise Problem(400, f"limit must be a whole number from 1 to {maximum}", INVALID)
    return int(raw)


def _parse_min_risk(args: Mapping[str, str]) -> float | None:
    raw = args.get("min_risk")
    if raw is None:
        return None
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not 0.0 <= value <= 1.0:
        raise Problem(400, "min_risk must be a number from 0 to 1", INVALID)
    return value


def _parse_choice(args: Mapping[str, str], name: str, choices: tuple[str, ...]) -> str | None:
    raw = args.get(name)
    if raw is not None and raw not in choices:
        raise Problem(400, f"{name} must be one of {', '.join(choices)}", INVALID)
    return raw


def check_params(allowed: set[str]) -> None:
    args = request.args
    unknown = sorted(args.keys() - allowed)
    if unknown:
        raise Problem(400, f"unknown query parameter(s): {', '.join(unknown)}; "
                      f"allowed: {', '.join(sorted(allowed))}", INVALID)
    repeated = sorted(k for k, values in args.lists() if len(values) > 1)
    if repeated:
        raise Problem(400, f"query parameter(s) given more than once: {', '.join(repeated)}",
                      INVALID)


def cursor_signer(secret: str) -> URLSafeSerializer:
    """What signs and checks cursors with the store's cursor key."""
    return URLSafeSerializer(secret, salt=CURSOR_SALT,
                             signer_kwargs={"digest_method": hashlib.sha256})


def cursors() -> URLSafeSerializer:
    """The worker's cursor signer, with the key read from the store once."""
    cache = read_cache()
    if cache.cursors is None:
        secret = signing_key(connection(), "cursor")
        if secret is None:
            raise Problem(503, "the store has no key to sign cursors with; the operator must "
                          "run `retention migrate`", "Paging unavailable")
        cache.cursors = cursor_signer(secret)
    return cache.cursors


def view_of(who: Caller, flt: ListFilter) -> str:
    """What a cursor belongs to: the caller's scope and the filters, not the position."""
    seen = repr((scope_of(who), replace(flt, offset=0))).encode()
    return f"{CURSOR_SALT}:{hashlib.sha256(seen).hexdigest()}"


def encode_cursor(signer: URLSafeSerializer, as_of: date, position: int, view: str) -> str:
    """The next page starts after ``position`` rows of the caller's filtered view; a
    position in their own view reveals nothing of other clinics' rows."""
    return str(signer.dumps({"as_of": as_of.isoformat(), "pos": position}, salt=view))


def decode_cursor(signer: URLSafeSerializer, raw: str, view: str) -> tuple[date, int]:
    """A cursor pins the list it came from, so later pages never mix two nights' lists.

    One the API did not sign, or signed for another view (another scope or other
    filters), is a 400: its position would mean another row there.
    """
    try:
        if len(raw) > MAX_CURSOR_LENGTH:
            raise ValueError(raw[:8])
        body = signer.loads(raw, salt=view)
        as_of, position = date.fromisoformat(body["as_of"]), body["pos"]
        if type(position) is not int or not 0 <= position <= MAX_POSITION:
            raise ValueError(position)
    except (BadData, ValueError, KeyError, TypeError):
        raise Problem(400, "cursor is not one this API returned for this list and these "
                      "filters; start again without it", INVALID) from None
    return as_of, position


def publication(as_of: date | None) -> dict[str, Any]:
    """The list to serve, from the worker's cache if it has it; the audit write re-checks it."""
    cache = read_cache()
    pub = cache.publications.get(as_of)
    if pub is None:
        pub = latest_publication(connection(), as_of)
        if pub is None:
            detail = (f"no list was published for {as_of}" if as_of
                      else "no list has been published yet; the nightly run has not completed")
            raise Problem(404, detail, "No published list")
        cache.publications.put(as_of, pub)
    claim_publication(pub, latest=as_of is None)
    return pub


def identity(pub: dict[str, Any]) -> tuple[Any, ...]:
    """What names one published list for good: a re-run publishes under a new run id."""
    return pub["as_of"], pub["run_id"], pub["published_at"]


def freshness(pub: dict[str, Any]) -> dict[str, Any]:
    """How old the served list is, and whether its population drifted from training."""
    cache = read_cache()
    # Drift is recorded in the transaction that publishes the list, so it is as fixed
    # as the list: all but the age is kept with it.
    fixed = cache.freshness.get(identity(pub))
    if fixed is None:
        d = run_drift(connection(), pub["run_id"])
        fixed = {"as_of": pub["as_of"].isoformat(), "model_version": pub["model_version"],
                 "published_at": iso(pub["published_at"]),
                 "drift": {"drifted": d["drifted"], "flagged": d["flagged"],
                           "score_psi": d["score_psi"],
                           "explanation": drift_explanation(d["flagged"])}}
        cache.freshness.put(identity(pub), fixed)
    return aged(fixed, pub["as_of"], today())


def aged(fixed: dict[str, Any], as_of: date, on: date) -> dict[str, Any]:
    """A list's fixed freshness fields with its age on ``on``."""
    age = (on - as_of).days
    return {**fixed, "age_days": age, "stale": age > 1}


def iso(value: Any) -> Any:
    if isinstance(value, datetime | date):
        return value.isoformat()
    return value


def public(row: dict[str, Any], fields: tuple[str, ...]) -> dict[str, Any]:
    return {k: iso(row.get(k)) for k in fields}


@dataclass(frozen=True)
class ListQuery:
    """A valid list request's parameters."""

    as_of: date | None
    flt: ListFilter
    limit: int


def parse_list_query(args: Mapping[str, str], max_limit: int, who: Caller,
                     signer: URLSafeSerializer | None) -> ListQuery:
    """The list's parameters from a query without unknown or repeated names; 400 if bad.

    Only for an authenticated caller: a cursor is checked against their view. ``signer``
    is needed when the query has a cursor.
    """
    limit = parse_limit(args, max_limit)
    as_of = parse_date("as_of", args)
    engaged = _parse_choice(args, "engaged_only", ("true", "false"))
    flt = ListFilter(
        clinic_id=args.get("clinic_id"),
        case_manager_id=args.get("case_manager_id"),
        program=args.get("program"),
        tier=_parse_choice(args, "tier", TIERS),
        min_risk=_parse_min_risk(args),
        still_engaged=True if engaged == "true" else None,
    )
    if "cursor" in args:
        assert signer is not None, "a cursor needs the signer"
        cursor_as_of, after = decode_cursor(signer, args["cursor"], view_of(who, flt))
        if as_of is not None and as_of != cursor_as_of:
            raise Problem(400, "as_of differs from the list the cursor belongs to", INVALID)
        as_of, flt = cursor_as_of, replace(flt, offset=after)
    return ListQuery(as_of, flt, limit)


@bp.get("/v1/risk-list")
@requires(CLIENT_DATA, "risk_list.read")
def risk_list() -> ResponseReturnValue:
    """Open episodes in the caller's scope ranked by risk, highest first, with reasons."""
    check_params(LIST_PARAMS)
    # A plain dict: a MultiDict raises (and catches) an exception for each absent name.
    args = request.args.to_dict()
    query = parse_list_query(args, settings().api_max_limit, caller(),
                             cursors() if "cursor" in args else None)
    pub = publication(query.as_of)
    page = list_page(pub, query.flt, query.limit)
    disclosed: dict[str, Any] = {}
    if outside():  # the consents the clients are disclosed under: said, and audited
        disclosable(page.client_ids)
        disclosed = {"notice": NOTICE,
                     "consents": {c: consent_scope(c) for c in page.client_ids}}
    returning(page.client_ids)
    return Response(list_body(freshness(pub), page, disclosed), mimetype="application/json")


def list_body(fresh: dict[str, Any], page: Page, disclosed: dict[str, Any] | None = None
              ) -> bytes:
    """The list response's JSON: the page's items embedded as they were encoded; for an
    outside recipient, the 42 CFR 2.32 notice and each client's consent scope."""
    return orjson.dumps({
        **fresh, "count": len(page.client_ids), "next_cursor": page.next_cursor,
        **(disclosed or {}), "items": orjson.Fragment(page.items_json),
    })


def page_key(pub: dict[str, Any], who: Caller, flt: ListFilter, limit: int) -> tuple[Any, ...]:
    """A cached page's key: the list, the scope (not the key), the filters and the limit."""
    return identity(pub), scope_of(who), flt, limit


def list_page(pub: dict[str, Any], flt: ListFilter, limit: int) -> Page:
    """A page of ``pub`` in the caller's scope; a published list never changes, so it is kept.

    Keyed by the scope, not the key: callers who see the same rows share pages. An
    outside recipient's page is never kept: it depends on consents, which change with
    the clinic data and the date, not with the list.
    """
    cache = read_cache()
    key = page_key(pub, caller(), flt, limit)
    kept = not outside()
    page = cache.pages.get(key) if kept else None
    if page is None:
        rows, more = read_page(connection(), caller(), pub["as_of"], flt, limit,
                               disclosure_policy() if outside() else None)
        # orjson writes dates and naive datetimes as isoformat() does: no iso() per field.
        items = orjson.dumps([{k: r.get(k) for k in LIST_FIELDS} for r in rows])
        page = Page(items, tuple(r["client_id"] for r in rows),
                    encode_cursor(cursors(), pub["as_of"], rows[-1]["rank"],
                                  view_of(caller(), flt)) if more else None)
        if kept:
            cache.pages.put(key, page, cost=len(items))
    return page


@bp.get("/v1/clients/<client_id>/risk")
@requires(CLIENT_DATA, "client_risk.read")
def client_risk(client_id: str) -> ResponseReturnValue:
    """A client's current risk with reasons, and their risk over recent lists."""
    check_params({"as_of"})
    return client_risk_body(publication(parse_date("as_of")), client_id, f"client {client_id}")


@bp.get("/v1/client-risk")
@requires(CLIENT_DATA, "client_risk.read")
def client_risk_by_identifier() -> ResponseReturnValue:
    """The same, for the client an EHR identifier (``system|value``, e.g. an MRN) names."""
    check_params({"identifier", "as_of"})
    system, _, value = request.args.get("identifier", "").partition("|")
    if not system or not value:
        raise Problem(400, "identifier must be <system>|<value>, e.g. an MRN with its system",
                      INVALID)
    # The list first, as for a known identifier: a bad as_of is a 400 either way.
    pub = publication(parse_date("as_of"))
    named = f"identifier {system}|{value}"
    client_id = client_by_identifier(connection(), system, value)
    if client_id is None:
        returning([], "not_found")
        raise Problem(404, f"no open episode for {named} on the list of {pub['as_of']}",
                      "Client not on the list")
    return client_risk_body(pub, client_id, named)


def client_risk_body(pub: dict[str, Any], client_id: str, named: str) -> ResponseReturnValue:
    """A client's risk, reasons, history and EHR identifiers, if the caller may see them;
    else the 404 an unknown client gets (the audit knows which it was)."""
    conn = connection()
    consented = client_id in disclosable([client_id])
    history = read_client(conn, caller(), client_id, pub["as_of"],
                          policy=disclosure_policy() if outside() else None
                          ) if consented else []
    current = [h for h in history if h["as_of"] == pub["as_of"]]
    if not current:
        exists = client_exists(conn, client_id, pub["as_of"])
        returning([client_id], "denied" if exists else "not_found")
        raise Problem(404, f"no open episode for {named} on the list of {pub['as_of']}",
                      "Client not on the list")
    returning([client_id])
    since = pub["as_of"] - timedelta(days=90)
    return jsonify({
        **freshness(pub),
        **({"notice": NOTICE, "consent": consent_scope(client_id)} if outside() else {}),
        "client_id": client_id,
        "identifiers": [{"system": system, "value": value}
                        for system, value in identifiers_of(conn, client_id)],
        "current": public(current[0], LIST_FIELDS),
        "history": [
            {"as_of": h["as_of"].isoformat(), "episode_id": h["episode_id"],
             "risk": h["risk"], "tier": h["tier"], "rank": h["rank"]}
            for h in history if h["as_of"] >= since
        ],
    })
