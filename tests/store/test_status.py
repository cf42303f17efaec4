"""The service's status: one answer for /health, /ready and the pages' banner."""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import Engine

from retention.store.runs import finish_run, start_run
from retention.store.status import service_status
from tests.conftest import Scored

NIGHT = datetime(2026, 6, 2, 2, 30)


def record(engine: Engine, kind: str, status: str, *, error: str | None = None,
           detail: dict[str, object] | None = None) -> int:
    with engine.begin() as conn:
        run_id = start_run(conn, kind, NIGHT.date(), NIGHT, host="worker-1", pid=4242)
        finish_run(conn, run_id, status, error=error, detail=detail,
                   at=NIGHT + timedelta(minutes=5))
    return run_id


def test_a_fresh_list_after_a_good_night_has_no_problems(
    scored: Scored, private_store: tuple[str, Engine],
) -> None:
    _, engine = private_store
    with engine.connect() as conn:
        status = service_status(conn, scored.as_of + timedelta(days=1))
    assert not status.stale and status.age_days == 1 and status.problems == []
    assert status.last_run is not None and status.last_run["status"] == "succeeded"
    assert status.failed_at is None and status.missing_tables == []


def test_a_stale_list_a_failed_night_and_a_missing_table_are_all_named(
    scored: Scored, private_store: tuple[str, Engine],
) -> None:
    """/health said ok and /ready 200 while the list was 4 days old and the last run failed."""
    _, engine = private_store
    secret = 'invalid input syntax for type date: "Jane Roe"'
    failed = record(engine, "etl", "failed", error=f"DataError: {secret}",
                    detail={"missing_tables": ["alliance_items"]})
    with engine.connect() as conn:
        status = service_status(conn, scored.as_of + timedelta(days=4))
    assert status.stale and status.age_days == 4
    assert status.failed_at == NIGHT + timedelta(minutes=5)
    assert status.missing_tables == ["alliance_items"]
    assert status.problems == [
        f"the list is 4 days old: the nightly run has not published since {scored.as_of}",
        f"the last nightly etl run (run {failed}) failed; `retention runs` says why",
        "optional table(s) alliance_items missing at the clinic database, whose rows the "
        "copy holds: the ETL stops rather than delete them",
    ]
    shown = status.to_dict()
    assert shown["last_nightly_run"]["status"] == "failed"
    assert "Jane" not in str(shown) and "worker-1" not in str(shown)

    # A training run is not a nightly run; the next good ETL run clears the table's problem.
    record(engine, "train", "failed", error="TrainingError: too few outcomes")
    record(engine, "etl", "succeeded", detail={"full": True})
    with engine.connect() as conn:
        status = service_status(conn, scored.as_of + timedelta(days=1))
    assert status.problems == [] and status.missing_tables == []
    assert status.last_run is not None and status.last_run["kind"] == "etl"
