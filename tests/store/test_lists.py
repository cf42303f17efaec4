"""Published lists: readers see a new list only once it is committed."""

from __future__ import annotations

from datetime import date

from retention.db.engines import store_engine
from retention.store import schema
from retention.store.lists import count_scores, latest_publication, publish_scores, read_list


def test_readers_see_the_previous_list_until_the_new_one_is_committed(store_url: str) -> None:
    engine = store_engine(store_url)
    schema.upgrade_engine(engine)
    old, new = date(2026, 6, 1), date(2026, 6, 2)

    def rows(as_of: date, n: int) -> list[dict[str, object]]:
        return [{"as_of": as_of, "episode_id": f"E{i}", "client_id": f"C{i}", "clinic_id": "k",
                 "case_manager_id": None, "program": "outpatient", "rank": i + 1,
                 "risk": 0.5, "tier": "high", "still_engaged": True, "last_attended_on": None,
                 "next_booked_at": None, "model_version": "v", "run_id": 1,
                 "reasons_json": '{"reasons": [], "protective": []}'} for i in range(n)]

    with engine.begin() as conn:
        publish_scores(conn, old, rows(old, 3), 1, "v")
    writer = engine.connect()
    transaction = writer.begin()
    publish_scores(writer, new, rows(new, 5), 2, "v")
    with engine.connect() as reader:  # the new list is written but not committed
        latest = latest_publication(reader)
        assert latest is not None and latest["as_of"] == old
        assert len(read_list(reader, old)) == 3
        assert count_scores(reader, new) == 0
    transaction.commit()
    writer.close()
    with engine.connect() as reader:
        latest = latest_publication(reader)
        assert latest is not None and latest["as_of"] == new
        assert len(read_list(reader, new)) == 5
    engine.dispose()
