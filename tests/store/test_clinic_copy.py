"""The scoped read of the clinic copy: what a nightly run reads is enough to score it."""

from __future__ import annotations

from collections.abc import Callable
from datetime import date, datetime, time, timedelta
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from sqlalchemy import Engine, delete, insert

from retention.clinic.data import ClinicData, as_timestamp
from retention.clinic.registry import default_registry
from retention.db.engines import source_engine, store_engine
from retention.features import build_features
from retention.features.observations import RUPTURE_WINDOW_DAYS
from retention.features.treatment import open_episodes
from retention.pipelines.etl import run_etl
from retention.scoring import score_rows
from retention.settings import EtlSettings
from retention.store import tables
from retention.store.clinic_copy import latest_reads, read_clinic_copy, read_scoped_copy
from tests.conftest import Scored
from tests.support.sources import AS_OF, Source

DAYS = [0, -1, -45, -200]


def add_outcomes_and_notes(engine: Engine, as_of: date) -> None:
    """Weekly ORS (with their items), TAS and session notes for a few episodes open at
    ``as_of - 45`` and at ``as_of``, from admission to two weeks after ``as_of`` (made up),
    with what the read must leave out: ORS without a total, the therapist's ORS, TAS
    without a total, a form nobody registered, notes written after the as-of date. The
    longest-open episode's notes are replaced by weekly ones that stop 100 days before
    ``as_of``, the last of them written after it: only its latest note known at ``as_of``
    is read."""
    with engine.connect() as conn:
        whole = read_clinic_copy(conn)
    early, late = (open_episodes(whole.episodes, d) for d in (as_of - timedelta(45), as_of))
    chosen = early.index.intersection(late.index)[:6]
    assert len(chosen) == 6
    measures: list[dict[str, Any]] = []
    items: list[dict[str, Any]] = []
    notes: list[dict[str, Any]] = []
    end = datetime.combine(as_of + timedelta(days=14), time())
    longest = whole.episodes.set_index("episode_id").loc[chosen, "admitted_on"].idxmin()
    notes_end = datetime.combine(as_of - timedelta(days=100), time())
    for k, episode_id in enumerate(chosen):
        episode = whole.episodes.set_index("episode_id").loc[episode_id]
        when = pd.Timestamp(episode["admitted_on"]).to_pydatetime() + timedelta(days=1, hours=9)
        week = 0
        while when < end:
            base = {"episode_id": episode_id, "client_id": episode["client_id"],
                    "appointment_id": None, "administered_at": when, "goal": None, "task": None,
                    "bond": None, "updated_at": when}
            total = None if week % 5 == 3 else float(12 + (week * 7 + k) % 25)
            measure_id = f"T-ORS-{k}-{week}"
            measures.append({**base, "measure_id": measure_id, "instrument": "ORS",
                             "rater": "client", "score_total": total})
            if total is not None:
                quarter = total / 4
                items.extend({"measure_id": measure_id, "item_number": n, "response": quarter}
                             for n in range(1, 5))
            measures.append({**base, "measure_id": f"T-ORSt-{k}-{week}", "instrument": "ORS",
                             "rater": "therapist", "score_total": 30.0})
            measures.append({**base, "measure_id": f"T-TAS-{k}-{week}", "instrument": "TAS",
                             "rater": "client",
                             "score_total": None if week % 3 == 2 else 20.0 + week % 28})
            measures.append({**base, "measure_id": f"T-PHQ-{k}-{week}", "instrument": "PHQ-9",
                             "rater": "client", "score_total": 9.0})
            recorded = None if week % 4 == 0 else when + timedelta(days=week % 3)
            if episode_id == longest and when + timedelta(days=7) >= notes_end:
                recorded = end  # its last note, written late
            if episode_id != longest or when < notes_end:
                notes.append({
                    "observation_id": f"T-N-{k}-{week}", "episode_id": episode_id,
                    "client_id": episode["client_id"], "appointment_id": None,
                    "observed_at": when + timedelta(hours=1), "recorded_at": recorded,
                    "clinician_id": "th-1", "signs": "frustration" if week % 2 else None,
                    "rupture": week % 6 == 5, "repair_steps": "acknowledged" if week % 6 == 5
                    else None, "updated_at": when + timedelta(days=2)})
            when += timedelta(days=7)
            week += 1
    assert sum(n["episode_id"] == longest for n in notes) >= 2  # one known, one late
    with engine.begin() as conn:
        notes_table = tables.copies["session_observations"]
        conn.execute(delete(notes_table).where(notes_table.c.episode_id == longest))
        conn.execute(insert(tables.copies["alliance_measures"]), measures)
        conn.execute(insert(tables.copies["alliance_items"]), items)
        conn.execute(insert(tables.copies["session_observations"]), notes)


def expected_reads(whole: ClinicData, as_of: date) -> dict[str, pd.DataFrame]:
    """What the scoped read must hold of the outcome, the other forms and the notes,
    worked out from the whole copy with pandas."""
    cut = as_timestamp(as_of)
    open_ids = open_episodes(whole.episodes, as_of).index
    m = whole.measures
    before = m[m["episode_id"].isin(open_ids) & (m["administered_at"] < cut)]
    client = before[(before["rater"] == "client") & before["score_total"].notna()]
    ors = client[client["instrument"] == "ORS"]
    tas = client[client["instrument"] == "TAS"].sort_values(
        ["administered_at", "measure_id"]).groupby("episode_id").tail(1)
    o = whole.observations
    before = o[o["episode_id"].isin(open_ids) & (o["observed_at"] < cut)]
    since = cut - pd.Timedelta(days=RUPTURE_WINDOW_DAYS)
    older = before[(before["observed_at"] < since)
                   & (before["recorded_at"].isna() | (before["recorded_at"] < cut))]
    notes = pd.concat([
        before[before["observed_at"] >= since],
        older.sort_values(["observed_at", "observation_id"]).groupby("episode_id").tail(1)])
    items = whole.items[whole.items["measure_id"].isin(ors["measure_id"])]
    return {"ors": ors, "tas": tas, "notes": notes, "ors_items": items}


def same_reads(whole: ClinicData, scoped: ClinicData, as_of: date,
               mine: bool) -> pd.DataFrame:
    """The scoped read holds exactly the outcome ratings, other forms and notes the
    features need, and gives the whole copy's features (returned). ``mine``: the rows
    ``add_outcomes_and_notes`` wrote are among them."""
    assert len(scoped.appointments) < len(whole.appointments)
    wanted = expected_reads(whole, as_of)
    if mine:
        assert {len(f) > 0 for f in wanted.values()} == {True}
    m = scoped.measures
    same_rows(m[m["instrument"] == "ORS"], wanted["ors"], ["measure_id"])
    same_rows(m[m["instrument"] == "TAS"], wanted["tas"], ["measure_id"])
    assert not m["instrument"].isin(["PHQ-9"]).any()
    # The ORS's items are not read: its features and reasons read its totals alone, and
    # they equal the whole copy's below (and the list's, in the test above).
    assert not scoped.items["measure_id"].isin(wanted["ors"]["measure_id"]).any()
    assert len(wanted["ors_items"]) > 0 or not mine
    same_rows(scoped.observations, wanted["notes"], ["observation_id"])
    features = build_features(whole, as_of)
    pd.testing.assert_frame_equal(build_features(scoped, as_of), features)
    return features


def same_rows(found: pd.DataFrame, wanted: pd.DataFrame, key: list[str]) -> None:
    pd.testing.assert_frame_equal(found.sort_values(key).reset_index(drop=True),
                                  wanted.sort_values(key).reset_index(drop=True),
                                  check_dtype=False)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_the_scoped_read_gives_the_same_features_and_list_as_the_whole_copy(
    scored: Scored, kind: str, request: pytest.FixtureRequest
) -> None:
    """What the nightly run reads is enough: features, ranks, reasons and evidence equal
    those computed from every row, for as-of dates across the clinic's history; and of
    the outcome ratings, other forms and session notes it reads exactly what the expected
    course and the notes' features need."""
    if kind == "sqlite":
        engine: Engine = request.getfixturevalue("private_store")[1]
    else:
        make: Callable[[str], str] = request.getfixturevalue("pg_databases")
        engine = store_engine(make("scoped"))
        run_etl(scored.source, engine, scored.as_of, EtlSettings())
    add_outcomes_and_notes(engine, scored.as_of)
    with engine.connect() as conn:
        whole = read_clinic_copy(conn)
        for shift in DAYS:
            as_of = scored.as_of + timedelta(days=shift)
            scoped = read_scoped_copy(conn, as_of)
            features = same_reads(whole, scoped, as_of, mine=shift == 0)
            if features.empty:
                continue
            full_rows = score_rows(scored.settings, scored.model, scored.catalogue, whole,
                                   features, as_of, run_id=1)
            scoped_rows = score_rows(scored.settings, scored.model, scored.catalogue, scoped,
                                     features, as_of, run_id=1)
            assert scoped_rows == full_rows, as_of
    if kind == "postgresql":
        engine.dispose()


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_the_scoped_read_takes_the_outcome_and_the_notes_the_features_need(
        kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    """The same on a small clinic of its own (no model needed): every client ORS with a
    total since intake (not its items), the last TAS, the notes of the 90 days before the
    as-of date and the latest known before them, of the open episodes only; the features
    equal the whole copy's."""
    if kind == "sqlite":
        source_url, store_url = (f"sqlite:///{tmp_path / n}" for n in ("clinic.db", "store.db"))
    else:
        make: Callable[[str], str] = request.getfixturevalue("pg_databases")
        source_url, store_url = make("clinic"), make("store")
    src = Source.synthetic(source_url, n_clients=60)
    engine = store_engine(store_url)
    try:
        reader = source_engine(source_url)
        run_etl(reader, engine, AS_OF,
                EtlSettings(allow_superuser_source=reader.dialect.name == "postgresql"))
        reader.dispose()
        add_outcomes_and_notes(engine, AS_OF)
        with engine.connect() as conn:
            whole = read_clinic_copy(conn)
            for shift in DAYS:
                as_of = AS_OF + timedelta(days=shift)
                same_reads(whole, read_scoped_copy(conn, as_of), as_of, mine=shift == 0)
    finally:
        engine.dispose()
        src.dispose()


def test_the_scoped_read_takes_each_other_model_input_by_the_registry() -> None:
    """The shipped registry's other model input (the TAS) is read, its last client rating;
    forms nobody registered are not."""
    reads = latest_reads(default_registry())
    assert ("TAS", "client", 1) in reads and ("ORS", "client", None) in reads
    assert {code for code, _, _ in reads} == {"SRS", "GSRS", "WAI-SR", "ORS", "TAS"}
