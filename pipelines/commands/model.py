"""Commands for the model: training, the registry, evaluation reports and model cards."""

from __future__ import annotations

import json
from datetime import date, datetime
from pathlib import Path
from typing import Any

import click
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError

from retention.db.engines import store_engine
from retention.evaluation.calibration import summary
from retention.evaluation.gate import difference_text
from retention.evaluation.report import write_report
from retention.model import registry, signing
from retention.model.booster import ModelError
from retention.pipelines.commands.common import Context, as_of_option, progress, say
from retention.pipelines.train import TrainResult, run_training
from retention.settings import Settings
from retention.store.lists import latest_publication


@click.command()
@as_of_option
@click.option("--no-promote", is_flag=True, help="Save the version without making it current.")
@click.pass_obj
def train(obj: Context, as_of: datetime | None, no_promote: bool) -> None:
    """Train a model on snapshots whose outcome window ends before the as-of date."""
    result = train_model(obj.settings(), obj.day(as_of), not no_promote)
    v = result.metrics["evaluation"]
    verdict = ("promoted" if result.promoted else "gate passed, not promoted (--no-promote)"
               if result.gate.passed else "refused by the gate: " + "; ".join(result.gate.refusals))
    say(f"train: version {result.version} from {result.rows:,} rows over "
        f"{result.snapshots} snapshots; held-out AUROC {v['auroc']:.3f}, "
        f"average precision {v['average_precision']:.3f}, Brier {v['brier']:.3f} "
        f"(base rate {v['base_rate']:.3f}, n {int(v['n']):,}); saved to {result.folder}; "
        f"{verdict}. `retention report {result.version}` writes its report")
    say("  " + calibration_line(result))
    for line in comparison_lines(result):
        say("  " + line)
    if result.gate.advice:
        say("  " + result.gate.advice)


def comparison_lines(result: TrainResult) -> list[str]:
    """How the candidate compared, as the gate judged it: difference, interval, verdict."""
    return [f"{c['check'].split(' (')[0]}: {c['metric']} {c['subset']} {c['candidate']:.3f} vs "
            f"{c['label']} {c['reference']:.3f}, difference {difference_text(c['difference'])}, "
            f"{c['verdict']}{'' if c['passed'] else ' (refused)'}"
            for c in result.gate.checks
            if "difference" in c and c["candidate"] is not None and c["reference"] is not None]


def calibration_line(result: TrainResult) -> str:
    """The calibration chosen and how it holds on the evaluation slice, for people."""
    choice = result.calibration_choice
    chosen = f"{result.calibration_method}"
    if choice is not None:
        scores = ", ".join(f"{m} {v:.4f}" for m, v in choice["log_loss"].items() if v is not None)
        chosen += f" (chosen by out-of-time log loss: {scores})"
    report = result.evaluation.get("calibration")
    return f"calibration {chosen}; on the evaluation slice " + (
        summary(report) if report else "not evaluated")


def train_model(settings: Settings, as_of: date, promote: bool) -> TrainResult:
    """Run the training job with progress on stderr; what stops it is a clear error."""
    try:
        key = signing.model_key(settings, create=True)
    except ModelError as exc:
        raise click.ClickException(str(exc)) from exc
    if key.created:
        say(f"train: no model signing key was configured: created {key.source} (mode 0600, "
            f"key id {key.key_id}). Every version is signed with it and refused without it: "
            f"back it up, or set {signing.KEY_FILE_ENV} to keep it elsewhere")
    store_db = store_engine(settings.store_url)
    say(f"train: building snapshots up to {as_of} ...")
    try:
        return run_training(settings, store_db, as_of, make_current=promote,
                            progress=progress("snapshots"))
    except (ValueError, RuntimeError) as exc:
        raise click.ClickException(str(exc)) from exc
    finally:
        store_db.dispose()


def _models_dir(ctx: click.Context) -> Path:
    found: Context = ctx.find_root().obj
    return Path(found.settings().models_dir)


def _key(ctx: click.Context) -> signing.SigningKey:
    """The key that verifies (and, for registry changes, signs); never created here."""
    found: Context = ctx.find_root().obj
    try:
        return signing.model_key(found.settings())
    except ModelError as exc:
        raise click.ClickException(str(exc)) from exc


@click.group()
def models() -> None:
    """The model registry: list, show, promote and roll back versions."""


@models.command("list")
@click.pass_context
def list_command(ctx: click.Context) -> None:
    """Every version, newest first: held-out AUROC, gate outcome, signature, which is current."""
    rows = registry.list_versions(_models_dir(ctx), key=_key(ctx))
    click.echo(f"  {'version':<22} {'trained as of':<13} {'AUROC':>6} {'Brier':>6} "
               f"{'gate':<7} signature")
    for r in rows:
        gate = {True: "passed", False: "refused", None: "none"}[r["gate"]]
        auroc = f"{r['auroc']:.3f}" if r["auroc"] is not None else "n/a"
        brier = f"{r['brier']:.3f}" if r["brier"] is not None else "n/a"
        signed = "ok" if r["problem"] is None else "REFUSED"
        click.echo(f"{'*' if r['current'] else ' '} {r['version']:<22} "
                   f"{r['trained_as_of'] or '':<13} {auroc:>6} {brier:>6} {gate:<7} {signed}")
    for r in rows:
        if r["problem"] is not None:
            say(f"  {r['version']}: {r['problem']}")
    current = next((r["version"] for r in rows if r["current"]), "none")
    say(f"models: {len(rows)} version(s); current {current}")


@models.command()
@click.argument("version", required=False)
@click.pass_context
def show(ctx: click.Context, version: str | None) -> None:
    """A version's metadata and gate decision as JSON (default: the current version)."""
    try:
        meta = registry.show(_models_dir(ctx), version)
    except (registry.RegistryError, ModelError) as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(json.dumps(meta, indent=2, sort_keys=True))
    say(f"models show: {meta['version']}{' (current)' if meta['current'] else ''}")


@models.command()
@click.argument("version")
@click.option("--force", is_flag=True, help="Promote even though the gate refused it.")
@click.option("--reason", default="manual promotion", show_default=True,
              help="Why; recorded in the history.")
@click.pass_context
def promote(ctx: click.Context, version: str, force: bool, reason: str) -> None:
    """Make VERSION current if its promotion gate passed."""
    if force and reason == "manual promotion":
        raise click.ClickException("--force needs a --reason saying why the gate is overridden")
    try:
        previous = registry.promote(_models_dir(ctx), version, reason=reason, force=force,
                                    key=_key(ctx))
    except (registry.RegistryError, ModelError) as exc:
        raise click.ClickException(str(exc)) from exc
    say(f"models promote: {version} is current (was {previous or 'none'}). "
        + _until_scored(ctx, version))


@models.command()
@click.option("--reason", default="manual rollback", show_default=True)
@click.pass_context
def rollback(ctx: click.Context, reason: str) -> None:
    """Make the version current before the present one current again."""
    try:
        version = registry.rollback(_models_dir(ctx), reason=reason, key=_key(ctx))
    except (registry.RegistryError, ModelError) as exc:
        raise click.ClickException(str(exc)) from exc
    say(f"models rollback: {version} is current again. " + _until_scored(ctx, version))


NEXT_SCORING = "the next scoring run (`retention score`, or the nightly run)"


def _until_scored(ctx: click.Context, version: str) -> str:
    """What a change of the current version does to the published list: nothing until the
    list is scored again. Which model scored that list, when the store says so cheaply."""
    published = _published(ctx.find_root().obj.settings())
    if published is None:
        return (f"It takes effect at {NEXT_SCORING}: until then the published list still "
                "comes from the previous model")
    if not published:
        return f"No list is published yet: {NEXT_SCORING} scores with {version}"
    as_of, scored_by = published["as_of"], published["model_version"]
    if scored_by == version:
        return (f"The published list (as of {as_of}) was scored by {version} already; "
                f"{NEXT_SCORING} scores with it too")
    return (f"It takes effect at {NEXT_SCORING}: until then the published list (as of "
            f"{as_of}) still comes from {scored_by}, the model that scored it")


def _published(settings: Settings) -> dict[str, Any] | None:
    """The newest publication ({} when none), or None when the store cannot say quickly.

    A SQLite store that is not there is not created by asking."""
    parsed = make_url(settings.store_url)
    if parsed.get_backend_name() == "sqlite" and (
            not parsed.database or not Path(parsed.database).exists()):
        return None
    engine = store_engine(settings.store_url, statement_timeout=5, lock_timeout=2)
    try:
        with engine.connect() as conn:
            return latest_publication(conn) or {}
    except SQLAlchemyError:
        return None
    finally:
        engine.dispose()


@models.command("sign")
@click.argument("versions", nargs=-1)
@click.option("--history", "history_too", is_flag=True,
              help="Also sign history.jsonl again as it stands (first, before the versions).")
@click.option("--reason", default="", help="Why these are trusted; recorded with who signed.")
@click.pass_context
def sign_command(ctx: click.Context, versions: tuple[str, ...], history_too: bool,
                 reason: str) -> None:
    """Sign versions (or the history) deliberately: trained before signing, or another key.

    A version is signed only if it still agrees with itself (metadata hashes and the
    digest in its name); who (this account and machine) and why go into the history.
    """
    if not versions and not history_too:
        raise click.UsageError("name the versions to sign, or --history")
    if not reason.strip():
        raise click.UsageError("--reason is required: say why these are trusted")
    models_dir, key = _models_dir(ctx), _key(ctx)
    try:
        if history_too:
            count = registry.resign_history(models_dir, reason=reason, key=key)
            say(f"models sign: history.jsonl re-signed ({count} entries) with key "
                f"{key.key_id} from {key.source}")
        for version in versions:
            replaced = registry.sign(models_dir, version, reason=reason, key=key)
            was = (f" (was signed with key {replaced.get('key_id')} by "
                   f"{replaced.get('signed_by')})" if replaced else " (was unsigned)")
            say(f"models sign: {version} signed with key {key.key_id}{was}")
    except (registry.RegistryError, ModelError) as exc:
        raise click.ClickException(str(exc)) from exc


@models.command("key")
@click.option("--create", "create_path", type=click.Path(path_type=Path), default=None,
              help="Write a new random key to this file (mode 0600) and say how to use it.")
@click.pass_context
def key_command(ctx: click.Context, create_path: Path | None) -> None:
    """Which key signs and verifies model versions (never the key itself)."""
    if create_path is not None:
        if create_path.exists():
            raise click.ClickException(f"{create_path} exists; not replacing a key")
        try:
            made = signing.create_key_file(create_path)
        except (OSError, ModelError) as exc:
            raise click.ClickException(str(exc)) from exc
        say(f"models key: created {made.source} (key id {made.key_id}, mode 0600). Point "
            f"model_key_file or {signing.KEY_FILE_ENV} at it; versions signed with another "
            "key are refused until re-signed (`retention models sign`)")
        return
    key = _key(ctx)
    click.echo(f"{key.key_id} {key.source}")
    say(f"models key: key id {key.key_id} from {key.source}")


@click.command()
@click.argument("version", required=False)
@click.option("--out", "out_dir", type=click.Path(path_type=Path), default=Path("reports"),
              show_default=True, help="Directory for <version>/report.html and friends.")
@click.option("--external", type=click.Path(exists=True, path_type=Path), default=None,
              help="JSON with an external validation result to cite in the model card.")
@click.pass_context
def report(ctx: click.Context, version: str | None, out_dir: Path,
           external: Path | None) -> None:
    """Write the HTML+JSON evaluation report and the model card of a version."""
    extra: dict[str, Any] | None = json.loads(external.read_text()) if external else None
    try:
        paths = write_report(_models_dir(ctx), out_dir, version, extra, key=_key(ctx))
    except ModelError as exc:
        raise click.ClickException(str(exc)) from exc
    folder = next(iter(paths.values())).parent
    say(f"report: wrote {', '.join(paths)} to {folder}")
