"""Partitions of whole caseloads: every caseload once, clinics kept whole when they fit,
and a partition's scoped read giving the same features and reasons as the whole list's."""

from __future__ import annotations

import pandas as pd
import pytest

from retention.engine.partitions import Caseload, open_caseloads, plan
from retention.features import build_features
from retention.scoring import ranked_rows, score_part, score_rows
from retention.store.clinic_copy import caseload_key, read_scoped_copy
from tests.conftest import Scored


def caseloads(spec: dict[str, list[int]]) -> list[Caseload]:
    return [Caseload(f"{clinic}-cm{i}", clinic, n) for clinic, sizes in spec.items()
            for i, n in enumerate(sizes)]


def test_every_caseload_lands_in_exactly_one_partition_within_the_limit() -> None:
    given = caseloads({"a": [40, 30, 20], "b": [90, 80, 70, 60], "c": [5], "d": [300]})
    parts = plan(given, limit=120)
    keys = [k for p in parts for k in p.caseloads]
    assert sorted(keys) == sorted(c.key for c in given)
    sizes = {c.key: c.episodes for c in given}
    for p in parts:
        assert p.episodes == sum(sizes[k] for k in p.caseloads)
        # Only a single caseload larger than the limit makes a larger partition.
        assert p.episodes <= 120 or len(p.caseloads) == 1
    assert [p.number for p in parts] == list(range(1, len(parts) + 1))


def test_a_clinic_that_fits_is_never_split_and_a_large_one_is_split_by_caseload() -> None:
    given = caseloads({"a": [40, 30, 20], "b": [90, 80, 70, 60], "c": [5]})
    parts = plan(given, limit=120)
    holding = {k: p.number for p in parts for k in p.caseloads}
    assert len({holding[f"a-cm{i}"] for i in range(3)}) == 1  # 90 open: one partition
    assert len({holding[f"b-cm{i}"] for i in range(4)}) > 1  # 300 open: split
    assert parts[0].clinics == ("a",)


def test_the_plan_does_not_depend_on_the_order_caseloads_come_in() -> None:
    given = caseloads({"a": [40, 30, 20], "b": [90, 80, 70, 60], "c": [5]})
    assert plan(given, 120) == plan(list(reversed(given)), 120)
    assert plan([], 120) == []


def test_open_caseloads_count_every_open_episode_once(scored: Scored) -> None:
    with scored.store.connect() as conn:
        found = open_caseloads(conn, scored.as_of)
        data = read_scoped_copy(conn, scored.as_of)
    features = build_features(data, scored.as_of)
    expected = pd.Series([caseload_key(m, c) for m, c in
                          zip(features["case_manager_id"], features["clinic_id"], strict=True)]
                         ).value_counts()
    assert {c.key: c.episodes for c in found} == expected.to_dict()
    assert any(c.key.startswith("clinic:") for c in found), "clients without a case manager"


@pytest.mark.parametrize("limit", [15, 60])
def test_partitions_give_the_whole_lists_features_scores_and_reasons(
        scored: Scored, limit: int) -> None:
    """The same functions on each partition's scoped read, ranked as one list, give the
    very list the whole scoped read gives (reasons included: caseloads are whole)."""
    settings, as_of = scored.settings, scored.as_of
    with scored.store.connect() as conn:
        whole = read_scoped_copy(conn, as_of)
        parts = plan(open_caseloads(conn, as_of), limit)
        reads = [read_scoped_copy(conn, as_of, caseloads=p.caseloads) for p in parts]
    assert len(parts) >= 2
    features = build_features(whole, as_of)
    expected = score_rows(settings, scored.model, scored.catalogue, whole, features, as_of, 1,
                          reasons_top_n=40)
    part_features = [build_features(d, as_of) for d in reads]
    pd.testing.assert_frame_equal(pd.concat(part_features).sort_index(), features)
    scored_parts = [score_part(settings, scored.model, scored.catalogue, d, f, as_of,
                               reasons_top_n=40, workers=1)
                    for d, f in zip(reads, part_features, strict=True)]
    got = ranked_rows(settings, scored_parts, as_of, 1, scored.model.version, reasons_top_n=40)
    assert got == expected
    assert sum(1 for r in got if '"points":null' not in r["reasons_json"]) > 40
