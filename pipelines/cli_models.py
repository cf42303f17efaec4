"""CLI commands for the model registry, evaluation reports and model cards."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click


def _say(message: str) -> None:
    click.echo(message, err=True)


def register(main: click.Group) -> None:
    """Add this area's commands to the `retention` group."""
    main.add_command(models)
    main.add_command(report)


def _models_dir(ctx: click.Context) -> Path:
    return Path(ctx.find_root().obj.settings().models_dir)


@click.group()
def models() -> None:
    """The model registry: list, show, promote and roll back versions."""


@models.command("list")
@click.pass_context
def list_command(ctx: click.Context) -> None:
    """Every version, newest first: held-out AUROC, gate outcome, which is current."""
    from retention.registry import list_versions

    rows = list_versions(_models_dir(ctx))
    click.echo(f"  {'version':<22} {'trained as of':<13} {'AUROC':>6} {'Brier':>6} gate")
    for r in rows:
        gate = {True: "passed", False: "refused", None: "none"}[r["gate"]]
        auroc = f"{r['auroc']:.3f}" if r["auroc"] is not None else "n/a"
        brier = f"{r['brier']:.3f}" if r["brier"] is not None else "n/a"
        click.echo(f"{'*' if r['current'] else ' '} {r['version']:<22} "
                   f"{r['trained_as_of'] or '':<13} {auroc:>6} {brier:>6} {gate}")
    current = next((r["version"] for r in rows if r["current"]), "none")
    _say(f"models: {len(rows)} version(s); current {current}")


@models.command()
@click.argument("version", required=False)
@click.pass_context
def show(ctx: click.Context, version: str | None) -> None:
    """A version's metadata and gate decision as JSON (default: the current version)."""
    from retention import model as model_io
    from retention.registry import RegistryError
    from retention.registry import show as show_version

    try:
        meta = show_version(_models_dir(ctx), version)
    except (RegistryError, model_io.ModelError) as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(json.dumps(meta, indent=2, sort_keys=True))
    _say(f"models show: {meta['version']}{' (current)' if meta['current'] else ''}")


@models.command()
@click.argument("version")
@click.option("--force", is_flag=True, help="Promote even though the gate refused it.")
@click.option("--reason", default="manual promotion", show_default=True,
              help="Why; recorded in the history.")
@click.pass_context
def promote(ctx: click.Context, version: str, force: bool, reason: str) -> None:
    """Make VERSION current if its promotion gate passed."""
    from retention import model as model_io
    from retention.registry import RegistryError
    from retention.registry import promote as promote_version

    if force and reason == "manual promotion":
        raise click.ClickException("--force needs a --reason saying why the gate is overridden")
    try:
        previous = promote_version(_models_dir(ctx), version, reason=reason, force=force)
    except (RegistryError, model_io.ModelError) as exc:
        raise click.ClickException(str(exc)) from exc
    _say(f"models promote: {version} is current (was {previous or 'none'})")


@models.command()
@click.option("--reason", default="manual rollback", show_default=True)
@click.pass_context
def rollback(ctx: click.Context, reason: str) -> None:
    """Make the version current before the present one current again."""
    from retention import model as model_io
    from retention.registry import RegistryError
    from retention.registry import rollback as rollback_version

    try:
        version = rollback_version(_models_dir(ctx), reason=reason)
    except (RegistryError, model_io.ModelError) as exc:
        raise click.ClickException(str(exc)) from exc
    _say(f"models rollback: {version} is current again")


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
    from retention import model as model_io
    from retention.report import write_report

    extra: dict[str, Any] | None = json.loads(external.read_text()) if external else None
    try:
        paths = write_report(_models_dir(ctx), out_dir, version, extra)
    except model_io.ModelError as exc:
        raise click.ClickException(str(exc)) from exc
    folder = next(iter(paths.values())).parent
    _say(f"report: wrote {', '.join(paths)} to {folder}")
