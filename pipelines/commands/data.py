"""Commands for the clinic data: a synthetic clinic, migrations, the ETL, quality and runs."""

from __future__ import annotations

import json
from datetime import date, datetime
from pathlib import Path
from typing import Any

import click
from sqlalchemy import create_engine
from sqlalchemy.engine import make_url

from retention.clinic import contract
from retention.clinic.synth import SynthConfig, generate, write
from retention.clinic.trajectory import TAIL, TrajectoryError, fit_from_clinic, trajectory_toml
from retention.clock import Clock
from retention.db.engines import store_engine
from retention.etl import quarantine
from retention.etl.extract import SourceError
from retention.etl.load import QuarantineLimitExceeded
from retention.etl.sources import open_source
from retention.pipelines.commands.common import (
    Context,
    as_of_option,
    engine_options,
    say,
    with_engine,
)
from retention.pipelines.etl import EtlBusy, EtlResult, ranges_checker, run_etl
from retention.pipelines.runs import format_runs
from retention.settings import ConfigError, Settings
from retention.store import roles, schema
from retention.store.clinic_copy import read_clinic_copy
from retention.store.runs import list_runs


@click.command()
@click.option("--clients", "n_clients", default=600, show_default=True, help="Clients to create.")
@click.option("--clinics", "n_clinics", default=3, show_default=True)
@click.option("--end", type=click.DateTime(formats=["%Y-%m-%d"]), default=None,
              help="The synthetic clinic's today (default: today). Fix it for reproducibility.")
@click.option("--seed", default=7, show_default=True)
@click.option("--url", default=None, help="Database URL to write (default: source_url).")
@click.pass_obj
def synth(obj: Context, n_clients: int, n_clinics: int, end: datetime | None, seed: int,
          url: str | None) -> None:
    """Write a synthetic clinic database in the clinic contract."""
    result = synthesize(url or obj.settings().source_url, n_clients, n_clinics, obj.day(end),
                        seed)
    counts = ", ".join(f"{k} {v:,}" for k, v in result["counts"].items())
    say(f"synth: wrote {result['total']:,} rows ({counts}) to {result['url']}")


def synthesize(target: str, n_clients: int, n_clinics: int, end: date,
               seed: int) -> dict[str, Any]:
    """Write a synthetic clinic to ``target`` (a SQLite file is replaced)."""
    parsed = make_url(target)
    if parsed.get_backend_name() == "sqlite" and parsed.database:
        path = Path(parsed.database)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.unlink(missing_ok=True)
    say(f"synth: generating {n_clients} clients in {n_clinics} clinics up to {end} ...")
    frames = generate(SynthConfig(end=end, n_clients=n_clients, n_clinics=n_clinics, seed=seed))
    engine = create_engine(target)
    try:
        with engine.begin() as conn:
            contract.metadata.drop_all(conn)
            counts = write(conn, frames)
    finally:
        engine.dispose()
    return {"counts": counts, "total": sum(counts.values()), "url": parsed.render_as_string()}


@click.command()
@click.option("--check", is_flag=True,
              help="Only say whether the store is at the latest revision (exit 1 if not).")
@click.pass_obj
def migrate(obj: Context, check: bool) -> None:
    """Bring the store's schema to the latest migration (Alembic), as store_owner_url."""
    settings = obj.settings()
    engine = store_engine(settings.store_url)
    try:
        head = schema.head_revision()
        if check:
            with engine.connect() as conn:
                current = schema.current_revision(conn)
            click.echo(f"store at {current or 'no revision'}; latest is {head}")
            if current != head:
                raise click.exceptions.Exit(1)
            return
        try:
            # As the store's owner when store_owner_url is set (`retention db roles`).
            before, after = roles.upgrade_store(settings.store_url, settings.store_owner_url)
        except (schema.SchemaError, roles.RolesError) as exc:
            raise click.ClickException(str(exc)) from exc
    finally:
        engine.dispose()
    if before == after:
        say(f"migrate: store already at {after}")
    else:
        say(f"migrate: store upgraded from {before or 'empty'} to {after}")


@click.command()
@as_of_option
@click.option("--full", is_flag=True,
              help="Reload every row (and reconcile rows deleted at the source).")
@engine_options
@click.pass_obj
def etl(obj: Context, as_of: datetime | None, full: bool, engine: str | None,
        scheduler: str | None) -> None:
    """Extract what changed at the source, check it, and store features for open episodes.

    The source is source_url: PostgreSQL, MariaDB/MySQL or SQLite (a clinic's own schema
    mapped in [etl] or by mapping_file, e.g. config/mappings/openemr.toml), or a folder of
    FHIR Bulk Data exports ("fhir-ndjson:/path/to/exports"). README: "Pointing at a clinic".

    Engines. The default, local, computes features in this process. With --engine dask
    --scheduler tcp://host:8786 (or [engine] in the config) this command loads the copy
    only, and `retention score` computes features, scores and reasons in partitions of
    whole caseloads on the Dask workers and publishes them as one list (docs/network.md).
    Switch when the nightly run outgrows its window: the open caseload's part of every
    night (more than half of an incremental night at 100,000 and 200,000 clients)
    divides among the workers' machines. Extract, check and load stay in this process on
    either engine, so its machine must hold a full reload (the first night, then
    weekly): on a 2-core machine 103 s and 4.3 GiB at 100,000 clients, 181 s and 8.1 GiB
    at 200,000 (docs/performance.md). Before that outgrows the machine, set [etl]
    reload_part_rows = 1000000 (PostgreSQL source and store): a full reload then reads,
    checks and loads the large tables in key ranges, the same outcome in 1.2 GiB at
    200,000 clients, for 7-25% more time on a 2-core machine. On the Dask engine the
    workers read, check and write those ranges into the store (each reading with
    RETENTION_SOURCE_URL in its own environment) and this process indexes and swaps
    them in.
    """
    settings = with_engine(obj.settings(), engine, scheduler)
    on_dask = settings.engine.kind == "dask"
    result = extract(settings, obj.day(as_of), obj.clock, full=True if full else None,
                     features=not on_dask)
    done = (f"features are computed with the scores by `retention score` on the Dask "
            f"cluster at {settings.engine.scheduler}" if on_dask
            else f"stored features for {result.open_episodes:,} open episodes")
    say(f"etl: read {result.rows_read:,} rows ({'full reload' if result.full else 'incremental'})"
        f", changed {result.rows_changed:,}, quarantined {result.rows_quarantined:,}; {done}"
        f" as of {result.as_of} (run {result.run_id})")


def extract(settings: Settings, as_of: date, clock: Clock,
            full: bool | None = None, features: bool = True) -> EtlResult:
    """Run the ETL job; what stops it is a clear error, not a traceback."""
    try:
        source = open_source(settings.source_url, settings.etl, settings.instruments)
    except (FileNotFoundError, ConfigError) as exc:
        raise click.ClickException(str(exc)) from exc
    store_db = store_engine(settings.store_url)
    try:
        return run_etl(source, store_db, as_of, settings.etl, full=full, clock=clock,
                       registry=settings.instruments, features=features,
                       check_ranges=ranges_checker(settings))
    except (SourceError, QuarantineLimitExceeded, EtlBusy, ConfigError) as exc:
        # The run's row records the same error; a mapping error names its [etl.queries] entry.
        raise click.ClickException(str(exc)) from exc
    finally:
        source.dispose()
        store_db.dispose()


@click.command()
@click.option("--examples", default=3, show_default=True,
              help="Keys to show per table and rule (ids only, never values).")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.pass_obj
def quality(obj: Context, examples: int, as_json: bool) -> None:
    """Report the quarantine (rows held back from the copy, by table and rule, and codes
    nobody mapped) and, if the last ETL run failed, what it found and which limit it broke."""
    engine = store_engine(obj.settings().store_url)
    try:
        with engine.begin() as conn:
            schema.upgrade(conn)
            report = quarantine.report(conn, examples)
    finally:
        engine.dispose()
    if as_json:
        click.echo(json.dumps(report, indent=2, default=str))
        return
    for line in quarantine.format_report(report):
        click.echo(line)


@click.command()
@click.option("--limit", default=20, show_default=True)
@click.pass_obj
def runs(obj: Context, limit: int) -> None:
    """List recent runs: kind, as-of, status, rows read/changed/quarantined, model, errors."""
    engine = store_engine(obj.settings().store_url)
    try:
        with engine.begin() as conn:
            schema.upgrade(conn)
            rows = list_runs(conn, limit)
    finally:
        engine.dispose()
    for line in format_runs(rows):
        click.echo(line)


@click.command()
@click.option("--before", type=click.DateTime(formats=["%Y-%m-%d"]), required=True,
              help="Fit on ORS of episodes admitted, and ratings given, before this date.")
@click.option("--tail", default=TAIL, show_default=True,
              help="Share of the clinic's own later ratings the not-on-track band leaves below.")
@click.pass_obj
def trajectory(obj: Context, before: datetime, tail: float) -> None:
    """Fit the expected ORS course on the store's copy of the clinic.

    Prints the [instruments.ORS.trajectory] table to paste into the instrument registry
    (instruments_file); until one is there, no client is called off track. Fit on the
    clinic's own history, as the published curves were fitted on their own samples.
    """
    engine = store_engine(obj.settings().store_url)
    try:
        with engine.connect() as conn:
            data = read_clinic_copy(conn)
    finally:
        engine.dispose()
    try:
        fitted = fit_from_clinic(data, before.date(), tail=tail)
    except TrajectoryError as exc:
        raise click.ClickException(f"{exc}. Fit later, on more of the clinic's history, "
                                   "or keep the registry without a trajectory.") from exc
    click.echo(trajectory_toml(fitted), nl=False)
    say(f"trajectory: {fitted.source}; paste the table into "
        f"{obj.settings().instruments_file}")
