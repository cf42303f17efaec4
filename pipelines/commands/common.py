"""What every command shares: the context (settings and clock) and how it talks to people."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import date, datetime
from pathlib import Path
from typing import Any

import click

from retention.clock import Clock
from retention.settings import ENGINE_KINDS, ConfigError, Settings, load_settings


@dataclass
class Context:
    """The command line's context: where the settings come from, and what day it is."""

    config_path: Path | None
    clock: Clock
    _settings: Settings | None = field(default=None, repr=False)

    def settings(self) -> Settings:
        """The settings, read once; a bad config is a clear error, not a traceback."""
        if self._settings is None:
            try:
                self._settings = load_settings(self.config_path)
            except ConfigError as exc:
                raise click.ClickException(str(exc)) from exc
        return self._settings

    def day(self, value: datetime | None) -> date:
        """The ``--as-of`` date given, or today by the clock."""
        return value.date() if value is not None else self.clock.today()


def as_of_option(func: Callable[..., Any]) -> Callable[..., Any]:
    """``--as-of YYYY-MM-DD``, the date a command acts as of."""
    return click.option(
        "--as-of", "as_of", type=click.DateTime(formats=["%Y-%m-%d"]), default=None,
        help="Date to act as of (YYYY-MM-DD); data from this date on is not used. Default: today.",
    )(func)


def say(message: str) -> None:
    """Progress and summaries go to stderr; stdout is for what a script reads."""
    click.echo(message, err=True)


def progress(label: str) -> Callable[[int, int], None]:
    """A progress callback that reports every tenth of the way."""
    def report(done: int, total: int) -> None:
        if done == total or done % max(1, total // 10) == 0:
            say(f"  {label}: {done}/{total}")
    return report


def engine_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """``--engine`` and ``--scheduler``: the ``[engine]`` settings for one command."""
    func = click.option(
        "--scheduler", default=None, metavar="ADDRESS",
        help="The Dask scheduler, tcp://host:8786 (tls://host:8786 with the [engine] TLS "
        "files); implies --engine dask.")(func)
    return click.option(
        "--engine", type=click.Choice(ENGINE_KINDS), default=None,
        help="Where features, scores and reasons are computed: 'local', in this process, "
        "or 'dask', in partitions on a Dask cluster, for a network whose nightly run "
        "outgrows one process (docs/network.md). Default: [engine] kind in the config.")(func)


def with_engine(settings: Settings, engine: str | None, scheduler: str | None) -> Settings:
    """``settings`` with ``--engine`` and ``--scheduler`` applied; a clear error if bad."""
    if engine is None and scheduler is None:
        return settings
    values = {**asdict(settings.engine), "kind": engine or "dask"}
    if scheduler is not None:
        values["scheduler"] = scheduler
    try:
        return settings.with_overrides(engine=values)
    except ConfigError as exc:
        raise click.UsageError(str(exc)) from exc
