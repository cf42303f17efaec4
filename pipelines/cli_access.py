"""CLI commands for API keys and the audit trail."""

from __future__ import annotations

import click


def register(main: click.Group) -> None:
    """Add this area's commands to the `retention` group."""
