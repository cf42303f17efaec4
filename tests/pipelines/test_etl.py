"""The ETL against real SQLite and PostgreSQL: incremental, idempotent, equal to a full reload."""

from __future__ import annotations

import json
import random
import re
from collections.abc import Callable, Iterator
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from sqlalchemy import Engine, make_url, select, text, update

from retention.clinic import contract
from retention.db import locks
from retention.db.engines import source_engine, store_engine
from retention.etl.extract import (
    MappingError,
    MissingTable,
    SourceRoleRefused,
    SourceUnavailable,
)
from retention.etl.load import read_watermarks
from retention.pipelines.etl import EtlBusy, run_etl
from retention.pipelines.scoring import run_scoring
from retention.settings import EtlSettings, SourceMapping
from retention.store import tables
from retention.store.checks import table_checksums
from retention.store.runs import list_runs
from retention.store.status import service_status
from tests.conftest import Scored
from tests.support.pg_cluster import Cluster
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
        # The test server's role is a superuser (docs/nightly.md: a clinic's is not).
        settings = {"allow_superuser_source": True, **settings}
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
    total = sum(source.count(t) for t in contract.TABLES)
    assert first.rows_read == total  # type: ignore[attr-defined]
    # An incremental run reads the clients (they have no updated_at) and the overlap only.
    assert second.rows_read < source.count("clients") + 100  # type: ignore[attr-defined]
    with store_db.connect() as conn:
        marks = read_watermarks(conn)
    assert set(marks) == {"episodes", "appointments", "alliance_measures",
                          "session_observations", "consents", "client_identifiers",
                          "client_contacts"}
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
    # The episode's first slot (one copied long ago) then falls before its admission.
    if step % 2 == 0:
        first: dict[str, dict[str, Any]] = {}
        for a in src.rows("appointments"):
            seen = first.get(a["episode_id"])
            if a["episode_id"] in open_ids and (seen is None
                                                or a["scheduled_at"] < seen["scheduled_at"]):
                first[a["episode_id"]] = a
        slot = min(first.values(), key=lambda a: a["updated_at"])
        src.update("episodes", {"episode_id": slot["episode_id"]},
                   admitted_on=slot["scheduled_at"].date() + timedelta(days=1),
                   updated_at=stamp + timedelta(hours=2))
    # Another given to another client (two records merged), with its rows.
    if len(picks) > 5 and step % 2 == 1:
        other = next(c for c in src.rows("clients", limit=2)
                     if c["client_id"] != episodes[picks[5]]["client_id"])
        for table in ("episodes", "appointments", "alliance_measures", "session_observations"):
            src.update(table, {"episode_id": picks[5]}, client_id=other["client_id"],
                       updated_at=stamp + timedelta(hours=3))
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
        orphan = src.rows("appointments", {"appointment_id": f"ORPH{step - 1:02d}"})[0]
        src.insert("episodes", [{  # the orphan's episode arrives a day late, its client's
            "episode_id": f"ELATE{step - 1:02d}", "client_id": orphan["client_id"],
            "program": "outpatient", "admitted_on": day - timedelta(days=20),
            "planned_discharge_on": None, "discharged_on": None, "discharge_reason": None,
            "updated_at": stamp + timedelta(minutes=9)}])
    # A consent revoked, another signed and one that breaks the contract (fixed the next
    # step); an MRN moved to another client (records merged).
    signed = [k for k in src.rows("consents") if k["revoked_at"] is None]
    src.update("consents", {"consent_id": rng.choice(signed)["consent_id"]}, revoked_at=stamp,
               updated_at=stamp + timedelta(minutes=11))
    src.insert("consents", [{
        "consent_id": f"KN{step:02d}", "client_id": target["client_id"], "recipient": "demo-ehr",
        "purpose": "treatment", "effective_on": day, "expires_on": day - timedelta(days=1),
        "revoked_at": None, "updated_at": stamp + timedelta(minutes=12)}])
    if step > 0:
        src.update("consents", {"consent_id": f"KN{step - 1:02d}"}, expires_on=None,
                   updated_at=stamp + timedelta(minutes=13))
    mrn = rng.choice(src.rows("client_identifiers", limit=50))
    src.update("client_identifiers", {"system": mrn["system"], "value": mrn["value"]},
               client_id=target["client_id"], updated_at=stamp + timedelta(minutes=14))
    # A new phone (and consent to texts no longer known); a language written out, which
    # breaks the contract (fixed the next step).
    people = src.rows("client_contacts", limit=60)
    src.update("client_contacts", {"client_id": rng.choice(people)["client_id"]},
               phone=f"(808) 555-01{step:02d}", may_text=None,
               updated_at=stamp + timedelta(minutes=15))
    src.update("client_contacts", {"client_id": people[step]["client_id"]},
               language="Haitian Creole", updated_at=stamp + timedelta(minutes=16))
    if step > 0:
        src.update("client_contacts", {"client_id": people[step - 1]["client_id"]},
                   language="ht", updated_at=stamp + timedelta(minutes=17))


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
    assert sorted(k for k in held if k.startswith(("BAD", "ORPH", "KN"))) == [
        "BAD02", "KN02", "ORPH02"]
    q = tables.quarantine
    with store_db.connect() as conn:
        contacts_held = conn.execute(select(q.c.row_key).where(
            q.c.table_name == "client_contacts")).scalars().all()
    assert contacts_held == [src.rows("client_contacts", limit=3)[2]["client_id"]]
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


@pytest.mark.slow
def test_incremental_runs_equal_a_full_reload_mariadb(
    mariadb_url: str, tmp_path: Path,
) -> None:
    """The same from a MariaDB source (the store in SQLite: MariaDB is a source only)."""
    src = Source.synthetic(mariadb_url, n_clients=150, seed=5)
    store_db = store_engine(f"sqlite:///{tmp_path / 'store.db'}")
    rng = random.Random(5)
    etl(src, store_db)
    for step in range(2):
        day = AS_OF + timedelta(days=step)
        change_the_source(src, rng, day, step, store_db)
        assert not etl(src, store_db, day + timedelta(days=1)).full  # type: ignore[attr-defined]
    assert_incremental_equals_full(src, store_db, f"sqlite:///{tmp_path / 'full.db'}",
                                   AS_OF + timedelta(days=2))
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


@pytest.mark.slow
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


# --- what stops a run, and what its record says (issue 16) ------------------------------


@pytest.fixture(params=["sqlite", "postgresql", "mariadb"])
def any_source(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Source]:
    """A small clinic in SQLite, then in PostgreSQL (read through ADBC, in a snapshot),
    then in MariaDB (streamed, in a consistent snapshot)."""
    url = (request.getfixturevalue("pg_url") if request.param == "postgresql"
           else request.getfixturevalue("mariadb_url") if request.param == "mariadb"
           else f"sqlite:///{tmp_path / 'clinic.db'}")
    src = Source.synthetic(url, n_clients=60)
    yield src
    src.dispose()


ITEMS = tables.copies["alliance_items"].name


def the_run(store_db: Engine) -> dict[str, object]:
    with store_db.connect() as conn:
        return list_runs(conn, 1)[0]


def test_an_sql_error_in_a_mapping_names_its_entry_and_the_databases_message(
    any_source: Source, tmp_path: Path,
) -> None:
    typo = SourceMapping().query("episodes").replace("admitted_on,", "admited_on AS admitted_on,")
    store_db = store_engine(f"sqlite:///{tmp_path / 'store.db'}")
    with pytest.raises(MappingError) as caught:
        etl(any_source, store_db, mapping=SourceMapping(queries={"episodes": typo}))
    said = str(caught.value)
    assert not caught.value.transient  # the nightly job does not retry it
    assert said.startswith("the query for [etl.queries] episodes failed in the clinic database")
    assert ('column "admited_on" does not exist (SQLSTATE 42703)' in said
            or said.endswith("no such column: admited_on")
            # MariaDB 10.11 says "in 'SELECT'", MySQL "in 'field list'".
            or re.search(r"Unknown column 'admited_on' in '[\w ]+' \(error 1054\)$", said))
    run = the_run(store_db)
    assert run["status"] == "failed" and run["error"] == f"MappingError: {said}"
    store_db.dispose()


@pytest.mark.slow
def test_colons_inside_a_mappings_sql_are_sql_not_parameters(any_source: Source,
                                                            tmp_path: Path) -> None:
    """``'YYYY-MM-DD HH24:MI'`` once crashed the read with ``KeyError: 'MI'``; a percent
    sign is SQL too (PyMySQL formats statements with ``%``)."""
    mapping = SourceMapping(queries={
        t: f"{SourceMapping().query(t)} WHERE 'YYYY-MM-DD HH24:MI' <> ':since %s 100%'"
        for t in ("episodes", "appointments", "alliance_measures")})
    mapped = store_engine(f"sqlite:///{tmp_path / 'mapped.db'}")
    plain = store_engine(f"sqlite:///{tmp_path / 'plain.db'}")
    first = etl(any_source, mapped, mapping=mapping)
    second = etl(any_source, mapped, mapping=mapping)  # incremental: watermarks as parameters
    etl(any_source, plain)
    assert first.full and not second.full  # type: ignore[attr-defined]
    assert first.rows_read == sum(any_source.count(t) for t in tables.copies)  # type: ignore[attr-defined]
    assert stored(mapped, AS_OF) == stored(plain, AS_OF)
    mapped.dispose()
    plain.dispose()


@pytest.mark.slow
def test_a_dropped_optional_table_is_not_read_as_empty(
    source: Source, tmp_path: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    """Read as empty, the full reload deleted every stored item with no word of warning."""
    store_db = store_engine(f"sqlite:///{tmp_path / 'store.db'}")
    etl(source, store_db)
    held = checksums(store_db)[ITEMS]
    assert held[0] == source.count("alliance_items") > 0
    with source.engine.begin() as conn:
        conn.execute(text("DROP TABLE alliance_items"))
    for full in (True, None):
        with pytest.raises(MissingTable, match=rf"alliance_items \(the copy holds {held[0]:,} "):
            etl(source, store_db, full=full)
        assert checksums(store_db)[ITEMS] == held
        run = the_run(store_db)
        assert run["status"] == "failed"
        assert json.loads(str(run["detail"]))["missing_tables"] == ["alliance_items"]
    assert "optional table(s) alliance_items missing at the source" in caplog.text
    with store_db.connect() as conn:
        status = service_status(conn, AS_OF)
    assert status.missing_tables == ["alliance_items"]
    assert status.to_dict()["missing_tables"] == ["alliance_items"]
    assert any("alliance_items missing at the clinic database" in p for p in status.problems)
    # A clinic that no longer keeps the table says so in its mapping: the copy is emptied.
    gone = SourceMapping(queries={"alliance_items": "SELECT NULL AS measure_id, NULL AS "
                                  "item_number, NULL AS response WHERE 1 = 0"})
    etl(source, store_db, full=True, mapping=gone)
    assert checksums(store_db)[ITEMS][0] == 0
    with store_db.connect() as conn:
        assert service_status(conn, AS_OF).missing_tables == []
    store_db.dispose()


@pytest.mark.parametrize("missing", [("alliance_items",), ("consents", "client_identifiers"),
                                     ("client_contacts",)])
def test_an_optional_table_the_clinic_never_had_reads_empty(tmp_path: Path,
                                                           missing: tuple[str, ...]) -> None:
    """Most clinics keep no consents, identifiers or contacts for the service (yet): their
    runs go on."""
    src = Source.synthetic(f"sqlite:///{tmp_path / 'clinic.db'}", n_clients=40)
    with src.engine.begin() as conn:
        for table in missing:
            conn.execute(text(f"DROP TABLE {table}"))
    store_db = store_engine(f"sqlite:///{tmp_path / 'store.db'}")
    assert etl(src, store_db).open_episodes > 0  # type: ignore[attr-defined]
    second = etl(src, store_db, AS_OF + timedelta(days=1))
    assert not second.full  # type: ignore[attr-defined]
    sums = checksums(store_db)
    assert all(sums[tables.copies[t].name][0] == 0 for t in missing)
    assert all(sums[tables.copies[t].name][0] > 0 for t in contract.OPTIONAL_TABLES
               if t not in missing)
    store_db.dispose()
    src.dispose()


@pytest.mark.parametrize(
    "store_url", ["sqlite", pytest.param("postgresql", marks=pytest.mark.slow)], indirect=True)
def test_a_revocation_reaches_the_copy_by_an_incremental_run(source: Source,
                                                             store_url: str) -> None:
    """A disclosure check reads the copy: a consent revoked at the source must be revoked
    there the next night, and a consent or identifier gone bad leaves it."""
    store_db = store_engine(store_url)
    etl(source, store_db)
    consents = tables.copies["consents"]
    active = [k for k in source.rows("consents") if k["revoked_at"] is None]
    revoked, broken = active[0], active[1]
    with store_db.connect() as conn:
        mark = read_watermarks(conn)["consents"]
    assert mark is not None
    when = mark + timedelta(minutes=5)
    source.update("consents", {"consent_id": revoked["consent_id"]}, revoked_at=when,
                  updated_at=when)
    source.update("consents", {"consent_id": broken["consent_id"]}, purpose="decision_support",
                  updated_at=when)
    ident = source.rows("client_identifiers", limit=1)[0]
    source.update("client_identifiers", {"system": ident["system"], "value": ident["value"]},
                  client_id="C-NOBODY", updated_at=when)
    result = etl(source, store_db, AS_OF + timedelta(days=1))
    assert not result.full and result.rows_quarantined == 2  # type: ignore[attr-defined]
    with store_db.connect() as conn:
        copied = {r.consent_id: r for r in conn.execute(select(consents).where(
            consents.c.consent_id.in_([revoked["consent_id"], broken["consent_id"]])))}
        ids = tables.copies["client_identifiers"]
        mapped = conn.execute(select(ids.c.client_id).where(
            ids.c.system == ident["system"], ids.c.value == ident["value"])).first()
        rules = dict(conn.execute(select(tables.quarantine.c.row_key,
                                         tables.quarantine.c.rule)).fetchall())
    assert copied[revoked["consent_id"]].revoked_at == when
    assert broken["consent_id"] not in copied  # fails closed: no consent, no disclosure
    assert mapped is None
    assert rules == {broken["consent_id"]: "unknown_code",
                     f"{ident['system']}|{ident['value']}": "orphan"}
    store_db.dispose()


def test_a_failed_runs_error_quotes_no_source_value(pg_url: str, tmp_path: Path) -> None:
    """PostgreSQL quotes the value it could not take; the run's record must not."""
    src = Source.synthetic(pg_url, n_clients=30)
    cast = SourceMapping().query("clients").replace(
        "SELECT client_id,", "SELECT CAST(client_id AS integer) AS client_id,")
    store_db = store_engine(f"sqlite:///{tmp_path / 'store.db'}")
    with pytest.raises(MappingError):
        etl(src, store_db, mapping=SourceMapping(queries={"clients": cast}))
    error = str(the_run(store_db)["error"])
    assert "[etl.queries] clients" in error and "(SQLSTATE 22P02)" in error
    assert 'invalid input syntax for type integer: "…"' in error
    assert not [r["client_id"] for r in src.rows("clients") if r["client_id"] in error]
    store_db.dispose()
    src.dispose()


@pytest.mark.slow
def test_a_run_waits_for_another_etl_run_on_the_store_and_gives_up_in_time(
    source: Source, tmp_path: Path,
) -> None:
    store_db = store_engine(f"sqlite:///{tmp_path / 'store.db'}")
    etl(source, store_db)
    with locks.try_lock(store_db, locks.ETL) as got:  # as another process's run would
        assert got
        engine = source_engine(source.url)
        with pytest.raises(EtlBusy, match="nothing was read or changed"):
            run_etl(engine, store_db, AS_OF, EtlSettings(), lock_wait_seconds=0.05)
        engine.dispose()
    with store_db.connect() as conn:
        assert len(list_runs(conn)) == 1  # the run that gave up never started
    assert not etl(source, store_db).full  # type: ignore[attr-defined]
    store_db.dispose()


# A mapping that copies a file of the server into the store, as the clinic's site name.
READS_A_FILE = ("SELECT client_id, pg_read_file('/etc/hostname') AS clinic_id, case_manager_id, "
                "birth_year, sex, race_ethnicity FROM clients")


@pytest.mark.slow
def test_a_source_role_that_can_read_the_servers_files_is_refused(
    private_pg: Cluster, tmp_path: Path,
) -> None:
    """A superuser (or pg_read_server_files) source ran a mapping's pg_read_file into the
    store; the least-privilege role of docs/nightly.md cannot."""
    with psycopg.connect(private_pg.libpq(), autocommit=True) as admin:
        admin.execute("CREATE DATABASE clinic")
        admin.execute("CREATE ROLE reader LOGIN")
        admin.execute("CREATE ROLE filer LOGIN IN ROLE pg_read_server_files")
    src = Source.synthetic(private_pg.url("clinic"), n_clients=30)
    with src.engine.begin() as conn:
        conn.execute(text("GRANT SELECT ON ALL TABLES IN SCHEMA public TO reader, filer"))
    store_db = store_engine(f"sqlite:///{tmp_path / 'store.db'}")
    reads_a_file = SourceMapping(queries={"clients": READS_A_FILE})

    def run(user: str, **settings: object) -> object:
        engine = source_engine(private_pg.url("clinic", user))
        try:
            return run_etl(engine, store_db, AS_OF, EtlSettings(**settings))  # type: ignore[arg-type]
        finally:
            engine.dispose()

    with pytest.raises(SourceRoleRefused, match=r"'postgres' is a superuser .* "
                       r"\[etl\] allow_superuser_source = true"):
        run("postgres", mapping=reads_a_file)
    with pytest.raises(SourceRoleRefused, match="'filer' is a member of pg_read_server_files"):
        run("filer", mapping=reads_a_file)
    assert checksums(store_db)[tables.copies["clients"].name][0] == 0  # nothing was read
    with pytest.raises(MappingError, match="permission denied for function pg_read_file"):
        run("reader", mapping=reads_a_file)
    assert run("reader").open_episodes > 0  # type: ignore[attr-defined]
    assert run("postgres", allow_superuser_source=True).rows_changed == 0  # type: ignore[attr-defined]
    store_db.dispose()
    src.dispose()


@pytest.mark.slow
def test_a_read_that_times_out_is_transient_and_says_so(pg_url: str, tmp_path: Path) -> None:
    """The nightly job retries a timeout (tests/pipelines/test_scheduler.py retries one that
    cannot connect); only a query the database refuses is a mapping's error."""
    src = Source.synthetic(pg_url, n_clients=20)
    with src.engine.begin() as conn:  # the clinic's DBA bounds every statement
        conn.execute(text(f"ALTER DATABASE {make_url(pg_url).database} "
                          "SET statement_timeout = '200ms'"))
    slow = SourceMapping(queries={"clients": f"{SourceMapping().query('clients')} "
                                             "WHERE pg_sleep(1) IS NOT NULL"})
    store_db = store_engine(f"sqlite:///{tmp_path / 'store.db'}")
    with pytest.raises(SourceUnavailable) as caught:
        etl(src, store_db, mapping=slow)
    assert caught.value.transient
    assert str(caught.value) == ("the clinic database could not be read: canceling statement "
                                 "due to statement timeout (SQLSTATE 57014)")
    store_db.dispose()
    src.dispose()
