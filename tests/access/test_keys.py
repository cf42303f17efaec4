"""Access keys (``retention.access.keys``): stored only as hashes; roles and scopes that make
no sense are refused when a key is made."""

from __future__ import annotations

import pytest

from retention.access.keys import AccessError, create_key
from retention.store import tables
from tests.conftest import Scored
from tests.support.apps import make_key


def test_keys_are_stored_only_as_hashes(scored: Scored) -> None:
    token = make_key(scored.store, "admin")
    with scored.store.connect() as conn:
        stored = [tuple(str(v) for v in r) for r in conn.execute(tables.api_keys.select())]
    assert not any(token in value or token.split("_")[-1] in value
                   for row in stored for value in row)


@pytest.mark.parametrize(("role", "clinics", "kwargs"), [
    ("superuser", ["c"], {}), ("ehr", [], {"recipient": "epic"}),
    ("ehr", ["c"], {"case_manager_id": "cm", "recipient": "epic"}),
    ("analyst", ["c"], {"grants": ["everything"]}),
    # An ehr key acts for an outside recipient that consents name: it must say which.
    ("ehr", ["c"], {}), ("ehr", ["c"], {"recipient": "bad recipient"}),
    # A recipient id that looks like a class would be covered by that class's consents.
    ("ehr", ["c"], {"recipient": "class:treating_providers"}),
    # Staff keys act for the clinic itself: a recipient on one would mean nothing.
    ("case_manager", ["c"], {"recipient": "epic"}),
])
def test_keys_that_make_no_sense_are_refused(scored: Scored, role: str, clinics: list[str],
                                             kwargs: dict) -> None:
    with pytest.raises(AccessError), scored.store.begin() as conn:
        create_key(conn, role, clinics, **kwargs)
