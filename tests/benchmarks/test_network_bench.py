"""The network benchmark's chunks (benchmarks/network.py): ids unique across the network,
and exactly the clinics asked for, whether chunks own their clinics or share them."""

from __future__ import annotations

import pandas as pd
import pytest

from benchmarks.network import Chunk, chunk_frames, chunk_plan
from retention.clinic import contract


def clinic_ids(plan: list[Chunk]) -> set[tuple[str, int]]:
    """The network's clinics as the plan makes them: a chunk's j-th simulated clinic is
    named the same in every chunk, so (prefix, j) is its id."""
    return {(c.clinic_prefix, j) for c in plan for j in range(c.clinics)}


@pytest.mark.parametrize(("clients", "clinics", "max_chunk"), [
    (5_000, 6, 25_000),  # one chunk owns them all
    (100_000, 40, 25_000),  # 10 per chunk
    (1_000_000, 40, 25_000),  # one per chunk
    (1_000_000, 8, 25_000),  # 40 chunks share 8 clinics
    (60_000, 7, 25_000),  # 3 chunks of 20,000: 3, 2 and 2 clinics
    (600, 2, 200),
])
def test_plan_has_bounded_chunks_and_exactly_the_clinics(clients: int, clinics: int,
                                                         max_chunk: int) -> None:
    plan = chunk_plan(clients, clinics, max_chunk)
    sizes = [c.clients for c in plan]
    assert sum(sizes) == clients and max(sizes) <= max_chunk and max(sizes) - min(sizes) <= 1
    assert len({c.prefix for c in plan}) == len(plan)
    assert len(clinic_ids(plan)) == clinics


def test_plan_refuses_a_network_it_cannot_make() -> None:
    for clients, clinics in ((10, 11), (0, 1), (10, 0)):
        with pytest.raises(ValueError):
            chunk_plan(clients, clinics)


@pytest.fixture(scope="module")
def network() -> dict[str, pd.DataFrame]:
    """600 clients in 3 chunks of 200 sharing 2 clinics, as one set of frames."""
    chunks = [chunk_frames(c) for c in chunk_plan(600, 2, max_chunk=200)]
    return {t: pd.concat([c[t] for c in chunks], ignore_index=True) for t in chunks[0]}


@pytest.mark.slow
def test_chunks_make_one_network_with_unique_ids(network: dict[str, pd.DataFrame]) -> None:
    for name, table in contract.TABLES.items():
        key = [c.name for c in table.primary_key.columns]
        assert not network[name].duplicated(key).any(), name
        for column in network[name].columns:
            if column.endswith("_id"):
                assert network[name][column].dropna().str.match(r"n\d{3}\.").all(), column
    assert network["clients"]["client_id"].nunique() == 600
    assert network["clients"]["clinic_id"].nunique() == 2
    # References still resolve within the network.
    clients, episodes = set(network["clients"]["client_id"]), set(network["episodes"]["episode_id"])
    assert set(network["episodes"]["client_id"]) <= clients
    assert set(network["appointments"]["episode_id"]) <= episodes
    assert set(network["alliance_items"]["measure_id"]) <= set(
        network["alliance_measures"]["measure_id"])
    # Case managers stay in their chunk: a shared clinic has every chunk's.
    managers = network["clients"].dropna(subset=["case_manager_id"])
    assert (managers["case_manager_id"].str[:5] == managers["client_id"].str[:5]).all()
