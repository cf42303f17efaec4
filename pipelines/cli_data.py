"""CLI commands for the clinic data: migrations, data quality."""

from __future__ import annotations

import json
from typing import Any

import click


def register(main: click.Group) -> None:
    """Add this area's commands to the `retention` group."""
    main.add_command(migrate)
    main.add_command(quality)


@click.command()
@click.option("--check", is_flag=True,
              help="Only say whether the store is at the latest revision (exit 1 if not).")
@click.pass_obj
def migrate(obj: Any, check: bool) -> None:
    """Bring the store's schema to the latest migration (Alembic)."""
    from retention import schema
    from retention.db import store_engine

    settings = obj.settings()
    engine = store_engine(settings.store_url)
    try:
        head = schema.head_revision()
        if check:
            with engine.connect() as conn:
                current = schema.current_revision(conn)
            click.echo(f"store at {current or 'no revision'}; latest is {head}")
            if current != head:
                raise click.exceptions.Exit(1)
            return
        try:
            before, after = schema.upgrade_engine(engine)
        except schema.SchemaError as exc:
            raise click.ClickException(str(exc)) from exc
    finally:
        engine.dispose()
    if before == after:
        click.echo(f"migrate: store already at {after}", err=True)
    else:
        click.echo(f"migrate: store upgraded from {before or 'empty'} to {after}", err=True)


@click.command()
@click.option("--examples", default=3, show_default=True,
              help="Keys to show per table and rule (ids only, never values).")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.pass_obj
def quality(obj: Any, examples: int, as_json: bool) -> None:
    """Report the quarantine: rows held back from the copy, by table and rule."""
    from retention import quarantine, store
    from retention.db import store_engine

    engine = store_engine(obj.settings().store_url)
    try:
        with engine.begin() as conn:
            store.create_schema(conn)
            report = quarantine.report(conn, examples)
    finally:
        engine.dispose()
    if as_json:
        click.echo(json.dumps(report, indent=2, default=str))
        return
    for line in quarantine.format_report(report):
        click.echo(line)
