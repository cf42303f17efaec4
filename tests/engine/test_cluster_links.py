"""The job's link to a Dask cluster of separate processes: over TLS it reaches every
worker, a client without TLS is turned away at once, and a scheduler that is not there
is a clear EngineUnavailable that says where to look (docs/network.md)."""

from __future__ import annotations

import os
import re
import socket
from collections.abc import Iterator
from datetime import date
from pathlib import Path

import pytest

from retention.engine.partitions import Partition
from retention.settings import EngineSettings, parse_engine
from tests.conftest import make_settings
from tests.support.apps import free_port
from tests.support.dask_cluster import Cluster, make_tls_files, require, start_cluster

# The engine needs Dask's distributed scheduler (retention[network]): a skip without it,
# or a failure under CI.
network = require("retention.engine.network")
comm = require("distributed.comm.core")
psutil = require("psutil")  # distributed's own dependency


@pytest.fixture(scope="module")
def tls_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """A scheduler and two workers that speak only TLS, with a CA of their own."""
    root = tmp_path_factory.mktemp("tls-cluster")
    with start_cluster(root, workers=2, tls=make_tls_files(root / "tls")) as cluster:
        yield cluster


def tls_settings(cluster: Cluster, scheduler: str | None = None) -> EngineSettings:
    assert cluster.tls is not None
    return parse_engine({"kind": "dask", "scheduler": scheduler or cluster.address,
                         "tls_ca_file": str(cluster.tls.ca_file),
                         "tls_cert_file": str(cluster.tls.cert_file),
                         "tls_key_file": str(cluster.tls.key_file)})


@pytest.mark.slow
def test_a_client_with_the_cluster_s_tls_files_runs_work_on_every_worker(
        tls_cluster: Cluster) -> None:
    assert tls_cluster.address.startswith("tls://127.0.0.1:")
    with network.connect(tls_settings(tls_cluster)) as client:
        assert client.scheduler.address == tls_cluster.address
        # Standard-library functions: a worker unpickles them without importing this
        # module (and the service) first.
        pids = client.run(os.getpid)
        workers = sorted(pids)
        assert len(workers) == 2 and all(w.startswith("tls://127.0.0.1:") for w in workers)
        # Each worker is a process of its own (not this one), with this run's HOME, where
        # the model signing key lives. (os.getenv, not os.environ.get: that bound method
        # would carry this process's environ along and read it back.)
        assert sorted(pids.values()) == sorted(tls_cluster.worker_pids)
        assert os.getpid() not in tls_cluster.worker_pids
        assert set(client.run(os.getenv, "HOME").values()) == {os.environ["HOME"]}
        # Tasks, not just out-of-band calls, travel the TLS links both ways.
        futures = [client.submit(os.getpid, workers=[w], pure=False) for w in workers]
        assert client.gather(futures) == [pids[w] for w in workers]


@pytest.mark.slow
def test_a_tls_cluster_refuses_a_client_without_tls(
        tls_cluster: Cluster, monkeypatch: pytest.MonkeyPatch) -> None:
    # The refusal is immediate (the scheduler resets a plain connection during the
    # handshake, which Dask does not retry); a short timeout keeps a regression quick.
    monkeypatch.setattr(network, "CONNECT_TIMEOUT", "5s")
    plain = tls_cluster.address.replace("tls://", "tcp://")
    with (pytest.raises(network.EngineUnavailable) as raised,
          network.connect(parse_engine({"kind": "dask", "scheduler": plain}))):
        pytest.fail("a plain TCP client reached a TLS-only scheduler")
    assert isinstance(raised.value, OSError)
    assert isinstance(raised.value.__cause__, comm.CommClosedError)
    assert f"the Dask scheduler at {plain} did not answer" in str(raised.value)
    assert "docs/network.md" in str(raised.value)


def test_a_scheduler_that_is_not_there_is_engine_unavailable_naming_it(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(network, "CONNECT_TIMEOUT", "1s")
    port = free_port()
    with socket.socket() as probe:  # nothing listens there: the connection is refused
        assert probe.connect_ex(("127.0.0.1", port)) != 0
    address = f"tcp://127.0.0.1:{port}"
    with (pytest.raises(network.EngineUnavailable) as raised,
          network.connect(parse_engine({"kind": "dask", "scheduler": address}))):
        pytest.fail(f"a client connected to {address}, where nothing listens")
    message = str(raised.value)
    assert f"the Dask scheduler at {address} did not answer" in message
    assert "Timed out trying to connect" in message
    assert "docs/network.md" in message


@pytest.mark.slow
def test_the_test_cluster_listens_on_loopback_only(tls_cluster: Cluster) -> None:
    """Nothing of a test cluster is reachable from another machine on this shared one,
    not even the health and metrics each process serves over HTTP without a dashboard
    (by default the scheduler's on every interface, port 8787)."""
    leaders = [psutil.Process(p.pid) for p in tls_cluster.processes]
    every = leaders + [child for p in leaders for child in p.children(recursive=True)]
    listening = [(proc.pid, c.laddr.ip) for proc in every
                 for c in proc.net_connections("tcp") if c.status == psutil.CONN_LISTEN]
    # The scheduler's link and HTTP, and each worker's (and its nanny's) link and HTTP.
    assert len(listening) >= 6
    assert {ip for _, ip in listening} == {"127.0.0.1"}, listening


@pytest.mark.slow
def test_a_scheduler_without_workers_is_unavailable(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The job does not wait all night for workers that never come."""
    monkeypatch.setattr(network, "WORKERS_TIMEOUT", 2.0)
    with start_cluster(tmp_path, workers=0) as cluster:
        settings = parse_engine({"kind": "dask", "scheduler": cluster.address})
        with pytest.raises(network.EngineUnavailable, match="has had no worker for 2 s"), \
                network.connect(settings):
            pass


@pytest.mark.slow
def test_a_partition_that_keeps_killing_its_workers_fails_the_run(tmp_path: Path) -> None:
    """A worker whose memory limit the engine's imports alone exceed is killed each time it
    takes the partition; Dask gives up, and the run says what to change."""
    settings = make_settings(tmp_path, store_url="postgresql+psycopg://nobody@127.0.0.1:1/none")
    with start_cluster(tmp_path, workers=1, memory_limit="200MiB") as cluster:
        settings = settings.with_overrides(engine={"kind": "dask", "scheduler": cluster.address})
        partition = Partition(1, ("cm-1",), ("clinic-a",), 40)
        said = re.escape("partition 1 (40 open episodes) kept killing")
        with pytest.raises(network.PartitionFailed, match=said):
            network.compute(settings, date(2026, 6, 1), [partition], None, None)
