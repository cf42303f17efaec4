"""Commands that keep running: the API server, the scheduler, and the demo that ends serving."""

from __future__ import annotations

import errno
import logging
import os
import secrets
import socket
import time
from dataclasses import replace
from datetime import date, datetime, timedelta
from pathlib import Path

import click
from sqlalchemy import create_engine, func, select
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError

from retention.access import consent
from retention.access.keys import Caller, create_key
from retention.api import create_app
from retention.api.ratelimit import counts_per_process
from retention.clinic.data import read_clinic
from retention.clinic.synth.consents import DEMO_RECIPIENT
from retention.clinic.trajectory import (
    TrajectoryError,
    configured_trajectory,
    fit_from_clinic,
    trajectory_toml,
)
from retention.clock import utcnow
from retention.db.engines import store_engine
from retention.db.locks import try_lock
from retention.model import signing
from retention.model.booster import ModelError
from retention.pipelines.commands.common import Context, say
from retention.pipelines.commands.data import extract, synthesize
from retention.pipelines.commands.model import calibration_line, comparison_lines, train_model
from retention.pipelines.commands.scoring import score_list
from retention.pipelines.gunicorn_app import check_workers, escape_log_lines, run_gunicorn
from retention.pipelines.scheduler import JOB_ID, build_scheduler
from retention.settings import SHIPPED_INSTRUMENTS_FILE, ConfigError, Settings
from retention.store import schema, tables


@click.command()
@click.option("--dev", is_flag=True, help="Flask's development server (one process).")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True)
@click.option("--workers", default=2, show_default=True,
              help="gunicorn worker processes (more than one needs a Redis rate-limit store).")
@click.option("--access-log", default=None, metavar="FILE",
              help="gunicorn's access log ('-' for stdout; default: none). Paths carry client ids.")
@click.pass_obj
def serve(obj: Context, dev: bool, host: str, port: int, workers: int,
          access_log: str | None) -> None:
    """Serve the JSON API (gunicorn; --dev for Flask's server)."""
    _serve(obj.settings(), dev, host, port, workers, access_log)


def _serve(settings: Settings, dev: bool, host: str, port: int, workers: int,
           access_log: str | None = None) -> None:
    if not dev:
        try:
            check_workers(settings, workers)
        except ConfigError as exc:
            raise click.ClickException(str(exc)) from exc
    say(f"serve: API on http://{host}:{port}/v1/risk-list (Ctrl-C to stop)")
    for line in _disclosure_warnings(settings):
        say(f"serve: warning: {line}")
    if dev:
        escape_log_lines(logging.getLogger())
        # One process: the pages may sign with a per-process secret if none is set.
        create_app(settings, WEB_DEV=True).run(host=host, port=port)
        return
    run_gunicorn(settings, host, port, workers, access_log)


@click.command()
@click.option("--run-now", is_flag=True, help="Also run the nightly job once at start.")
@click.option("--as-of", "as_of", type=click.DateTime(formats=["%Y-%m-%d"]), default=None,
              help="With --run-now: the date that run is for (default: the latest slot's).")
@click.pass_obj
def scheduler(obj: Context, run_now: bool, as_of: datetime | None) -> None:
    """Run the scheduler process: the nightly ETL and scoring at the configured time."""
    if as_of is not None and not run_now:
        raise click.UsageError("--as-of applies to --run-now only")
    settings = obj.settings()
    sched = build_scheduler(settings, str(obj.config_path) if obj.config_path else None, run_now,
                            obj.clock, as_of.date() if as_of else None)
    say(f"scheduler: job {JOB_ID!r} on cron '{settings.schedule_cron}' "
        f"({settings.schedule_timezone}){'; running once now' if run_now else ''}. Ctrl-C stops.")
    try:
        sched.start()
    except (KeyboardInterrupt, SystemExit):
        say("scheduler: stopped")


@click.command()
@click.option("--clients", "n_clients", default=2000, show_default=True)
@click.option("--seed", default=7, show_default=True)
@click.option("--today", "--as-of", "as_of", type=click.DateTime(formats=["%Y-%m-%d"]),
              default=None,
              help="The demo clinic's today (YYYY-MM-DD; default: today). Fix it to repeat a demo.")
@click.option("--port", default=8000, show_default=True,
              help="The port to serve on, at 127.0.0.1 (`make demo PORT=8123`).")
@click.option("--no-serve", is_flag=True, help="Stop after scoring (for scripts and tests).")
@click.pass_obj
def demo(obj: Context, n_clients: int, seed: int, as_of: datetime | None, port: int,
         no_serve: bool) -> None:
    """Synthetic clinic -> ETL -> train -> score -> API on localhost, all on SQLite."""
    settings = obj.settings()
    folder = _demo_folder(settings)
    if not no_serve:
        # Before anything in var/ changes: a second demo would otherwise rebuild the store
        # the first one is serving, and only then find the port taken.
        check_port_free("127.0.0.1", port, folder)
    # Held from the first step to the last request served: a second demo started while
    # this one builds (nothing listens on the port yet) is refused here too.
    engine = store_engine(settings.store_url)
    try:
        with try_lock(engine, DEMO_LOCK) as alone:
            if not alone:
                raise click.ClickException(
                    f"another demo is building or serving from {folder}: stop it first "
                    f"(Ctrl-C where it runs). Nothing in {folder} was changed")
            _demo(obj, settings, n_clients, seed, as_of, port, no_serve)
    finally:
        engine.dispose()


DEMO_LOCK = "demo"


def _demo(obj: Context, settings: Settings, n_clients: int, seed: int,
          as_of: datetime | None, port: int, no_serve: bool) -> None:
    started = time.monotonic()
    settings = _demo_key(settings)
    today = obj.day(as_of)
    steps = 5 if not no_serve else 4
    say(f"demo [1/{steps}] synthetic clinic")
    counts = synthesize(settings.source_url, n_clients, 3, today, seed)
    say(f"  {counts['total']:,} rows in {counts['url']}")
    settings = _demo_trajectory(settings, today)
    say(f"demo [2/{steps}] store (migrations) and ETL as of {today}")
    _fresh_store(settings)
    etl_result = extract(settings, today, obj.clock, full=True)
    say(f"  {etl_result.open_episodes:,} open episodes")
    say(f"demo [3/{steps}] training")
    trained = train_model(settings, today, True)
    v = trained.metrics["evaluation"]
    say(f"  version {trained.version}: held-out AUROC {v['auroc']:.3f}, "
        f"average precision {v['average_precision']:.3f}, Brier {v['brier']:.3f}")
    say("  " + calibration_line(trained))
    for line in comparison_lines(trained):
        say("  " + line)
    if not trained.promoted:
        raise click.ClickException(
            "the demo's model was refused by the promotion gate: "
            + "; ".join(trained.gate.refusals)
            + (f". {trained.gate.advice}" if trained.gate.advice else "")
            + " (the default --clients 2000 gives the gate enough evidence)")
    say(f"demo [4/{steps}] scoring")
    scored = score_list(settings, today, None)
    say(f"  {scored.scored:,} episodes ranked, {scored.high_risk:,} high risk")
    say(f"demo: ready in {time.monotonic() - started:.1f} s")
    if no_serve:
        return
    token = _demo_sign_in(settings, port)
    _demo_ehr(settings, port)
    say(f"demo [5/{steps}] serving; try the list as the case manager:\n  "
        + risk_list_curl(port, token))
    # No Redis in the demo: one worker, so the per-process rate limit is the limit.
    _serve(settings, False, "127.0.0.1", port,
           1 if counts_per_process(settings.api_rate_limit_storage) else 2)


def _disclosure_warnings(settings: Settings) -> list[str]:
    """Integrations that would be given nothing, said at start rather than found later."""
    engine = store_engine(settings.store_url)
    try:
        with engine.connect() as conn:
            return consent.warnings(conn, utcnow())
    except SQLAlchemyError as exc:
        return [f"consents could not be read ({type(exc).__name__}); run `retention "
                "migrate` and the ETL first"]
    finally:
        engine.dispose()


def _demo_key(settings: Settings) -> Settings:
    """Settings whose model signing key is the demo's own, beside its store (mode 0600).

    Model versions are signed and refused without their key; a demo must run without
    one configured, and must not leave a key in the account's home that a real
    installation would then pick up. A configured key is used as it is.
    """
    parsed = make_url(settings.store_url)
    if settings.model_key or settings.model_key_file or parsed.get_backend_name() != "sqlite" \
            or not parsed.database:
        return settings
    path = Path(parsed.database).resolve().parent / "demo-model-signing.key"
    try:
        key = signing.create_key_file(path) if not path.exists() else signing.read_key_file(path)
    except (OSError, ModelError) as exc:
        raise click.ClickException(str(exc)) from exc
    say(f"demo: model versions are signed with the demo's key {path} (key id {key.key_id}, "
        f"{'created, ' if key.created else ''}mode 0600); for other commands on this demo, "
        f"set {signing.KEY_FILE_ENV}={path}")
    return replace(settings, model_key_file=path)


# The demo fits its expected ORS course on the synthetic clinic's ratings before this many
# days ago, as a clinic fits one on its own history (`retention trajectory`).
DEMO_FIT_DAYS = 180


def _demo_trajectory(settings: Settings, today: date) -> Settings:
    """Settings whose instrument registry holds an expected ORS course fitted on the demo's
    synthetic clinic, beside its store.

    The shipped registry has none: the published curves' coefficients are not public, so
    each clinic fits its own. A configured registry, or one with a course, is used as it is.
    """
    parsed = make_url(settings.store_url)
    if settings.instruments_file != SHIPPED_INSTRUMENTS_FILE or parsed.get_backend_name() \
            != "sqlite" or not parsed.database or configured_trajectory(settings.instruments):
        return settings
    engine = create_engine(settings.source_url)
    try:
        with engine.connect() as conn:
            data = read_clinic(conn)
    finally:
        engine.dispose()
    before = today - timedelta(days=DEMO_FIT_DAYS)
    try:
        fitted = fit_from_clinic(data, before)
    except TrajectoryError as exc:
        say(f"  no expected ORS course for the demo ({exc}): nobody is called off track")
        return settings
    path = Path(parsed.database).resolve().parent / "demo-instruments.toml"
    path.write_text(SHIPPED_INSTRUMENTS_FILE.read_text() + "\n# Fitted by `retention demo` on "
                    f"the synthetic clinic's ORS before {before}.\n" + trajectory_toml(fitted))
    say(f"  expected ORS course fitted on the synthetic clinic's ratings before {before}: "
        f"{path}")
    return settings.with_overrides(instruments_file=path)


def check_port_free(host: str, port: int, folder: str = "var/") -> None:
    """Refuse a port the server could not listen on, before the demo changes ``folder``.

    Bound as the server binds it (gunicorn and Flask set SO_REUSEADDR): a port something
    listens on is refused, one whose connections a demo just stopped left in TIME_WAIT is
    not (without SO_REUSEADDR, Linux may refuse that for a minute, though the server starts).
    """
    other = port + 1 if port < 65535 else 8123
    probe = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind((host, port))
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise click.ClickException(
                f"port {port} is in use, probably by another demo or service: stop it, or "
                f"choose another port with `make demo PORT={other}` or `retention demo "
                f"--port {other}`. Nothing in {folder} was changed") from exc
        raise click.ClickException(
            f"cannot listen on {host}:{port} ({exc.strerror or exc}): choose another port "
            f"with `make demo PORT={other}` or `retention demo --port {other}`. Nothing in "
            f"{folder} was changed") from exc
    finally:
        probe.close()


def _demo_folder(settings: Settings) -> str:
    """The folder of the demo's store as a person ran it ("var/" by the shipped config)."""
    database = make_url(settings.store_url).database
    if not database:
        return "the demo's store"
    folder, here = Path(database).resolve().parent, Path.cwd()
    return f"{folder.relative_to(here) if folder.is_relative_to(here) else folder}/"


def risk_list_curl(port: int, token: str) -> str:
    """The command line that reads the first page of the list with ``token``."""
    return (f"curl -H 'Authorization: Bearer {token}' "
            f"'http://127.0.0.1:{port}/v1/risk-list?limit=5'")


def _demo_sign_in(settings: Settings, port: int) -> str:
    """Keys for the pages and the API: a case manager's (their caseload, returned) and a
    clinic lead's (the whole clinic); and one session secret every worker inherits."""
    # gunicorn's workers are forked from this process: they share this secret. The
    # demo serves plain http on localhost, so its cookie cannot be Secure-only.
    os.environ.setdefault("RETENTION_SECRET_KEY", secrets.token_urlsafe(48))
    os.environ["RETENTION_INSECURE_COOKIES"] = "1"
    s = tables.scores
    engine = store_engine(settings.store_url)
    try:
        with engine.begin() as conn:
            # The largest caseload on the newest list: a morning with calls to make.
            clinic, case_manager = conn.execute(
                select(s.c.clinic_id, s.c.case_manager_id)
                .where(s.c.as_of == select(func.max(s.c.as_of)).scalar_subquery(),
                       s.c.case_manager_id.is_not(None))
                .group_by(s.c.clinic_id, s.c.case_manager_id)
                .order_by(func.count().desc(), s.c.clinic_id, s.c.case_manager_id).limit(1)
            ).one()
            _, token = create_key(conn, "case_manager", [clinic], case_manager_id=case_manager,
                                  label=f"Demo case manager ({case_manager})")
            _, lead = create_key(conn, "case_manager", [clinic], label="Demo clinic lead")
    finally:
        engine.dispose()
    say(f"demo: today's calls at http://127.0.0.1:{port}/web/ ; sign in with an access key:\n"
        f"  case manager {case_manager} (their caseload): {token}\n"
        f"  clinic lead ({clinic}, every caseload):    {lead}")
    return token


def _demo_ehr(settings: Settings, port: int) -> None:
    """An EHR's key (recipient demo-ehr) and a FHIR search by MRN it may make: the
    highest-risk client of its clinic whose consent covers it."""
    ids = tables.copies["client_identifiers"]
    engine = store_engine(settings.store_url)
    try:
        with engine.begin() as conn:
            clinic = conn.execute(select(tables.scores.c.clinic_id).limit(1)).scalar_one()
            _, token = create_key(conn, "ehr", [clinic], recipient=DEMO_RECIPIENT,
                                  label="Demo EHR")
            caller = Caller("demo", "ehr", (clinic,), recipient=DEMO_RECIPIENT)
            policy = consent.Policy.at_utc(settings.disclosure_purpose, utcnow(),
                                           settings.clinic_timezone, settings.recipient_classes)
            ranked = conn.execute(select(tables.scores.c.client_id).where(
                tables.scores.c.clinic_id == clinic).order_by(
                tables.scores.c.as_of.desc(), tables.scores.c.rank).limit(200)).scalars()
            verdicts = consent.check(conn, caller, list(ranked), policy)
            first = next((c for c, v in verdicts.items() if v.allowed), None)
            mrn = conn.execute(select(ids.c.system, ids.c.value).where(
                ids.c.client_id == first).limit(1)).first() if first else None
    finally:
        engine.dispose()
    search = (f"patient.identifier={mrn.system}|{mrn.value}" if mrn is not None
              else "patient=<client id>")
    say(f"demo: an EHR acting as {DEMO_RECIPIENT!r} (42 CFR Part 2: it sees only consented "
        f"clients) can try:\n  curl -H 'Authorization: Bearer {token}' "
        f"'http://127.0.0.1:{port}/fhir/RiskAssessment?{search}'")


def _fresh_store(settings: Settings) -> None:
    """A new clinic needs a new copy: the demo's SQLite store starts empty, then migrated."""
    parsed = make_url(settings.store_url)
    if parsed.get_backend_name() == "sqlite" and parsed.database:
        for suffix in ("", "-wal", "-shm"):
            Path(parsed.database + suffix).unlink(missing_ok=True)
    engine = store_engine(settings.store_url)
    try:
        schema.upgrade_engine(engine)
    finally:
        engine.dispose()
