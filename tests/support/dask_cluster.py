"""A real Dask cluster for tests: ``tests.support.dask_processes`` under pytest.

- ``start_cluster(tmp_path, workers=2, memory_limit="2GiB", tls=None, env=None)``: a
  cluster of the caller's own (``dask_processes.start_cluster``); one that does not start
  fails the test with the tails of its logs, and without Dask's distributed scheduler the
  test is skipped (with ``CI`` set, failed).
- ``make_tls_files``, ``Cluster``, ``TlsFiles``: as in ``dask_processes``.
- ``dask_cluster`` (module fixture): a plain TCP cluster of two workers, 2 GiB each.
- ``require(module)``, ``require_distributed()``: a module that needs Dask's distributed
  scheduler (an optional extra, ``retention[network]``), or a skip; with ``CI`` set its
  absence fails the run.

Nothing here is registered on import: list this module in ``pytest_plugins`` for the
fixture, or import the helpers.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from types import ModuleType

import pytest

from tests.support.dask_processes import (
    Cluster,
    ClusterFailed,
    TlsFiles,
    make_tls_files,
)
from tests.support.dask_processes import start_cluster as start_processes

__all__ = ["Cluster", "TlsFiles", "make_tls_files", "require", "require_distributed",
           "start_cluster"]


def _unavailable(message: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(message + " (CI requires it)", pytrace=False)
    pytest.skip(message, allow_module_level=True)


def require(module: str) -> ModuleType:
    """``module``, which needs Dask's distributed scheduler: a skip without it, or (CI) a
    failure. Test modules call it at import time, so they collect without the extra."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        _unavailable(f"{module} needs Dask's distributed scheduler "
                     f"(pip install 'retention[network]'): {exc}")
        raise  # not reached: _unavailable raises


def require_distributed() -> ModuleType:
    """The ``distributed`` package, or a skip (with ``CI`` set, a failure)."""
    return require("distributed")


def start_cluster(tmp_path: Path, workers: int = 2, memory_limit: str = "2GiB",
                  tls: TlsFiles | None = None,
                  env: Mapping[str, str] | None = None) -> Cluster:
    """``dask_processes.start_cluster``, a failure to start failing the test (with the
    logs' tails, not a traceback through the helper)."""
    require_distributed()
    try:
        return start_processes(tmp_path, workers, memory_limit, tls, env)
    except ClusterFailed as exc:
        pytest.fail(str(exc), pytrace=False)


@pytest.fixture(scope="module")
def dask_cluster(tmp_path_factory: pytest.TempPathFactory,
                 model_key_home: Path) -> Iterator[Cluster]:
    """A plain TCP cluster of two workers (2 GiB, one thread each), shared by a module's
    tests and stopped after them (idle, it still takes CPU and 0.7 GiB from the tests
    after it); tests that stop, fill or reconfigure workers start their own with
    ``start_cluster``. It starts after the session's ``HOME`` (``model_key_home``), which
    its workers inherit."""
    with start_cluster(tmp_path_factory.mktemp("dask-cluster"), workers=2,
                       memory_limit="2GiB") as cluster:
        yield cluster
