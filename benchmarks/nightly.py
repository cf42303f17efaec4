"""Benchmark: the nightly run (extract, features, score with reasons, publish) per source kind.

    .venv/bin/python benchmarks/nightly.py --clients 10000
    .venv/bin/python benchmarks/nightly.py --clients 100000
    .venv/bin/python benchmarks/nightly.py --clients 10000 --sources postgresql,mariadb,fhir-ndjson

Setup is done once and cached on the PostgreSQL server: a synthetic clinic of
``--clients`` clients with a year of history is generated and loaded with COPY into
the database ``retention_bench_src_<checkout>_<clients>`` (kept between runs;
``--rebuild`` makes it again), and a model is trained once on a small clinic of the same kind
(``var/bench/models``). Setup time is reported separately from the runs.

Then, each in its own process so its peak memory is its own:

1. **full**: a nightly run into an empty store: every row extracted, checked and
   loaded, features for every open episode, scored, reasons for the top of the list,
   published;
2. **incremental**: one day of changes later (a copy of the clinic made from the
   cached one, with a day's statuses, bookings, ratings and discharges applied), the
   next night's run into the same store, vacuumed first as a day would have;
3. **weekly_full**: the same night again as the weekly full reload, which reads every
   row and reconciles deletions, into the store that already holds them.

Each prints its stages' seconds (from the runs' own records) and its peak resident
memory. The server is the one on this machine (RETENTION_BENCH_PG_URL overrides).

``--sources`` runs the same clinic and the same day of changes from other sources in
the same invocation, so their times compare on one machine at one hour; the store is
PostgreSQL for all of them:

- **mariadb**: the clinic loaded into the MariaDB server on this machine
  (RETENTION_BENCH_MARIADB_URL overrides) with LOAD DATA, cached like PostgreSQL's;
  the day of changes is the same SQL in MariaDB's dialect, on a copy of it;
- **fhir-ndjson**: the clinic written as a Bulk Data export folder (cached under
  ``var/bench``), and the day of changes as a second, ``_since`` export holding the
  resources the PostgreSQL day of changes wrote.

Runs full and incremental for each; weekly_full only for PostgreSQL.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from retention.clinic import contract
from retention.clinic.synth import SynthConfig
from retention.engine.memory import peak_rss_mib
from retention.model.signing import resolve_key
from retention.store import tables

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


ADMIN = os.environ.get("RETENTION_BENCH_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
AS_OF = date(2026, 6, 1)
CACHE = ROOT / "var" / "bench"
MODEL_CLIENTS = 2000
# The benchmark's own model signing key, beside its models (not in them): without it,
# training would create the account's default key in ~/.config, outside the checkout.
KEY_FILE = CACHE / "model-signing.key"


def synth_config(clients: int, seed: int = 20261126) -> SynthConfig:
    """A year of history, sessions and episode lengths raised towards a full caseload."""
    return SynthConfig(end=AS_OF, n_clients=clients, n_clinics=8, history_days=365, seed=seed,
                       extra_sessions_per_week=4, episode_length_scale=3.0)


def url_for(database: str) -> str:
    base = ADMIN.rsplit("/", 1)[0]
    return f"{base}/{database}"


def sa_url(database: str) -> str:
    return url_for(database).replace("postgresql://", "postgresql+psycopg://", 1)


def admin() -> psycopg.Connection[Any]:
    return psycopg.connect(ADMIN, autocommit=True)


# The server may be shared: every database this checkout's benchmark creates is named
# for this checkout (the cached clinic) or this run (the store and the changed clinic),
# listed in a ledger before it is created, and only databases in the ledger are dropped.
LEDGER = CACHE / "databases.txt"
RUN = secrets.token_hex(4)


def checkout_id() -> str:
    """A random id made once for this checkout, so two checkouts never share a cache."""
    path = CACHE / "checkout-id"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(secrets.token_hex(4) + "\n")
    return path.read_text().strip()


def ours() -> set[str]:
    return set(LEDGER.read_text().split()) if LEDGER.exists() else set()


def _forget(database: str) -> None:
    LEDGER.write_text("".join(f"{n}\n" for n in sorted(ours() - {database})))


def exists(database: str) -> bool:
    with admin() as conn:
        return conn.execute("SELECT 1 FROM pg_database WHERE datname = %s",
                            (database,)).fetchone() is not None


def drop(database: str) -> None:
    """Drop a database this checkout's benchmark created (and nothing else)."""
    if database not in ours():
        raise RuntimeError(f"{database} is not in {LEDGER}: not ours, not dropping it")
    with admin() as conn:
        conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                     "WHERE datname = %s AND pid <> pg_backend_pid()", (database,))
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(database)))
    _forget(database)


def create(database: str, template: str | None = None) -> None:
    """A new database (replacing one of ours of that name), listed before it exists."""
    if exists(database):
        drop(database)
    LEDGER.parent.mkdir(parents=True, exist_ok=True)
    with LEDGER.open("a") as ledger:
        ledger.write(database + "\n")
    with admin() as conn:
        if template:
            conn.execute(sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
                sql.Identifier(database), sql.Identifier(template)))
        else:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(database)))


# --- setup (cached) -------------------------------------------------------------------


def cache_key(clients: int) -> dict[str, Any]:
    """What a cached clinic was made from: rebuilt when the synthetic clinic changes."""
    config = asdict(synth_config(clients))
    config["end"] = str(config["end"])
    return config


def generated(clients: int) -> tuple[dict[str, Any], float]:
    """The synthetic clinic's frames and the seconds it took to make them."""
    from retention.clinic.synth import generate

    started = time.perf_counter()
    frames = generate(synth_config(clients))
    return frames, round(time.perf_counter() - started, 1)


def ensure_source(clients: int, rebuild: bool) -> tuple[str, dict[str, Any]]:
    """The cached clinic database for ``clients``; builds it when missing or stale."""
    from sqlalchemy import create_engine

    name = f"retention_bench_src_{checkout_id()}_{clients}"
    config = cache_key(clients)
    if not rebuild and name in ours() and exists(name):
        with psycopg.connect(url_for(name)) as conn:
            row = conn.execute("SELECT config, counts FROM bench_meta").fetchone()
        if row and json.loads(row[0]) == config:
            return name, {"cached": True, "counts": json.loads(row[1])}
    frames, generate_s = generated(clients)
    started = time.perf_counter()
    create(name)
    engine = create_engine(sa_url(name))
    with engine.begin() as conn:
        contract.metadata.create_all(conn)
    engine.dispose()
    with psycopg.connect(url_for(name)) as conn:
        for table, frame in frames.items():
            cols = ", ".join(frame.columns)
            with conn.cursor().copy(f"COPY {table} ({cols}) FROM STDIN WITH (FORMAT csv)") as cp:
                for start in range(0, len(frame), 500_000):
                    cp.write(frame.iloc[start:start + 500_000].to_csv(index=False, header=False))
        # What a clinic's database would have for any reader that asks "what changed".
        for table in ("episodes", "appointments", "alliance_measures"):
            conn.execute(f"CREATE INDEX ON {table} (updated_at)")
        conn.execute("CREATE INDEX ON appointments (episode_id)")
        counts = {t: len(f) for t, f in frames.items()}
        conn.execute("CREATE TABLE bench_meta (config text, counts text)")
        conn.execute("INSERT INTO bench_meta VALUES (%s, %s)",
                     (json.dumps(config), json.dumps(counts)))
        conn.commit()
    with admin() as conn, psycopg.connect(url_for(name), autocommit=True) as c:
        c.execute("VACUUM ANALYZE")
    return name, {"cached": False, "generate_s": generate_s,
                  "load_s": round(time.perf_counter() - started, 1), "counts": counts}


def ensure_model() -> tuple[Path, dict[str, Any]]:
    """A model trained once on a small clinic of the same kind (scoring cost does not
    depend on how many rows a model was trained on)."""
    models = CACHE / "models"
    if (models / "CURRENT").exists() and KEY_FILE.exists():
        return models, {"cached": True}
    started = time.perf_counter()
    shutil.rmtree(models, ignore_errors=True)  # signed with a key no longer here
    resolve_key(default_file=KEY_FILE, create=True)
    from retention.clinic.synth import generate, write
    from retention.db.engines import source_engine, store_engine
    from retention.pipelines.etl import run_etl
    from retention.pipelines.train import run_training
    from retention.settings import settings_from_mapping

    CACHE.mkdir(parents=True, exist_ok=True)
    clinic, store_file = CACHE / "model_clinic.db", CACHE / "model_store.db"
    for f in (clinic, store_file):
        f.unlink(missing_ok=True)
    from sqlalchemy import create_engine

    engine = create_engine(f"sqlite:///{clinic}")
    with engine.begin() as conn:
        write(conn, generate(SynthConfig(end=AS_OF, n_clients=MODEL_CLIENTS, seed=7)))
    engine.dispose()
    settings = settings_from_mapping({
        "source_url": f"sqlite:///{clinic}", "store_url": f"sqlite:///{store_file}",
        "models_dir": str(models), "reasons_file": str(ROOT / "config" / "reasons.toml"),
        "model_key_file": str(KEY_FILE)})
    source, store_db = source_engine(settings.source_url), store_engine(settings.store_url)
    run_etl(source, store_db, AS_OF)
    run_training(settings, store_db, AS_OF)
    source.dispose()
    store_db.dispose()
    return models, {"cached": False, "train_s": round(time.perf_counter() - started, 1)}


# The tables a day of changes writes (alliance_items with alliance_measures).
CHANGED = ("episodes", "appointments", "alliance_measures", "session_observations")
# The day's outcome ratings and notes, as both dialects insert them.
ROWS_INSERTED = {
    "insert_measures": "INSERT INTO alliance_measures (measure_id, episode_id, client_id,"
                       " appointment_id, instrument, rater, administered_at, score_total,"
                       " goal, task, bond, updated_at)",
    "insert_notes": "INSERT INTO session_observations (observation_id, episode_id,"
                    " client_id, appointment_id, observed_at, recorded_at, clinician_id,"
                    " signs, rupture, repair_steps, updated_at)",
}
DAY_OF_CHANGES = """
SELECT setseed(0.42);
-- Today's slots get their statuses, written after each session.
UPDATE appointments
   SET status = CASE WHEN random() < 0.8 THEN 'attended' ELSE 'no_show' END,
       updated_at = scheduled_at + interval '2 hours'
 WHERE status = 'scheduled' AND scheduled_at >= %(day)s AND scheduled_at < %(next)s;
-- A fifth of open episodes book a slot two weeks out.
INSERT INTO appointments
SELECT 'AX' || lpad(row_number() OVER (ORDER BY episode_id)::text, 9, '0'), episode_id,
       client_id, %(day)s + interval '14 days 10 hours', %(day)s + interval '12 hours',
       'scheduled', 'individual', false, 'clin-x', %(day)s + interval '12 hours'
  FROM episodes WHERE discharged_on IS NULL AND md5(episode_id) < '33';
-- Attended individual sessions today are rated (SRS, four items).
CREATE TEMP TABLE rated AS
SELECT 'MX' || lpad(row_number() OVER (ORDER BY appointment_id)::text, 9, '0') AS measure_id,
       episode_id, client_id, appointment_id, scheduled_at
  FROM appointments
 WHERE status = 'attended' AND service_type = 'individual'
   AND scheduled_at >= %(day)s AND scheduled_at < %(next)s;
INSERT INTO alliance_measures
SELECT measure_id, episode_id, client_id, appointment_id, 'SRS', 'client',
       scheduled_at + interval '45 minutes', 38, NULL, NULL, NULL,
       scheduled_at + interval '45 minutes' FROM rated;
INSERT INTO alliance_items SELECT measure_id, n, CASE WHEN n = 4 THEN 8 ELSE 10 END
  FROM rated, generate_series(1, 4) AS n;
-- Where the clinic uses PCOMS the client rates the outcome too (ORS, four items), and
-- a therapist who keeps session notes writes one, one in five with a sign of strain.
CREATE TEMP TABLE outcome AS
SELECT 'OX' || substr(r.measure_id, 3) AS measure_id, r.episode_id, r.client_id,
       r.appointment_id, r.scheduled_at FROM rated r
 WHERE EXISTS (SELECT 1 FROM alliance_measures m
                WHERE m.episode_id = r.episode_id AND m.instrument = 'ORS');
{insert_measures}
SELECT measure_id, episode_id, client_id, appointment_id, 'ORS', 'client',
       scheduled_at + interval '5 minutes', 24, NULL, NULL, NULL,
       scheduled_at + interval '5 minutes' FROM outcome;
INSERT INTO alliance_items SELECT measure_id, n, 6 FROM outcome, generate_series(1, 4) AS n;
{insert_notes}
SELECT 'NX' || substr(measure_id, 3), episode_id, client_id, appointment_id, scheduled_at,
       scheduled_at + interval '3 hours', 'clin-x',
       CASE WHEN random() < 0.2 THEN 'frustration' END, false, NULL,
       scheduled_at + interval '3 hours'
  FROM rated r WHERE EXISTS (SELECT 1 FROM session_observations o
                              WHERE o.episode_id = r.episode_id);
-- One open episode in two hundred is discharged.
UPDATE episodes SET discharged_on = %(day)s, discharge_reason = 'completed',
       updated_at = %(day)s + interval '16 hours'
 WHERE discharged_on IS NULL AND md5(episode_id) < '0148';
""".format(**ROWS_INSERTED)


def day_of_changes(database: str) -> dict[str, int]:
    """Apply one day (AS_OF) of an EHR's writes; returns the rows written per table."""
    params = {"day": AS_OF, "next": AS_OF + timedelta(days=1)}
    with psycopg.connect(url_for(database)) as conn:
        before = {t: conn.execute(f"SELECT count(*) FROM {t} WHERE updated_at >= %s",
                                  (AS_OF,)).fetchone()[0]  # type: ignore[index]
                  for t in CHANGED}
        for statement in DAY_OF_CHANGES.split(";\n"):
            if statement.strip():
                conn.execute(statement, params if "%(" in statement else None)
        conn.commit()
        after = {t: conn.execute(f"SELECT count(*) FROM {t} WHERE updated_at >= %s",
                                 (AS_OF,)).fetchone()[0]  # type: ignore[index]
                 for t in before}
        conn.execute("ANALYZE")
    return {t: after[t] - before[t] for t in before}


# --- MariaDB (cached like PostgreSQL's) ----------------------------------------------

MARIADB = os.environ.get("RETENTION_BENCH_MARIADB_URL", "mysql+pymysql://root@127.0.0.1:3306")
MARIADB_LEDGER = CACHE / "databases-mariadb.txt"


def maria_url(database: str) -> str:
    return f"{MARIADB.rstrip('/')}/{database}"


def maria(database: str | None = None, **extra: Any) -> Any:
    """A PyMySQL connection to the benchmark's MariaDB (autocommit)."""
    import pymysql
    from sqlalchemy.engine import make_url

    url = make_url(MARIADB)
    return pymysql.connect(host=url.host or "127.0.0.1", port=url.port or 3306,
                           user=url.username or "root", password=url.password or "",
                           database=database, autocommit=True, charset="utf8mb4", **extra)


def maria_ours() -> set[str]:
    return set(MARIADB_LEDGER.read_text().split()) if MARIADB_LEDGER.exists() else set()


def maria_exists(database: str) -> bool:
    with maria() as conn, conn.cursor() as cur:
        return bool(cur.execute("SHOW DATABASES LIKE %s", (database,)))


def maria_drop(database: str) -> None:
    """Drop a MariaDB database this checkout's benchmark created (and nothing else)."""
    if database not in maria_ours():
        raise RuntimeError(f"{database} is not in {MARIADB_LEDGER}: not ours, not dropping it")
    with maria() as conn, conn.cursor() as cur:
        cur.execute(f"DROP DATABASE IF EXISTS `{database}`")
    MARIADB_LEDGER.write_text("".join(f"{n}\n" for n in sorted(maria_ours() - {database})))


def maria_create(database: str) -> None:
    if maria_exists(database):
        maria_drop(database)
    MARIADB_LEDGER.parent.mkdir(parents=True, exist_ok=True)
    with MARIADB_LEDGER.open("a") as ledger:
        ledger.write(database + "\n")
    with maria() as conn, conn.cursor() as cur:
        cur.execute(f"CREATE DATABASE `{database}` CHARACTER SET utf8mb4 COLLATE utf8mb4_bin")


def ensure_mariadb_source(clients: int, rebuild: bool) -> tuple[str, dict[str, Any]]:
    """The cached clinic for ``clients`` in MariaDB, loaded with LOAD DATA from CSV."""
    import tempfile

    from sqlalchemy import create_engine

    name = f"retention_bench_src_{checkout_id()}_{clients}"
    config = cache_key(clients)
    if not rebuild and name in maria_ours() and maria_exists(name):
        with maria(name) as conn, conn.cursor() as cur:
            cur.execute("SELECT config, counts FROM bench_meta")
            row = cur.fetchone()
        if row and json.loads(row[0]) == config:
            return name, {"cached": True, "counts": json.loads(row[1])}
    frames, generate_s = generated(clients)
    started = time.perf_counter()
    maria_create(name)
    engine = create_engine(maria_url(name))
    with engine.begin() as conn:
        contract.metadata.create_all(conn)
    engine.dispose()
    with maria(name, local_infile=True) as conn, conn.cursor() as cur, \
            tempfile.TemporaryDirectory() as tmp:
        for table, frame in frames.items():
            path = Path(tmp) / f"{table}.csv"
            out = frame.copy()
            for column in out.columns:  # booleans as MariaDB stores them
                if out[column].dtype == bool or column in ("may_text", "may_call", "telehealth"):
                    out[column] = out[column].map({True: 1, False: 0})
            out.to_csv(path, index=False, header=False, na_rep="\\N")
            cur.execute(f"LOAD DATA LOCAL INFILE %s INTO TABLE {table} CHARACTER SET utf8mb4 "
                        "FIELDS TERMINATED BY ',' OPTIONALLY ENCLOSED BY '\"' "
                        f"LINES TERMINATED BY '\\n' ({', '.join(frame.columns)})", (str(path),))
        for table in ("episodes", "appointments", "alliance_measures"):
            cur.execute(f"CREATE INDEX {table}_updated_at ON {table} (updated_at)")
        cur.execute("CREATE INDEX appointments_episode ON appointments (episode_id)")
        counts = {t: len(f) for t, f in frames.items()}
        cur.execute("CREATE TABLE bench_meta (config text, counts text)")
        cur.execute("INSERT INTO bench_meta VALUES (%s, %s)",
                    (json.dumps(config), json.dumps(counts)))
        cur.execute("ANALYZE TABLE " + ", ".join(frames))
    return name, {"cached": False, "generate_s": generate_s,
                  "load_s": round(time.perf_counter() - started, 1), "counts": counts}


# The PostgreSQL day of changes in MariaDB's dialect (RAND(seed) for setseed and random(),
# the Sequence engine's seq_1_to_4 for generate_series).
MARIADB_DAY_OF_CHANGES = """
UPDATE appointments
   SET status = CASE WHEN RAND(42) < 0.8 THEN 'attended' ELSE 'no_show' END,
       updated_at = scheduled_at + INTERVAL 2 HOUR
 WHERE status = 'scheduled' AND scheduled_at >= %(day)s AND scheduled_at < %(next)s;
INSERT INTO appointments
SELECT CONCAT('AX', LPAD(ROW_NUMBER() OVER (ORDER BY episode_id), 9, '0')), episode_id,
       client_id, %(day)s + INTERVAL 14 DAY + INTERVAL 10 HOUR, %(day)s + INTERVAL 12 HOUR,
       'scheduled', 'individual', false, 'clin-x', %(day)s + INTERVAL 12 HOUR
  FROM episodes WHERE discharged_on IS NULL AND MD5(episode_id) < '33';
CREATE TEMPORARY TABLE rated AS
SELECT CONCAT('MX', LPAD(ROW_NUMBER() OVER (ORDER BY appointment_id), 9, '0')) AS measure_id,
       episode_id, client_id, appointment_id, scheduled_at
  FROM appointments
 WHERE status = 'attended' AND service_type = 'individual'
   AND scheduled_at >= %(day)s AND scheduled_at < %(next)s;
INSERT INTO alliance_measures
SELECT measure_id, episode_id, client_id, appointment_id, 'SRS', 'client',
       scheduled_at + INTERVAL 45 MINUTE, 38, NULL, NULL, NULL,
       scheduled_at + INTERVAL 45 MINUTE FROM rated;
INSERT INTO alliance_items SELECT measure_id, seq, CASE WHEN seq = 4 THEN 8 ELSE 10 END
  FROM rated, seq_1_to_4;
CREATE TEMPORARY TABLE outcome AS
SELECT CONCAT('OX', SUBSTR(r.measure_id, 3)) AS measure_id, r.episode_id, r.client_id,
       r.appointment_id, r.scheduled_at FROM rated r
 WHERE EXISTS (SELECT 1 FROM alliance_measures m
                WHERE m.episode_id = r.episode_id AND m.instrument = 'ORS');
{insert_measures}
SELECT measure_id, episode_id, client_id, appointment_id, 'ORS', 'client',
       scheduled_at + INTERVAL 5 MINUTE, 24, NULL, NULL, NULL,
       scheduled_at + INTERVAL 5 MINUTE FROM outcome;
INSERT INTO alliance_items SELECT measure_id, seq, 6 FROM outcome, seq_1_to_4;
{insert_notes}
SELECT CONCAT('NX', SUBSTR(measure_id, 3)), episode_id, client_id, appointment_id,
       scheduled_at, scheduled_at + INTERVAL 3 HOUR, 'clin-x',
       CASE WHEN RAND(43) < 0.2 THEN 'frustration' END, false, NULL,
       scheduled_at + INTERVAL 3 HOUR
  FROM rated r WHERE EXISTS (SELECT 1 FROM session_observations o
                              WHERE o.episode_id = r.episode_id);
UPDATE episodes SET discharged_on = %(day)s, discharge_reason = 'completed',
       updated_at = %(day)s + INTERVAL 16 HOUR
 WHERE discharged_on IS NULL AND MD5(episode_id) < '0148';
""".format(**ROWS_INSERTED)


def mariadb_day_of_changes(source: str, work: str) -> dict[str, int]:
    """Copy the cached clinic to ``work`` and apply the day of changes there."""
    maria_create(work)
    params = {"day": AS_OF, "next": AS_OF + timedelta(days=1)}
    with maria(work) as conn, conn.cursor() as cur:
        for table in contract.TABLES:
            cur.execute(f"CREATE TABLE {table} LIKE `{source}`.{table}")
            cur.execute(f"INSERT INTO {table} SELECT * FROM `{source}`.{table}")
        before = {}
        for t in CHANGED:
            cur.execute(f"SELECT count(*) FROM {t} WHERE updated_at >= %s", (AS_OF,))
            before[t] = cur.fetchone()[0]
        for statement in MARIADB_DAY_OF_CHANGES.split(";\n"):
            if statement.strip():
                cur.execute(statement, params if "%(" in statement else None)
        after = {}
        for t in CHANGED:
            cur.execute(f"SELECT count(*) FROM {t} WHERE updated_at >= %s", (AS_OF,))
            after[t] = cur.fetchone()[0]
        cur.execute("ANALYZE TABLE " + ", ".join(contract.TABLES))
    return {t: after[t] - before[t] for t in before}


# --- FHIR Bulk Data exports (cached as files) ------------------------------------------

# When the exports were taken: after the last write of the day each covers.
FULL_EXPORT_AT = datetime.combine(AS_OF, datetime.min.time()) + timedelta(hours=1)
DAY_EXPORT_AT = FULL_EXPORT_AT + timedelta(days=1)


def ensure_fhir_export(clients: int, rebuild: bool) -> tuple[Path, dict[str, Any]]:
    """The clinic as a Bulk Data export folder under ``var/bench`` (one full export)."""
    from retention.clinic.synth.fhir_ndjson import write_export

    root = CACHE / f"fhir_{clients}"
    stamp = root / "bench_meta.json"
    config = cache_key(clients)
    if not rebuild and stamp.exists():
        meta = json.loads(stamp.read_text())
        if meta["config"] == config:
            return root, {"cached": True, "counts": meta["counts"]}
    shutil.rmtree(root, ignore_errors=True)
    frames, generate_s = generated(clients)
    started = time.perf_counter()
    write_export(frames, root / "full", FULL_EXPORT_AT)
    counts = {t: len(f) for t, f in frames.items()}
    stamp.write_text(json.dumps({"config": config, "counts": counts}))
    return root, {"cached": False, "generate_s": generate_s,
                  "write_s": round(time.perf_counter() - started, 1),
                  "counts": counts}


def fhir_work_folder(root: Path) -> Path:
    """This run's folder of exports, holding (a link to) the cached full export."""
    folder = CACHE / f"fhir_work_{RUN}"
    folder.mkdir(parents=True)
    (folder / "full").symlink_to((root / "full").resolve())
    return folder


def fhir_day_of_changes(folder: Path, work: str) -> dict[str, int]:
    """Add to ``folder`` a ``_since`` export of what the PostgreSQL day of changes (applied
    to ``work``) wrote."""
    import pandas as pd

    from retention.clinic.synth.fhir_ndjson import write_export

    changed: dict[str, pd.DataFrame] = {}
    with psycopg.connect(url_for(work)) as conn:
        def rows(query: str, table: str) -> pd.DataFrame:
            cur = conn.execute(query, (AS_OF,))
            return pd.DataFrame(cur.fetchall(), columns=[c.name for c in cur.description or []])

        for table in contract.TABLES:
            if table == "alliance_items":
                changed[table] = rows("SELECT i.* FROM alliance_items i JOIN alliance_measures m "
                                      "USING (measure_id) WHERE m.updated_at >= %s", table)
            elif table == "clients":
                # A changed episode's Patient goes with it: the export carries its case
                # manager (EpisodeOfCare.careManager from the client's row).
                changed[table] = rows("SELECT * FROM clients WHERE client_id IN (SELECT "
                                      "client_id FROM episodes WHERE updated_at >= %s)", table)
            else:
                changed[table] = rows(f"SELECT * FROM {table} WHERE updated_at >= %s", table)
    write_export(changed, folder / "day", DAY_EXPORT_AT, since=FULL_EXPORT_AT)
    return {t: len(f) for t, f in changed.items() if len(f)}


# --- a measured run (child process) ---------------------------------------------------


def measure(kind: str, source: str, store: str, models: str, as_of: date,
            extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """One nightly run (ETL then scoring) from the source at URL ``source``, timed by stage,
    with ``extra`` settings (an ``[engine]`` section, say); runs in a process of its own."""
    from sqlalchemy import select

    from retention.db.engines import store_engine
    from retention.pipelines.nightly import run_nightly
    from retention.settings import settings_from_mapping

    settings = settings_from_mapping({
        "source_url": source, "store_url": url_for(store), "models_dir": models,
        "reasons_file": str(ROOT / "config" / "reasons.toml"), "model_key_file": str(KEY_FILE),
        # The benchmark reads its clinic as the servers' admin roles; a clinic's source
        # role is not one (docs/nightly.md).
        "etl": {"allow_superuser_source": True, **(extra or {}).get("etl", {})},
        # The guard still runs (its cost is in the figures), but a tier moved by the day
        # of changes must not stop a speed measurement.
        "publish_max_change_share": 1.0,
        **{k: v for k, v in (extra or {}).items() if k != "etl"}})
    started = time.perf_counter()
    result = run_nightly(settings, as_of, full=(kind != "incremental"))
    total = time.perf_counter() - started
    assert result.etl is not None and result.score is not None
    engine = store_engine(settings.store_url)
    with engine.connect() as conn:
        details = {r.kind: json.loads(r.detail) for r in conn.execute(
            select(tables.runs.c.kind, tables.runs.c.detail)
            .where(tables.runs.c.run_id.in_([result.etl.run_id, result.score.run_id])))}
    engine.dispose()
    return {
        "kind": kind, "total_s": round(total, 2),
        "etl_s": details["etl"].get("seconds", {}), "score_s": details["score"].get("seconds", {}),
        # The job's peak memory by the end of each stage: the stage it grows in.
        "etl_peak_mib": details["etl"].get("peak_mib", {}),
        "score_peak_mib": details["score"].get("peak_mib", {}),
        "rows_read": result.etl.rows_read, "rows_changed": result.etl.rows_changed,
        "quarantined": result.etl.rows_quarantined,
        # On the Dask engine the ETL leaves the features (and their count) to scoring.
        "open_episodes": (result.score.scored if result.etl.open_episodes is None
                          else result.etl.open_episodes),
        "scored": result.score.scored,
        "peak_rss_mib": peak_rss_mib(),
        # What the score run recorded of a Dask engine (partitions, workers' peaks).
        "engine": details["score"].get("engine"),
        # The Dask workers that read a reload's ranges: each one's ranges and peak after.
        "range_workers": details["etl"].get("parts_on_workers"),
        # A reload in parts: the job's seconds waiting for ranges read and checked.
        "parts_waited_s": details["etl"].get("parts_waited_s"),
    }


def add_measure_arguments(parser: argparse.ArgumentParser) -> None:
    """The hidden arguments ``child`` starts a benchmark script with to measure one night."""
    for name in ("--measure", "--source", "--store", "--models", "--as-of"):
        parser.add_argument(name, help=argparse.SUPPRESS)


def child(kind: str, source: str, store: str, models: Path, as_of: date, *,
          script: str = __file__, more: Sequence[str] = (),
          label: str | None = None) -> dict[str, Any]:
    """``script --measure kind ...`` (and ``more`` arguments) in a process of its own, so
    its peak memory is the night's; the JSON line it prints last."""
    out = subprocess.run(
        [sys.executable, script, "--measure", kind, "--source", source, "--store", store,
         "--models", str(models), "--as-of", as_of.isoformat(), *more],
        capture_output=True, text=True, cwd=ROOT, check=False,
    )
    if out.returncode != 0:
        raise SystemExit(f"{label or kind + ' run'} failed:\n{out.stderr[-4000:]}")
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def undo_all(cleanup: Sequence[Callable[[], None]]) -> None:
    """Drop what a run made, each in turn: one failed drop must not keep the others."""
    for undo in cleanup:
        try:
            undo()
        except Exception as exc:
            print(f"cleanup: {exc}", file=sys.stderr)


def machine() -> str:
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    with admin() as conn:
        version = conn.execute("SHOW server_version").fetchone()[0]  # type: ignore[index]
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    servers = f"PostgreSQL {version}"
    if MARIADB_LEDGER.exists():
        with maria() as conn, conn.cursor() as cur:
            cur.execute("SELECT VERSION(), @@innodb_buffer_pool_size")
            maria_version, pool = cur.fetchone()
        servers += f" and MariaDB {maria_version} (buffer pool {int(pool) // 2**20} MiB)"
    return (f"{os.cpu_count()} cores ({cpu}), {mem:.0f} GiB RAM, Python "
            f"{platform.python_version()}, {servers} on the same machine")


def report(clients: int, setup: dict[str, Any], results: dict[str, list[dict[str, Any]]]) -> str:
    lines = [f"## {clients:,} clients", "", f"Machine: {machine()}", "",
             f"Source: {setup['source']['counts']} "
             f"({'cached' if setup['source'].get('cached') else 'built'}; setup: "
             + ", ".join(f"{k} {v} s" for k, v in setup["timing"].items()) + ")", ""]
    lines.append("| source | run | total s | peak RSS MiB | rows read | open episodes | "
                 "stages (s) |")
    lines.append("|---|---|---:|---:|---:|---:|---|")
    for kind, runs in results.items():
        for r in runs:
            stages = ", ".join(f"{k} {v}" for k, v in {**r["etl_s"], **{
                f"score.{k}": v for k, v in r["score_s"].items()}}.items())
            lines.append(f"| {kind} | {r['kind']} | {r['total_s']} | {r['peak_rss_mib']:,} | "
                         f"{r['rows_read']:,} | {r['open_episodes']:,} | {stages} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, default=10_000)
    parser.add_argument("--rebuild", action="store_true", help="Rebuild the cached clinic.")
    parser.add_argument("--setup-only", action="store_true", help="Build the cache and stop.")
    parser.add_argument("--sources", default="postgresql",
                        help="Source kinds to run, comma-separated: "
                             "postgresql,mariadb,fhir-ndjson (PostgreSQL's clinic and day of "
                             "changes are built in any case: the others follow them).")
    parser.add_argument("--keep", action="store_true",
                        help="Keep the store and the changed clinic for inspection.")
    add_measure_arguments(parser)
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure(args.measure, args.source, args.store, args.models,
                                 date.fromisoformat(args.as_of))))
        return

    sources = args.sources.split(",")
    unknown = sorted(set(sources) - set(SOURCE_KINDS))
    if unknown:
        parser.error(f"unknown source kind(s) {', '.join(unknown)}; "
                     f"choose from {', '.join(SOURCE_KINDS)}")
    timing: dict[str, float] = {}
    setup: dict[str, Any] = {}
    started = time.perf_counter()
    source, setup["postgresql"] = ensure_source(args.clients, args.rebuild)
    timing["clinic"] = round(time.perf_counter() - started, 1)
    print(f"setup: clinic {source}: {setup['postgresql']}", file=sys.stderr)
    if "mariadb" in sources:
        started = time.perf_counter()
        maria_source, setup["mariadb"] = ensure_mariadb_source(args.clients, args.rebuild)
        timing["mariadb_clinic"] = round(time.perf_counter() - started, 1)
        print(f"setup: MariaDB clinic {maria_source}: {setup['mariadb']}", file=sys.stderr)
    if "fhir-ndjson" in sources:
        started = time.perf_counter()
        export_root, setup["fhir-ndjson"] = ensure_fhir_export(args.clients, args.rebuild)
        timing["fhir_export"] = round(time.perf_counter() - started, 1)
        print(f"setup: FHIR export {export_root}: {setup['fhir-ndjson']}", file=sys.stderr)
    started = time.perf_counter()
    models, trained = ensure_model()
    timing["model"] = round(time.perf_counter() - started, 1)
    print(f"setup: model {models}: {trained}", file=sys.stderr)
    if args.setup_only:
        return

    work = f"retention_bench_work_{RUN}"
    started = time.perf_counter()
    create(work, template=source)
    changes = day_of_changes(work)
    timing["day_of_changes"] = round(time.perf_counter() - started, 1)
    print(f"setup: one day of changes {changes}", file=sys.stderr)
    results: dict[str, list[dict[str, Any]]] = {}
    cleanup: list[Callable[[], None]] = [lambda: drop(work)]
    try:
        measure_sources(sources, results, cleanup, timing, source, work, models,
                        maria_source if "mariadb" in sources else "",
                        export_root if "fhir-ndjson" in sources else None)
    finally:
        if not args.keep:
            undo_all(cleanup)
    print(report(args.clients, {"source": setup["postgresql"], "timing": timing}, results))
    print()
    print("```json\n" + json.dumps(results, indent=1) + "\n```")


def measure_sources(sources: list[str], results: dict[str, list[dict[str, Any]]],
                    cleanup: list[Callable[[], None]], timing: dict[str, float], source: str,
                    work: str, models: Path, maria_source: str,
                    export_root: Path | None) -> None:
    """Each source kind's nights into a store of its own; what to drop goes on ``cleanup``
    as soon as it exists, so a failed night leaves nothing behind."""
    for kind in sources:
        store = new_store(kind, timing)
        cleanup.append(lambda store=store: drop(store))  # type: ignore[misc]
        if kind == "postgresql":
            runs = [child("full", url_for(source), store, models, AS_OF)]
            vacuum(store, timing)
            runs.append(child("incremental", url_for(work), store, models, AS_OF + ONE_DAY))
            # The weekly full reload (it reconciles deletions): every row again, into a
            # store that holds them, so only what differs is written.
            runs.append(child("weekly_full", url_for(work), store, models, AS_OF + ONE_DAY))
        elif kind == "mariadb":
            maria_work = f"retention_bench_work_{RUN}"
            runs = [child("full", maria_url(maria_source), store, models, AS_OF)]
            started = time.perf_counter()
            cleanup.append(lambda name=maria_work: maria_drop(name))  # type: ignore[misc]
            maria_changes = mariadb_day_of_changes(maria_source, maria_work)
            timing["mariadb_day_of_changes"] = round(time.perf_counter() - started, 1)
            print(f"setup: MariaDB day of changes {maria_changes}", file=sys.stderr)
            vacuum(store, timing)
            runs.append(child("incremental", maria_url(maria_work), store, models,
                              AS_OF + ONE_DAY))
        else:
            assert export_root is not None
            folder = fhir_work_folder(export_root)
            cleanup.append(lambda folder=folder: shutil.rmtree(folder))  # type: ignore[misc]
            runs = [child("full", f"fhir-ndjson:{folder}", store, models, AS_OF)]
            started = time.perf_counter()
            fhir_changes = fhir_day_of_changes(folder, work)
            timing["fhir_day_export"] = round(time.perf_counter() - started, 1)
            print(f"setup: FHIR day export {fhir_changes}", file=sys.stderr)
            vacuum(store, timing)
            runs.append(child("incremental", f"fhir-ndjson:{folder}", store, models,
                              AS_OF + ONE_DAY))
        for run in runs:
            print(f"{kind} {run['kind']}: {run}", file=sys.stderr)
        results[kind] = runs


SOURCE_KINDS = ("postgresql", "mariadb", "fhir-ndjson")
ONE_DAY = timedelta(days=1)


def new_store(kind: str, timing: dict[str, float]) -> str:
    """An empty PostgreSQL store of this run for ``kind``'s nights."""
    from retention.db.engines import store_engine
    from retention.store import schema

    store = f"retention_bench_store_{RUN}_{kind.replace('-', '_')}"
    started = time.perf_counter()
    create(store)
    engine = store_engine(sa_url(store))
    schema.upgrade_engine(engine)
    engine.dispose()
    timing[f"store_{kind}"] = round(time.perf_counter() - started, 1)
    return store


def vacuum(store: str, timing: dict[str, float]) -> None:
    """The next night comes a day later, when autovacuum has long finished with the 22
    million rows the first night wrote; without this it would still be running through
    the incremental run on this 2-core machine."""
    started = time.perf_counter()
    with psycopg.connect(url_for(store), autocommit=True) as conn:
        conn.execute("VACUUM (ANALYZE)")
    timing["vacuum_store"] = round(time.perf_counter() - started, 1)


if __name__ == "__main__":
    main()
