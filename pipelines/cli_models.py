"""CLI commands for the model registry, evaluation reports and model cards."""

from __future__ import annotations

import click


def register(main: click.Group) -> None:
    """Add this area's commands to the `retention` group."""
