"""A clinic's own schema mapped in config, read from PostgreSQL without ever writing to it."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.exc import DBAPIError

from retention.clinic.synth import SynthConfig, generate, write
from retention.db.engines import is_read_only, source_engine, store_engine
from retention.pipelines.etl import run_etl
from retention.settings import EtlSettings, parse_etl
from tests.support.sources import AS_OF, stored

PROGRAMS = {"outpatient": "OP", "intensive_outpatient": "IOP", "residential": "RES",
            "partial_hospitalization": "PHP", "medication_assisted": "MAT", "detox": "DTX",
            "other": "OTH"}
PURPOSES = {"treatment": "TX", "payment": "PAY", "health_care_operations": "OPS",
            "care_coordination": "CC", "research": "RES", "other": "OTH"}
STATUSES = {"scheduled": "SCH", "attended": "ATT", "no_show": "NS", "late_cancel": "LC",
            "cancelled_by_client": "CXL", "cancelled_by_clinic": "CC"}

# How this clinic maps its EHR: the [etl] section of its config, as TOML would give it.
ETL_CONFIG: dict[str, Any] = {
    "queries": {
        "clients": "SELECT pid AS client_id, site AS clinic_id, cm AS case_manager_id, "
                   "yob AS birth_year, gender AS sex, ethnicity AS race_ethnicity "
                   "FROM ehr.patients",
        "episodes": "SELECT adm_id AS episode_id, pid AS client_id, prog AS program, "
                    "start_date AS admitted_on, plan_end AS planned_discharge_on, "
                    "end_date AS discharged_on, end_reason AS discharge_reason, "
                    "modified AS updated_at FROM ehr.admissions",
        "appointments": "SELECT visit_id AS appointment_id, adm_id AS episode_id, "
                        "pid AS client_id, slot AS scheduled_at, booked AS booked_at, "
                        "status_code AS status, kind AS service_type, "
                        "remote = 'Y' AS telehealth, staff AS clinician_id, "
                        "modified AS updated_at FROM ehr.visits",
        "alliance_measures": "SELECT rid AS measure_id, adm_id AS episode_id, "
                             "pid AS client_id, visit_id AS appointment_id, "
                             "tool AS instrument, who AS rater, taken AS administered_at, "
                             "total AS score_total, g AS goal, t AS task, b AS bond, "
                             "modified AS updated_at FROM ehr.ratings",
        "alliance_items": "SELECT rid AS measure_id, q AS item_number, answer AS response "
                          "FROM ehr.rating_items",
        # Signs and repair steps kept comma-separated, the rupture as 'Y'/'N'.
        "session_observations": "SELECT note_id AS observation_id, adm_id AS episode_id, "
                                "pid AS client_id, visit_id AS appointment_id, "
                                "seen AS observed_at, signed_off AS recorded_at, "
                                "staff AS clinician_id, "
                                "replace(markers, ',', ' ') AS signs, "
                                "rupture_yn = 'Y' AS rupture, "
                                "replace(repairs, ',', ' ') AS repair_steps, "
                                "modified AS updated_at FROM ehr.session_notes",
        "consents": "SELECT cid AS consent_id, pid AS client_id, party AS recipient, "
                    "why AS purpose, signed AS effective_on, until AS expires_on, "
                    "withdrawn AS revoked_at, modified AS updated_at FROM ehr.consents",
        # One system for the whole table: the EHR keeps its MRN in a column of its own.
        "client_identifiers": "SELECT 'urn:oid:2.16.840.1.113883.3.9999.1' AS system, "
                              "mrn AS value, pid AS client_id, modified AS updated_at "
                              "FROM ehr.patient_mrns",
        # Yes/no kept as 'Y'/'N', unknown as NULL (never read as no).
        "client_contacts": "SELECT pid AS client_id, full_name AS display_name, "
                           "nickname AS preferred_name, tel AS phone, "
                           "channel AS preferred_channel, "
                           "CASE sms_ok WHEN 'Y' THEN true WHEN 'N' THEN false END AS may_text, "
                           "CASE call_ok WHEN 'Y' THEN true WHEN 'N' THEN false END AS may_call, "
                           "lang AS language, modified AS updated_at FROM ehr.patient_contacts",
    },
    "codes": {
        "episodes": {"program": {v: k for k, v in PROGRAMS.items()}},
        "appointments": {"status": {v: k for k, v in STATUSES.items()}},
        "alliance_measures": {"instrument": {"WAI": "WAI-SR"},
                              "rater": {"C": "client", "T": "therapist"}},
        "consents": {"purpose": {v: k for k, v in PURPOSES.items()}},
    },
}

EHR_DDL = """
CREATE SCHEMA ehr;
CREATE TABLE ehr.patients (pid text, site text, cm text, yob int, gender text, ethnicity text);
CREATE TABLE ehr.admissions (adm_id text, pid text, prog text, start_date text, plan_end text,
                             end_date text, end_reason text, modified timestamp);
CREATE TABLE ehr.visits (visit_id text, adm_id text, pid text, slot text, booked timestamp,
                         status_code text, kind text, remote char(1), staff text,
                         modified timestamp);
CREATE TABLE ehr.ratings (rid text, adm_id text, pid text, visit_id text, tool text, who text,
                          taken timestamp, total numeric, g numeric, t numeric, b numeric,
                          modified timestamp);
CREATE TABLE ehr.rating_items (rid text, q int, answer numeric);
CREATE TABLE ehr.session_notes (note_id text, adm_id text, pid text, visit_id text,
                                seen timestamp, signed_off timestamp, staff text,
                                markers text, rupture_yn char(1), repairs text,
                                modified timestamp);
CREATE TABLE ehr.consents (cid text, pid text, party text, why text, signed text, until text,
                           withdrawn timestamp, modified timestamp);
CREATE TABLE ehr.patient_mrns (mrn text, pid text, modified timestamp);
CREATE TABLE ehr.patient_contacts (pid text, full_name text, nickname text, tel text,
                                   channel text, sms_ok char(1), call_ok char(1), lang text,
                                   modified timestamp)
"""


def _day(v: Any) -> str | None:
    return None if v is None or pd.isna(v) else f"{v:%Y-%m-%d}"


def write_ehr(engine: Engine, frames: dict[str, pd.DataFrame]) -> None:
    """The synthetic clinic as an EHR stores it: other names, codes and text dates."""
    c, e, a = frames["clients"], frames["episodes"], frames["appointments"]
    m, i = frames["alliance_measures"], frames["alliance_items"]
    k, ids, cc = frames["consents"], frames["client_identifiers"], frames["client_contacts"]
    o = frames["session_observations"]
    yes_no = {True: "Y", False: "N"}
    tables = {
        "patients": pd.DataFrame({"pid": c.client_id, "site": c.clinic_id,
                                  "cm": c.case_manager_id, "yob": c.birth_year,
                                  "gender": c.sex, "ethnicity": c.race_ethnicity}),
        "admissions": pd.DataFrame({
            "adm_id": e.episode_id, "pid": e.client_id, "prog": e.program.map(PROGRAMS),
            "start_date": e.admitted_on.map(_day), "plan_end": e.planned_discharge_on.map(_day),
            "end_date": e.discharged_on.map(_day), "end_reason": e.discharge_reason,
            "modified": e.updated_at}),
        "visits": pd.DataFrame({
            "visit_id": a.appointment_id, "adm_id": a.episode_id, "pid": a.client_id,
            "slot": a.scheduled_at.dt.strftime("%Y-%m-%d %H:%M"), "booked": a.booked_at,
            "status_code": a.status.map(STATUSES), "kind": a.service_type,
            "remote": a.telehealth.map({True: "Y", False: "N"}), "staff": a.clinician_id,
            "modified": a.updated_at}),
        "ratings": pd.DataFrame({
            "rid": m.measure_id, "adm_id": m.episode_id, "pid": m.client_id,
            "visit_id": m.appointment_id, "tool": m.instrument.replace({"WAI-SR": "WAI"}),
            "who": m.rater.map({"client": "C", "therapist": "T"}), "taken": m.administered_at,
            "total": m.score_total, "g": m.goal, "t": m.task, "b": m.bond,
            "modified": m.updated_at}),
        "rating_items": pd.DataFrame({"rid": i.measure_id, "q": i.item_number,
                                      "answer": i.response}),
        "session_notes": pd.DataFrame({
            "note_id": o.observation_id, "adm_id": o.episode_id, "pid": o.client_id,
            "visit_id": o.appointment_id, "seen": o.observed_at, "signed_off": o.recorded_at,
            "staff": o.clinician_id, "markers": o.signs.str.replace(" ", ","),
            "rupture_yn": o.rupture.map(yes_no), "repairs": o.repair_steps.str.replace(" ", ","),
            "modified": o.updated_at}),
        "consents": pd.DataFrame({
            "cid": k.consent_id, "pid": k.client_id, "party": k.recipient,
            "why": k.purpose.map(PURPOSES), "signed": k.effective_on.map(_day),
            "until": k.expires_on.map(_day), "withdrawn": k.revoked_at,
            "modified": k.updated_at}),
        "patient_mrns": pd.DataFrame({"mrn": ids.value, "pid": ids.client_id,
                                      "modified": ids.updated_at}),
        "patient_contacts": pd.DataFrame({
            "pid": cc.client_id, "full_name": cc.display_name, "nickname": cc.preferred_name,
            "tel": cc.phone, "channel": cc.preferred_channel,
            "sms_ok": cc.may_text.map(yes_no), "call_ok": cc.may_call.map(yes_no),
            "lang": cc.language, "modified": cc.updated_at}),
    }
    with engine.begin() as conn:
        for statement in EHR_DDL.split(";"):
            conn.execute(text(statement))
        for name, frame in tables.items():
            frame.astype(object).where(frame.notna(), None).to_sql(
                name, conn, schema="ehr", if_exists="append", index=False, chunksize=5000)


@pytest.fixture(scope="module")
def frames() -> dict[str, pd.DataFrame]:
    return generate(SynthConfig(end=AS_OF, n_clients=150, seed=21))


@pytest.mark.slow
def test_a_mapped_ehr_loads_exactly_like_the_contract(
    frames: dict[str, pd.DataFrame], pg_databases: Callable[[str], str], tmp_path: Path
) -> None:
    ehr_url = pg_databases("ehr")
    writer = create_engine(ehr_url)
    write_ehr(writer, frames)
    contract_url = f"sqlite:///{tmp_path / 'contract.db'}"
    plain = create_engine(contract_url)
    with plain.begin() as conn:
        write(conn, frames)
    plain.dispose()

    mapped_store, plain_store = store_engine(pg_databases("mapped")), store_engine(
        f"sqlite:///{tmp_path / 'store.db'}")
    mapped_source, plain_source = source_engine(ehr_url), source_engine(contract_url)
    # The test server's role is a superuser (docs/nightly.md: a clinic's is not).
    settings = parse_etl({**ETL_CONFIG, "allow_superuser_source": True})
    result = run_etl(mapped_source, mapped_store, AS_OF, settings)
    run_etl(plain_source, plain_store, AS_OF, EtlSettings())
    assert result.rows_quarantined == 0 and result.open_episodes > 0
    mapped = stored(mapped_store, AS_OF)
    assert all(mapped[f"clinic_{t}"] for t in frames)  # every table has rows to compare
    assert mapped == stored(plain_store, AS_OF)

    # The clinic's own codes and text dates can still be wrong: those rows are held back.
    stamp = datetime(2026, 6, 1, 15)
    with writer.begin() as conn:
        conn.execute(text(
            "INSERT INTO ehr.visits SELECT 'V-BADDATE', adm_id, pid, '2026-02-30 10:00', "
            "booked, 'ATT', kind, remote, staff, :s FROM ehr.visits LIMIT 1"), {"s": stamp})
        conn.execute(text(
            "INSERT INTO ehr.visits SELECT 'V-ZZ', adm_id, pid, '2026-06-03 10:00', "
            "booked, 'ZZ', kind, remote, staff, :s FROM ehr.visits LIMIT 1"), {"s": stamp})
        conn.execute(text(
            "INSERT INTO ehr.consents SELECT 'K-ZZ', pid, party, 'ZZ', signed, until, "
            "withdrawn, :s FROM ehr.consents LIMIT 1"), {"s": stamp})
        changed = conn.execute(text(
            "UPDATE ehr.patient_contacts SET tel = 'ask at the desk', modified = :s "
            "WHERE pid = (SELECT min(pid) FROM ehr.patient_contacts) RETURNING pid"),
            {"s": stamp}).scalar_one()
    again = run_etl(mapped_source, mapped_store, AS_OF + timedelta(days=1), settings)
    assert not again.full and again.rows_quarantined == 4
    quarantined = {(r[1], r[2]) for r in stored(mapped_store)["quarantine"]}
    assert quarantined == {("V-BADDATE", "malformed_date"), ("V-ZZ", "unknown_code"),
                           ("K-ZZ", "unknown_code"), (changed, "malformed_phone")}
    for engine in (writer, mapped_store, plain_store, mapped_source, plain_source):
        engine.dispose()


@pytest.mark.slow
def test_the_source_is_opened_read_only_and_left_unchanged(
    frames: dict[str, pd.DataFrame], pg_databases: Callable[[str], str], tmp_path: Path
) -> None:
    url = pg_databases("clinic")
    writer = create_engine(url)
    with writer.begin() as conn:
        write(conn, frames)

    def fingerprint() -> list[Any]:
        with writer.connect() as conn:
            return [conn.execute(text(f"SELECT count(*), md5(string_agg(t::text, '|' ORDER BY "
                                      f"t::text)) FROM {name} t")).one()
                    for name in ("clients", "episodes", "appointments", "alliance_measures",
                                 "alliance_items")]

    before = fingerprint()
    source = source_engine(url)
    with source.connect() as conn:
        assert is_read_only(conn)
        with pytest.raises(DBAPIError, match="read-only"):
            conn.execute(text("CREATE TABLE intruder (x int)"))
    run_etl(source, store_engine(f"sqlite:///{tmp_path / 'store.db'}"), AS_OF,
            EtlSettings(allow_superuser_source=True))
    assert fingerprint() == before
    source.dispose()
    writer.dispose()
