"""The service's copy of the clinic data: reading it whole, or just what one as-of date needs.

Training reads the whole copy. A nightly run scores every open episode but looks at
little of each one's history: the last 90 days of slots, the slots since the last
attended one (the current run of misses), what is booked ahead, the latest few
alliance measures, the outcome ratings since intake and the session notes of 90 days.
Reading just those rows (the scoped read) keeps the nightly run's reading proportional
to the open caseload rather than to years of history.
``tests/store/test_clinic_copy.py`` checks that features and reasons computed from the
scoped read equal those computed from the whole copy.

The copy version (the last ETL run that changed the copy) tells a later step
whether rows it was handed are still what the copy holds. Functions take a
connection first and never commit.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import date, datetime, timedelta
from typing import Any

import pandas as pd
from sqlalchemy import Connection, Float, Integer, insert, select, update

from retention.clinic import contract
from retention.clinic.data import ClinicData, from_frames
from retention.clinic.instruments import SRS_ITEMS
from retention.clinic.registry import Registry, default_registry
from retention.db import bulk
from retention.features.observations import RUPTURE_WINDOW_DAYS
from retention.settings import INSTRUMENT_CODE
from retention.store.tables import COPY_PREFIX, copies, watermarks

COPY_VERSION = "copy_version"


def copy_version(connection: Connection) -> int:
    """The id of the last ETL run that changed the clinic copy (0 if none has)."""
    value = connection.execute(
        select(watermarks.c.run_id).where(watermarks.c.table_name == COPY_VERSION)
    ).scalar()
    return int(value or 0)


def bump_copy_version(connection: Connection, run_id: int) -> None:
    """Record that ``run_id`` changed the clinic copy (in the run's own transaction)."""
    done = connection.execute(
        update(watermarks).where(watermarks.c.table_name == COPY_VERSION).values(run_id=run_id)
    )
    if not done.rowcount:
        connection.execute(insert(watermarks).values(table_name=COPY_VERSION, run_id=run_id))


def read_clinic_copy(connection: Connection,
                     clients: Sequence[str] | None = None) -> ClinicData:
    """The service's copy of the clinic data that models learn from (training reads
    this): all of it, or the rows of ``clients`` (a training sample); consents,
    identifiers and contacts (``contract.NOT_MODEL_INPUTS``) are never inputs and stay
    in the store."""
    params = {} if clients is None else {"clients": json.dumps(list(clients))}
    frames = {
        name: _read(connection, f"SELECT {_cols(name)} FROM {table.name}"
                                f"{_of_clients(name, clients, connection)}", name, params)
        for name, table in copies.items() if name not in contract.NOT_MODEL_INPUTS
    }
    return from_frames(frames)


def copy_clients(connection: Connection) -> pd.DataFrame:
    """Every client of the copy with its clinic (what a training sample is drawn from)."""
    return bulk.read_query(connection, f"SELECT client_id, clinic_id FROM {P}clients",
                           ["client_id", "clinic_id"])


def _of_clients(table: str, clients: Sequence[str] | None, connection: Connection) -> str:
    """A WHERE clause keeping ``clients``' rows of ``table`` (a JSON array ``:clients``)."""
    if clients is None:
        return ""
    ids = _json_values("clients", connection.dialect.name)
    if table == "alliance_items":  # items belong to their measure
        return (f" WHERE measure_id IN (SELECT measure_id FROM {P}alliance_measures"
                f" WHERE client_id IN ({ids}))")
    return f" WHERE client_id IN ({ids})"


def _json_values(param: str, dialect: str) -> str:
    """The text values of the JSON array bound to ``:param``, as a subquery's rows."""
    return (f"SELECT value FROM json_each(:{param})" if dialect == "sqlite" else
            f"SELECT jsonb_array_elements_text(CAST(:{param} AS jsonb))")


def read_scoped_copy(connection: Connection, as_of: date, lookback_days: int = 91,
                     registry: Registry | None = None,
                     caseloads: Sequence[str] | None = None) -> ClinicData:
    """Exactly the rows that features and reasons for ``as_of`` look at, and no more.

    For the episodes open at ``as_of``: their clients; their appointments from the
    earlier of ``lookback_days`` before ``as_of`` and the last slot attended before it
    (every slot when none was), future ones included; administered before ``as_of``,
    the last three client-rated SRS and GSRS with a total, the last WAI-SR by each
    rater, every client-rated ORS with a total (the expected course starts at intake
    and counts sessions), and for each other instrument ``registry`` lets the model
    read (``model_input``) the last client-rated one with a total; the items of those
    SRS and GSRS; the session notes observed in the 90 days before ``as_of`` and, before
    them, the latest one known at ``as_of``.
    ``build_features`` and the reason histories give the same answers on this as on the
    whole copy (see tests/store/test_clinic_copy.py), at a fraction of the reading.
    With ``caseloads`` (``caseload_key``s), only the episodes of those caseloads: one
    partition of a network's nightly run (``retention.engine``).
    """
    return from_frames(scoped_frames(connection, as_of, lookback_days, registry, caseloads))


P = COPY_PREFIX

# Episodes open at the as-of date (features.treatment.open_episodes).
OPEN_EPISODES = (
    f"SELECT episode_id FROM {P}episodes "
    "WHERE admitted_on < :cut_day AND (discharged_on IS NULL OR discharged_on >= :cut_day)"
)


def caseload_key(case_manager_id: Any, clinic_id: Any) -> str:
    """The caseload a client is on: its case manager's, or its clinic's when it has none
    (as ``retention.scoring.explained_positions`` groups the list)."""
    return str(case_manager_id) if pd.notna(case_manager_id) else f"clinic:{clinic_id}"


# The same key in SQL, on the copy's clients (SQLite and PostgreSQL alike).
CASELOAD_SQL = "COALESCE(case_manager_id, 'clinic:' || clinic_id)"


def _open_in(caseloads: Sequence[str] | None, dialect: str) -> str:
    """Episodes open at the as-of date, of ``caseloads`` (a JSON array ``:caseloads``) when
    given: one partition's."""
    if caseloads is None:
        return OPEN_EPISODES
    keys = _json_values("caseloads", dialect)
    return (f"{OPEN_EPISODES} AND client_id IN (SELECT client_id FROM {P}clients"
            f" WHERE {CASELOAD_SQL} IN ({keys}))")


# What features and reasons read of the alliance and the outcome, as (instrument, rater,
# how many of the latest): the last three client-rated SRS and GSRS with a total, the
# last WAI-SR by each rater, and every client-rated ORS with a total (None).
LATEST: tuple[tuple[str, str, int | None], ...] = (
    ("SRS", "client", 3), ("GSRS", "client", 3),
    *(("WAI-SR", rater, 1) for rater in contract.RATERS), ("ORS", "client", None))
# Instruments read by name above; the registry's other model inputs: the last one.
READ_BY_NAME = ("SRS", "GSRS", "WAI-SR", "ORS")
# Measures whose items features and reasons read, and which items. Not the ORS's: its
# features and reasons read totals (the intake, the latest, the count), and an open
# episode has an ORS every session, so its items were most of the items read.
WITH_ITEMS = {"SRS": SRS_ITEMS, "GSRS": SRS_ITEMS}


def _cols(table: str, alias: str = "") -> str:
    prefix = f"{alias}." if alias else ""
    return ", ".join(prefix + c.name for c in contract.TABLES[table].columns)


def _names(table: str) -> list[str]:
    return [c.name for c in contract.TABLES[table].columns]


def _dates(table: str) -> list[str]:
    """Date and timestamp columns: parsed as they are read (the store's rows are typed)."""
    return [*contract.DATE_COLUMNS.get(table, ()), *contract.TIMESTAMP_COLUMNS.get(table, ())]


def _numbers(table: str) -> dict[str, str]:
    """Number columns, parsed as they are read too (in Arrow, not by ``from_frames``)."""
    return {c.name: "infer" for c in contract.TABLES[table].columns
            if isinstance(c.type, (Integer, Float))}


def _read(connection: Connection, sql: str, table: str,
          params: dict[str, Any]) -> pd.DataFrame:
    """``table``'s columns of the copy's rows ``sql`` selects, dates and numbers parsed."""
    return bulk.read_query(connection, sql, _names(table), params, _dates(table),
                           _numbers(table))


def latest_reads(registry: Registry) -> tuple[tuple[str, str, int | None], ...]:
    """(instrument, rater, how many of the latest with a total) the scoped read takes:
    ``LATEST``, and the last client rating of each other model input of ``registry``."""
    others = [code for code in registry.model_inputs if code not in READ_BY_NAME]
    for code in others:  # written into SQL: only codes that cannot hold a quote
        if not INSTRUMENT_CODE.fullmatch(code):
            raise ValueError(f"instrument code {code!r} is not one the registry accepts")
    return (*LATEST, *((code, "client", 1) for code in others))


def scoped_frames(
    connection: Connection, as_of: date, lookback_days: int,
    registry: Registry | None = None, caseloads: Sequence[str] | None = None,
) -> dict[str, pd.DataFrame]:
    """Raw contract frames holding what features and reasons for ``as_of`` read (of
    ``caseloads`` only, when given)."""
    open_sql = _open_in(caseloads, connection.dialect.name)
    # Not consents, client_identifiers or client_contacts: they are never model inputs
    # (read as empty).
    reads = latest_reads(default_registry() if registry is None else registry)
    cut = datetime.combine(as_of, datetime.min.time())
    params = {"cut_day": as_of, "cut": cut, "window": cut - timedelta(days=lookback_days),
              "ever": datetime(1900, 1, 1),
              **({} if caseloads is None else {"caseloads": json.dumps(list(caseloads))})}
    frames = {
        "clients": _read(connection, (
            f"SELECT {_cols('clients', 'c')} FROM {P}clients c WHERE c.client_id IN "
            f"(SELECT e.client_id FROM {P}episodes e WHERE e.episode_id IN ({open_sql}))"
        ), "clients", params),
        "episodes": _read(connection, (
            f"SELECT {_cols('episodes', 'e')} FROM {P}episodes e WHERE e.episode_id IN ({open_sql})"
        ), "episodes", params),
        # Slots from the earlier of the window's start and the last slot attended (known
        # as attended) before the as-of date; every slot of an episode never attended.
        # Each open episode's last attended slot is one short backward walk of the
        # (episode_id, scheduled_at) index; its slots since then one range of it. (A
        # window maximum over every slot sorted the open caseload's whole history.)
        "appointments": _read(connection, (
            f"WITH open_ep AS ({open_sql}), last AS MATERIALIZED ("
            "  SELECT o.episode_id, (SELECT a.scheduled_at"
            f"    FROM {P}appointments a WHERE a.episode_id = o.episode_id"
            "     AND a.scheduled_at < :cut AND a.status = 'attended' AND a.updated_at < :cut"
            "    ORDER BY a.scheduled_at DESC LIMIT 1) AS last_at FROM open_ep o),"
            " since AS MATERIALIZED ("
            "  SELECT episode_id, CASE WHEN last_at IS NULL THEN :ever"
            "   WHEN last_at < :window THEN last_at ELSE :window END AS since FROM last)"
            f" SELECT {_cols('appointments', 'a')} FROM since s"
            f" JOIN {P}appointments a ON a.episode_id = s.episode_id AND a.scheduled_at >= s.since"
        ), "appointments", params),
    }
    # A measure is kept when it is among the latest ``n`` of its episode, instrument and
    # rater (every one for n None), counting those with a total (WAI-SR: every one).
    wanted = " OR ".join(
        f"(m.instrument = '{i}' AND m.rater = '{r}'"
        + ("" if i == "WAI-SR" else " AND m.score_total IS NOT NULL") + ")"
        for i, r, _ in reads)
    kept = " OR ".join(f"(instrument = '{i}' AND rater = '{r}'"
                       + ("" if n is None else f" AND rn <= {n}") + ")"
                       for i, r, n in reads)
    ranked = (
        f"WITH open_ep AS ({open_sql}), ranked AS ("
        f"  SELECT {_cols('alliance_measures', 'm')}, ROW_NUMBER() OVER ("
        "    PARTITION BY m.episode_id, m.instrument, m.rater"
        "    ORDER BY m.administered_at DESC, m.measure_id DESC) AS rn"
        f"  FROM {P}alliance_measures m JOIN open_ep o ON o.episode_id = m.episode_id"
        f"  WHERE m.administered_at < :cut AND ({wanted}))"
    )
    if bulk.is_postgres(connection):
        # The same rows by the (episode, instrument, rater, date) index: a few probes
        # per open episode instead of sorting every measure of the open caseload.
        # (LIMIT NULL is no limit.)
        latest = ", ".join(f"('{i}', '{r}', {'NULL' if n is None else n})"
                           for i, r, n in reads)
        measures_sql = (
            f"WITH open_ep AS ({open_sql}) SELECT {_cols('alliance_measures', 'm')}"
            f" FROM open_ep o CROSS JOIN (VALUES {latest}) AS k(instrument, rater, n)"
            f" CROSS JOIN LATERAL (SELECT * FROM {P}alliance_measures x"
            "  WHERE x.episode_id = o.episode_id AND x.instrument = k.instrument"
            "   AND x.rater = k.rater AND x.administered_at < :cut"
            "   AND (k.instrument = 'WAI-SR' OR x.score_total IS NOT NULL)"
            "  ORDER BY x.administered_at DESC, x.measure_id DESC LIMIT k.n) m"
        )
    else:
        measures_sql = (f"{ranked} SELECT {_cols('alliance_measures')} FROM ranked"
                        f" WHERE {kept}")
    frames["alliance_measures"] = _read(connection, measures_sql, "alliance_measures", params)
    itemised = ", ".join(f"'{i}'" for i in WITH_ITEMS)
    numbers = ", ".join(str(n) for n in sorted({n for k in WITH_ITEMS.values() for n in k}))
    if bulk.is_postgres(connection):
        # By key, ids unnested: an index lookup each (``= ANY`` made the planner scan every item).
        m = frames["alliance_measures"]
        ids = sorted(m.loc[m["instrument"].isin(list(WITH_ITEMS)), "measure_id"].astype(str))
        frames["alliance_items"] = _read(connection, (
            f"SELECT {_cols('alliance_items', 'i')} FROM unnest(CAST(:ids AS text[])) AS u(id)"
            f" JOIN {P}alliance_items i ON i.measure_id = u.id WHERE i.item_number IN ({numbers})"
        ), "alliance_items", {"ids": ids})
    else:
        frames["alliance_items"] = _read(connection, (
            f"{ranked} SELECT {_cols('alliance_items', 'i')} FROM {P}alliance_items i"
            f" WHERE i.item_number IN ({numbers}) AND i.measure_id IN"
            f" (SELECT measure_id FROM ranked WHERE instrument IN ({itemised}) AND ({kept}))"
        ), "alliance_items", params)
    # Notes: the features and reasons count those of the last 90 days (the features decide
    # which were written by then), and of the older ones need only know that one was
    # written: the latest known before the window, one short backward walk of the
    # (episode_id, observed_at) index each. (A repair before the window cannot be at or
    # after a rupture in it.)
    notes_cols = _cols("session_observations", "n")
    latest_older = (
        "SELECT {} FROM " + P + "session_observations x"
        " WHERE x.episode_id = o.episode_id AND x.observed_at < :notes_since"
        "  AND (x.recorded_at IS NULL OR x.recorded_at < :cut)"
        " ORDER BY x.observed_at DESC, x.observation_id DESC LIMIT 1")
    if bulk.is_postgres(connection):
        # LATERAL probes the index per open episode; a join on the subquery's id made
        # the planner hash every note of the copy.
        older = (f"FROM ({open_sql}) o CROSS JOIN LATERAL"
                 f" ({latest_older.format(_cols('session_observations', 'x'))}) n")
    else:  # SQLite looks the id up by the primary key, episode by episode
        older = (f"FROM ({open_sql}) o JOIN {P}session_observations n ON n.observation_id"
                 f" = ({latest_older.format('x.observation_id')})")
    frames["session_observations"] = _read(connection, (
        f"SELECT {notes_cols} FROM {P}session_observations n"
        f" WHERE n.episode_id IN ({open_sql}) AND n.observed_at >= :notes_since"
        f" AND n.observed_at < :cut UNION ALL SELECT {notes_cols} {older}"
    ), "session_observations",
        {**params, "notes_since": cut - timedelta(days=RUPTURE_WINDOW_DAYS)})
    return frames
