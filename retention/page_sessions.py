"""Who is behind a signed-in page session: the key id in the cookie, checked against the store.

The pages keep only the key id in their signed cookie and look the key up again on
every request, so revoking a key ends its sessions at once. Only case managers and
administrators use the pages; other roles keep to the API. Domain code without Flask.
"""

from __future__ import annotations

import json

from sqlalchemy import Connection, select

from retention.access import Caller, api_keys

PAGE_ROLES = frozenset({"case_manager", "admin"})


def active_caller(connection: Connection, key_id: str) -> Caller | None:
    """The caller of a key that exists, is not revoked and may use the pages; else None."""
    row = connection.execute(select(api_keys).where(api_keys.c.key_id == key_id)).first()
    if row is None or row.revoked_at is not None or row.role not in PAGE_ROLES:
        return None
    clinics = json.loads(row.clinics_json) if row.clinics_json else None
    return Caller(key_id=row.key_id, role=row.role,
                  clinics=tuple(clinics) if clinics is not None else None,
                  case_manager_id=row.case_manager_id,
                  grants=frozenset(json.loads(row.grants_json or "[]")))


def key_label(connection: Connection, key_id: str) -> str | None:
    """The label the key was created with (who holds it), to greet them; no client data."""
    value = connection.execute(select(api_keys.c.label).where(api_keys.c.key_id == key_id))
    return value.scalar()
