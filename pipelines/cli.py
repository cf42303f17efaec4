"""The ``retention`` command: one entry point for every job.

Settings are read here, once, and passed down. Progress goes to stderr; each
command ends with a one-line summary of what it did.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

import click

from retention.config import ConfigError, Settings, load_settings

log = logging.getLogger("retention")


@dataclass
class Context:
    config_path: Path | None
    overrides: dict[str, Any]

    def settings(self) -> Settings:
        try:
            settings = load_settings(self.config_path)
        except ConfigError as exc:
            raise click.ClickException(str(exc)) from exc
        return settings.with_overrides(**self.overrides) if self.overrides else settings


def _as_of_option(func: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--as-of", "as_of", type=click.DateTime(formats=["%Y-%m-%d"]), default=None,
        help="Date to act as of (YYYY-MM-DD); data from this date on is not used. Default: today.",
    )(func)


def _day(value: Any) -> date:
    return value.date() if value is not None else date.today()


def _say(message: str) -> None:
    click.echo(message, err=True)


def _progress(label: str) -> Callable[[int, int], None]:
    def report(done: int, total: int) -> None:
        if done == total or done % max(1, total // 10) == 0:
            _say(f"  {label}: {done}/{total}")
    return report


@click.group()
@click.option("--config", "config_path", type=click.Path(path_type=Path), default=None,
              help="Config file (default: $RETENTION_CONFIG or config/retention.toml).")
@click.option("-v", "--verbose", is_flag=True, help="Log debug detail (ids and counts only).")
@click.pass_context
def main(ctx: click.Context, config_path: Path | None, verbose: bool) -> None:
    """retention: early warning of dropout from addiction treatment."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("apscheduler").setLevel(logging.WARNING if not verbose else logging.INFO)
    logging.getLogger("alembic").setLevel(logging.WARNING if not verbose else logging.INFO)
    ctx.obj = Context(config_path=config_path, overrides={})


@main.command()
@click.option("--clients", "n_clients", default=600, show_default=True, help="Clients to create.")
@click.option("--clinics", "n_clinics", default=3, show_default=True)
@click.option("--end", type=click.DateTime(formats=["%Y-%m-%d"]), default=None,
              help="The synthetic clinic's today (default: today). Fix it for reproducibility.")
@click.option("--seed", default=7, show_default=True)
@click.option("--url", default=None, help="Database URL to write (default: source_url).")
@click.pass_obj
def synth(obj: Context, n_clients: int, n_clinics: int, end: Any, seed: int,
          url: str | None) -> None:
    """Write a synthetic clinic database in the clinic contract."""
    result = _synth(obj, n_clients, n_clinics, _day(end), seed, url)
    tables = ", ".join(f"{k} {v:,}" for k, v in result["counts"].items())
    _say(f"synth: wrote {result['total']:,} rows ({tables}) to {result['url']}")


def _synth(obj: Context, n_clients: int, n_clinics: int, end: date, seed: int,
           url: str | None) -> dict[str, Any]:
    from sqlalchemy import create_engine
    from sqlalchemy.engine import make_url

    from retention import contract
    from retention.synth import SynthConfig, generate, write

    target = url or obj.settings().source_url
    parsed = make_url(target)
    if parsed.get_backend_name() == "sqlite" and parsed.database:
        path = Path(parsed.database)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.unlink(missing_ok=True)
    _say(f"synth: generating {n_clients} clients in {n_clinics} clinics up to {end} ...")
    frames = generate(SynthConfig(end=end, n_clients=n_clients, n_clinics=n_clinics, seed=seed))
    engine = create_engine(target)
    try:
        with engine.begin() as conn:
            contract.metadata.drop_all(conn)
            counts = write(conn, frames)
    finally:
        engine.dispose()
    return {"counts": counts, "total": sum(counts.values()), "url": parsed.render_as_string()}


@main.command()
@_as_of_option
@click.option("--full", is_flag=True,
              help="Reload every row (and reconcile rows deleted at the source).")
@click.pass_obj
def etl(obj: Context, as_of: Any, full: bool) -> None:
    """Extract what changed at the source, check it, and store features for open episodes."""
    result = _etl(obj.settings(), _day(as_of), full=True if full else None)
    _say(f"etl: read {result.rows_read:,} rows ({'full reload' if result.full else 'incremental'})"
         f", changed {result.rows_changed:,}, quarantined {result.rows_quarantined:,}; stored "
         f"features for {result.open_episodes:,} open episodes as of {result.as_of} "
         f"(run {result.run_id})")


def _etl(settings: Settings, as_of: date, full: bool | None = None) -> Any:
    from pipelines.etl import QuarantineLimitExceeded, run_etl
    from retention.db import source_engine, store_engine
    from retention.etl_settings import etl_settings
    from retention.extract import SourceUnavailable

    try:
        source = source_engine(settings.source_url)
    except FileNotFoundError as exc:
        raise click.ClickException(str(exc)) from exc
    store_db = store_engine(settings.store_url)
    try:
        return run_etl(source, store_db, as_of, etl_settings(settings), full=full)
    except (SourceUnavailable, QuarantineLimitExceeded, ConfigError) as exc:
        raise click.ClickException(str(exc)) from exc
    finally:
        source.dispose()
        store_db.dispose()


@main.command()
@_as_of_option
@click.option("--no-promote", is_flag=True, help="Save the version without making it current.")
@click.pass_obj
def train(obj: Context, as_of: Any, no_promote: bool) -> None:
    """Train a model on snapshots whose outcome window ends before the as-of date."""
    result = _train(obj.settings(), _day(as_of), not no_promote)
    v = result.metrics["evaluation"]
    verdict = ("promoted" if result.promoted else "gate passed, not promoted (--no-promote)"
               if result.gate.passed else "refused by the gate: " + "; ".join(result.gate.refusals))
    _say(f"train: version {result.version} from {result.rows:,} rows over "
         f"{result.snapshots} snapshots; held-out AUROC {v['auroc']:.3f}, "
         f"average precision {v['average_precision']:.3f}, Brier {v['brier']:.3f} "
         f"(base rate {v['base_rate']:.3f}, n {int(v['n']):,}); saved to {result.folder}; "
         f"{verdict}. `retention report {result.version}` writes its report")


def _train(settings: Settings, as_of: date, promote: bool) -> Any:
    from pipelines.train import run_training
    from retention.db import store_engine

    store_db = store_engine(settings.store_url)
    _say(f"train: building snapshots up to {as_of} ...")
    try:
        return run_training(settings, store_db, as_of, make_current=promote,
                            progress=_progress("snapshots"))
    except (ValueError, RuntimeError) as exc:
        raise click.ClickException(str(exc)) from exc
    finally:
        store_db.dispose()


@main.command()
@_as_of_option
@click.option("--model-version", default=None, help="Score with this version (default: current).")
@click.pass_obj
def score(obj: Context, as_of: Any, model_version: str | None) -> None:
    """Score every open episode and publish the ranked list with reasons."""
    result = _score(obj.settings(), _day(as_of), model_version)
    _say(f"score: published {result.scored:,} episodes as of {result.as_of} "
         f"({result.high_risk:,} high risk) with model {result.model_version} "
         f"(run {result.run_id})")


def _score(settings: Settings, as_of: date, version: str | None) -> Any:
    from pipelines.scoring import ScoringError, run_scoring
    from retention import model as model_io
    from retention.db import store_engine
    from retention.reasons import CatalogueError, load_catalogue

    try:
        model = model_io.load(settings.models_dir, version)
        catalogue = load_catalogue(settings.reasons_file)
    except (model_io.ModelError, CatalogueError) as exc:
        raise click.ClickException(str(exc)) from exc
    store_db = store_engine(settings.store_url)
    try:
        return run_scoring(settings, store_db, model, catalogue, as_of)
    except ScoringError as exc:
        raise click.ClickException(str(exc)) from exc
    finally:
        store_db.dispose()


@main.command()
@click.option("--limit", default=20, show_default=True)
@click.pass_obj
def runs(obj: Context, limit: int) -> None:
    """List recent runs: kind, as-of, status, rows read/changed/quarantined, model, errors."""
    from pipelines.runs import format_runs
    from retention import store
    from retention.db import store_engine

    store_db = store_engine(obj.settings().store_url)
    with store_db.begin() as conn:
        store.create_schema(conn)
        rows = store.list_runs(conn, limit)
    for line in format_runs(rows):
        click.echo(line)


@main.command()
@click.option("--dev", is_flag=True, help="Flask's development server (one process).")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True)
@click.option("--workers", default=2, show_default=True, help="gunicorn worker processes.")
@click.pass_obj
def serve(obj: Context, dev: bool, host: str, port: int, workers: int) -> None:
    """Serve the JSON API (gunicorn; --dev for Flask's server)."""
    _serve(obj.settings(), dev, host, port, workers)


def _serve(settings: Settings, dev: bool, host: str, port: int, workers: int) -> None:
    from api import create_app

    _say(f"serve: API on http://{host}:{port}/v1/risk-list (Ctrl-C to stop)")
    if dev:
        # One process: the pages may sign with a per-process secret if none is set.
        create_app(settings, WEB_DEV=True).run(host=host, port=port)
        return
    from pipelines.gunicorn_app import run_gunicorn

    run_gunicorn(settings, host, port, workers)


@main.command()
@click.option("--run-now", is_flag=True, help="Also run the nightly job once at start.")
@click.pass_obj
def scheduler(obj: Context, run_now: bool) -> None:
    """Run the scheduler process: the nightly ETL and scoring at the configured time."""
    from pipelines.scheduler import JOB_ID, build_scheduler

    settings = obj.settings()
    sched = build_scheduler(settings, str(obj.config_path) if obj.config_path else None, run_now)
    _say(f"scheduler: job {JOB_ID!r} on cron '{settings.schedule_cron}' "
         f"({settings.schedule_timezone}){'; running once now' if run_now else ''}. Ctrl-C stops.")
    try:
        sched.start()
    except (KeyboardInterrupt, SystemExit):
        _say("scheduler: stopped")


@main.command()
@click.option("--clients", "n_clients", default=2000, show_default=True)
@click.option("--seed", default=7, show_default=True)
@click.option("--port", default=8000, show_default=True)
@click.option("--no-serve", is_flag=True, help="Stop after scoring (for scripts and tests).")
@click.pass_obj
def demo(obj: Context, n_clients: int, seed: int, port: int, no_serve: bool) -> None:
    """Synthetic clinic -> ETL -> train -> score -> API on localhost, all on SQLite."""
    started = time.monotonic()
    settings = obj.settings()
    today = date.today()
    steps = 5 if not no_serve else 4
    _say(f"demo [1/{steps}] synthetic clinic")
    counts = _synth(obj, n_clients, 3, today, seed, None)
    _say(f"  {counts['total']:,} rows in {counts['url']}")
    _say(f"demo [2/{steps}] store (migrations) and ETL as of {today}")
    _fresh_store(settings)
    etl_result = _etl(settings, today, full=True)
    _say(f"  {etl_result.open_episodes:,} open episodes")
    _say(f"demo [3/{steps}] training")
    trained = _train(settings, today, True)
    v = trained.metrics["evaluation"]
    _say(f"  version {trained.version}: held-out AUROC {v['auroc']:.3f}, "
         f"average precision {v['average_precision']:.3f}, Brier {v['brier']:.3f}")
    _say(f"demo [4/{steps}] scoring")
    scored = _score(settings, today, None)
    _say(f"  {scored.scored:,} episodes ranked, {scored.high_risk:,} high risk")
    elapsed = time.monotonic() - started
    _say(f"demo: ready in {elapsed:.1f} s")
    if no_serve:
        return
    _demo_sign_in(settings, port)
    _say(f"demo [5/{steps}] serving: try http://127.0.0.1:{port}/v1/risk-list?limit=5")
    _serve(settings, False, "127.0.0.1", port, 2)


def _demo_sign_in(settings: Settings, port: int) -> None:
    """A case-manager key for the pages, and one session secret every worker inherits."""
    import os
    import secrets

    from sqlalchemy import select

    from retention import access, store
    from retention.db import store_engine

    # gunicorn's workers are forked from this process: they share this secret. The
    # demo serves plain http on localhost, so its cookie cannot be Secure-only.
    os.environ.setdefault("RETENTION_SECRET_KEY", secrets.token_urlsafe(48))
    os.environ["RETENTION_INSECURE_COOKIES"] = "1"
    engine = store_engine(settings.store_url)
    try:
        with engine.begin() as conn:
            clinic = conn.execute(select(store.scores.c.clinic_id).limit(1)).scalar_one()
            _, token = access.create_key(conn, "case_manager", [clinic],
                                         label="Demo case manager")
    finally:
        engine.dispose()
    _say(f"demo: case managers' daily list at http://127.0.0.1:{port}/web/ ; sign in "
         f"with this access key (case manager, {clinic}):\n  {token}")


def _fresh_store(settings: Settings) -> None:
    """A new clinic needs a new copy: the demo's SQLite store starts empty, then migrated."""
    from sqlalchemy.engine import make_url

    from retention import schema
    from retention.db import store_engine

    parsed = make_url(settings.store_url)
    if parsed.get_backend_name() == "sqlite" and parsed.database:
        for suffix in ("", "-wal", "-shm"):
            Path(parsed.database + suffix).unlink(missing_ok=True)
    engine = store_engine(settings.store_url)
    try:
        schema.upgrade_engine(engine)
    finally:
        engine.dispose()


def _register_areas() -> None:
    """Commands of each area live in their own module, added here."""
    from pipelines import cli_access, cli_data, cli_models

    for area in (cli_data, cli_models, cli_access):
        area.register(main)


_register_areas()

if __name__ == "__main__":
    main()
