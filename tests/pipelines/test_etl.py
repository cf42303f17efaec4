"""The ETL against real SQLite and PostgreSQL: incremental, idempotent, equal to a full reload."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from datetime import date, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine, select, text, update

from retention.db.engines import source_engine, store_engine
from retention.etl.load import read_watermarks
from retention.pipelines.etl import run_etl
from retention.pipelines.scoring import run_scoring
from retention.settings import EtlSettings
from retention.store import tables
from retention.store.checks import table_checksums
from retention.store.runs import list_runs
from tests.conftest import Scored
from tests.support.sources import AS_OF, Source, appointment, stored


@pytest.fixture
def source(tmp_path: Path) -> Iterator[Source]:
    src = Source.synthetic(f"sqlite:///{tmp_path / 'clinic.db'}", n_clients=150)
    yield src
    src.dispose()


def etl(src: Source, store_db: Engine, as_of: date = AS_OF, full: bool | None = None,
        **settings: object) -> object:
    engine = source_engine(src.url)
    try:
        return run_etl(engine, store_db, as_of, EtlSettings(**settings), full=full)  # type: ignore[arg-type]
    finally:
        engine.dispose()


def checksums(store_db: Engine) -> dict[str, tuple[int, str]]:
    with store_db.connect() as conn:
        return table_checksums(conn)


@pytest.mark.parametrize(
    "store_url", ["sqlite", pytest.param("postgresql", marks=pytest.mark.slow)], indirect=True)
def test_first_run_is_a_full_reload_then_runs_are_incremental(source: Source,
                                                               store_url: str) -> None:
    store_db = store_engine(store_url)
    first = etl(source, store_db)
    second = etl(source, store_db)
    assert first.full and not second.full  # type: ignore[attr-defined]
    total = sum(source.count(t) for t in ("clients", "episodes", "appointments",
                                          "alliance_measures", "alliance_items"))
    assert first.rows_read == total  # type: ignore[attr-defined]
    # An incremental run reads the clients (they have no updated_at) and the overlap only.
    assert second.rows_read < source.count("clients") + 100  # type: ignore[attr-defined]
    with store_db.connect() as conn:
        marks = read_watermarks(conn)
    assert set(marks) == {"episodes", "appointments", "alliance_measures"}
    store_db.dispose()


@pytest.mark.slow
def test_rerunning_the_same_as_of_changes_nothing(source: Source, store_url: str,
                                                  scored: Scored) -> None:
    """Same row counts and checksums of every table after a re-run, ETL and scoring alike."""
    store_db = store_engine(store_url)
    etl(source, store_db)
    run_scoring(scored.settings, store_db, scored.model, scored.catalogue, AS_OF)
    before = checksums(store_db)
    assert before["scores"][0] > 0 and before["publications"][0] == 1
    again = etl(source, store_db)
    rescored = run_scoring(scored.settings, store_db, scored.model, scored.catalogue, AS_OF)
    assert checksums(store_db) == before
    assert again.rows_changed == 0  # type: ignore[attr-defined]
    full = etl(source, store_db, full=True)
    run_scoring(scored.settings, store_db, scored.model, scored.catalogue, AS_OF)
    assert full.rows_changed == 0  # type: ignore[attr-defined]
    assert checksums(store_db) == before
    with store_db.connect() as conn:
        runs = list_runs(conn, 10)
    assert [r["status"] for r in runs] == ["succeeded"] * 6
    assert rescored.scored == before["scores"][0]
    store_db.dispose()


@pytest.mark.slow
def test_a_new_as_of_adds_features_and_keeps_the_copy(source: Source, store_url: str) -> None:
    store_db = store_engine(store_url)
    etl(source, store_db)
    copy_before = {k: v for k, v in checksums(store_db).items() if k.startswith("clinic_")}
    result = etl(source, store_db, AS_OF + timedelta(days=1))
    after = checksums(store_db)
    assert {k: v for k, v in after.items() if k.startswith("clinic_")} == copy_before
    with store_db.connect() as conn:
        days = conn.execute(select(tables.features.c.as_of).distinct()).scalars().all()
    assert sorted(days) == [AS_OF, AS_OF + timedelta(days=1)]
    assert result.open_episodes > 0  # type: ignore[attr-defined]
    store_db.dispose()


# --- incremental equals a full reload --------------------------------------------------


def change_the_source(src: Source, rng: random.Random, day: date, step: int,
                      store_db: Engine) -> None:
    """One day of an EHR's life: statuses recorded, slots booked, episodes closed and
    corrected, rows that break the contract and their later fixes."""
    stamp = datetime.combine(day, datetime.min.time()) + timedelta(hours=9)
    open_ids = src.open_episode_ids(day)
    episodes = {e["episode_id"]: e for e in src.rows("episodes")}
    picks = rng.sample(open_ids, min(6, len(open_ids)))
    # Statuses recorded for slots that were still scheduled.
    scheduled = [a for a in src.rows("appointments", {"status": "scheduled"})
                 if a["scheduled_at"] < stamp][:8]
    for a in scheduled:
        src.update("appointments", {"appointment_id": a["appointment_id"]},
                   status=rng.choice(["attended", "no_show", "late_cancel"]),
                   updated_at=stamp + timedelta(minutes=rng.randint(0, 300)))
    # New bookings, one of them committed late: stamped before the last watermark.
    with store_db.connect() as conn:
        mark = read_watermarks(conn)["appointments"]
    assert mark is not None
    for n, eid in enumerate(picks[:3]):
        when = stamp + timedelta(days=rng.randint(1, 10), hours=2)
        late = mark - timedelta(minutes=30) if n == 0 else stamp + timedelta(minutes=n)
        src.insert("appointments", [appointment(f"AN{step:02d}{n}", episodes[eid], when,
                                                status="scheduled", stamp=late)])
    # An episode closed, another one's admission corrected past its first slots.
    if len(picks) > 3:
        src.update("episodes", {"episode_id": picks[3]}, discharged_on=day,
                   discharge_reason="completed", updated_at=stamp + timedelta(hours=1))
    if len(picks) > 4 and step % 2 == 0:
        admitted = episodes[picks[4]]["admitted_on"]
        src.update("episodes", {"episode_id": picks[4]},
                   admitted_on=admitted + timedelta(days=3),
                   updated_at=stamp + timedelta(hours=2))
    # A client moved to another case manager (clients carry no updated_at).
    client = rng.choice(src.rows("clients", limit=50))
    src.update("clients", {"client_id": client["client_id"]}, case_manager_id=f"cm-{step}")
    # Rows that break the contract, fixed the next step.
    target = episodes[picks[0]]
    src.insert("appointments", [
        appointment(f"BAD{step:02d}", target, stamp + timedelta(days=2), status="XX",
                    stamp=stamp + timedelta(minutes=7)),
        appointment(f"ORPH{step:02d}", {"episode_id": f"ELATE{step:02d}",
                                        "client_id": target["client_id"]},
                    stamp + timedelta(days=2), status="scheduled", stamp=stamp),
    ])
    if step > 0:
        src.update("appointments", {"appointment_id": f"BAD{step - 1:02d}"},
                   status="scheduled", updated_at=stamp + timedelta(minutes=8))
        src.insert("episodes", [{  # the orphan's episode arrives a day late
            "episode_id": f"ELATE{step - 1:02d}", "client_id": target["client_id"],
            "program": "outpatient", "admitted_on": day - timedelta(days=20),
            "planned_discharge_on": None, "discharged_on": None, "discharge_reason": None,
            "updated_at": stamp + timedelta(minutes=9)}])


def assert_incremental_equals_full(src: Source, incremental: Engine, url_for_full: str,
                                   as_of: date) -> None:
    full_db = store_engine(url_for_full)
    try:
        etl(src, full_db, as_of, full=True)
        assert stored(incremental, as_of) == stored(full_db, as_of)
    finally:
        full_db.dispose()


@pytest.mark.slow
@pytest.mark.parametrize("seed", [1, 2])
def test_incremental_runs_equal_a_full_reload_sqlite(tmp_path: Path, seed: int) -> None:
    """After any sequence of incremental runs the copy, quarantine and features are exactly
    what a full reload of the same source gives."""
    src = Source.synthetic(f"sqlite:///{tmp_path / 'clinic.db'}", n_clients=150, seed=seed)
    store_db = store_engine(f"sqlite:///{tmp_path / 'store.db'}")
    rng = random.Random(seed)
    etl(src, store_db)
    for step in range(3):
        day = AS_OF + timedelta(days=step)
        change_the_source(src, rng, day, step, store_db)
        result = etl(src, store_db, day + timedelta(days=1))
        assert not result.full  # type: ignore[attr-defined]
        assert_incremental_equals_full(src, store_db, f"sqlite:///{tmp_path / f'full{step}.db'}",
                                       day + timedelta(days=1))
    with store_db.connect() as conn:
        held = conn.execute(select(tables.quarantine.c.row_key)).scalars().all()
    # Only the last step's bad rows are still held; earlier ones were fixed and released.
    assert sorted(k for k in held if k.startswith(("BAD", "ORPH"))) == ["BAD02", "ORPH02"]
    store_db.dispose()
    src.dispose()


@pytest.mark.slow
def test_incremental_runs_equal_a_full_reload_postgresql(
    pg_databases: Callable[[str], str],
) -> None:
    src = Source.synthetic(pg_databases("src"), n_clients=150, seed=5)
    store_db = store_engine(pg_databases("inc"))
    rng = random.Random(5)
    etl(src, store_db)
    for step in range(2):
        day = AS_OF + timedelta(days=step)
        change_the_source(src, rng, day, step, store_db)
        etl(src, store_db, day + timedelta(days=1))
    assert_incremental_equals_full(src, store_db, pg_databases("full"), AS_OF + timedelta(days=2))
    store_db.dispose()
    src.dispose()


def _analyses(store_db: Engine) -> int:
    with store_db.connect() as conn:
        return int(conn.execute(text(
            "SELECT analyze_count FROM pg_stat_user_tables WHERE relname = 'clinic_appointments'"
        )).scalar_one())


@pytest.mark.slow
def test_statistics_are_refreshed_after_changes_large_beside_the_copy_only(
    source: Source, pg_url: str,
) -> None:
    """The first load and a night that rewrote much of the copy are analysed; a night of
    a few changes keeps the statistics it has (sampling 22 million rows again took a
    second of every incremental run at 100,000 clients)."""
    store_db = store_engine(pg_url)
    etl(source, store_db)
    assert _analyses(store_db) == 1
    with store_db.connect() as conn:
        mark = read_watermarks(conn)["appointments"]
    assert mark is not None
    for a in source.rows("appointments", limit=3):
        source.update("appointments", {"appointment_id": a["appointment_id"]},
                      clinician_id="CL-NEW", updated_at=mark + timedelta(minutes=1))
    assert etl(source, store_db).rows_changed >= 3  # type: ignore[attr-defined]
    assert _analyses(store_db) == 1
    slots = source.table("appointments")
    with source.engine.begin() as conn:
        conn.execute(update(slots).values(clinician_id="CL-ALL",
                                          updated_at=mark + timedelta(minutes=2)))
    etl(source, store_db)
    assert _analyses(store_db) == 2
    store_db.dispose()


@pytest.mark.slow
def test_deletions_at_the_source_are_reconciled_by_a_full_reload(source: Source,
                                                                 store_url: str) -> None:
    store_db = store_engine(store_url)
    etl(source, store_db)
    gone = source.rows("appointments", limit=1)[0]["appointment_id"]
    source.delete("appointments", {"appointment_id": gone})
    ids = tables.copies["appointments"].c.appointment_id

    def present() -> bool:
        with store_db.connect() as conn:
            return conn.execute(select(ids).where(ids == gone)).first() is not None

    etl(source, store_db, AS_OF + timedelta(days=1))
    assert present(), "an incremental run cannot see a deletion"
    result = etl(source, store_db, AS_OF + timedelta(days=1), full=True)
    assert not present()
    assert result.rows_changed >= 1  # type: ignore[attr-defined]
    store_db.dispose()


@pytest.mark.slow
def test_a_full_reload_is_due_after_the_configured_days(source: Source, tmp_path: Path) -> None:
    store_db = store_engine(f"sqlite:///{tmp_path / 'store.db'}")
    etl(source, store_db)
    assert not etl(source, store_db).full  # type: ignore[attr-defined]
    assert etl(source, store_db, full_reload_after_days=0).full  # type: ignore[attr-defined]
    store_db.dispose()


def test_watermarks_never_pass_the_source_clock(source: Source, tmp_path: Path) -> None:
    """A row stamped in the future must not hide the rows written before that moment."""
    store_db = store_engine(f"sqlite:///{tmp_path / 'store.db'}")
    episode = source.rows("episodes", limit=1)[0]
    source.insert("appointments", [appointment("AFUTURE", episode, datetime(2040, 1, 1, 10),
                                               status="scheduled",
                                               stamp=datetime(2039, 12, 1, 10))])
    etl(source, store_db, max_days_ahead=366)
    with store_db.connect() as conn:
        marks = read_watermarks(conn)
    assert marks["appointments"] is not None
    assert marks["appointments"] < datetime(2039, 12, 1, 10)  # not the row from the future
    store_db.dispose()
