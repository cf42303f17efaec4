"""The store's roles on PostgreSQL: the application role runs the ETL, scoring and the API,
and cannot alter, disable triggers on, update, delete or truncate the audit trail.

Roles belong to the whole server, so this test's own are named for this run (a random
token) and dropped by the fixture that made them, after the database that used them.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, time
from pathlib import Path

import psycopg
import pytest
from click.testing import CliRunner
from psycopg import sql
from sqlalchemy import Engine, func, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ProgrammingError

from retention.api import create_app
from retention.clock import FixedClock
from retention.db.engines import store_engine
from retention.pipelines.cli import main
from retention.pipelines.etl import run_etl
from retention.pipelines.scoring import run_scoring
from retention.store import roles, tables
from tests.conftest import Scored
from tests.support.apps import clock_on, keyed_client, make_key
from tests.support.pg import PREFIX, RUN, admin_url, drop_database, libpq, new_database


@dataclass(frozen=True)
class Split:
    """A store database and the URLs of its owner and of its application role."""

    owner_url: str
    app_url: str
    config: Path


def _as(url: str, user: str) -> str:
    return make_url(url).set(username=user).render_as_string(hide_password=False)


def _cli(config: Path, *args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, ["--config", str(config), *args])
    return result.exit_code, result.stdout, result.stderr


@pytest.fixture
def split(pg_server: str, scored: Scored, tmp_path: Path) -> Iterator[Split]:
    """A new store database with an owner and an application role set up by `retention db
    roles --apply`, migrated by `retention migrate` as the owner."""
    token = f"{RUN}_{secrets.token_hex(3)}"
    owner, app = f"{PREFIX}{token}_owner", f"{PREFIX}{token}_app"
    url = new_database(pg_server, "roles")
    try:
        config = tmp_path / "retention.toml"
        config.write_text(
            f'source_url = "{scored.settings.source_url}"\n'
            f'store_url = "{_as(url, app)}"\n'
            f'store_owner_url = "{_as(url, owner)}"\n'
            f'models_dir = "{scored.settings.models_dir}"\n'
        )
        code, out, err = _cli(config, "db", "roles")  # printed for review, nothing run
        assert code == 0, err
        assert f'CREATE ROLE "{app}" LOGIN' in out and out.startswith("BEGIN;")
        code, _, err = _cli(config, "db", "roles", "--apply", pg_server)
        assert code == 0, err
        code, _, err = _cli(config, "migrate")
        assert code == 0 and "upgraded from empty" in err, err
        yield Split(_as(url, owner), _as(url, app), config)
    finally:
        drop_database(url, pg_server)
        with psycopg.connect(libpq(admin_url()), autocommit=True) as conn:
            for role in (app, owner):
                conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))


def _refused(engine: Engine, statement: str) -> str:
    """The error PostgreSQL gives the application role for ``statement`` (rolled back)."""
    with pytest.raises(ProgrammingError) as caught, engine.begin() as conn:
        conn.execute(text(statement))
    return str(caught.value.orig)


def _audit_rows(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(tables.audit_log)).scalar_one())


@pytest.mark.slow
def test_the_application_role_works_but_cannot_erase_the_audit_trail(
    scored: Scored, split: Split
) -> None:
    app_db = store_engine(split.app_url)
    settings = scored.settings.with_overrides(store_url=split.app_url)
    night = FixedClock(datetime.combine(scored.as_of, time(2, 30)))
    try:
        # The application's work, as the application role: the ETL (which rebuilds the
        # clinic copy beside the old one and swaps it in), scoring, a key, the list.
        run_etl(scored.source, app_db, scored.as_of, clock=night, full=True)
        run_etl(scored.source, app_db, scored.as_of, clock=night, full=True)  # swaps again
        run_scoring(settings, app_db, scored.model, scored.catalogue, scored.as_of, clock=night)
        client = keyed_client(
            create_app(settings, clock=clock_on(scored.as_of)), make_key(app_db, "admin")
        )
        response = client.get("/v1/risk-list?limit=5")
        assert response.status_code == 200, response.get_json()
        assert len(response.get_json()["items"]) == 5
        before = _audit_rows(app_db)
        assert before >= 1  # the list read was audited by the application role

        # The attack, and every other way to change or lose the trail.
        for statement, error in [
            ("ALTER TABLE audit_log DISABLE TRIGGER ALL", "must be owner of table audit_log"),
            ("ALTER TABLE audit_log DISABLE TRIGGER USER", "must be owner of table audit_log"),
            ("ALTER TABLE audit_log ADD COLUMN note text", "must be owner of table audit_log"),
            ("ALTER TABLE audit_log OWNER TO CURRENT_USER", "must be owner of table audit_log"),
            ("DROP TABLE audit_log", "must be owner of table audit_log"),
            ("UPDATE audit_log SET action = 'nothing'", "permission denied for table audit_log"),
            ("DELETE FROM audit_log", "permission denied for table audit_log"),
            ("TRUNCATE audit_log", "permission denied for table audit_log"),
            ("DELETE FROM api_keys", "permission denied for table api_keys"),
            ("DELETE FROM audit_denials", "permission denied for table audit_denials"),
            ("DELETE FROM alembic_version", "permission denied for table alembic_version"),
        ]:
            assert error in _refused(app_db, statement), statement
        assert _audit_rows(app_db) == before

        # A function the application role plants in the schema would run with the owner's
        # rights during a migration: `retention migrate` refuses until it is gone.
        with app_db.begin() as conn:
            conn.execute(
                text(
                    "CREATE FUNCTION public.lower(varchar) RETURNS text "
                    "LANGUAGE sql AS 'SELECT 1::text'"
                )
            )
        code, _, err = _cli(split.config, "migrate")
        assert code == 1 and "function lower(character varying) (owned by" in err, err
        with app_db.begin() as conn:
            conn.execute(text("DROP FUNCTION public.lower(varchar)"))
        code, _, err = _cli(split.config, "migrate")  # again: rights set again, no change
        assert code == 0 and "already at" in err, err
        with store_engine(split.owner_url).connect() as conn:
            owners: dict[str, str] = dict(
                conn.execute(
                    text(
                        "SELECT relname, pg_catalog.pg_get_userbyid(relowner) "
                        "FROM pg_catalog.pg_class "
                        "WHERE relnamespace = 'public'::regnamespace AND relkind = 'r'"
                    )
                ).all()
            )
        owner, app = make_url(split.owner_url).username, make_url(split.app_url).username
        assert owners["audit_log"] == owner and owners["api_keys"] == owner
        assert {t for t, o in owners.items() if o == app} == {
            t for t in owners if t.startswith(tables.COPY_PREFIX)
        }
    finally:
        app_db.dispose()


def test_role_names_are_checked_and_the_roles_must_differ() -> None:
    with pytest.raises(roles.RolesError, match="lower-case letters"):
        roles.setup_statements('owner"; DROP TABLE audit_log; --', "app", "store")
    with pytest.raises(roles.RolesError, match="must be different"):
        roles.setup_statements("svc", "svc", "store")
    with pytest.raises(roles.RolesError, match="both connect as svc"):
        roles.upgrade_store("postgresql://svc@h/db", "postgresql://svc@h/db")
    statements = roles.setup_statements("store_owner", "store_app", "retention")
    assert any("WHEN 'audit_log' THEN 'SELECT, INSERT'" in s for s in statements)


def test_db_roles_needs_names(tmp_path: Path) -> None:
    config = tmp_path / "retention.toml"
    config.write_text('source_url = "sqlite:///a.db"\nstore_url = "sqlite:///b.db"\n')
    code, _, err = _cli(config, "db", "roles")
    assert code == 2 and "--owner" in err
    code, out, _ = _cli(config, "db", "roles", "--owner", "o", "--app", "a", "--database", "d")
    assert code == 0 and 'GRANT "a" TO "o"' in out and out.endswith("COMMIT;\n")
