"""The command that scores every open episode and publishes the list."""

from __future__ import annotations

import getpass
from datetime import date, datetime

import click

from retention.clock import Clock
from retention.db.engines import store_engine
from retention.model import artifacts, signing
from retention.model.booster import ModelError
from retention.pipelines.commands.common import (
    Context,
    as_of_option,
    engine_options,
    say,
    with_engine,
)
from retention.pipelines.etl import EtlBusy
from retention.pipelines.scoring import ScoreResult, network_scoring, run_scoring
from retention.publish_guard import Acceptance, PublishRefused
from retention.reasons.catalogue import CatalogueError, load_catalogue
from retention.scoring import ScoringError
from retention.settings import Settings


@click.command()
@as_of_option
@click.option("--model-version", default=None, help="Score with this version (default: current).")
@click.option(
    "--accept-change",
    "reason",
    default=None,
    metavar="REASON",
    help="Publish even if the list moved beyond the publish guard's limits since "
    "the last publication; the reason, who and when are kept in the run.",
)
@engine_options
@click.pass_obj
def score(
    obj: Context, as_of: datetime | None, model_version: str | None, reason: str | None,
    engine: str | None, scheduler: str | None,
) -> None:
    """Score every open episode and publish the ranked list with reasons.

    On the dask engine (--engine dask --scheduler tcp://host:8786, or [engine] in the
    config) the features are computed here too, with the scores and reasons, in
    partitions of whole caseloads on the Dask workers (docs/network.md).
    """
    accept = None
    if reason is not None:
        if not reason.strip():
            raise click.UsageError("--accept-change needs a reason")
        accept = Acceptance(reason.strip(), operator())
    settings = with_engine(obj.settings(), engine, scheduler)
    result = score_list(settings, obj.day(as_of), model_version, accept, obj.clock)
    say(
        f"score: published {result.scored:,} episodes as of {result.as_of} "
        f"({result.high_risk:,} high risk) with model {result.model_version} "
        f"(run {result.run_id})"
    )
    guard = result.guard
    if accept is not None and guard is not None:
        if guard.exceeded:
            say(
                f"  accepted by {accept.by}: moved since the list of {guard.baseline} beyond "
                f"the publish guard's limits (recorded in run {result.run_id}):"
            )
            for move in guard.moves:
                say(f"    {move.describe()}")
        else:
            say(
                "  nothing moved beyond the publish guard's limits: there was nothing to "
                "accept (the reason is recorded all the same)"
            )
    if result.explained:
        left = sum(result.left_out.values())
        say(
            f"  reasons for {result.explained:,} episodes; {left:,} famil"
            f"{'y' if left == 1 else 'ies'} left out where the client's facts point the other "
            "way from the model"
            + (": " + ", ".join(f"{k} {v}" for k, v in result.left_out.items()) if left else "")
        )


def operator() -> str:
    """Who accepts a change: the account running the command."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no login name in this environment
        return "unknown"


def score_list(
    settings: Settings,
    as_of: date,
    version: str | None,
    accept: Acceptance | None = None,
    clock: Clock | None = None,
) -> ScoreResult:
    """Run the scoring job with a checked model and catalogue; errors are clear, not tracebacks.

    ``accept`` publishes a list the publish guard would stop, recording the reason."""
    try:
        model = artifacts.load(settings.models_dir, version, key=signing.model_key(settings))
        catalogue = load_catalogue(settings.reasons_file, settings.instruments)
    except (ModelError, CatalogueError) as exc:
        raise click.ClickException(str(exc)) from exc
    store_db = store_engine(settings.store_url)
    try:
        if settings.engine.kind == "dask":
            return network_scoring()(settings, store_db, model, catalogue, as_of, clock,
                                     accept)
        return run_scoring(settings, store_db, model, catalogue, as_of, clock=clock, accept=accept)
    except (ScoringError, PublishRefused, EtlBusy, OSError) as exc:
        # OSError: the Dask scheduler did not answer (EngineUnavailable).
        raise click.ClickException(str(exc)) from exc
    finally:
        store_db.dispose()
