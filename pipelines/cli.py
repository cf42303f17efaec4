"""The ``retention`` command: one entry point for every job.

Settings are read once, by the first command that needs them, and passed down.
Each command lives in a module of ``retention.pipelines.commands`` that is imported
only when that command runs (click's lazily loaded subcommands), so ``retention
keys list`` does not import LightGBM. Progress goes to stderr; each command ends
with a one-line summary of what it did.
"""

from __future__ import annotations

import importlib
import logging
import sys
from pathlib import Path

import click

from retention.clock import SystemClock
from retention.pipelines.commands.common import Context

# Command name -> "module:attribute" of its click command.
COMMANDS = {
    "synth": "retention.pipelines.commands.data:synth",
    "migrate": "retention.pipelines.commands.data:migrate",
    "db": "retention.pipelines.commands.db:db",
    "etl": "retention.pipelines.commands.data:etl",
    "quality": "retention.pipelines.commands.data:quality",
    "trajectory": "retention.pipelines.commands.data:trajectory",
    "runs": "retention.pipelines.commands.data:runs",
    "train": "retention.pipelines.commands.model:train",
    "models": "retention.pipelines.commands.model:models",
    "report": "retention.pipelines.commands.model:report",
    "backtest": "retention.pipelines.commands.backtest:backtest",
    "score": "retention.pipelines.commands.scoring:score",
    "serve": "retention.pipelines.commands.serve:serve",
    "scheduler": "retention.pipelines.commands.serve:scheduler",
    "demo": "retention.pipelines.commands.serve:demo",
    "keys": "retention.pipelines.commands.access:keys",
    "audit": "retention.pipelines.commands.access:audit",
    "ehr-clients": "retention.pipelines.commands.ehr_clients:ehr_clients",
}


class LazyGroup(click.Group):
    """A group whose subcommands are imported when used (as in click's documentation)."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        target = COMMANDS.get(cmd_name)
        if target is None:
            return None
        module, _, attribute = target.partition(":")
        command = getattr(importlib.import_module(module), attribute)
        if not isinstance(command, click.Command):
            raise TypeError(f"{target} is not a click command")
        return command


@click.group(cls=LazyGroup)
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
    # A test may hand in its own context (a fixed clock); a real run starts from the machine's.
    if not isinstance(ctx.obj, Context):
        ctx.obj = Context(config_path=config_path, clock=SystemClock())
    elif config_path is not None:
        ctx.obj.config_path = config_path


if __name__ == "__main__":
    main()
