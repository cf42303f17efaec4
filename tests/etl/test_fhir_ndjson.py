"""A FHIR Bulk Data export as the clinic source: the same copy, features and quarantine as
the same clinic in a database, incremental exports as incremental reads, unreadable
resources held, and the mapping file checked."""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from sqlalchemy import Engine, create_engine, select

from retention.clinic.registry import default_registry, load_registry
from retention.clinic.synth import SynthConfig, generate, write
from retention.clinic.synth.fhir_ndjson import as_exported, write_export
from retention.db.engines import source_engine, store_engine
from retention.etl import fhir_ndjson
from retention.etl.fhir_ndjson import MAPPING_FILE, MODELS, FhirMapping, NdjsonSource
from retention.etl.load import QuarantineLimitExceeded
from retention.pipelines.etl import run_etl
from retention.settings import SHIPPED_INSTRUMENTS_FILE, ConfigError, EtlSettings
from retention.store import tables
from tests.support.sources import AS_OF, stored

FULL_AT = datetime(2026, 6, 1, 0, 0, tzinfo=UTC)  # the full export: after the clinic's last write
CHANGED_AT = datetime(2026, 6, 1, 8, 0)  # the changes of the day (clinic time = UTC here)
SINCE_AT = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)  # the incremental export


@pytest.fixture(scope="module")
def clinic() -> dict[str, pd.DataFrame]:
    return generate(SynthConfig(end=AS_OF, n_clients=120, seed=11))


def sql_source(path: Path, frames: Mapping[str, pd.DataFrame]) -> str:
    url = f"sqlite:///{path}"
    engine = create_engine(url)
    with engine.begin() as conn:
        write(conn, as_exported(frames))
    engine.dispose()
    return url


def etl_sql(url: str, store_db: Engine, full: bool | None = None, **settings: Any) -> Any:
    engine = source_engine(url)
    try:
        return run_etl(engine, store_db, AS_OF, EtlSettings(**settings), full=full)
    finally:
        engine.dispose()


def etl_fhir(folder: Path, store_db: Engine, full: bool | None = None, workers: int = 2,
             **settings: Any) -> Any:
    source = NdjsonSource(folder, FhirMapping.default(), workers=workers)
    try:
        return run_etl(source, store_db, AS_OF, EtlSettings(**settings), full=full)
    finally:
        source.dispose()


def quarantine(store_db: Engine) -> dict[tuple[str, str], tuple[str, str]]:
    q = tables.quarantine
    with store_db.connect() as conn:
        return {(r.table_name, r.row_key): (r.rule, r.detail) for r in conn.execute(
            select(q.c.table_name, q.c.row_key, q.c.rule, q.c.detail))}


def copy_keys(store_db: Engine, table: str, column: str) -> set[str]:
    with store_db.connect() as conn:
        return set(conn.execute(select(tables.copies[table].c[column])).scalars())


# --- (a) round trip -------------------------------------------------------------------


def test_an_export_gives_the_store_a_database_of_the_same_clinic_gives(
        clinic: dict[str, pd.DataFrame], tmp_path: Path) -> None:
    write_export(clinic, tmp_path / "exports" / "full", FULL_AT)
    from_sql, from_fhir = (store_engine(f"sqlite:///{tmp_path / n}") for n in ("a.db", "b.db"))
    etl_sql(sql_source(tmp_path / "clinic.db", clinic), from_sql)
    result = etl_fhir(tmp_path / "exports", from_fhir)
    assert result.full and result.open_episodes > 0
    expected = stored(from_sql, AS_OF)
    # Every table has rows to compare but the session notes, which FHIR does not carry
    # (docs/contract.md): the database side is the clinic as exported, without them.
    assert all(expected[f"clinic_{t}"] for t in clinic if t != "session_observations")
    assert len(clinic["session_observations"]) and not expected["clinic_session_observations"]
    assert stored(from_fhir, AS_OF) == expected
    # Every instrument the clinic uses came through, the ORS and the TAS as the SRS.
    with from_fhir.connect() as conn:
        instruments = set(conn.execute(
            select(tables.copies["alliance_measures"].c.instrument).distinct()).scalars())
    assert instruments == set(clinic["alliance_measures"]["instrument"]) >= {"SRS", "ORS"}


def test_a_folder_without_a_manifest_is_one_full_export(clinic: dict[str, pd.DataFrame],
                                                        tmp_path: Path) -> None:
    folder = write_export(clinic, tmp_path / "plain", FULL_AT)
    (folder / "manifest.json").unlink()
    frames, clock = NdjsonSource(folder, FhirMapping.default()).read({})
    exported = as_exported(clinic)  # no session notes: FHIR does not carry them
    assert {t: len(f) for t, f in frames.items()} == {t: len(f) for t, f in exported.items()}
    assert len(frames["session_observations"]) == 0 < len(clinic["session_observations"])
    # Its time is its newest resource's (the watermarks never pass it).
    assert clock == max(pd.Timestamp(f["updated_at"].max()) for t, f in exported.items()
                        if "updated_at" in f and len(f)).to_pydatetime()


# --- (b) incremental exports ------------------------------------------------------------


def changed_clinic(frames: dict[str, pd.DataFrame]) -> tuple[dict[str, pd.DataFrame],
                                                             dict[str, list[str]]]:
    """The clinic after a day of changes at CHANGED_AT; and what was deleted."""
    out = {name: frame.copy() for name, frame in frames.items()}
    appts, episodes = out["appointments"], out["episodes"]
    ahead = appts.index[(appts["status"] == "scheduled")]
    appts.loc[ahead[0], ["status", "updated_at"]] = ["cancelled_by_client", CHANGED_AT]
    appts.loc[ahead[1], ["status", "updated_at"]] = ["late_cancel", CHANGED_AT]
    gone_appt = str(appts.loc[ahead[2], "appointment_id"])
    open_episode = episodes[episodes["discharged_on"].isna()].iloc[0]
    new = appts.loc[[ahead[3]]].assign(
        appointment_id="A-new-1", episode_id=open_episode["episode_id"],
        client_id=open_episode["client_id"], scheduled_at=datetime(2026, 6, 4, 10, 0),
        booked_at=CHANGED_AT, status="scheduled", updated_at=CHANGED_AT)
    out["appointments"] = pd.concat([appts[appts["appointment_id"] != gone_appt], new],
                                    ignore_index=True)
    e = episodes.index[episodes["episode_id"] == open_episode["episode_id"]][0]
    episodes.loc[e, ["planned_discharge_on", "updated_at"]] = [date(2026, 9, 1), CHANGED_AT]
    measures = out["alliance_measures"]
    gone_measure = str(measures["measure_id"].iloc[-1])
    out["alliance_measures"] = measures[measures["measure_id"] != gone_measure]
    out["alliance_items"] = out["alliance_items"][
        out["alliance_items"]["measure_id"] != gone_measure]
    contacts = out["client_contacts"]
    contacts.loc[contacts.index[0], ["phone", "updated_at"]] = ["(212) 555-0188", CHANGED_AT]
    consents = out["consents"]
    k = consents.index[consents["revoked_at"].isna()][0]
    consents.loc[k, ["revoked_at", "updated_at"]] = [CHANGED_AT, CHANGED_AT]
    return out, {"Appointment": [gone_appt], "QuestionnaireResponse": [gone_measure]}


def test_an_incremental_export_is_read_as_a_database_changed_the_same_way(
        clinic: dict[str, pd.DataFrame], tmp_path: Path) -> None:
    later, deleted = changed_clinic(clinic)
    exports = tmp_path / "exports"
    write_export(clinic, exports / "1-full", FULL_AT)
    from_sql, from_fhir = (store_engine(f"sqlite:///{tmp_path / n}") for n in ("a.db", "b.db"))
    etl_sql(sql_source(tmp_path / "before.db", clinic), from_sql)
    etl_fhir(exports, from_fhir)

    write_export(later, exports / "2-since", SINCE_AT, since=FULL_AT, deleted=deleted)
    after = sql_source(tmp_path / "after.db", later)
    etl_sql(after, from_sql, full=False)
    fhir_run = etl_fhir(exports, from_fhir, full=False)
    # Only the clients (read whole), the rows in the watermarks' overlap, the changes and
    # the slots of the episode that changed were read.
    assert not fhir_run.full
    assert fhir_run.rows_read < sum(len(f) for f in clinic.values()) / 20
    assert stored(from_fhir, AS_OF) == stored(from_sql, AS_OF)
    appointments = copy_keys(from_fhir, "appointments", "appointment_id")
    # Added and changed rows are in; a deletion waits for the full reload, as in a database.
    assert "A-new-1" in appointments and deleted["Appointment"][0] in appointments

    etl_sql(after, from_sql, full=True)
    etl_fhir(exports, from_fhir, full=True)
    fresh = store_engine(f"sqlite:///{tmp_path / 'fresh.db'}")
    write_export(later, tmp_path / "fresh" / "full", SINCE_AT)
    etl_fhir(tmp_path / "fresh", fresh)
    reloaded = stored(from_fhir, AS_OF)
    assert reloaded == stored(from_sql, AS_OF) == stored(fresh, AS_OF)
    assert deleted["Appointment"][0] not in copy_keys(from_fhir, "appointments",
                                                      "appointment_id")
    assert deleted["QuestionnaireResponse"][0] not in copy_keys(
        from_fhir, "alliance_measures", "measure_id")


class CountingModel:
    """A model whose ``model_validate_json`` counts its calls (in this process)."""

    def __init__(self, model: Any, calls: list[bytes]) -> None:
        self.model, self.calls = model, calls

    def model_validate_json(self, line: bytes) -> Any:
        self.calls.append(line)
        return self.model.model_validate_json(line)


def test_an_incremental_read_validates_only_the_lines_it_needs(
        clinic: dict[str, pd.DataFrame], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    later, deleted = changed_clinic(clinic)
    for table, kind, column in (("appointments", "Appointment", "appointment_id"),
                                ("alliance_measures", "QuestionnaireResponse", "measure_id"),
                                ("alliance_items", "QuestionnaireResponse", "measure_id")):
        # Kept: a deletion reaches the copy at the full reload only (as in a database).
        gone = clinic[table][clinic[table][column].isin(deleted[kind])]
        later[table] = pd.concat([later[table], gone], ignore_index=True)
    exports = tmp_path / "exports"
    write_export(clinic, exports / "1-full", FULL_AT)
    store_db = store_engine(f"sqlite:///{tmp_path / 'store.db'}")
    etl_fhir(exports, store_db)
    write_export(later, exports / "2-since", SINCE_AT, since=FULL_AT)
    calls: list[bytes] = []
    for kind, model in list(MODELS.items()):
        monkeypatch.setitem(MODELS, kind, CountingModel(model, calls))
    run = etl_fhir(exports, store_db, full=False, workers=1)
    monkeypatch.undo()
    lines = sum(1 for p in exports.rglob("*.ndjson") for _ in p.open("rb"))
    # Patients (clients are read whole), episodes (they give the case manager), the
    # changes and the slots of the changed episode: not the export's history.
    assert not run.full and len(calls) < lines / 5
    assert len(calls) <= len(clinic["clients"]) + len(clinic["episodes"]) + 200
    fresh = store_engine(f"sqlite:///{tmp_path / 'fresh.db'}")
    write_export(later, tmp_path / "fresh" / "full", SINCE_AT)
    etl_fhir(tmp_path / "fresh", fresh)
    assert stored(store_db, AS_OF) == stored(fresh, AS_OF)


def test_several_workers_read_what_one_reads(clinic: dict[str, pd.DataFrame], tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    later, deleted = changed_clinic(clinic)
    exports = tmp_path / "exports"
    full = write_export(clinic, exports / "1-full", FULL_AT)
    append_lines(full / "Appointment.ndjson", ["not json", '{"resourceType": "Appointment"}'])
    write_export(later, exports / "2-since", SINCE_AT, since=FULL_AT, deleted=deleted)
    monkeypatch.setattr(fhir_ndjson, "CHUNK_LINES", 500)  # several chunks in flight
    marks: dict[str, datetime | None] = {t: datetime(2026, 5, 20) for t in clinic}
    for since in ({}, {**marks, "clients": None}):
        one, clock_one = NdjsonSource(exports, FhirMapping.default(), workers=1).read(since)
        two, clock_two = NdjsonSource(exports, FhirMapping.default(), workers=2).read(since)
        assert clock_one == clock_two
        assert set(one) == set(two)
        for table in one:
            pd.testing.assert_frame_equal(one[table], two[table])
        pd.testing.assert_frame_equal(one.malformed, two.malformed)
        assert len(one.malformed) == 2


# --- (c) resources that cannot be read ---------------------------------------------------


def append_lines(path: Path, lines: list[str]) -> int:
    """Append lines to an NDJSON file; returns the number of the first one."""
    first = sum(1 for _ in path.open("rb")) + 1
    with path.open("a", encoding="utf-8") as handle:
        handle.writelines(line + "\n" for line in lines)
    return first


def resource(folder: Path, kind: str, rid: str) -> dict[str, Any]:
    with (folder / f"{kind}.ndjson").open("rb") as handle:
        for line in handle:
            found = json.loads(line)
            if found["id"] == rid:
                return dict(found)
    raise KeyError(rid)


def test_unreadable_resources_are_held_and_the_run_goes_on(
        clinic: dict[str, pd.DataFrame], tmp_path: Path) -> None:
    folder = write_export(clinic, tmp_path / "exports" / "full", FULL_AT)
    appt = resource(folder, "Appointment", str(clinic["appointments"]["appointment_id"].iloc[0]))
    patient = resource(folder, "Patient", str(clinic["clients"]["client_id"].iloc[0]))
    first = append_lines(folder / "Appointment.ndjson", [
        '{"resourceType": "Appointment", "id": "A-cut',  # cut short: no id to read
        json.dumps({**appt, "id": "A-bad-date", "start": "2026-02-30T10:00:00Z"}),
        json.dumps({**appt, "id": "A-bad-shape", "participant": "everyone"}),
        json.dumps({**patient, "id": "C-in-the-wrong-file"}),
    ])
    store_db = store_engine(f"sqlite:///{tmp_path / 'store.db'}")
    result = etl_fhir(tmp_path / "exports", store_db)
    held = quarantine(store_db)
    malformed = {k: v for k, v in held.items() if v[0] == "malformed_resource"}
    assert set(malformed) == {("appointments", f"full/Appointment.ndjson:{first}"),
                              ("appointments", "A-bad-date"), ("appointments", "A-bad-shape"),
                              ("appointments", "C-in-the-wrong-file")}
    assert malformed[("appointments", "A-bad-date")][1] == (
        "the Appointment is not valid FHIR R4: start (datetime_from_date_parsing)")
    assert "is not a Appointment resource" in malformed[
        ("appointments", "C-in-the-wrong-file")][1]
    assert not any("2026-02-30" in detail or "everyone" in detail
                   for _rule, detail in held.values())  # details quote no values
    assert result.rows_quarantined == 4
    # Everything else was stored.
    assert len(copy_keys(store_db, "appointments", "appointment_id")) == len(
        clinic["appointments"])

    # A later export that breaks a stored resource holds it and takes it out of the copy;
    # the one after, which mends it, releases it.
    good = str(clinic["appointments"]["appointment_id"].iloc[5])
    broken = {**resource(folder, "Appointment", good), "status": 7,
              "meta": {"lastUpdated": "2026-06-01T09:00:00+00:00"}}
    write_export({t: f.iloc[0:0] for t, f in clinic.items()}, tmp_path / "exports" / "2-since",
                 SINCE_AT, since=FULL_AT)
    append_lines(tmp_path / "exports" / "2-since" / "Appointment.ndjson", [json.dumps(broken)])
    etl_fhir(tmp_path / "exports", store_db, full=False)
    assert quarantine(store_db)[("appointments", good)][0] == "malformed_resource"
    assert good not in copy_keys(store_db, "appointments", "appointment_id")

    mended = {**broken, "status": "fulfilled", "meta": {"lastUpdated": "2026-06-01T13:00:00Z"}}
    write_export({t: f.iloc[0:0] for t, f in clinic.items()}, tmp_path / "exports" / "3-since",
                 SINCE_AT + timedelta(hours=2), since=SINCE_AT)
    append_lines(tmp_path / "exports" / "3-since" / "Appointment.ndjson", [json.dumps(mended)])
    etl_fhir(tmp_path / "exports", store_db, full=False)
    assert ("appointments", good) not in quarantine(store_db)
    assert good in copy_keys(store_db, "appointments", "appointment_id")


def test_unreadable_resources_count_toward_the_quarantine_limits(
        clinic: dict[str, pd.DataFrame], tmp_path: Path) -> None:
    folder = write_export(clinic, tmp_path / "exports" / "full", FULL_AT)
    append_lines(folder / "EpisodeOfCare.ndjson", ["not json"] * 12)
    store_db = store_engine(f"sqlite:///{tmp_path / 'store.db'}")
    with pytest.raises(QuarantineLimitExceeded, match=r"episodes: 12 of .*malformed_resource 12"):
        etl_fhir(tmp_path / "exports", store_db)


# --- (d) values the contract refuses ----------------------------------------------------


def test_bad_values_are_held_under_the_contract_rules(clinic: dict[str, pd.DataFrame],
                                                      tmp_path: Path) -> None:
    folder = write_export(clinic, tmp_path / "exports" / "full", FULL_AT)
    appts = clinic["appointments"]["appointment_id"]
    episode_id = str(clinic["episodes"]["episode_id"].iloc[0])
    measure_id = str(clinic["alliance_measures"]["measure_id"].iloc[0])
    rewrite: dict[tuple[str, str], dict[str, Any]] = {
        ("Appointment", str(appts.iloc[0])): {"status": "rescheduled"},
        ("Appointment", str(appts.iloc[1])): {"status": "cancelled", "cancelationReason": {
            "coding": [{"system": FhirMapping().appointment.cancellation_system,
                        "code": "weather"}]}},
        ("EpisodeOfCare", episode_id): {"period": {"start": "1850-01-01"}},
    }
    for (kind, rid), change in rewrite.items():
        path = folder / f"{kind}.ndjson"
        lines = [json.loads(line) for line in path.open("rb")]
        path.write_text("".join(json.dumps({**r, **change} if r["id"] == rid else r) + "\n"
                                for r in lines))
    path = folder / "QuestionnaireResponse.ndjson"
    lines = [json.loads(line) for line in path.open("rb")]
    for r in lines:
        if r["id"] == measure_id:
            r["item"][0]["linkId"] = "first"
    path.write_text("".join(json.dumps(r) + "\n" for r in lines))

    store_db = store_engine(f"sqlite:///{tmp_path / 'store.db'}")
    etl_fhir(tmp_path / "exports", store_db)
    held = quarantine(store_db)
    assert held[("appointments", str(appts.iloc[0]))][0] == "unknown_code"
    assert held[("appointments", str(appts.iloc[1]))] == (
        "unknown_code", "status cancelled:weather is not a contract code")
    assert held[("episodes", episode_id)][0] == "date_out_of_range"
    assert held[("alliance_items", f"{measure_id}|first")][0] == "malformed_value"


# --- (e) the mapping file --------------------------------------------------------------


def test_the_shipped_mapping_file_is_the_default() -> None:
    assert FhirMapping.from_file(MAPPING_FILE) == FhirMapping.default()


@pytest.mark.parametrize(("text", "message"), [
    ('timezon = "UTC"', "unknown key"),
    ('[patient]\ncase_manger = "careManager"', r"\[patient\] unknown key\(s\) case_manger"),
    ('[appointment.statuses]\nbooked = "booked"', "maps to unknown code"),
    ('[questionnaire.instruments]\n"PHQ 9" = ["https://x.example/q"]',
     r"'PHQ 9' are not instrument codes"),
    ('timezone = "Mars/Olympus"', "not an IANA time zone"),
    ('[appointment]\ntelehealth_codes = "VR"', "must be a list"),
    ('[patient]\ncase_manager = "nurse"', "case_manager must be one of"),
])
def test_the_mapping_file_is_checked(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "fhir.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        FhirMapping.from_file(path)


OWN_FORM = """
[instruments.HOPE-7]
name = "The clinic's own hope scale"
kind = "outcome"
raters = ["client"]
item_range = [0, 4]
total = "sum"
total_range = [0, 8]
higher_is = "better"
model_input = false
source = "the clinic's own form"

[instruments.HOPE-7.items]
1 = "hope"
2 = "plans"
"""


def test_a_questionnaire_is_filed_under_a_contract_or_registered_instrument(
        tmp_path: Path) -> None:
    """Any instrument code may be mapped; given the registry, one that is neither the
    contract's nor registered is refused (its responses would be filed under a code
    nothing reads), and one registered is read."""
    path = tmp_path / "fhir.toml"
    path.write_text('[questionnaire.instruments]\nORS = ["https://x.example/ors"]\n'
                    'HOPE-7 = ["https://x.example/hope"]\n')
    assert FhirMapping.from_file(path).questionnaire.instruments["HOPE-7"] == (
        "https://x.example/hope",)
    with pytest.raises(ConfigError, match=r"HOPE-7 are neither contract instruments .*nor "
                                          r"registered in .*instruments\.toml"):
        FhirMapping.from_file(path, registry=default_registry())
    own = tmp_path / "instruments.toml"
    own.write_text(SHIPPED_INSTRUMENTS_FILE.read_text() + OWN_FORM)
    mapping = FhirMapping.from_file(path, registry=load_registry(own))
    assert mapping.questionnaire.instruments["ORS"] == ("https://x.example/ors",)


def test_a_clinics_own_codes_are_mapped(clinic: dict[str, pd.DataFrame], tmp_path: Path) -> None:
    """A clinic writing its own codes maps them in the file; writer and reader agree."""
    path = tmp_path / "fhir.toml"
    shutil.copy(MAPPING_FILE, path)
    text = path.read_text().replace("[episode.programs]\n",
                                    '[episode.programs]\nOP = "outpatient"\n')
    path.write_text(text.replace('timezone = "UTC"', 'timezone = "America/Chicago"'))
    mapping = FhirMapping.from_file(path)
    folder = write_export(clinic, tmp_path / "full", FULL_AT, mapping=mapping)
    assert '"code":"OP"' in (folder / "EpisodeOfCare.ndjson").read_text()
    frames, clock = NdjsonSource(folder, mapping).read({})
    assert clock == datetime(2026, 5, 31, 19, 0)  # the export's time, in the clinic's zone
    episodes = frames["episodes"].set_index("episode_id")
    original = clinic["episodes"].set_index("episode_id")
    assert episodes.loc[original.index, "program"].tolist() == original["program"].tolist()
    assert (pd.to_datetime(frames["appointments"]["scheduled_at"]).to_numpy()
            == clinic["appointments"]["scheduled_at"].to_numpy()).all()
