"""Commands for the store's database: the owner and application roles (PostgreSQL)."""

from __future__ import annotations

import click
from sqlalchemy import create_engine
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError

from retention.pipelines.commands.common import Context, say
from retention.store import roles


@click.group()
def db() -> None:
    """The store's database: roles that keep the application from owning the audit trail."""


@db.command("roles")
@click.option(
    "--owner",
    default=None,
    help="The owner role, which runs migrations (default: store_owner_url's user).",
)
@click.option("--app", default=None, help="The application role (default: store_url's user).")
@click.option("--database", default=None, help="The store's database (default: store_url's).")
@click.option("--schema", default="public", show_default=True)
@click.option(
    "--apply",
    "admin_url",
    default=None,
    metavar="ADMIN_URL",
    help="Run the SQL as this superuser (its database is replaced by the store's) "
    "instead of printing it.",
)
@click.pass_obj
def roles_command(
    obj: Context,
    owner: str | None,
    app: str | None,
    database: str | None,
    schema: str,
    admin_url: str | None,
) -> None:
    """The SQL that creates the owner and application roles and sets their rights.

    Printed for a superuser to review and run (`psql -f`), or run with --apply. It is
    idempotent: run it again after upgrading. Passwords are never part of it: set them
    with psql's \\password. Then migrate as the owner (`retention migrate` with
    store_owner_url), and run the API, ETL and scoring as the application role.
    """
    settings = obj.settings()
    store, owner_url = make_url(settings.store_url), settings.store_owner_url
    owner = owner or (make_url(owner_url).username if owner_url else None)
    app = app or store.username
    database = database or store.database
    if not owner or not app or not database:
        raise click.UsageError(
            "name the roles and database (--owner, --app, --database), or "
            "set store_owner_url and store_url with their users and database"
        )
    try:
        statements = roles.setup_statements(owner, app, database, schema)
    except roles.RolesError as exc:
        raise click.ClickException(str(exc)) from exc
    if admin_url is None:
        click.echo(roles.script(statements), nl=False)
        say(
            f"db roles: SQL for owner {owner} and application role {app} on {database} "
            "printed; run it as a superuser (`psql -v ON_ERROR_STOP=1 -f ...`) or use --apply"
        )
        return
    admin = make_url(admin_url).set(database=database)
    if admin.drivername == "postgresql":
        admin = admin.set(drivername="postgresql+psycopg")  # the driver the service ships
    engine = create_engine(admin)
    try:
        with engine.begin() as conn:
            roles.apply(conn, statements)
    except (SQLAlchemyError, roles.RolesError) as exc:
        raise click.ClickException(f"db roles: {getattr(exc, 'orig', None) or exc}") from exc
    finally:
        engine.dispose()
    say(
        f"db roles: owner {owner} and application role {app} set up on {database}. Set their "
        "passwords (psql: \\password ROLE), put the owner in store_owner_url and the "
        "application role in store_url, then run `retention migrate`"
    )
