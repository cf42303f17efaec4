"""The rows behind the reasons (``retention.reasons.history``): each reason cites only the
client's own rows, as they were known at the as-of date.

Checked on the list published by the session's scored synthetic clinic (the fixtures are
in ``tests/reasons/conftest.py``).
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from retention.clinic.data import ClinicData
from tests.support.reasons import CANCELLED, Published


def test_evidence_is_the_clients_own_rows_known_at_as_of(scored: Any, published: Published,
                                                         source: ClinicData) -> None:
    """Guards: the appointments and measures cited by every reason, reassuring fact and
    context item exist, are this client's episode's, and were known at the as-of date (a
    booked-ahead slot: booked before, not cancelled by then)."""
    cutoff = pd.Timestamp(scored.as_of)
    appts = source.appointments.set_index("appointment_id")
    measures = source.measures.set_index("measure_id")
    cited = 0
    for row, _, r in published.entries():
        where = (row["episode_id"], r["code"])
        assert len(set(r["appointment_ids"])) == len(r["appointment_ids"]), where
        assert len(set(r["measure_ids"])) == len(r["measure_ids"]), where
        for aid in r["appointment_ids"]:
            assert aid in appts.index, where
            a = appts.loc[aid]
            assert (a["episode_id"], a["client_id"]) == (row["episode_id"], row["client_id"])
            if a["scheduled_at"] >= cutoff:
                assert a["booked_at"] < cutoff, (where, aid)
                assert not (a["status"] in CANCELLED and a["updated_at"] < cutoff), (where, aid)
            cited += 1
        for mid in r["measure_ids"]:
            assert mid in measures.index, where
            m = measures.loc[mid]
            assert (m["episode_id"], m["client_id"]) == (row["episode_id"], row["client_id"])
            assert m["administered_at"] < cutoff, (where, mid)
            cited += 1
    assert cited > 0
