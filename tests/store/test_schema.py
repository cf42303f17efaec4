"""The store's schema on SQLite and PostgreSQL: migrations build it, apply once, and refuse
a store made before them."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import text

from retention.db.engines import store_engine
from retention.store import schema, tables
from tests.conftest import REPO


def test_migrations_build_exactly_the_schema_the_code_defines(store_url: str) -> None:
    engine = store_engine(store_url)
    before, after = schema.upgrade_engine(engine)
    assert (before, after) == (None, schema.head_revision())
    assert schema.upgrade_engine(engine) == (after, after)  # applying again does nothing
    with engine.connect() as conn:
        diffs = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}),
                                 tables.metadata)
    assert diffs == [], "a table or column changed without a migration (docs/migrations.md)"
    engine.dispose()


def test_two_processes_migrating_at_once_both_succeed(pg_url: str) -> None:
    engines = [store_engine(pg_url) for _ in range(2)]
    errors: list[BaseException] = []

    def upgrade(engine: object) -> None:
        try:
            schema.upgrade_engine(engine)  # type: ignore[arg-type]
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=upgrade, args=(e,)) for e in engines]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors
    with engines[0].connect() as conn:
        assert schema.current_revision(conn) == schema.head_revision()
    for e in engines:
        e.dispose()


@pytest.mark.slow
def test_retention_migrate_applies_and_checks(tmp_path: Path) -> None:
    config = tmp_path / "cfg.toml"
    config.write_text(f'source_url = "sqlite:///{tmp_path}/c.db"\n'
                      f'store_url = "sqlite:///{tmp_path}/store.db"\n')

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "retention.pipelines.cli", "--config",
                               str(config), *args], cwd=REPO, capture_output=True, text=True,
                              timeout=120, env={**os.environ, "PYTHONPATH": str(REPO)})

    assert cli("migrate", "--check").returncode == 1
    first = cli("migrate")
    assert first.returncode == 0 and "upgraded from empty" in first.stderr
    assert "already at" in cli("migrate").stderr
    check = cli("migrate", "--check")
    assert check.returncode == 0 and schema.head_revision() in check.stdout


def test_a_store_made_before_migrations_is_refused_with_the_way_out(tmp_path: Path) -> None:
    engine = store_engine(f"sqlite:///{tmp_path / 'old.db'}")
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE runs (run_id integer primary key)"))
    with pytest.raises(schema.SchemaError, match="new database"):
        schema.upgrade_engine(engine)
    engine.dispose()
