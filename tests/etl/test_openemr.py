"""The shipped OpenEMR mapping (config/mappings/openemr.toml) reads an OpenEMR database on
MariaDB exactly as the same clinic in contract form, and follows OpenEMR's changes."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from sqlalchemy import Engine, create_engine, select, text

from retention.clinic.synth import SynthConfig, generate, write
from retention.db.engines import source_engine, store_engine
from retention.pipelines.etl import EtlResult, run_etl
from retention.settings import EtlSettings, load_mapping_file, parse_etl
from retention.store import tables
from tests.support.openemr import APPTSTAT, carried, openemr_ids, write_openemr
from tests.support.sources import AS_OF, stored

MAPPING = Path(__file__).resolve().parents[2] / "config" / "mappings" / "openemr.toml"
# When staff change things in OpenEMR after the first run (the clinic's local time).
STAMP = datetime(2026, 6, 1, 15, 0)


def settings() -> EtlSettings:
    """The [etl] section of a clinic on OpenEMR: the shipped mapping and nothing else.
    The test server's root is a superuser (docs/nightly.md: a clinic's reader is not)."""
    return parse_etl({"mapping_file": str(MAPPING), "allow_superuser_source": True})


def etl(url: str, store: Engine, etl_settings: EtlSettings,
        as_of: Any = AS_OF) -> EtlResult:
    """One nightly run, through the service's own read-only source engine."""
    source = source_engine(url)
    try:
        return run_etl(source, store, as_of, etl_settings)
    finally:
        source.dispose()


def contract_source(path: Path, frames: dict[str, pd.DataFrame]) -> str:
    """The same clinic as contract tables in SQLite, the reference the mapping must match."""
    url = f"sqlite:///{path}"
    engine = create_engine(url)
    with engine.begin() as conn:
        write(conn, frames)
    engine.dispose()
    return url


@pytest.fixture(scope="module")
def frames() -> dict[str, pd.DataFrame]:
    """A synthetic clinic numbered as OpenEMR numbers it, so both sides share ids."""
    return openemr_ids(generate(SynthConfig(end=AS_OF, n_clients=150, seed=21)))


def test_every_published_appointment_status_is_mapped() -> None:
    """A status nobody mapped would be quarantined as unknown_code: all of OpenEMR's are."""
    codes = load_mapping_file(MAPPING).codes["appointments"]["status"]
    assert {option for option, _, _ in APPTSTAT} <= set(codes)


@pytest.mark.slow
def test_openemr_loads_like_the_contract(frames: dict[str, pd.DataFrame], mariadb_url: str,
                                         tmp_path: Path) -> None:
    """Same copy as the clinic in contract form, less what OpenEMR cannot hold
    (``carried``), and the same features as the whole contract clinic but its session
    notes (OpenEMR has no table for them; docs/contract.md, "From OpenEMR")."""
    writer = create_engine(mariadb_url)
    write_openemr(writer, frames)
    with writer.connect() as conn:
        published = set(conn.execute(text(
            "SELECT option_id FROM list_options WHERE list_id = 'apptstat'")).scalars())
    assert published <= set(settings().mapping.codes["appointments"]["status"])

    stores = {name: store_engine(f"sqlite:///{tmp_path / name}.db")
              for name in ("openemr", "carried", "contract")}
    result = etl(mariadb_url, stores["openemr"], settings())
    etl(contract_source(tmp_path / "carried_src.db", carried(frames)), stores["carried"],
        EtlSettings())
    no_notes = {**frames, "session_observations": frames["session_observations"].iloc[0:0]}
    etl(contract_source(tmp_path / "contract_src.db", no_notes), stores["contract"],
        EtlSettings())
    assert result.rows_quarantined == 0 and result.open_episodes > 0
    assert result.rows_read > len(frames["appointments"])

    from_openemr = stored(stores["openemr"], AS_OF)
    assert from_openemr == stored(stores["carried"], AS_OF)
    # Every instrument the clinic uses is a form OpenEMR holds, the ORS as the SRS.
    instruments = {row[4] for row in from_openemr["clinic_alliance_measures"]}
    assert instruments == set(frames["alliance_measures"]["instrument"]) >= {"SRS", "ORS"}
    # What else OpenEMR cannot carry is no model input: the features are the contract's
    # own. Session notes are (observed strain): without a table for them, their features
    # are missing, as for any clinic that keeps no notes.
    assert from_openemr["features"] == stored(stores["contract"], AS_OF)["features"]
    assert len(from_openemr["features"]) == result.open_episodes
    for engine in (writer, *stores.values()):
        engine.dispose()


def copy_row(store: Engine, table: str, key: str, value: str) -> dict[str, Any]:
    """One row of the store's copy of a contract table."""
    copy = tables.copies[table]
    with store.connect() as conn:
        return dict(conn.execute(select(copy).where(copy.c[key] == value)).one()._mapping)


@pytest.mark.slow
def test_changes_made_in_openemr_reach_the_copy_incrementally(
    mariadb_databases: Callable[[str], str], tmp_path: Path
) -> None:
    """A status set on the flow board, a cancellation saved in the calendar and a
    discharge saved in the issue editor, each stamped as OpenEMR stamps it, are read by
    the next incremental run."""
    frames = openemr_ids(generate(SynthConfig(end=AS_OF, n_clients=40, seed=5)))
    url = mariadb_databases("openemr")
    writer = create_engine(url)
    write_openemr(writer, frames)
    store = store_engine(f"sqlite:///{tmp_path / 'store.db'}")
    assert etl(url, store, settings()).full

    a = frames["appointments"]
    ahead = a[(a["status"] == "scheduled") & (a["scheduled_at"] >= pd.Timestamp(AS_OF))]
    arrived, cancelled = ahead["appointment_id"].iloc[0], ahead["appointment_id"].iloc[1]
    e = frames["episodes"]
    discharged = e.loc[e["discharged_on"].isna(), "episode_id"].iloc[0]
    with writer.begin() as conn:
        # The session's clock is OpenEMR's: NOW() and ON UPDATE stamps read it.
        conn.execute(text("SET timestamp = UNIX_TIMESTAMP(:t)"), {"t": STAMP})
        # The flow board (PatientTrackerService::manage_tracker_status): a tracker and
        # an element stamped with the change, then the event's status; pc_time stays.
        conn.execute(text(
            "INSERT INTO patient_tracker (date, apptdate, appttime, eid, pid, original_user,"
            " encounter, lastseq) SELECT :t, pc_eventDate, pc_startTime, pc_eid, pc_pid,"
            " 'frontdesk', 0, '1' FROM openemr_postcalendar_events WHERE pc_eid = :eid"),
            {"t": STAMP, "eid": int(arrived)})
        conn.execute(text(
            "INSERT INTO patient_tracker_element (pt_tracker_id, start_datetime, room,"
            " status, seq, user) VALUES (LAST_INSERT_ID(), :t, '', '@', '1', 'frontdesk')"),
            {"t": STAMP})
        conn.execute(text("UPDATE openemr_postcalendar_events SET pc_apptstatus = '@' "
                          "WHERE pc_eid = :eid"), {"eid": int(arrived)})
        # The calendar's edit dialog (add_edit_event.php) saves the whole event with
        # pc_time = NOW().
        conn.execute(text("UPDATE openemr_postcalendar_events SET pc_apptstatus = '%', "
                          "pc_time = NOW() WHERE pc_eid = :eid"), {"eid": int(cancelled)})
        # The issue editor: an end date and an outcome; modifydate moves by itself.
        conn.execute(text("UPDATE lists SET enddate = '2026-06-01 00:00:00', outcome = 20 "
                          "WHERE id = :id"), {"id": int(discharged)})

    again = etl(url, store, settings(), AS_OF + timedelta(days=1))
    assert not again.full and again.rows_quarantined == 0
    row = copy_row(store, "appointments", "appointment_id", arrived)
    assert (row["status"], row["updated_at"]) == ("attended", STAMP)
    row = copy_row(store, "appointments", "appointment_id", cancelled)
    # pc_time is also the booking time: a calendar save moves it (docs/contract.md).
    assert (row["status"], row["updated_at"], row["booked_at"]) == ("late_cancel", STAMP, STAMP)
    row = copy_row(store, "episodes", "episode_id", discharged)
    assert (row["discharged_on"].isoformat(), row["discharge_reason"], row["updated_at"]) == (
        "2026-06-01", "completed", STAMP)
    for engine in (writer, store):
        engine.dispose()
