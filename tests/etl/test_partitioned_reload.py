"""A full reload read in key ranges (``[etl] reload_part_rows``) against the same reload
read whole.

A reload in parts reads the large tables range by range in one snapshot, checks each
range against the small tables' outcome and judges the limits on the summed tally. It
is only an economy: the copy, the quarantine, the features, the watermarks, the run's
record and where a run stops must be exactly what one read of everything gives.
Both sides are a PostgreSQL source of text columns without keys (an EHR export that
keeps duplicates and NULL keys) and a PostgreSQL store.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import date, datetime, time, timedelta
from typing import Any

import pandas as pd
import pytest
from sqlalchemy import Engine, func, select, text

from retention.clinic.synth import SynthConfig, generate
from retention.clock import FixedClock
from retention.db import bulk
from retention.db.engines import source_engine, store_engine
from retention.etl.extract import MappingError
from retention.etl.load import QuarantineLimitExceeded
from retention.etl.validation import LOOKED_UP
from retention.pipelines.etl import EtlResult, run_etl
from retention.settings import EtlSettings, SourceMapping
from retention.store import tables
from retention.store.runs import list_runs
from tests.support.broken import BROKEN_RULES, TIGHT_LIMITS, broken_network
from tests.support.sources import AS_OF, COMPARED, Source, appointment, stored

pytestmark = pytest.mark.slow

NIGHT = FixedClock(datetime.combine(AS_OF, time(2, 30)))  # the nightly slot
NEXT_NIGHT = FixedClock(datetime.combine(AS_OF + timedelta(days=1), time(2, 30)))
STAMP = datetime(2026, 6, 1, 12, 0)  # after the synthetic clinic's last write
# Small beside the test clinics' large tables (the broken network's 346 session notes
# are two parts), so every family is read in several ranges.
PART_ROWS = 250
FAMILIES = {"appointments", "alliance_measures", "session_observations"}
# Every limit open: a reload that stops would compare nothing.
OPEN_LIMITS = EtlSettings(max_quarantine_share=1.0, max_table_quarantine_share=1.0,
                          max_code_quarantine_share=1.0, max_clinic_quarantine_share=1.0)
# What a run's record says of what it read and judged.
JUDGED = ("read", "checked", "quarantined_read", "quarantine_by_rule", "quarantined_share",
          "unmapped_codes", "over_limits", "copy_changed")


def settings(part_rows: int, base: EtlSettings = OPEN_LIMITS) -> EtlSettings:
    """``base`` read whole (0) or in parts of about ``part_rows`` rows."""
    # The test server's role is a superuser (docs/nightly.md: a clinic's is not).
    options: dict[str, Any] = {"allow_superuser_source": True, "reload_part_rows": part_rows}
    return replace(base, **options)


def etl(src: Source, store_db: Engine, etl_settings: EtlSettings, *, full: bool = True,
        as_of: date = AS_OF, clock: FixedClock = NIGHT) -> EtlResult:
    engine = source_engine(src.url)
    try:
        return run_etl(engine, store_db, as_of, etl_settings, full=full, clock=clock)
    finally:
        engine.dispose()


def both(src: Source, stores: tuple[Engine, Engine], base: EtlSettings = OPEN_LIMITS,
         **run: Any) -> tuple[EtlResult, EtlResult]:
    """The same run into the first store read whole, into the second in parts."""
    whole_db, parts_db = stores
    return (etl(src, whole_db, settings(0, base), **run),
            etl(src, parts_db, settings(PART_ROWS, base), **run))


def record(store_db: Engine, run_id: int | None = None) -> dict[str, Any]:
    """A run's record (the last one's if no id), its detail parsed."""
    with store_db.connect() as conn:
        if run_id is None:
            row = list_runs(conn, 1)[0]
        else:
            row = dict(conn.execute(select(tables.runs).where(tables.runs.c.run_id == run_id))
                       .one()._mapping)
    return {**row, "detail": json.loads(row["detail"] or "{}")}


def judged(detail: dict[str, Any]) -> dict[str, Any]:
    return {key: detail.get(key) for key in JUDGED}


def watermarks(store_db: Engine) -> list[tuple[str, datetime | None]]:
    w = tables.watermarks
    with store_db.connect() as conn:
        return [(name, mark) for name, mark in
                conn.execute(select(w.c.table_name, w.c.high_water).order_by(w.c.table_name))]


def held_rules(store_db: Engine) -> dict[str, set[str]]:
    """The rules the quarantine holds rows under, by table."""
    out: dict[str, set[str]] = {}
    for table_name, _, rule, _, _ in stored(store_db)["quarantine"]:
        out.setdefault(table_name, set()).add(rule)
    return out


def assert_parts(detail: dict[str, Any]) -> None:
    """Each large family was read in more than one key range."""
    parts = detail.get("parts")
    assert parts is not None and set(parts) == FAMILIES, parts
    assert all(n > 1 for n in parts.values()), parts


@pytest.fixture
def stores(pg_databases: Callable[[str], str]) -> Iterator[tuple[Engine, Engine]]:
    """Two empty PostgreSQL stores: one loaded whole, one in parts."""
    pair = store_engine(pg_databases("whole")), store_engine(pg_databases("parts"))
    yield pair
    for engine in pair:
        engine.dispose()


@pytest.fixture
def broken(pg_databases: Callable[[str], str]) -> Iterator[Source]:
    """The broken network (duplicate keys, orphans, bad codes) as a text-only PostgreSQL
    clinic."""
    src = Source.loose_frames(pg_databases("clinic"), broken_network(AS_OF))
    yield src
    src.dispose()


def test_a_full_reload_in_parts_stores_what_a_whole_one_does(
    broken: Source, stores: tuple[Engine, Engine], caplog: pytest.LogCaptureFixture,
) -> None:
    """Every broken row is held under the rule, and every good one copied, that one
    read of everything gives, and the run's record counts them the same."""
    whole_db, parts_db = stores
    caplog.set_level(logging.INFO, logger="retention.etl.parts")
    whole, parts = both(broken, stores)
    expected, got = record(whole_db, whole.run_id), record(parts_db, parts.run_id)
    assert (expected["status"], got["status"]) == ("succeeded", "succeeded")
    assert whole.full and parts.full
    assert "parts" not in expected["detail"]
    assert_parts(got["detail"])

    assert stored(parts_db) == stored(whole_db)
    assert held_rules(whole_db) == BROKEN_RULES  # the network's rows were held as such

    # Whoever watches a long first night sees each range land, counted, and the counts
    # add up to the run's.
    progress = [re.fullmatch(r"full reload in parts: (\w+) range (\d+) of (\d+) read and "
                             r"checked: (\d+) rows, (\d+) held", r.getMessage())
                for r in caplog.records if "range" in r.getMessage()]
    assert progress and all(progress)
    last = {m[1]: (int(m[2]), int(m[3])) for m in progress if m is not None}
    assert {t: n for t, (n, _total) in last.items()} == got["detail"]["parts"]
    assert all(n == total for n, total in last.values())
    assert sum(int(m[4]) for m in progress if m is not None) == sum(
        n for t, n in got["detail"]["read"].items() if t not in LOOKED_UP)
    assert sum(int(m[5]) for m in progress if m is not None) == sum(
        n for t, n in got["detail"]["quarantined_read"].items() if t not in LOOKED_UP)
    assert watermarks(parts_db) == watermarks(whole_db)
    assert judged(got["detail"]) == judged(expected["detail"])
    assert ((parts.rows_read, parts.rows_quarantined, parts.open_episodes)
            == (whole.rows_read, whole.rows_quarantined, whole.open_episodes))
    assert whole.open_episodes and whole.rows_quarantined


def test_over_the_limits_a_reload_in_parts_stops_as_a_whole_one_does(
    broken: Source, stores: tuple[Engine, Engine],
) -> None:
    """The limits judge the parts' tallies added up: the same breaches, in the same words,
    and nothing stored, not even the tables built beside the copy."""
    messages = []
    for store_db, part_rows in zip(stores, (0, PART_ROWS), strict=True):
        with pytest.raises(QuarantineLimitExceeded) as failed:
            etl(broken, store_db, settings(part_rows, TIGHT_LIMITS))
        messages.append(str(failed.value))
    assert messages[0] == messages[1]

    whole_db, parts_db = stores
    for store_db in stores:  # the copy, the quarantine and the features: all empty
        assert stored(store_db) == {name: [] for name in COMPARED}
    assert beside_tables(parts_db) == []

    expected, got = record(whole_db), record(parts_db)
    assert (expected["status"], got["status"]) == ("failed", "failed")
    assert expected["detail"]["over_limits"]
    assert got["detail"]["over_limits"] == expected["detail"]["over_limits"]


def beside_tables(store_db: Engine) -> list[str]:
    """Tables built beside the copy (``<table>__next``) and their landing table, in any
    schema."""
    landing = bulk.LANDING_PREFIX.replace("_", "\\_") + "%"
    with store_db.connect() as conn:
        return list(conn.execute(text(
            "SELECT tablename FROM pg_tables WHERE tablename LIKE '%\\_\\_next' "
            "OR tablename LIKE :landing"), {"landing": landing}).scalars())


def assert_failed_and_kept(store_db: Engine, before: dict[str, Any]) -> None:
    """The last run failed, the copy is as it was (``stored``), nothing is left beside it."""
    assert stored(store_db) == before
    assert beside_tables(store_db) == []
    assert record(store_db)["status"] == "failed"


def test_a_read_failing_after_ranges_have_landed_leaves_the_last_copy(
    broken: Source, stores: tuple[Engine, Engine],
) -> None:
    """The notes are read last: a query that fails on the last note fails the run after
    the slots' and measures' ranges were built beside the copy. The error names the
    mapping entry (a source's error, not the store's), the copy stays the last good
    one, and nothing built is left."""
    _whole_db, parts_db = stores
    etl(broken, parts_db, settings(PART_ROWS))
    before = stored(parts_db)
    last = max(r["observation_id"] for r in broken.rows("session_observations"))
    failing = SourceMapping().query("session_observations").replace(
        " recorded_at,", f" CASE WHEN observation_id = '{last}' THEN (1 / 0)::text "
        "ELSE recorded_at END AS recorded_at,")
    mapping = SourceMapping(queries={"session_observations": failing})
    with pytest.raises(MappingError) as failed:
        etl(broken, parts_db, replace(settings(PART_ROWS), mapping=mapping),
            clock=NEXT_NIGHT, as_of=AS_OF + timedelta(days=1))
    assert str(failed.value).startswith(
        "the query for [etl.queries] session_observations failed in the clinic database")
    assert "division by zero" in str(failed.value)
    assert_failed_and_kept(parts_db, before)


# Ids a server's collation may order otherwise than Python does (case, digits, '_').
AWKWARD_IDS = ["a10", "B2", "b1", "_x", "10", "9", "A10", "b10"]
# Collations that order case and punctuation otherwise than code points: the first the
# server has is given to the key columns; without one, its own (maybe "C") remains.
COLLATIONS = ("und-x-icu", "en-x-icu", "en_US.utf8", "en_US")
KEY_COLUMNS = {"appointments": "appointment_id", "alliance_measures": "measure_id",
               "alliance_items": "measure_id", "session_observations": "observation_id"}


def respell(frames: dict[str, pd.DataFrame], table: str, column: str,
            naming: tuple[str, ...]) -> None:
    """Lower-case every other id of ``table``'s key and put '_' before every fifth, in
    it and in the tables ``naming`` it: spellings a case-blind collation keeps in place
    and Python sorts apart, all along the key range."""
    ids = frames[table][column].dropna().unique()
    spelt = {i: ("_" if n % 5 == 0 else "") + (str(i).lower() if n % 2 else str(i))
             for n, i in enumerate(ids)}
    for name in (table, *naming):
        frames[name][column] = frames[name][column].map(lambda v: spelt.get(v, v))


def awkward_keys() -> dict[str, pd.DataFrame]:
    """A 120-client clinic whose large tables' keys are NULL in places, repeated more
    often than a part holds rows, repeated across the key range, and spelt in case,
    digits and punctuation."""
    frames = generate(SynthConfig(end=AS_OF, n_clients=120, seed=3))
    respell(frames, "appointments", "appointment_id",
            ("alliance_measures", "session_observations"))
    respell(frames, "alliance_measures", "measure_id", ("alliance_items",))
    respell(frames, "session_observations", "observation_id", ())
    appts = frames["appointments"]
    appts.loc[appts.index[:len(AWKWARD_IDS)], "appointment_id"] = AWKWARD_IDS
    appts.loc[appts.index[20:24], "appointment_id"] = None
    # One key more often than a part holds rows, each copy written at another minute.
    one = appts.loc[[appts.index[40]] * (PART_ROWS + 30)].reset_index(drop=True)
    one["updated_at"] = one["updated_at"] - pd.to_timedelta(one.index, unit="min")
    # Twins all along the key range, so some fall on whatever boundary a split draws.
    twins = appts.iloc[50::37]
    frames["appointments"] = pd.concat([appts, one, twins], ignore_index=True)

    measures, items = frames["alliance_measures"], frames["alliance_items"]
    measures.loc[measures.index[30], "measure_id"] = None
    items.loc[items.index[-2:], "measure_id"] = None
    frames["alliance_measures"] = pd.concat([measures, measures.iloc[60::211]],
                                            ignore_index=True)

    notes = frames["session_observations"]
    notes.loc[notes.index[10], "observation_id"] = None
    frames["session_observations"] = pd.concat([notes, notes.iloc[[100] * 5]],
                                               ignore_index=True)
    return frames


def collate_keys(src: Source) -> str | None:
    """Give the key columns a collation that orders the awkward ids unlike Python; the
    one given (None if the server has none of them)."""
    with src.engine.begin() as conn:
        known = set(conn.execute(text(
            "SELECT collname FROM pg_collation WHERE collname = ANY(:names) "
            "AND collencoding IN (-1, pg_char_to_encoding(current_setting('server_encoding')))"),
            {"names": list(COLLATIONS)}).scalars())
        name = next((c for c in COLLATIONS if c in known), None)
        if name is None:
            return None
        for table, column in KEY_COLUMNS.items():
            conn.execute(text(f'ALTER TABLE "{table}" ALTER COLUMN "{column}" '
                              f'TYPE text COLLATE "{name}"'))
    return name


def test_every_row_lands_in_exactly_one_part_whatever_its_key(
    pg_databases: Callable[[str], str], stores: tuple[Engine, Engine],
) -> None:
    """Ranges drawn by key must still hold NULL keys, a key repeated past a part's size
    and keys the server orders otherwise than Python, each row once."""
    src = Source.loose_frames(pg_databases("clinic"), awkward_keys())
    try:
        collation = collate_keys(src)
        if collation is not None:  # the premise: the server orders the keys unlike Python
            for table, column in KEY_COLUMNS.items():
                key = src.table(table).c[column]
                with src.engine.connect() as conn:
                    ordered = conn.execute(select(key).distinct().where(key.is_not(None))
                                           .order_by(key)).scalars().all()
                assert ordered != sorted(ordered), (table, collation)
        whole, parts = both(src, stores)
    finally:
        src.dispose()
    whole_db, parts_db = stores
    expected = record(whole_db, whole.run_id)["detail"]
    got = record(parts_db, parts.run_id)["detail"]
    assert_parts(got)
    assert stored(parts_db) == stored(whole_db)
    assert got["read"] == expected["read"]
    assert got["quarantine_by_rule"] == expected["quarantine_by_rule"]
    assert judged(got) == judged(expected)
    assert parts.rows_read == whole.rows_read
    # The premise: the repeated key and the NULL keys were read and held.
    assert expected["quarantine_by_rule"]["appointments"]["duplicate_key"] >= PART_ROWS + 30
    held_keys = [key for table_name, key, *_ in stored(whole_db)["quarantine"]
                 if table_name == "appointments"]
    assert any(key.startswith("no key ") for key in held_keys)


def test_an_incremental_run_after_a_reload_in_parts_is_one_after_a_whole_one(
    broken: Source, stores: tuple[Engine, Engine],
) -> None:
    """The next night's incremental run starts from what the reload in parts left (its
    copy, quarantine and watermarks) and must end where it would after a whole one."""
    both(broken, stores)
    whole_db, parts_db = stores
    # The next day at the source: slots booked (one with a status no one maps), a status
    # recorded, a row held for its code fixed, an episode closed, a consent corrected.
    e = tables.copies["episodes"]
    with whole_db.connect() as conn:  # an open episode the copy holds
        episode = dict(conn.execute(select(e).where(e.c.discharged_on.is_(None))
                                    .order_by(e.c.episode_id).limit(1)).one()._mapping)
    broken.insert("appointments", [
        appointment(f"NEW{n}", episode, STAMP + timedelta(days=2, hours=n), status="scheduled",
                    stamp=STAMP + timedelta(minutes=n)) for n in range(3)])
    broken.insert("appointments", [appointment("NEWBAD", episode, STAMP + timedelta(days=3),
                                               status="XX", stamp=STAMP)])
    slot = broken.rows("appointments", {"status": "scheduled"}, limit=1)[0]
    broken.update("appointments", {"appointment_id": slot["appointment_id"]},
                  status="attended", updated_at=STAMP + timedelta(minutes=5))
    coded = broken.rows("appointments", {"status": "ZZ"}, limit=1)[0]
    broken.update("appointments", {"appointment_id": coded["appointment_id"]},
                  status="no_show", updated_at=STAMP + timedelta(minutes=6))
    broken.update("episodes", {"episode_id": episode["episode_id"]}, discharged_on=AS_OF,
                  discharge_reason="completed", updated_at=STAMP + timedelta(minutes=7))
    consent = next(k for k in broken.rows("consents")  # text: ISO dates compare as dates
                   if k["expires_on"] and k["expires_on"] < k["effective_on"])
    broken.update("consents", {"consent_id": consent["consent_id"]}, expires_on=None,
                  updated_at=STAMP + timedelta(minutes=8))

    whole, parts = both(broken, stores, full=False, as_of=AS_OF + timedelta(days=1),
                        clock=NEXT_NIGHT)
    assert not whole.full and not parts.full
    assert stored(parts_db) == stored(whole_db)
    assert watermarks(parts_db) == watermarks(whole_db)
    expected = record(whole_db, whole.run_id)["detail"]
    got = record(parts_db, parts.run_id)["detail"]
    assert judged(got) == judged(expected)
    assert got["released"] == expected["released"] > 0
    q = tables.quarantine
    with whole_db.connect() as conn:  # the premise: the night's rows were copied and held
        assert conn.execute(select(q.c.rule).where(q.c.row_key == "NEWBAD")).scalar() \
            == "unknown_code"
        copied = tables.copies["appointments"]
        assert conn.execute(select(func.count()).select_from(copied).where(
            copied.c.appointment_id.like("NEW_"))).scalar_one() == 3
