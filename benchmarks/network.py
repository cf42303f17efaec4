"""Benchmark: a clinic network's nightly run on the Dask engine against the single process.

    .venv/bin/python benchmarks/network.py --clients 100000 --clinics 40
    .venv/bin/python benchmarks/network.py --clients 1000000 --clinics 40 --workers 2 \\
        --memory-limit 4GiB --partition-episodes 20000,10000,5000

Setup is cached on the PostgreSQL server, as in ``benchmarks/nightly.py`` (whose helpers
this imports: the ledger of databases, the model, the day of changes, the stores): a
synthetic network of ``--clients`` clients in exactly ``--clinics`` clinics with a year
of history, in ``retention_bench_net_<checkout>_<clients>_<clinics>`` (``--rebuild``
makes it again). A million clients do not fit in memory as one synthetic clinic, so the
network is generated and loaded in chunks of at most 25,000 clients (``chunk_plan``),
every id prefixed with its chunk (``n000.``) so ids are unique across the network. Each
chunk is a clinic simulation of its own; with at least as many clinics as chunks each
chunk owns its share of them, and with fewer, chunks share them round-robin (a shared
clinic has the case managers and clinicians of every chunk in it).

Then, each night in a process of its own so its peak memory is its own, into stores of
this run (dropped at the end unless ``--keep``):

- **local**: the single process (``[engine] kind = "local"``): a full first night for
  each ``--reload-part-rows`` value (``[etl] reload_part_rows``: 0 reads the network
  whole, N reads its large tables in key ranges of about N rows), then an incremental
  one after a day of changes (``nightly.day_of_changes`` on a copy) on the first's store;
- **dask**: a cluster on this machine (a ``dask scheduler`` and ``--workers`` ``dask
  worker`` processes, one thread each, ``--memory-limit``, started as the tests start
  theirs: ``tests.support.dask_processes``), its worker processes
  restarted before every night so a worker's peak is that night's: a full night for
  each ``--partition-episodes`` value, and the incremental night for the first. With
  ``--dask-reload-part-rows N`` a full night's large tables are read and checked on the
  workers in key ranges of about N rows (``retention.engine.reload``; the workers get the
  source's URL in their environment), else read whole in the job.

The job's peak is its own process's; the workers' peaks are the ones the score run
recorded (``runs.detail["engine"]``): a worker's process high-water mark, so on a night
whose ranges the workers read, the larger of a range's and a partition's. Report on
stdout (Markdown, then JSON); progress on stderr, with a one-line summary last.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import nightly as base
from retention.settings import MIN_PART_ROWS
from tests.support.dask_processes import Cluster, start_cluster

if TYPE_CHECKING:
    import pandas as pd


ROOT = base.ROOT
AS_OF = base.AS_OF
ONE_DAY = base.ONE_DAY
# Clients per chunk at most: one chunk's frames stay well under a GiB.
MAX_CHUNK = 25_000
SEED = 20261126
HISTORY_DAYS = 365
# Bumped when the chunking changes, so a cached network made the old way is rebuilt.
LAYOUT = 2  # 2: the caseload as dense as benchmarks/nightly.py's
# Seconds a cluster may take to start, or to restart its workers (on two cores shared
# with PostgreSQL and the job).
START_DEADLINE = 120.0
# A worker that serves night after night has imported the engine long before: importing
# it (about 5 s here) is start-up, not the night's work.
WARM = "retention.engine.network"


def say(message: str) -> None:
    print(f"network: {message}", file=sys.stderr, flush=True)


# --- the network, in chunks -----------------------------------------------------------


@dataclass(frozen=True)
class Chunk:
    """One chunk of the network: a clinic simulation of its own."""

    number: int  # from 0
    clients: int
    clinics: int  # simulated in this chunk
    clinic_prefix: str  # its clinics' ids: its own prefix, or the chunk's that owns them

    @property
    def prefix(self) -> str:
        return f"n{self.number:03d}."


def chunk_plan(clients: int, clinics: int, max_chunk: int = MAX_CHUNK) -> list[Chunk]:
    """Chunks of at most ``max_chunk`` clients (sizes within one of each other) that make
    exactly ``clinics`` clinics overall.

    With at least as many clinics as chunks, chunk i simulates its share of them
    (``clinics // n``, one more for the first ``clinics % n``), prefixed with its own
    prefix. With fewer, every chunk simulates one clinic and chunk i's is clinic
    ``i % clinics``: it takes that chunk's prefix, and since every such chunk's one clinic
    has the same simulated name, their ids are the same."""
    if clients < 1 or clinics < 1:
        raise ValueError("clients and clinics must be positive")
    if clinics > clients:
        raise ValueError("a network needs at least one client per clinic")
    n = -(-clients // max_chunk)
    if n > 1000:
        raise ValueError(f"{n} chunks: the n000. prefix has room for 1,000")
    sizes = [clients // n + (i < clients % n) for i in range(n)]
    if clinics >= n:
        return [Chunk(i, sizes[i], clinics // n + (i < clinics % n), f"n{i:03d}.")
                for i in range(n)]
    return [Chunk(i, sizes[i], 1, f"n{i % clinics:03d}.") for i in range(n)]


def chunk_config(chunk: Chunk, seed: int = SEED) -> Any:
    """The simulation of one chunk (a ``SynthConfig``)."""
    from retention.clinic.synth import SynthConfig

    # As dense a caseload as benchmarks/nightly.py's clinic, so the figures compare.
    return SynthConfig(end=AS_OF, n_clients=chunk.clients, n_clinics=chunk.clinics,
                       history_days=HISTORY_DAYS, seed=seed + chunk.number,
                       extra_sessions_per_week=4, episode_length_scale=3.0)


def chunk_frames(chunk: Chunk, seed: int = SEED) -> dict[str, pd.DataFrame]:
    """One chunk's contract frames, every id prefixed so it is unique in the network."""
    from retention.clinic.synth import generate

    return prefixed(generate(chunk_config(chunk, seed)), chunk)


def prefixed(frames: dict[str, pd.DataFrame], chunk: Chunk) -> dict[str, pd.DataFrame]:
    """Prefix (in place) every id column (``*_id``) and client identifier value with the
    chunk's prefix, and clinic ids with the prefix of the chunk that owns the clinic;
    missing values (a client with no case manager) stay missing."""
    for table, frame in frames.items():
        for column in frame.columns:
            if column.endswith("_id") or (table == "client_identifiers" and column == "value"):
                prefix = chunk.clinic_prefix if column == "clinic_id" else chunk.prefix
                values = frame[column]
                frame[column] = values.where(values.isna(), prefix + values.fillna("").astype(str))
    return frames


def network_key(clients: int, clinics: int) -> dict[str, Any]:
    """What a cached network was made from: rebuilt when any of it changes."""
    return {"layout": LAYOUT, "clients": clients, "clinics": clinics, "max_chunk": MAX_CHUNK,
            "seed": SEED, "history_days": HISTORY_DAYS, "end": AS_OF.isoformat()}


def copy_frames(conn: psycopg.Connection[Any], frames: Mapping[str, pd.DataFrame]) -> None:
    """COPY the frames into their tables as CSV, as ``nightly.ensure_source`` does."""
    for table, frame in frames.items():
        cols = ", ".join(frame.columns)
        with conn.cursor().copy(f"COPY {table} ({cols}) FROM STDIN WITH (FORMAT csv)") as cp:
            for start in range(0, len(frame), 500_000):
                cp.write(frame.iloc[start:start + 500_000].to_csv(index=False, header=False))


def ensure_network(clients: int, clinics: int, rebuild: bool) -> tuple[str, dict[str, Any]]:
    """The cached network database; generated and loaded chunk by chunk when missing or
    stale, so memory follows a chunk, not the network."""
    from sqlalchemy import create_engine

    from retention.clinic import contract

    name = f"retention_bench_net_{base.checkout_id()}_{clients}_{clinics}"
    config = network_key(clients, clinics)
    if not rebuild and name in base.ours() and base.exists(name):
        with psycopg.connect(base.url_for(name)) as conn:
            found = conn.execute("SELECT to_regclass('bench_meta')").fetchone()
            row = (conn.execute("SELECT config, counts FROM bench_meta").fetchone()
                   if found and found[0] else None)
        if row and json.loads(row[0]) == config:  # bench_meta is written last
            return name, {"cached": True, "counts": json.loads(row[1])}
    plan = chunk_plan(clients, clinics)
    started = time.perf_counter()
    base.create(name)
    engine = create_engine(base.sa_url(name))
    with engine.begin() as conn:
        contract.metadata.create_all(conn)
    engine.dispose()
    generate_s = load_s = 0.0
    counts: dict[str, int] = {}
    clinic_ids: set[str] = set()
    with psycopg.connect(base.url_for(name)) as conn:
        for chunk in plan:
            t0 = time.perf_counter()
            frames = chunk_frames(chunk)
            t1 = time.perf_counter()
            copy_frames(conn, frames)
            conn.commit()
            t2 = time.perf_counter()
            generate_s, load_s = generate_s + t1 - t0, load_s + t2 - t1
            for table, frame in frames.items():
                counts[table] = counts.get(table, 0) + len(frame)
            clinic_ids.update(frames["clients"]["clinic_id"].unique())
            del frames
            say(f"chunk {chunk.number + 1} of {len(plan)} ({chunk.clients:,} clients, "
                f"{chunk.clinics} clinics): generated {t1 - t0:.1f} s, loaded {t2 - t1:.1f} s")
        t0 = time.perf_counter()
        # What a clinic's database would have for any reader that asks "what changed".
        for table in ("episodes", "appointments", "alliance_measures"):
            conn.execute(f"CREATE INDEX ON {table} (updated_at)")
        conn.execute("CREATE INDEX ON appointments (episode_id)")
        counts["clinics"] = len(clinic_ids)
        conn.execute("CREATE TABLE bench_meta (config text, counts text)")
        conn.execute("INSERT INTO bench_meta VALUES (%s, %s)",
                     (json.dumps(config), json.dumps(counts)))
        conn.commit()
    with psycopg.connect(base.url_for(name), autocommit=True) as c:
        c.execute("VACUUM ANALYZE")
    load_s += time.perf_counter() - t0
    return name, {"cached": False, "chunks": len(plan), "generate_s": round(generate_s, 1),
                  "load_s": round(load_s, 1),
                  "total_s": round(time.perf_counter() - started, 1), "counts": counts}


# --- a measured night (child process) -------------------------------------------------


def night(label: str, kind: str, source: str, store: str, models: Path, as_of: date,
          engine: Mapping[str, Any], part_rows: int = 0) -> dict[str, Any]:
    """One measured night, with the row of the report it makes; ``part_rows``: a full
    reload's ``[etl] reload_part_rows``."""
    say(f"{label} {kind}: running")
    result = base.child(kind, source, store, models, as_of, script=__file__,
                        more=["--engine", json.dumps(engine), "--part-rows", str(part_rows)],
                        label=f"{engine['kind']} {kind} night")
    result["reload_part_rows"] = part_rows
    detail = result.get("engine") or {}
    workers = detail.get("worker_peak_rss_mib") or {}
    ranges = result.get("range_workers") or {}
    result.update({
        "engine_kind": engine["kind"], "partition_episodes": engine.get("partition_episodes"),
        "worker_peak_rss_mib_max": max(workers.values()) if workers else None,
        "range_worker_peak_rss_mib_max": (max(w["peak_rss_mib"] for w in ranges.values())
                                          if ranges else None),
        "partitions": detail.get("partitions"),
        "largest_partition": detail.get("largest_partition")})
    on_workers = ("" if not detail else f", worker peak {result['worker_peak_rss_mib_max']} "
                  f"MiB, {result['partitions']} partitions")
    say(f"{label} {kind}: {result['total_s']} s, job peak {result['peak_rss_mib']} MiB"
        + on_workers)
    return result


# --- the runs -------------------------------------------------------------------------


def run_local(source: str, work: str, models: Path, timing: dict[str, float],
              cleanup: list[Callable[[], None]], part_rows: list[int]) -> list[dict[str, Any]]:
    """A full night for each of ``part_rows`` (a store each), then the incremental night
    on the first one's store."""
    runs: list[dict[str, Any]] = []
    engine = {"kind": "local"}
    stores = []
    for rows in part_rows:
        store = base.new_store(f"local_{rows}", timing)
        cleanup.append(lambda store=store: base.drop(store))  # type: ignore[misc]
        stores.append(store)
        runs.append(night(f"local parts={rows}", "full", base.url_for(source), store, models,
                          AS_OF, engine, rows))
    base.vacuum(stores[0], timing)
    runs.append(night("local", "incremental", base.url_for(work), stores[0], models,
                      AS_OF + ONE_DAY, engine))
    return runs


def run_dask(cluster: Cluster, sizes: list[int], source: str, work: str, models: Path,
             timing: dict[str, float], cleanup: list[Callable[[], None]],
             part_rows: int = 0) -> list[dict[str, Any]]:
    """A full night per partition size (its reload in ranges of ``part_rows`` read and
    checked on the workers, or read whole in the job: 0); the incremental night for the
    first. Fresh worker processes before each, so a worker's peak is that night's."""
    runs = []
    for i, size in enumerate(sizes):
        store = base.new_store(f"dask_{size}", timing)
        cleanup.append(lambda store=store: base.drop(store))  # type: ignore[misc]
        engine = {"kind": "dask", "scheduler": cluster.address, "partition_episodes": size}
        nights = [("full", source, AS_OF)]
        if i == 0:
            nights.append(("incremental", work, AS_OF + ONE_DAY))
        for kind, database, as_of in nights:
            if kind == "incremental":
                base.vacuum(store, timing)
            fresh = cluster.restart_workers(warm=WARM, timeout=START_DEADLINE)
            say(f"dask P={size}: fresh workers {fresh}")
            runs.append(night(f"dask P={size}", kind, base.url_for(database), store, models,
                              as_of, engine, part_rows if kind == "full" else 0))
            cluster.check_running()
    return runs


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    return f"{value:,}" if isinstance(value, int) else str(value)


def report(args: argparse.Namespace, source: dict[str, Any], timing: dict[str, float],
           runs: list[dict[str, Any]]) -> str:
    counts = source["counts"]
    built = ("cached" if source.get("cached") else
             f"built in {source['chunks']} chunk(s): generated {source['generate_s']} s, "
             f"loaded {source['load_s']} s")
    lines = [f"## Network: {args.clients:,} clients in {args.clinics} clinics", "",
             f"Machine: {base.machine()}", "",
             f"Source: {counts} ({built}; setup: "
             + ", ".join(f"{k} {v} s" for k, v in timing.items()) + ")", "",
             f"Dask: {args.workers} workers of one thread each on this machine, memory limit "
             f"{args.memory_limit}, worker processes restarted before each night.", "",
             "| engine | P | parts of | night | total s | job peak RSS MiB | "
             "worker peak RSS MiB (max) | of it, by the ranges' end | partitions | "
             "largest partition | stages (s) | job peak MiB by each stage's end |",
             "|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---|---|"]
    for r in runs:
        lines.append(f"| {r['engine_kind']} | {_cell(r['partition_episodes'])} | "
                     f"{_cell(r.get('reload_part_rows') or None)} | {r['kind']} | "
                     f"{r['total_s']} | {_cell(r['peak_rss_mib'])} | "
                     f"{_cell(r['worker_peak_rss_mib_max'])} | "
                     f"{_cell(r['range_worker_peak_rss_mib_max'])} | {_cell(r['partitions'])} | "
                     f"{_cell(r['largest_partition'])} | {_stages(r, 's')} | "
                     f"{_stages(r, 'peak_mib')} |")
    lines += [""] + [_ranges_line(r) for r in runs if r.get("parts_waited_s") is not None]
    return "\n".join(lines)


def _ranges_line(run: Mapping[str, Any]) -> str:
    """Where a reload in parts spent its ranges' time: on the workers, and the job's wait."""
    label = f"{run['engine_kind']} {run['kind']} in parts of {run['reload_part_rows']:,} rows"
    parts_s = (run.get("etl_s") or {}).get("parts")
    waited = f"the job waited {run['parts_waited_s']} s of the parts stage's {parts_s} s"
    workers = run.get("range_workers") or {}
    if not workers:
        return f"- {label}: read and checked in the job; {waited}."
    ranges = sum(int(w["ranges"]) for w in workers.values())
    seconds = round(sum(float(w["seconds"]) for w in workers.values()), 1)
    return (f"- {label}: {ranges} ranges read and checked on {len(workers)} workers in "
            f"{seconds} worker-seconds; {waited}.")


def _stages(run: Mapping[str, Any], what: str) -> str:
    """A night's stages (the ETL run's, then the score run's) with their seconds ("s") or
    the job's peak memory by each one's end ("peak_mib")."""
    etl, score = run.get(f"etl_{what}") or {}, run.get(f"score_{what}") or {}
    return ", ".join(f"{k} {_cell(v)}" for k, v in
                     {**etl, **{f"score.{k}": v for k, v in score.items()}}.items())


def summary(args: argparse.Namespace, runs: list[dict[str, Any]]) -> str:
    parts = []
    for r in runs:
        label = "local" if r["engine_kind"] == "local" else f"dask P={r['partition_episodes']}"
        if r.get("reload_part_rows"):
            label += f" in parts of {r['reload_part_rows']:,} rows"
        worker = ("" if r["worker_peak_rss_mib_max"] is None
                  else f", workers {r['worker_peak_rss_mib_max']} MiB")
        parts.append(f"{label} {r['kind']} {r['total_s']} s "
                     f"(job {r['peak_rss_mib']} MiB{worker})")
    return f"{args.clients:,} clients in {args.clinics} clinics: " + "; ".join(parts)


def sizes_arg(text: str) -> list[int]:
    sizes = [int(s) for s in text.split(",") if s.strip()]
    if not sizes or min(sizes) < 100:
        raise argparse.ArgumentTypeError("partition sizes of at least 100, comma-separated")
    return sizes


def rows_arg(text: str) -> list[int]:
    rows = [int(s) for s in text.split(",") if s.strip()]
    if not rows or any(0 < n < MIN_PART_ROWS or n < 0 for n in rows):
        raise argparse.ArgumentTypeError(f"0 or at least {MIN_PART_ROWS:,} rows, comma-separated")
    return rows


def part_rows_arg(text: str) -> int:
    rows = rows_arg(text)
    if len(rows) != 1:
        raise argparse.ArgumentTypeError("one number of rows")
    return rows[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--clients", type=int, default=100_000)
    parser.add_argument("--clinics", type=int, default=40)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--memory-limit", default="4GiB", help="Per Dask worker.")
    parser.add_argument("--partition-episodes", type=sizes_arg, default=[20_000, 10_000, 5_000],
                        help="Partition sizes (open episodes), comma-separated: a full night "
                             "on Dask for each, the incremental night for the first.")
    parser.add_argument("--reload-part-rows", type=rows_arg, default=[0],
                        help="[etl] reload_part_rows of the local full nights, comma-separated "
                             "(0: read whole): a full night for each; the incremental night "
                             "reads its changes.")
    parser.add_argument("--dask-reload-part-rows", type=part_rows_arg, default=0,
                        help="[etl] reload_part_rows of the Dask full nights: their ranges are "
                             "read and checked on the workers (0: read whole in the job).")
    parser.add_argument("--rebuild", action="store_true", help="Rebuild the cached network.")
    parser.add_argument("--keep", action="store_true",
                        help="Keep the stores, the changed network and the Dask logs.")
    base.add_measure_arguments(parser)
    parser.add_argument("--engine", help=argparse.SUPPRESS)
    parser.add_argument("--part-rows", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:  # one night, in a process of its own (``base.child``)
        print(json.dumps(base.measure(args.measure, args.source, args.store, args.models,
                                      date.fromisoformat(args.as_of),
                                      {"engine": json.loads(args.engine),
                                       "etl": {"reload_part_rows": args.part_rows}})))
        return
    try:
        chunk_plan(args.clients, args.clinics)
    except ValueError as exc:
        parser.error(str(exc))

    timing: dict[str, float] = {}
    started = time.perf_counter()
    source, built = ensure_network(args.clients, args.clinics, args.rebuild)
    timing["network"] = round(time.perf_counter() - started, 1)
    say(f"setup: network {source}: {built}")
    started = time.perf_counter()
    models, trained = base.ensure_model()
    timing["model"] = round(time.perf_counter() - started, 1)
    say(f"setup: model {models}: {trained}")

    work = f"retention_bench_work_{base.RUN}"
    started = time.perf_counter()
    base.create(work, template=source)
    cleanup: list[Callable[[], None]] = [lambda: base.drop(work)]
    logs = base.CACHE / f"dask_{base.RUN}"
    failed = True
    runs: list[dict[str, Any]] = []
    try:
        changes = base.day_of_changes(work)
        timing["day_of_changes"] = round(time.perf_counter() - started, 1)
        say(f"setup: one day of changes {changes}")
        runs += run_local(source, work, models, timing, cleanup, args.reload_part_rows)
        started = time.perf_counter()
        # The workers read the full nights' ranges with a URL of their own environment.
        with start_cluster(logs, args.workers, args.memory_limit,
                           env={"RETENTION_SOURCE_URL": base.url_for(source)},
                           start_deadline=START_DEADLINE) as cluster:
            timing["cluster_start"] = round(time.perf_counter() - started, 1)
            say(f"dask: scheduler {cluster.address}, {args.workers} workers, logs in {logs}")
            runs += run_dask(cluster, args.partition_episodes, source, work, models, timing,
                             cleanup, args.dask_reload_part_rows)
        failed = False
    finally:
        if not args.keep:
            base.undo_all(cleanup)
            if not failed:  # a failed run's Dask logs stay for reading
                shutil.rmtree(logs, ignore_errors=True)
    print(report(args, built, timing, runs))
    print()
    print("```json\n" + json.dumps({"source": built, "timing": timing, "runs": runs,
                                    "chunk_plan": [asdict(c) for c in
                                                   chunk_plan(args.clients, args.clinics)]},
                                   indent=1) + "\n```")
    say(summary(args, runs))


if __name__ == "__main__":
    main()
