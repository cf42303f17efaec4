"""What therapists note after a session (``session_observations``) against the contract:
the notes the model may read, and those held back from it. Every row is made up."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, time, timedelta
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from sqlalchemy import Engine, select, text

from retention.clinic import contract
from retention.clock import FixedClock
from retention.db.engines import source_engine, store_engine
from retention.etl.extract import INCREMENTAL
from retention.etl.quarantine import limits_broken
from retention.etl.validation import Context, validate
from retention.pipelines.etl import run_etl
from retention.settings import EtlSettings
from retention.store import tables
from retention.store.clinic_copy import read_clinic_copy
from tests.support.sources import AS_OF, Source

CLIENTS = pd.DataFrame([{"client_id": "C1", "clinic_id": "north"},
                        {"client_id": "C2", "clinic_id": "south"}])
EPISODES = pd.DataFrame([{"episode_id": f"E{n}", "client_id": f"C{n}", "program": "outpatient",
                          "admitted_on": "2026-01-05", "updated_at": "2026-01-05 09:00"}
                         for n in (1, 2)])
NIGHT = FixedClock(datetime.combine(AS_OF, time(2, 30)))
NEXT_NIGHT = FixedClock(datetime(2026, 6, 2, 2, 30))
THIRD_NIGHT = FixedClock(datetime(2026, 6, 3, 2, 30))


def note(observation_id: str = "O1", episode_id: str = "E1", client_id: str = "C1",
         **changes: Any) -> dict[str, Any]:
    """A note written three hours after its session, of a rupture the therapist began to
    repair."""
    row = {"observation_id": observation_id, "episode_id": episode_id, "client_id": client_id,
           "appointment_id": "A1", "observed_at": "2026-02-02 10:00",
           "recorded_at": "2026-02-02 13:00", "clinician_id": "th-1",
           "signs": "frustration withdrawal", "rupture": True,
           "repair_steps": "acknowledged clarified", "updated_at": "2026-02-02 13:00"}
    return {**row, **changes}


def checked(rows: list[dict[str, Any]]) -> Any:
    return validate({"clients": CLIENTS, "episodes": EPISODES,
                     "session_observations": pd.DataFrame(rows)}, Context())


def held(rows: list[dict[str, Any]]) -> dict[str, tuple[str, str]]:
    """The notes held: key -> (rule, detail)."""
    r = checked(rows).rejects
    r = r[r["table_name"] == "session_observations"]
    return {k: (rule, detail) for k, rule, detail in zip(r["row_key"], r["rule"], r["detail"],
                                                         strict=True)}


# --- the contract -------------------------------------------------------------------


def test_notes_are_an_optional_model_input_read_incrementally() -> None:
    assert "session_observations" in contract.OPTIONAL_TABLES
    assert "session_observations" not in contract.NOT_MODEL_INPUTS
    assert "session_observations" in INCREMENTAL  # a note written today counts tomorrow


# --- checks -------------------------------------------------------------------------


def test_good_notes_pass_typed() -> None:
    rows = [note("O1"),
            note("O2", "E2", "C2", recorded_at=None, signs=None, rupture="f", repair_steps=None,
                 appointment_id=None),
            # A repair without a rupture: a therapist may repair a strain before it breaks.
            note("O3", signs="rejects_suggestions", rupture="no",
                 repair_steps="revisited_goals_tasks"),
            note("O4", signs="lack_of_trust  communication_breakdown inconsistent_engagement "
                            "tasks_not_done anger", rupture=1,
                 repair_steps="acknowledged clarified took_responsibility "
                              "revisited_goals_tasks monitored")]
    out = checked(rows)
    assert out.rejects.empty
    valid = out.valid["session_observations"]
    assert list(valid["observation_id"]) == ["O1", "O2", "O3", "O4"]
    assert valid["rupture"].tolist() == [True, False, False, True]
    assert valid["rupture"].dtype == bool
    assert pd.isna(valid["recorded_at"].iloc[1])  # not known: the note counts from observed_at
    assert valid["recorded_at"].iloc[0] == pd.Timestamp("2026-02-02 13:00")
    assert valid["observed_at"].iloc[0] == pd.Timestamp("2026-02-02 10:00")


@pytest.mark.parametrize(("changes", "rule", "said"), [
    ({"signs": "frustration sulking"}, "unknown_code",
     "signs holds 'sulking', not a sign code (lack_of_trust, communication_breakdown, "
     "inconsistent_engagement, rejects_suggestions, tasks_not_done, frustration, anger, "
     "withdrawal)"),
    ({"signs": "Anger"}, "unknown_code", "signs holds 'Anger', not a sign code"),
    ({"signs": "resistance"}, "unknown_code", "signs holds 'resistance'"),  # a group, not a sign
    ({"repair_steps": "acknowledged apologised hugged"}, "unknown_code",
     "repair_steps holds 'apologised', 'hugged', not a repair step code (acknowledged, "
     "clarified, took_responsibility, revisited_goals_tasks, monitored)"),
    ({"repair_steps": "acknowledged,clarified"}, "unknown_code",
     "repair_steps holds 'acknowledged,clarified'"),
    ({"recorded_at": "2026-02-02 09:59"}, "recorded_before_observed",
     "recorded_at 2026-02-02 09:59:00 is before observed_at 2026-02-02 10:00:00"),
    ({"episode_id": "E9"}, "orphan", "episode_id E9 is not in the source"),
    ({"client_id": "C9"}, "orphan", "client_id C9 is not in the source"),
    ({"rupture": None}, "missing_required", "rupture is empty"),
    ({"rupture": "maybe"}, "malformed_value", "rupture maybe is not yes/no"),
    ({"observed_at": None}, "missing_required", "observed_at is empty"),
    ({"observed_at": "2026-02-30 10:00"}, "malformed_date",
     "observed_at 2026-02-30 10:00 is not a date"),
    ({"recorded_at": "9999-01-01"}, "date_out_of_range", "recorded_at 9999-01-01 is outside"),
    ({"signs": "anger " * 60}, "too_long", "signs has 360 characters, more than 255"),
    ({"clinician_id": "th\x00-1"}, "malformed_text", "clinician_id is bytes or holds"),
])
def test_a_bad_note_is_held_under_its_rule_with_a_clear_detail(
        changes: dict[str, Any], rule: str, said: str) -> None:
    found = held([note("O2", "E2", "C2"), note("O1", **changes)])
    assert list(found) == ["O1"]
    assert found["O1"][0] == rule
    assert found["O1"][1].startswith(said)


def test_codes_of_any_type_are_judged_never_crash() -> None:
    found = held([note("O1", signs=7), note("O2", signs=b"anger"), note("O3", repair_steps=1.5),
                  note("O4", signs="   ")])
    assert {k: r for k, (r, _) in found.items()} == {
        "O1": "unknown_code", "O2": "malformed_text", "O3": "unknown_code"}


def test_two_notes_under_one_id_are_held_whole() -> None:
    found = held([note("O1"), note("O1", signs="anger")])
    assert found["O1"][0] == "duplicate_key"


def test_a_clinics_bad_notes_are_judged_against_its_own() -> None:
    """Notes count towards a clinic's share through their client, as every table does."""
    clients = pd.DataFrame([{"client_id": f"N{n}", "clinic_id": "north"} for n in range(24)]
                           + [{"client_id": f"S{n}", "clinic_id": "south"} for n in range(200)])
    episodes = pd.DataFrame([{"episode_id": f"E{c}", "client_id": c, "program": "outpatient",
                              "admitted_on": "2026-01-05", "updated_at": "2026-01-05 09:00"}
                             for c in clients["client_id"]])
    rows = [note(f"O{c}", f"E{c}", c, signs="sulking" if c.startswith("N") and int(c[1:]) < 12
                 else "anger") for c in clients["client_id"]]
    out = validate({"clients": clients, "episodes": episodes,
                    "session_observations": pd.DataFrame(rows)}, Context())
    read = {t: len(out.checked[t]) for t in out.checked}
    scopes = {b.scope for b in limits_broken(out, read, EtlSettings())}
    assert "session_observations of clinic 'north'" in scopes
    assert not any("south" in s for s in scopes)


# --- through the ETL, on SQLite and PostgreSQL ----------------------------------------


@pytest.fixture(params=["sqlite", "postgresql"])
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def source(kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Source]:
    """A small synthetic clinic in SQLite, or in PostgreSQL (read through ADBC)."""
    if kind == "sqlite":
        url = f"sqlite:///{tmp_path / 'clinic.db'}"
    else:
        url = request.getfixturevalue("pg_databases")("clinic")
    src = Source.synthetic(url, n_clients=40)
    yield src
    src.dispose()


@pytest.fixture
def store(kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Engine]:
    if kind == "sqlite":
        url = f"sqlite:///{tmp_path / 'store.db'}"
    else:
        url = request.getfixturevalue("pg_databases")("store")
    engine = store_engine(url)
    yield engine
    engine.dispose()


def etl(src: Source, store_db: Engine, clock: FixedClock = NIGHT,
        full: bool | None = None) -> Any:
    engine = source_engine(src.url)
    # The test server's role is a superuser (docs/nightly.md: a clinic's is not).
    settings = EtlSettings(allow_superuser_source=engine.dialect.name == "postgresql")
    try:
        return run_etl(engine, store_db, clock.now().date(), settings, full=full, clock=clock)
    finally:
        engine.dispose()


def copied(store_db: Engine) -> dict[str, dict[str, Any]]:
    table = tables.copies["session_observations"]
    with store_db.connect() as conn:
        return {r.observation_id: dict(r._mapping) for r in conn.execute(select(table))}


def quarantined(store_db: Engine) -> dict[str, tuple[str, str]]:
    q = tables.quarantine
    with store_db.connect() as conn:
        return {r.row_key: (r.rule, r.detail) for r in conn.execute(
            select(q.c.row_key, q.c.rule, q.c.detail)
            .where(q.c.table_name == "session_observations"))}


def written(src: Source, n: int = 3) -> list[dict[str, Any]]:
    """``n`` notes of open episodes of ``src`` (made up), written before the first night."""
    episodes = src.open_episode_ids()[:n]
    rows = []
    for k, episode_id in enumerate(episodes):
        (episode,) = src.rows("episodes", {"episode_id": episode_id})
        observed = datetime(2026, 5, 20 + k, 10, 0)
        rows.append({
            "observation_id": f"T-{k}", "episode_id": episode_id,
            "client_id": episode["client_id"], "appointment_id": None, "observed_at": observed,
            "recorded_at": None if k == 1 else observed + timedelta(hours=4),
            "clinician_id": "clin-x", "signs": "frustration" if k else None,
            "rupture": k == 2, "repair_steps": "acknowledged monitored" if k == 2 else None,
            "updated_at": observed + timedelta(hours=4)})
    return rows


def test_notes_reach_the_copy_as_the_therapist_wrote_them(source: Source,
                                                          store: Engine) -> None:
    """Whatever notes the synthetic clinic keeps, and made-up ones, load whole; training's
    read of the copy includes them (they are a model input)."""
    mine = written(source)
    source.insert("session_observations", mine)
    result = etl(source, store)
    assert result.rows_quarantined == 0 and result.open_episodes > 0
    rows = source.rows("session_observations")
    copy = copied(store)
    assert set(copy) == {r["observation_id"] for r in rows}
    for row in mine:
        assert copy[row["observation_id"]] == row
    with store.connect() as conn:
        whole = read_clinic_copy(conn).observations
    assert set(whole["observation_id"]) == set(copy)
    assert whole["rupture"].dtype == bool


@pytest.mark.slow
def test_bad_notes_are_held_and_released_once_fixed(source: Source, store: Engine) -> None:
    mine = written(source)
    source.insert("session_observations", mine)
    etl(source, store)
    stamp = datetime(2026, 6, 1, 12, 0)
    source.update("session_observations", {"observation_id": "T-0"},
                  signs="frustration sulking", updated_at=stamp)
    source.update("session_observations", {"observation_id": "T-1"},
                  recorded_at=datetime(2026, 5, 21, 9, 0), updated_at=stamp)
    source.update("session_observations", {"observation_id": "T-2"},
                  repair_steps="acknowledged apologised", updated_at=stamp)
    (episode,) = source.rows("episodes", {"episode_id": mine[0]["episode_id"]})
    source.insert("session_observations", [{**mine[0], "observation_id": "T-orphan",
                                            "episode_id": "no-such-episode",
                                            "updated_at": stamp}])
    result = etl(source, store, NEXT_NIGHT)
    assert not result.full and result.rows_quarantined == 4
    found = quarantined(store)
    assert {k: rule for k, (rule, _) in found.items()} == {
        "T-0": "unknown_code", "T-1": "recorded_before_observed", "T-2": "unknown_code",
        "T-orphan": "orphan"}
    assert found["T-0"][1].startswith("signs holds 'sulking', not a sign code")
    assert found["T-2"][1].startswith("repair_steps holds 'apologised', not a repair step")
    assert found["T-1"][1] == ("recorded_at 2026-05-21 09:00:00 is before observed_at "
                               "2026-05-21 10:00:00")
    assert found["T-orphan"][1] == "episode_id no-such-episode is not in the source"
    # Held notes leave the copy: the model reads no note the contract refuses.
    assert not {"T-0", "T-1", "T-2", "T-orphan"} & set(copied(store))
    # Fixed at the source, a note is released the next night; a new one arrives.
    later = datetime(2026, 6, 2, 12, 0)
    source.update("session_observations", {"observation_id": "T-0"}, signs="anger",
                  updated_at=later)
    source.insert("session_observations", [{**mine[1], "observation_id": "T-new",
                                            "episode_id": episode["episode_id"],
                                            "client_id": episode["client_id"],
                                            "updated_at": later}])
    third = etl(source, store, THIRD_NIGHT)
    assert not third.full
    assert set(quarantined(store)) == {"T-1", "T-2", "T-orphan"}
    copy = copied(store)
    assert copy["T-0"]["signs"] == "anger" and "T-new" in copy


def test_a_clinic_without_notes_runs_as_before(source: Source, store: Engine) -> None:
    """The table is optional: most clinics have no structured session notes."""
    with source.engine.begin() as conn:
        conn.execute(text("DROP TABLE session_observations"))
    first = etl(source, store)
    second = etl(source, store, NEXT_NIGHT)
    assert first.open_episodes > 0 and not second.full
    assert first.rows_quarantined == second.rows_quarantined == 0
    assert copied(store) == {}
