"""A training sample of a network: exact size, each clinic's share, the same draw again."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from sqlalchemy import Engine, select

from retention.model.sampling import stratified_clients
from retention.pipelines.train import run_training
from retention.store import tables
from retention.store.clinic_copy import copy_clients, read_clinic_copy
from tests.conftest import Scored


def network(sizes: dict[str, int]) -> pd.DataFrame:
    return pd.DataFrame([(f"{clinic}-{i:05d}", clinic) for clinic, n in sizes.items()
                         for i in range(n)], columns=["client_id", "clinic_id"])


def test_each_clinic_gives_its_share_and_the_total_is_exact() -> None:
    clients = network({"a": 5000, "b": 3000, "c": 1500, "d": 500})
    chosen = stratified_clients(clients, 1001, seed=42)
    assert chosen is not None and len(chosen) == len(set(chosen)) == 1001
    by_clinic = pd.Series([c.split("-")[0] for c in chosen]).value_counts()
    for clinic, size in {"a": 5000, "b": 3000, "c": 1500, "d": 500}.items():
        assert abs(by_clinic[clinic] - 1001 * size / 10_000) < 1


def test_the_same_seed_draws_the_same_clients_and_another_seed_others() -> None:
    clients = network({"a": 800, "b": 700})
    first = stratified_clients(clients, 300, seed=42)
    assert first == stratified_clients(clients.sample(frac=1.0, random_state=3), 300, seed=42)
    other = stratified_clients(clients, 300, seed=43)
    assert other is not None and first is not None and set(first) != set(other)


@pytest.mark.parametrize("n", [0, 1500, 4000])
def test_no_sample_when_none_is_asked_for_or_it_would_hold_everyone(n: int) -> None:
    assert stratified_clients(network({"a": 800, "b": 700}), n, seed=1) is None


def test_the_copy_of_a_sample_holds_exactly_its_clients_rows(scored: Scored) -> None:
    with scored.store.connect() as conn:
        sample = stratified_clients(copy_clients(conn), 200, seed=5)
        assert sample is not None
        data = read_clinic_copy(conn, sample)
        whole = read_clinic_copy(conn)
    assert sorted(data.clients["client_id"]) == sample
    for frame, full in ((data.episodes, whole.episodes), (data.appointments, whole.appointments),
                        (data.measures, whole.measures), (data.observations, whole.observations)):
        assert set(frame["client_id"]) <= set(sample)
        assert len(frame) == int(full["client_id"].isin(sample).sum())
    kept = whole.measures.loc[whole.measures["client_id"].isin(sample), "measure_id"]
    assert len(data.items) == int(whole.items["measure_id"].isin(kept).sum()) > 0


@pytest.mark.slow
def test_training_on_a_sample_records_it(scored: Scored,
                                         private_store: tuple[str, Engine]) -> None:
    _, store = private_store
    settings = scored.settings.with_overrides(
        store_url=private_store[0], evaluation={"training_sample_clients": 600})
    result = run_training(settings, store, scored.as_of, make_current=False)
    with store.connect() as conn:
        detail = json.loads(conn.execute(select(tables.runs.c.detail).where(
            tables.runs.c.run_id == result.run_id)).scalar_one())
    assert detail["training_sample"] == {"clients": 600, "by": "clinic", "seed": settings.seed}
