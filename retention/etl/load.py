"""Loading one extract into the store's copy: check, apply, quarantine, watermarks.

The steps of an ETL run inside the store's transaction (``retention.pipelines.etl``
owns the transaction and the run record):

1. ``check``: the rows read, with the rows still in quarantine and the copy's rows of
   episodes whose client or admission changed, against the contract
   (``retention.etl.validation``) and what the copy holds of the episodes and measures
   they name; nothing is written;
2. ``enforce_limit``: the run stops, changing nothing, if the rows read break the
   contract beyond a quarantine limit (``retention.etl.quarantine.judge``: all
   rows, a table, a coded column, a clinic's rows of a table);
3. ``apply``: upsert the good rows into the copy (only rows that differ are
   written), remove quarantined keys from it, record the quarantine (releasing rows
   fixed at the source) and advance the watermarks.

Functions take a connection first and never commit.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import pandas as pd
from sqlalchemy import Connection, func, select, text

from retention.clinic.registry import Registry, default_registry
from retention.clock import utcnow
from retention.db import bulk
from retention.etl.extract import INCREMENTAL
from retention.etl.quarantine import (
    MALFORMED_RESOURCE,
    Breach,
    Tally,
    clinics_judged_from,
    count,
    judge,
)
from retention.etl.validation import (
    KEYS,
    ORDER,
    UNFIT_KEY_PREFIXES,
    Context,
    Outcome,
    read_timestamps,
    rows_from_json,
    validate,
    validate_full,
)
from retention.settings import CODED_COLUMNS, EtlSettings, SourceMapping
from retention.store import tables
from retention.store.clinic_copy import bump_copy_version


class QuarantineLimitExceeded(RuntimeError):
    """The rows read broke the contract beyond a limit: the run stops and publishes nothing."""


# What a source hands over of a record it could not read as a row at all (a FHIR
# resource that does not parse): the table it would have fed, its key ("file:line" when
# it has none), a detail that quotes no value, and the record as read.
MALFORMED_COLUMNS = ["table_name", "row_key", "detail", "rows_json"]


class Extract(dict[str, pd.DataFrame]):
    """A source's frames per contract table, with the records it could not read as rows
    (``malformed``): ``check`` holds each under ``malformed_resource``, and the limits
    count them as rows read of their table."""

    def __init__(self, frames: dict[str, pd.DataFrame],
                 malformed: pd.DataFrame | None = None) -> None:
        super().__init__(frames)
        self.malformed = (malformed if malformed is not None
                          else pd.DataFrame(columns=MALFORMED_COLUMNS, dtype=object))


@dataclass
class Checked:
    """An extract checked against the contract, with what the run record keeps of it."""

    candidates: dict[str, pd.DataFrame]
    outcome: Outcome
    bad_read: int
    total_read: int
    rows_quarantined: int
    # The newest updated_at read of each incremental table: where its watermark moves.
    newest: dict[str, pd.Timestamp | None] = field(default_factory=dict)
    detail: dict[str, Any] = field(default_factory=dict)
    breaches: list[Breach] = field(default_factory=list)  # quarantine limits gone over

    @property
    def share(self) -> float:
        """The share of the rows read that broke a rule."""
        return self.bad_read / self.total_read if self.total_read else 0.0


def check(conn: Connection, raw: dict[str, pd.DataFrame], etl: EtlSettings,
          full: bool, registry: Registry | None = None) -> Checked:
    """Check the rows read (with the quarantine carried over on an incremental run)
    against the contract and the instrument ``registry`` (``Settings.instruments``; the
    shipped one by default)."""
    registry = default_registry() if registry is None else registry
    n_read = {t: len(raw[t]) for t in ORDER}
    malformed = raw.malformed if isinstance(raw, Extract) else None
    unreadable = ({} if malformed is None else
                  {str(t): int(n) for t, n in malformed["table_name"].value_counts().items()})
    if full:  # in the two phases a reload in key ranges runs (retention.etl.parts)
        candidates = raw
        outcome = validate_full(raw, registry, max_days_ahead=etl.max_days_ahead)
    else:
        candidates = _with_carried_over(conn, raw, etl.mapping, malformed)
        candidates = _with_moved_episodes(conn, candidates)
        outcome = validate(candidates, _context(conn, candidates, registry),
                           max_days_ahead=etl.max_days_ahead)
    if malformed is not None and len(malformed):
        _hold_malformed(outcome, malformed)
    tally = count(outcome, n_read, unreadable, clinics_judged_from(etl))
    return checked_from(outcome, tally, candidates, etl, newest_stamps(raw))


def checked_from(outcome: Outcome, tally: Tally, candidates: dict[str, pd.DataFrame],
                 etl: EtlSettings, newest: dict[str, pd.Timestamp | None]) -> Checked:
    """What a run keeps of its check: the outcome, its limits judged from ``tally`` (the
    rows read), and the findings its record keeps."""
    unreadable = {t: n for t, n in tally.unreadable.items() if n}
    bad_read = {t: tally.bad_rows(t) + tally.unreadable[t] for t in ORDER}
    n_read = {t: tally.rows[t] for t in ORDER}
    checked = Checked(
        candidates=candidates, outcome=outcome, bad_read=sum(bad_read.values()),
        total_read=sum(n_read.values()) + sum(unreadable.values()),
        rows_quarantined=int(outcome.rejects["n_rows"].sum()) if len(outcome.rejects) else 0,
        newest=newest,
    )
    checked.breaches = judge(tally, etl)
    # Kept in the run's record whether it fails or not: `retention quality` reads a
    # failed run's findings there (codes are not patient data; no other value is kept).
    checked.detail = {
        "read": n_read, "checked": {t: len(candidates[t]) for t in ORDER},
        **({"unreadable": unreadable} if unreadable else {}),
        "quarantined_read": bad_read, "quarantine_by_rule": outcome.counts(),
        "quarantined_share": round(checked.share, 6),
        "unmapped_codes": tally.unmapped_codes(),
        "over_limits": [b.as_dict() for b in checked.breaches],
    }
    return checked


def newest_stamps(raw: Mapping[str, pd.DataFrame]) -> dict[str, pd.Timestamp | None]:
    """The newest ``updated_at`` read of each incremental table (None when none, or when
    ``raw`` holds no frame of it: a key range reads some tables only): where its
    watermark moves to."""
    out: dict[str, pd.Timestamp | None] = {}
    for table in INCREMENTAL:
        newest = read_timestamps(raw[table]["updated_at"]).max() if table in raw else pd.NaT
        out[table] = None if pd.isna(newest) else pd.Timestamp(newest)
    return out


def _hold_malformed(outcome: Outcome, malformed: pd.DataFrame) -> None:
    """Add the records a source could not read to the rejects, each under its key (in
    place of any other entry for that key: the record as read now is what counts)."""
    held = malformed.assign(rule=MALFORMED_RESOURCE, n_rows=1).drop_duplicates(
        ["table_name", "row_key"], keep="last")
    rejects = outcome.rejects
    if len(rejects):
        same = pd.MultiIndex.from_frame(rejects[["table_name", "row_key"]]).isin(
            pd.MultiIndex.from_frame(held[["table_name", "row_key"]]))
        rejects = rejects[~same]
    outcome.rejects = pd.concat([rejects, held[rejects.columns]], ignore_index=True)


# Limits named in a failed run's message; the run's record keeps them all.
NAMED_BREACHES = 8


def enforce_limit(checked: Checked, etl: EtlSettings) -> None:
    """Stop the run if the rows read break the contract beyond any quarantine limit."""
    del etl  # the limits were judged by ``check``, which had the settings
    if not checked.breaches:
        return
    named = [f"- {b.describe()}" for b in checked.breaches[:NAMED_BREACHES]]
    if len(checked.breaches) > NAMED_BREACHES:
        named.append(f"- and {len(checked.breaches) - NAMED_BREACHES} more limits "
                     "(`retention quality` lists them)")
    raise QuarantineLimitExceeded(
        "the rows read break the contract beyond the quarantine limits, so nothing was "
        "stored or published (the last good list stays):\n" + "\n".join(named) + "\n"
        "Fix the source or its mapping ([etl.codes], [etl.queries]) and run again; raise a "
        "limit only for rows known to be bad. `retention quality` shows what this run found."
    )


@dataclass(frozen=True)
class Applied:
    """What ``apply`` changed."""

    copy_changed: int
    released: int
    watermarks: dict[str, str]


def apply(conn: Connection, checked: Checked, clock: datetime, *, full: bool, run_id: int,
          marks: dict[str, datetime | None], built: dict[str, int] | None = None) -> Applied:
    """Write a checked extract into the copy, the quarantine and the watermarks.

    ``built``: tables a full reload in parts already built beside the copy (their
    rows, by name; ``retention.etl.parts``), swapped in here."""
    changed, swapped = _apply_copy(conn, checked.outcome, checked.candidates, full, built or {})
    if changed:
        bump_copy_version(conn, run_id)
    if conn.dialect.name == "postgresql" and changed > 0.1 * max(1, _copy_rows_before(conn)):
        # Fresh statistics, or the planner reads a just-loaded copy as if it were empty;
        # only after changes large beside the copy (docs/performance.md). Tables swapped
        # in were analysed as they were.
        stale = [t.name for t in tables.copies.values() if t.name not in swapped]
        if stale:
            conn.execute(text("ANALYZE " + ", ".join(stale)))
    released = _apply_quarantine(conn, checked.outcome, full, run_id)
    advanced = _advance_watermarks(conn, checked.newest, marks, clock, run_id)
    return Applied(changed, released, advanced)


def since(marks: dict[str, datetime | None], full: bool,
          etl: EtlSettings) -> dict[str, datetime | None]:
    """Where each incremental table is read from: None (everything) on a full reload."""
    overlap = timedelta(minutes=etl.overlap_minutes)
    out: dict[str, datetime | None] = {}
    for table in INCREMENTAL:
        mark = marks.get(table)
        out[table] = None if full or mark is None else mark - overlap
    return out


def _copy_rows_before(conn: Connection) -> int:
    """The copy's size as its statistics last saw it (0 for tables never analysed)."""
    names = [t.name for t in tables.copies.values()]
    found = conn.execute(text(
        "SELECT coalesce(sum(greatest(reltuples, 0)), 0) FROM pg_class "
        "WHERE oid IN (SELECT to_regclass(n) FROM unnest(CAST(:names AS text[])) AS n)"),
        {"names": names}).scalar()
    return int(found or 0)


# --- context for incremental runs ---------------------------------------------------


def _with_carried_over(conn: Connection, raw: dict[str, pd.DataFrame],
                       mapping: SourceMapping,
                       malformed: pd.DataFrame | None = None) -> dict[str, pd.DataFrame]:
    """The rows read, then the quarantined rows not read again.

    Rows read come first (the quarantine share counts them alone). Quarantined rows
    are checked every run, so a row fixed by something other than its own update (its
    episode arriving, say) is released; a code mapped since it was held is mapped now.
    Records held as malformed are not rows to check again (the source hands them over
    while it holds them), and a key the source now hands over as malformed is not
    carried.
    """
    out = {}
    q = tables.quarantine
    held = conn.execute(select(q.c.table_name, q.c.rows_json)
                        .where(q.c.rule != MALFORMED_RESOURCE))
    carried: dict[str, list[dict[str, Any]]] = {t: [] for t in ORDER}
    for table_name, rows_json in held:
        if table_name in carried:
            carried[table_name].extend(rows_from_json(rows_json))
    for table in ORDER:
        frame = raw[table]
        if not carried[table]:  # the rows as read, as a full reload checks them
            out[table] = frame
            continue
        extra = pd.DataFrame(carried[table], columns=list(frame.columns), dtype=object)
        read = _key_tuples(table, frame)
        if malformed is not None and len(malformed):
            read = read.append(pd.Index(
                malformed.loc[malformed["table_name"] == table, "row_key"].astype(str)))
        extra = _mapped_since(table, extra[~_key_tuples(table, extra).isin(read)], mapping)
        out[table] = pd.concat([frame.astype(object), extra], ignore_index=True)
    return out


def _mapped_since(table: str, held: pd.DataFrame, mapping: SourceMapping) -> pd.DataFrame:
    """Held rows with the mapping applied to their codes that are not the contract's
    (held rows keep codes as the mapping then left them: contract codes are final)."""
    maps = mapping.codes.get(table, {})
    if not maps or held.empty:
        return held
    out = held.copy()
    for column, codes in maps.items():
        out[column] = out[column].map(
            lambda v, m=codes, final=CODED_COLUMNS[(table, column)]:
            m.get(v, v) if isinstance(v, str) and v not in final else v)
    return out


# Tables whose rows name an episode: the cross-table rules look those episodes up.
EPISODE_REFERENCES = ("appointments", "alliance_measures", "session_observations")


def _with_moved_episodes(conn: Connection,
                         candidates: dict[str, pd.DataFrame]) -> dict[str, pd.DataFrame]:
    """The candidates, with the copy's rows of each episode read whose client or admission
    the source changed (and the items of its measures), after them.

    Those rows were checked against the episode as it was (``episode_of_another_client``,
    ``before_admission``): checked again, the copy stays what a full reload would make
    of the source. A database source hands over the slots of every episode that changed
    anyway (``extract``), so what this adds is the measures and notes, and the slots an
    export folder does not hand over again. An episode's client or admission rarely
    changes (a merge of two clients' records, an admission date corrected), so this
    reads few rows.
    """
    read = candidates["episodes"]
    stored = _copy_rows(conn, "episodes", "episode_id", sorted(_texts(read["episode_id"])))
    if stored.empty:
        return candidates

    def facts(frame: pd.DataFrame) -> pd.DataFrame:
        return pd.DataFrame({"episode_id": frame["episode_id"].astype(str).to_numpy(),
                             "client": frame["client_id"].astype(str).to_numpy(),
                             "admitted": pd.to_datetime(frame["admitted_on"], errors="coerce",
                                                        format="mixed").to_numpy()})

    both = facts(read).merge(facts(stored), on="episode_id", suffixes=("", "_was"))
    changed = (both["client"] != both["client_was"]) | ~(both["admitted"]
                                                         == both["admitted_was"])
    moved = sorted(set(both.loc[changed, "episode_id"]))
    if not moved:
        return candidates
    out = dict(candidates)
    for table in EPISODE_REFERENCES:
        out[table] = _appended(table, out[table], _copy_rows(conn, table, "episode_id", moved))
    measures = sorted(_texts(out["alliance_measures"]["measure_id"])
                      - _texts(candidates["alliance_measures"]["measure_id"]))
    out["alliance_items"] = _appended("alliance_items", out["alliance_items"],
                                      _copy_rows(conn, "alliance_items", "measure_id", measures))
    return out


def _appended(table: str, frame: pd.DataFrame, copied: pd.DataFrame) -> pd.DataFrame:
    """``frame``, then the rows of ``copied`` whose keys it does not hold."""
    copied = copied[~_key_tuples(table, copied).isin(_key_tuples(table, frame))]
    if copied.empty:
        return frame
    return pd.concat([frame.astype(object), copied.astype(object)], ignore_index=True)


def _context(conn: Connection, candidates: dict[str, pd.DataFrame],
             registry: Registry) -> Context:
    """What the store holds that the candidates' cross-table rules refer to.

    Only the episodes the candidates name: the rules ask of an episode whether it is
    known and when it began, so a night's look-ups follow what it read, not the network.
    """
    referenced = set().union(*(_texts(candidates[t]["episode_id"]) for t in EPISODE_REFERENCES))
    episodes = _copy_rows(conn, "episodes", "episode_id", sorted(referenced))
    admitted = pd.Series(pd.to_datetime(episodes["admitted_on"]).to_numpy(),
                         index=episodes["episode_id"].to_numpy(), dtype="datetime64[ns]")
    held = conn.execute(select(tables.quarantine.c.row_key).where(
        tables.quarantine.c.table_name == "episodes")).scalars().all()
    measures = _texts(candidates["alliance_items"]["measure_id"]) - _texts(
        candidates["alliance_measures"]["measure_id"])
    known = _copy_rows(conn, "alliance_measures", "measure_id", sorted(measures))
    held_measures = conn.execute(select(tables.quarantine.c.row_key).where(
        tables.quarantine.c.table_name == "alliance_measures")).scalars().all()
    return Context(
        client_ids=pd.Index([], dtype=object),  # clients are read whole every run
        episode_ids=pd.Index(list(admitted.index) + list(held), dtype=object),
        admitted_on=admitted,
        episode_clients=pd.Series(episodes["client_id"].to_numpy(),
                                  index=episodes["episode_id"].to_numpy(), dtype=object),
        measure_ids=pd.Index(list(known["measure_id"]) + list(held_measures), dtype=object),
        instruments=pd.Series(known["instrument"].to_numpy(), index=known["measure_id"].to_numpy(),
                              dtype=object),
        registry=registry,
    )


def _texts(values: pd.Series) -> set[str]:
    """Ids as the copy keeps them (text): a source may hand them over as numbers."""
    return {str(v) for v in values.dropna().unique()}


def _copy_rows(conn: Connection, table: str, column: str, values: list[str]) -> pd.DataFrame:
    """Rows of the copy whose ``column`` (text) is in ``values``, as the driver returns them."""
    copy = tables.copies[table]
    columns = [c.name for c in copy.columns]
    if bulk.is_postgres(conn):
        # One statement however many: an index look-up per id, unnested from one array.
        rows = conn.execute(text(
            f"SELECT {', '.join('t.' + c for c in columns)} FROM unnest(CAST(:ids AS text[]))"
            f" AS u(id) JOIN {copy.name} t ON t.{column} = u.id"), {"ids": values}).fetchall()
        return pd.DataFrame([tuple(r) for r in rows], columns=columns, dtype=object)
    parts = []
    for start in range(0, len(values), 5000):
        chunk = values[start:start + 5000]
        rows = conn.execute(select(copy).where(copy.c[column].in_(chunk))).fetchall()
        parts.append(pd.DataFrame([tuple(r) for r in rows], columns=columns, dtype=object))
    if not parts:
        return pd.DataFrame(columns=columns, dtype=object)
    return pd.concat(parts, ignore_index=True)


def _key_tuples(table: str, frame: pd.DataFrame) -> pd.Index:
    keys = KEYS[table]
    if frame.empty:
        return pd.Index([])
    if len(keys) == 1:
        return pd.Index(frame[keys[0]].astype(str))
    if table != "alliance_items":
        return pd.Index(frame[keys[0]].astype(str) + "|" + frame[keys[1]].astype(str))
    number = pd.to_numeric(frame["item_number"], errors="coerce")
    return pd.Index(frame["measure_id"].astype(str) + "|" + number.astype(str))


# --- applying ----------------------------------------------------------------------


def _apply_copy(
    conn: Connection, outcome: Outcome, candidates: dict[str, pd.DataFrame], full: bool,
    built: dict[str, int],
) -> tuple[int, set[str]]:
    """Upsert the good rows, delete quarantined keys; a full reload also deletes the rest.

    On PostgreSQL a full reload builds its large tables beside the copy, two at a time
    on connections of their own, and swaps each in here, inside the run's transaction.
    Returns the rows changed and the names of the tables swapped in.
    """
    changed = 0
    built = dict(built)
    if full and bulk.is_postgres(conn):
        large = sorted((t for t in ORDER if len(outcome.valid[t]) >= bulk.REBUILD_INDEXES_ROWS
                        and tables.copies[t].name not in built),
                       key=lambda t: -_load_cost(outcome.valid[t]))
        built |= bulk.build_beside_in_parallel(
            conn, [(tables.copies[t], outcome.valid[t]) for t in large])
    swapped = set()
    for table in ORDER:
        copy = tables.copies[table]
        valid = outcome.valid[table]
        if copy.name in built:
            changed += bulk.swap_in(conn, copy, built[copy.name])
            swapped.add(copy.name)
            continue
        if full or table == "clients":  # read whole: anything not read is gone
            changed += bulk.sync_rows(conn, copy, valid)
            continue
        if table == "alliance_items":  # items of the measures checked are replaced as a set
            scope = set(candidates["alliance_items"]["measure_id"].dropna()) | set(
                candidates["alliance_measures"]["measure_id"].dropna())
            changed += bulk.sync_rows(conn, copy, valid, scope_in=("measure_id", sorted(scope)))
            continue
        changed += bulk.sync_rows(conn, copy, valid, delete_missing=False)
        changed += bulk.delete_keys(conn, copy, _key_frame(table, outcome.rejected_keys(table)))
    return changed, swapped


def _load_cost(frame: pd.DataFrame) -> int:
    """Roughly how long a table takes to load (cells, not rows: slots are wide), so the
    largest start first and the two builders finish together."""
    return len(frame) * len(frame.columns)


def _key_frame(table: str, row_keys: pd.Index) -> pd.DataFrame:
    """Key columns from quarantine row keys (rows quarantined for a missing key have none)."""
    keys = [k for k in row_keys if not str(k).startswith(UNFIT_KEY_PREFIXES)]
    if len(KEYS[table]) == 2:  # "measure|item", "system|value": neither first part holds '|'
        parts = [str(k).split("|", 1) for k in keys]
        first, second = KEYS[table]
        return pd.DataFrame({first: [p[0] for p in parts],
                             second: [int(p[1]) if table == "alliance_items" else p[1]
                                      for p in parts]})
    return pd.DataFrame({KEYS[table][0]: keys})


def _apply_quarantine(conn: Connection, outcome: Outcome, full: bool, run_id: int) -> int:
    """Record this run's rejects; release keys checked again and found good. Returns released."""
    entries = outcome.rejects.drop(columns=["n_rows"]).assign(
        run_id=run_id, quarantined_at=utcnow())
    compare = ["rule", "detail", "rows_json"]
    if full:
        before = _count(conn, tables.quarantine)
        bulk.sync_rows(conn, tables.quarantine, entries, compare=compare)
        return max(0, before - len(entries))
    bulk.sync_rows(conn, tables.quarantine, entries, compare=compare, delete_missing=False)
    checked = pd.concat([pd.DataFrame({"table_name": t, "row_key": k.unique()})
                         for t, k in outcome.keys.items()], ignore_index=True)
    rejected = pd.MultiIndex.from_frame(outcome.rejects[["table_name", "row_key"]])
    good = checked[~pd.MultiIndex.from_frame(checked).isin(rejected)]
    return bulk.delete_keys(conn, tables.quarantine, good)


def _count(conn: Connection, table: Any) -> int:
    return int(conn.execute(select(func.count()).select_from(table)).scalar_one())


def read_watermarks(conn: Connection) -> dict[str, datetime | None]:
    """Each incremental table's watermark (absent before the first run)."""
    rows = conn.execute(select(tables.watermarks.c.table_name, tables.watermarks.c.high_water)
                        .where(tables.watermarks.c.table_name.in_(INCREMENTAL)))
    return {name: mark for name, mark in rows}


def _advance_watermarks(
    conn: Connection, newest: dict[str, pd.Timestamp | None], marks: dict[str, datetime | None],
    clock: datetime, run_id: int,
) -> dict[str, str]:
    """Move each table's watermark to the newest updated_at read, never past the source clock."""
    rows: list[dict[str, Any]] = []
    for table in INCREMENTAL:
        stamp = newest.get(table)
        mark = marks.get(table)
        if mark is None and stamp is None:
            mark = clock  # nothing there yet: start from now (less the overlap next time)
        if stamp is not None:
            candidate = min(stamp.to_pydatetime(), clock)
            mark = candidate if mark is None else max(mark, candidate)
        rows.append({"table_name": table, "high_water": mark, "run_id": run_id})
    frame = pd.DataFrame(rows)
    bulk.sync_rows(conn, tables.watermarks, frame, compare=["high_water"], delete_missing=False)
    return {str(r["table_name"]): str(r["high_water"]) for r in rows}


def full_reload_due(conn: Connection, marks: dict[str, datetime | None], etl: EtlSettings,
                    now: datetime) -> bool:
    """First run, or the last full reload (which reconciles deletions) is too old at ``now``."""
    if any(marks.get(t) is None for t in INCREMENTAL):
        return True
    last = conn.execute(
        select(tables.runs.c.started_at)
        .where(tables.runs.c.kind == "etl", tables.runs.c.status == "succeeded",
               tables.runs.c.detail.like('%"full": true%'))
        .order_by(tables.runs.c.run_id.desc()).limit(1)
    ).scalar()
    return last is None or now - last > timedelta(days=etl.full_reload_after_days)
