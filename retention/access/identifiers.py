"""The EHR's own identifiers for a client (system + value, e.g. an MRN).

An EHR knows its patients by its own ids, not the service's. The clinic maps them onto
the contract's ``client_identifiers`` table (never model inputs); the API and FHIR look
clients up by them and return them. Functions take a connection first and never commit.
"""

from __future__ import annotations

from sqlalchemy import Connection, select

from retention.store.tables import copies

identifiers = copies["client_identifiers"]


def client_by_identifier(connection: Connection, system: str, value: str) -> str | None:
    """The client an EHR identifier belongs to (the copy holds each pair once)."""
    found = connection.execute(select(identifiers.c.client_id).where(
        identifiers.c.system == system, identifiers.c.value == value)).first()
    return found.client_id if found is not None else None


def identifiers_of(connection: Connection, client_id: str) -> list[tuple[str, str]]:
    """The client's EHR identifiers (system, value), in a stable order."""
    return [(r.system, r.value) for r in connection.execute(
        select(identifiers.c.system, identifiers.c.value)
        .where(identifiers.c.client_id == client_id)
        .order_by(identifiers.c.system, identifiers.c.value))]
