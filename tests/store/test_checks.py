"""Table checksums: any change to a table changes its checksum."""

from __future__ import annotations

from datetime import date, datetime
from pathlib import Path

from retention.db.engines import store_engine
from retention.store import schema, tables
from retention.store.checks import table_checksums


def test_table_checksums_see_any_change(tmp_path: Path) -> None:
    engine = store_engine(f"sqlite:///{tmp_path / 'store.db'}")
    schema.upgrade_engine(engine)
    with engine.begin() as conn:
        empty = table_checksums(conn)
        conn.execute(tables.publications.insert().values(
            as_of=date(2026, 1, 1), run_id=1, model_version="v",
            published_at=datetime(2026, 6, 1, 3, 0),
            n_scored=0))
        assert table_checksums(conn)["publications"][0] == 1
        assert table_checksums(conn) != empty
    engine.dispose()
