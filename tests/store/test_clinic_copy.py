"""The scoped read of the clinic copy: what a nightly run reads is enough to score it."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta

import pandas as pd
import pytest

from retention.db.engines import store_engine
from retention.features import build_features
from retention.pipelines.etl import run_etl
from retention.scoring import score_rows
from retention.settings import EtlSettings
from retention.store.clinic_copy import read_clinic_copy, read_scoped_copy
from tests.conftest import Scored

DAYS = [0, -1, -45, -200]


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_the_scoped_read_gives_the_same_features_and_list_as_the_whole_copy(
    scored: Scored, kind: str, request: pytest.FixtureRequest
) -> None:
    """What the nightly run reads is enough: features, ranks, reasons and evidence equal
    those computed from every row, for as-of dates across the clinic's history."""
    if kind == "sqlite":
        engine, owned = scored.store, False
    else:
        make: Callable[[str], str] = request.getfixturevalue("pg_databases")
        engine, owned = store_engine(make("scoped")), True
        run_etl(scored.source, engine, scored.as_of, EtlSettings())
    with engine.connect() as conn:
        whole = read_clinic_copy(conn)
        for shift in DAYS:
            as_of = scored.as_of + timedelta(days=shift)
            scoped = read_scoped_copy(conn, as_of)
            assert len(scoped.appointments) < len(whole.appointments)
            features = build_features(whole, as_of)
            pd.testing.assert_frame_equal(build_features(scoped, as_of), features)
            if features.empty:
                continue
            full_rows = score_rows(scored.settings, scored.model, scored.catalogue, whole,
                                   features, as_of, run_id=1)
            scoped_rows = score_rows(scored.settings, scored.model, scored.catalogue, scoped,
                                     features, as_of, run_id=1)
            assert scoped_rows == full_rows, as_of
    if owned:
        engine.dispose()
