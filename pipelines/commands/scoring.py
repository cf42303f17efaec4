"""The command that scores every open episode and publishes the list."""

from __future__ import annotations

from datetime import date, datetime

import click

from retention.db.engines import store_engine
from retention.model import artifacts
from retention.model.booster import ModelError
from retention.pipelines.commands.common import Context, as_of_option, say
from retention.pipelines.scoring import ScoreResult, run_scoring
from retention.reasons.catalogue import CatalogueError, load_catalogue
from retention.scoring import ScoringError
from retention.settings import Settings


@click.command()
@as_of_option
@click.option("--model-version", default=None, help="Score with this version (default: current).")
@click.pass_obj
def score(obj: Context, as_of: datetime | None, model_version: str | None) -> None:
    """Score every open episode and publish the ranked list with reasons."""
    result = score_list(obj.settings(), obj.day(as_of), model_version)
    say(f"score: published {result.scored:,} episodes as of {result.as_of} "
        f"({result.high_risk:,} high risk) with model {result.model_version} "
        f"(run {result.run_id})")
    if result.explained:
        left = sum(result.left_out.values())
        say(f"  reasons for {result.explained:,} episodes; {left:,} famil"
            f"{'y' if left == 1 else 'ies'} left out where the client's facts point the other "
            "way from the model" + (": " + ", ".join(f"{k} {v}" for k, v in
                                                    result.left_out.items()) if left else ""))


def score_list(settings: Settings, as_of: date, version: str | None) -> ScoreResult:
    """Run the scoring job with a checked model and catalogue; errors are clear, not tracebacks."""
    try:
        model = artifacts.load(settings.models_dir, version)
        catalogue = load_catalogue(settings.reasons_file)
    except (ModelError, CatalogueError) as exc:
        raise click.ClickException(str(exc)) from exc
    store_db = store_engine(settings.store_url)
    try:
        return run_scoring(settings, store_db, model, catalogue, as_of)
    except ScoringError as exc:
        raise click.ClickException(str(exc)) from exc
    finally:
        store_db.dispose()
