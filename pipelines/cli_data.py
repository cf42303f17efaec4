"""CLI commands for the clinic data: migrations, data quality."""

from __future__ import annotations

import click


def register(main: click.Group) -> None:
    """Add this area's commands to the `retention` group."""
