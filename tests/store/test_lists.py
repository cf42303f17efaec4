"""Published lists: readers see a new list only once it is committed; the last list before
a night and its counts, which the publish guard compares with."""

from __future__ import annotations

from datetime import date

from retention.db.engines import store_engine
from retention.store import schema
from retention.store.lists import (
    count_scores,
    latest_publication,
    list_counts,
    publish_scores,
    read_list,
)


def test_readers_see_the_previous_list_until_the_new_one_is_committed(store_url: str) -> None:
    engine = store_engine(store_url)
    schema.upgrade_engine(engine)
    old, new = date(2026, 6, 1), date(2026, 6, 2)

    def rows(as_of: date, n: int) -> list[dict[str, object]]:
        return [
            {
                "as_of": as_of,
                "episode_id": f"E{i}",
                "client_id": f"C{i}",
                "clinic_id": "k",
                "case_manager_id": None,
                "program": "outpatient",
                "rank": i + 1,
                "risk": 0.5,
                "tier": "high",
                "still_engaged": True,
                "last_attended_on": None,
                "next_booked_at": None,
                "model_version": "v",
                "run_id": 1,
                "reasons_json": '{"reasons": [], "protective": []}',
            }
            for i in range(n)
        ]

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


def test_counts_by_clinic_program_and_tier_and_the_list_before_a_date(store_url: str) -> None:
    """Guards what the publish guard compares with: the newest list published before the
    night being scored (not that night's own, nor a later one), counted by clinic,
    program and tier in the database."""
    engine = store_engine(store_url)
    schema.upgrade_engine(engine)
    days = [date(2026, 6, 1), date(2026, 6, 2), date(2026, 6, 4)]

    def row(as_of: date, i: int, clinic: str, program: str, tier: str) -> dict[str, object]:
        return {
            "as_of": as_of,
            "episode_id": f"E{i}",
            "client_id": f"C{i}",
            "clinic_id": clinic,
            "case_manager_id": None,
            "program": program,
            "rank": i + 1,
            "risk": 0.5,
            "tier": tier,
            "still_engaged": True,
            "last_attended_on": None,
            "next_booked_at": None,
            "model_version": "v",
            "run_id": 1,
            "reasons_json": "{}",
        }

    layout = [
        ("east", "detox", "high"),
        ("east", "detox", "high"),
        ("east", "detox", "low"),
        ("east", "outpatient", "medium"),
        ("south", "detox", "high"),
    ]
    with engine.begin() as conn:
        for n, day in enumerate(days):
            published = [row(day, i, *g) for i, g in enumerate(layout[: 3 + n])]
            publish_scores(conn, day, published, n + 1, "v")
    with engine.connect() as conn:
        assert latest_publication(conn, before=date(2026, 6, 1)) is None
        for night, expected in [
            (date(2026, 6, 2), days[0]),
            (date(2026, 6, 3), days[1]),
            (date(2026, 6, 4), days[1]),
            (date(2026, 6, 9), days[2]),
        ]:
            previous = latest_publication(conn, before=night)
            assert previous is not None and previous["as_of"] == expected, night
        assert sorted(list_counts(conn, days[2])) == [
            ("east", "detox", "high", 2),
            ("east", "detox", "low", 1),
            ("east", "outpatient", "medium", 1),
            ("south", "detox", "high", 1),
        ]
        assert list_counts(conn, date(2026, 6, 3)) == []
    engine.dispose()
