"""How a case manager reaches a client from the daily list: name, phone, channel, language.

Domain code without Flask, read by the case managers' pages. The clinic maps its contact
details onto the contract's optional ``client_contacts`` table; the ETL keeps a checked
copy (``clinic_client_contacts``). Every record here is a 42 CFR Part 2 record: contact
details are shown only on the case managers' pages, to staff whose scope includes the
client, and never in logs, the JSON API or FHIR; they are never model inputs. So every
read carries the caller's scope (their clinics and caseload, through the copy of
``clients``), and a client outside it is never read, even when asked for by id. An
outside recipient (an EHR's key) reads none. Nothing here logs a value. Functions take
a connection first and never commit.

The pages may also link into the clinic's EHR for a client: ``link_template`` is an
https URL with ``{mrn}`` (the client's identifier under ``link_system``, from the copy
of ``client_identifiers``) or ``{client_id}``, each filled in URL-quoted.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from sqlalchemy import Connection, select

from retention.access.keys import Caller
from retention.access.scope import scope_clause
from retention.store.tables import copies

contacts = copies["client_contacts"]
clients = copies["clients"]
identifiers = copies["client_identifiers"]

# Client ids per query: an IN list this long stays far below any database's limit on
# parameters (SQLite's was 999), so a list of thousands is read in a few queries.
CHUNK = 500
MRN_FIELD = "{mrn}"
CLIENT_ID_FIELD = "{client_id}"
MIN_PHONE_DIGITS = 7
# An extension, and everything after it: "ext 12", "ext. 12", "x12".
_EXTENSION = re.compile(r"(?:ext\.?|x).*$", re.IGNORECASE | re.DOTALL)


@dataclass(frozen=True)
class Contact:
    """One client's contact details as the copy holds them (None: not recorded), and the
    link into the EHR for them (None: no link configured, or no MRN to fill it with)."""

    client_id: str
    display_name: str | None
    preferred_name: str | None
    phone: str | None
    preferred_channel: str | None
    may_text: bool | None  # None: not known, which is not a yes
    may_call: bool | None
    language: str | None
    ehr_link: str | None


def contacts_for(
    connection: Connection,
    caller: Caller,
    client_ids: Iterable[str],
    *,
    link_template: str = "",
    link_system: str = "",
) -> dict[str, Contact]:
    """The contact details of those of ``client_ids`` in the caller's scope, by client id.

    A client in scope with a contact row is in the answer; one without a row is in it
    (every detail None) only when it has an EHR link. A client outside the scope, or
    unknown to the copy, is never in it.
    """
    wanted = sorted({str(c) for c in client_ids})
    # The list's own scope on the copy of clients; an outside recipient, given no consent
    # policy, reads none.
    scope = scope_clause(caller, clients)
    out: dict[str, Contact] = {}
    for start in range(0, len(wanted), CHUNK):
        chunk = wanted[start:start + CHUNK]
        rows = connection.execute(
            select(clients.c.client_id.label("scoped_id"), contacts)
            .select_from(clients.outerjoin(contacts,
                                           contacts.c.client_id == clients.c.client_id))
            .where(clients.c.client_id.in_(chunk), scope)
        ).fetchall()
        in_scope = [r.scoped_id for r in rows]
        mrns = _mrns(connection, in_scope, link_system) if MRN_FIELD in link_template else {}
        for r in rows:
            link = ehr_link(link_template, r.scoped_id, mrns.get(r.scoped_id))
            if r.client_id is None and link is None:
                continue  # no row and nothing to link to: nothing to show
            out[r.scoped_id] = _contact(r._mapping, r.scoped_id, link)
    return out


def ehr_link(template: str, client_id: str, mrn: str | None) -> str | None:
    """``template`` with ``{mrn}`` and ``{client_id}`` filled in, each URL-quoted (nothing
    in them is left safe: a '/', '?' or '#' cannot move the link elsewhere). None for
    an empty template, or one that needs an MRN the client does not have."""
    if not template:
        return None
    if MRN_FIELD in template:
        if not mrn:
            return None
        template = template.replace(MRN_FIELD, quote(mrn, safe=""))
    return template.replace(CLIENT_ID_FIELD, quote(client_id, safe=""))


def tel_href(phone: str | None) -> str | None:
    """A ``tel:`` link for a phone as the clinic wrote it: its digits, and a leading '+'
    kept; an extension dropped. None when fewer than 7 digits remain (nothing to dial)."""
    if not phone:
        return None
    number = _EXTENSION.sub("", phone).strip()
    digits = "".join(ch for ch in number if ch in "0123456789")
    if len(digits) < MIN_PHONE_DIGITS:
        return None
    return "tel:" + ("+" if number.startswith("+") else "") + digits


def _mrns(connection: Connection, client_ids: list[str], system: str) -> dict[str, str]:
    """Each client's identifier under ``system``: the most recently written, if several
    (a merged record's old and new MRN)."""
    if not client_ids or not system:
        return {}
    rows = connection.execute(
        select(identifiers.c.client_id, identifiers.c.value)
        .where(identifiers.c.system == system, identifiers.c.client_id.in_(client_ids))
        .order_by(identifiers.c.client_id, identifiers.c.updated_at.desc(),
                  identifiers.c.value)
    )
    out: dict[str, str] = {}
    for client_id, value in rows:
        out.setdefault(client_id, value)
    return out


def _contact(row: Any, client_id: str, link: str | None) -> Contact:
    def text(name: str) -> str | None:
        value = row[name]
        return None if value is None else str(value)

    def yes_no(name: str) -> bool | None:
        value = row[name]
        return None if value is None else bool(value)

    return Contact(
        client_id=client_id,
        display_name=text("display_name"),
        preferred_name=text("preferred_name"),
        phone=text("phone"),
        preferred_channel=text("preferred_channel"),
        may_text=yes_no("may_text"),
        may_call=yes_no("may_call"),
        language=text("language"),
        ehr_link=link,
    )
