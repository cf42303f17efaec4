"""A real Dask cluster on this machine: a scheduler and workers as processes of their own.

``LocalCluster`` would share the caller's imports, environment and memory; the engine's
workers are separate machines in production, so the tests and ``benchmarks/network.py``
start separate processes (the ``dask`` command of this venv, as docs/network.md has an
operator run it) on 127.0.0.1, each in a process group of its own so that closing the
cluster ends them and everything they started, and nothing else.

- ``start_cluster(directory, workers=2, memory_limit="2GiB", tls=None, env=None)``: a
  cluster of the caller's own, as a context manager (or call ``close()``). Workers run
  under a nanny (as in production: the nanny enforces the memory limit and restarts a
  worker that dies), one thread each, with this process's environment (``HOME`` carries
  the run's model signing key) plus ``env``, and the repository on ``PYTHONPATH`` so that
  functions defined in test modules can run on them. Logs: ``cluster.logs``; a cluster
  that does not start, or a process that exits, is a ``ClusterFailed`` with their tails.
- ``make_tls_files(directory)``: a throwaway CA and one certificate for 127.0.0.1 and
  localhost signed by it, for ``start_cluster(..., tls=...)`` and the client's settings.

No pytest here (the benchmark uses it too); ``tests.support.dask_cluster`` holds the
fixture. Needs Dask's distributed scheduler (``retention[network]``) when a cluster starts.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import importlib
import ipaddress
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType, TracebackType
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
# How long a cluster may take to start before the caller gets its logs.
START_DEADLINE = 60.0
# How long closing waits for a process group to end after SIGTERM, then after SIGKILL.
STOP_GRACE = 15.0
LOG_TAIL_LINES = 40
# Without a dashboard each process still serves HTTP (/health, /metrics), by default on
# every interface (the scheduler on 8787): here on loopback, on a free port.
LOOPBACK_HTTP = ("--no-dashboard", "--dashboard-address", "127.0.0.1:0")


class ClusterFailed(RuntimeError):
    """The cluster did not start, or one of its processes exited; the message holds the
    tails of their logs."""


def _distributed() -> ModuleType:
    return importlib.import_module("distributed")


@dataclass(frozen=True)
class TlsFiles:
    """A CA and one certificate and key it signed, all PEM: every party uses the one pair."""

    ca_file: Path
    cert_file: Path
    key_file: Path


def make_tls_files(directory: Path) -> TlsFiles:
    """A throwaway CA and a certificate for 127.0.0.1 and localhost, for server and client.

    Dask checks the peer's certificate against the CA both ways (the scheduler asks the
    client for one), so the one certificate serves the scheduler, workers and client."""
    directory.mkdir(parents=True, exist_ok=True)
    # A pinned window, so nothing here reads the clock: 9999-12-31 is RFC 5280's "no
    # well-defined expiration date".
    not_before = dt.datetime(2000, 1, 1, tzinfo=dt.UTC)
    not_after = dt.datetime(9999, 12, 31, 23, 59, 59, tzinfo=dt.UTC)

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "retention test CA")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name).issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before).not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                     content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False,
                                     encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()),
                       critical=False)
        .sign(ca_key, hashes.SHA256())
    )

    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before).not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName([
            x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH,
                                              ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                       critical=False)
        .sign(ca_key, hashes.SHA256())
    )

    files = TlsFiles(directory / "ca.pem", directory / "cert.pem", directory / "key.pem")
    files.ca_file.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    files.cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    files.key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                                 serialization.PrivateFormat.PKCS8,
                                                 serialization.NoEncryption()))
    files.key_file.chmod(0o600)
    return files


@dataclass
class Cluster:
    """A running scheduler and workers of the caller's own; ``close()`` ends them."""

    directory: Path
    tls: TlsFiles | None
    scheduler: subprocess.Popen[bytes]
    workers: list[subprocess.Popen[bytes]] = field(default_factory=list)
    address: str = ""
    # The worker processes (each the child of a `dask worker` nanny), as of the last
    # start or restart.
    worker_pids: list[int] = field(default_factory=list)
    logs: list[Path] = field(default_factory=list)

    @property
    def processes(self) -> list[subprocess.Popen[bytes]]:
        """The processes this cluster started, each the leader of its own process group."""
        return [self.scheduler, *self.workers]

    def security(self) -> Any:
        """A ``distributed.Security`` for a client of this cluster (None without TLS)."""
        if self.tls is None:
            return None
        return _distributed().Security(tls_ca_file=str(self.tls.ca_file),
                                       tls_client_cert=str(self.tls.cert_file),
                                       tls_client_key=str(self.tls.key_file),
                                       require_encryption=True)

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        """The last lines of every process's log, for a failure's message."""
        parts = []
        for path in self.logs:
            text = path.read_text(errors="replace").splitlines() if path.exists() else []
            parts.append(f"--- {path.name} (last {lines} lines)\n" + "\n".join(text[-lines:]))
        return "\n".join(parts)

    def close(self) -> None:
        """SIGTERM to each process group this cluster started, SIGKILL to any that outlive
        the grace period, then reap the leaders. Leaders are reaped last, so a group id is
        never reused while it is signalled."""
        groups = [p.pid for p in self.processes if p.returncode is None]
        for signum in (signal.SIGTERM, signal.SIGKILL):
            for pgid in groups:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pgid, signum)
            deadline = time.monotonic() + STOP_GRACE
            while time.monotonic() < deadline and any(_group_alive(g) for g in groups):
                time.sleep(0.1)
            groups = [g for g in groups if _group_alive(g)]
            if not groups:
                break
        for process in self.processes:
            process.wait(timeout=STOP_GRACE)

    def check_running(self, waiting_for: str = "running") -> None:
        """``ClusterFailed``, with the logs' tails, when a process of the cluster has exited."""
        for process, log in zip(self.processes, self.logs, strict=True):
            if process.poll() is not None:
                raise ClusterFailed(f"the Dask {log.stem} exited with {process.returncode} "
                                    f"while {waiting_for}:\n{self.log_tail()}")

    def restart_workers(self, warm: str | None = None,
                        timeout: float = START_DEADLINE) -> list[int]:
        """New worker processes (their nannies start them again), ready, having imported
        ``warm`` (a night's worker has imported the engine long before it); their pids."""
        with _distributed().Client(self.address, security=self.security(), timeout="30s",
                                   set_as_default=False) as client:
            client.restart(timeout=timeout, wait_for_workers=True)
            if warm:
                client.run(importlib.import_module, warm)
            self.worker_pids = _worker_pids(client)
        if len(self.worker_pids) != len(self.workers):
            raise ClusterFailed(f"{len(self.worker_pids)} workers after a restart, not "
                                f"{len(self.workers)}:\n{self.log_tail()}")
        return self.worker_pids

    def __enter__(self) -> Cluster:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


def _group_alive(pgid: int) -> bool:
    """Whether any process of the group, other than a zombie, is still there (Linux: the
    group's members are read from /proc; elsewhere, whether its leader still runs)."""
    proc = Path("/proc")
    if not proc.is_dir():
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return False
        return True
    for stat in proc.glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue  # ended meanwhile
        # pid (comm) state ppid pgrp ...; comm may hold spaces and parentheses.
        fields = text[text.rindex(")") + 2:].split()
        if int(fields[2]) == pgid and fields[0] != "Z":
            return True
    return False


def _spawn(command: list[str], log: Path, env: Mapping[str, str]) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT, env=dict(env), cwd=str(REPO),
                                start_new_session=True)


def _environment(extra: Mapping[str, str] | None) -> dict[str, str]:
    """This process's environment (HOME included), the repository importable, and ``extra``."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    env.update(extra or {})
    return env


def _tls_flags(tls: TlsFiles | None) -> list[str]:
    if tls is None:
        return []
    return ["--protocol", "tls", "--tls-ca-file", str(tls.ca_file), "--tls-cert",
            str(tls.cert_file), "--tls-key", str(tls.key_file)]


def start_cluster(directory: Path, workers: int = 2, memory_limit: str = "2GiB",
                  tls: TlsFiles | None = None, env: Mapping[str, str] | None = None,
                  start_deadline: float = START_DEADLINE) -> Cluster:
    """A scheduler and ``workers`` single-threaded workers on 127.0.0.1, each its own
    process group, ready (the scheduler sees exactly ``workers`` workers) when returned;
    files and logs under ``directory / "dask"``.

    The scheduler takes a free port itself (``--port 0``) and writes its address to a
    file, so no other process can take the port between a probe and its start; a cluster
    not ready within ``start_deadline`` seconds is closed and raises ``ClusterFailed``."""
    distributed = _distributed()
    directory = directory / "dask"
    directory.mkdir(parents=True, exist_ok=True)
    environment = _environment(env)
    dask = str(BIN / "dask")
    scheduler_file = directory / "scheduler.json"
    scheduler_log = directory / "scheduler.log"
    cluster = Cluster(directory, tls, _spawn(
        [dask, "scheduler", "--host", "127.0.0.1", "--port", "0", *LOOPBACK_HTTP,
         "--scheduler-file", str(scheduler_file), *_tls_flags(tls)],
        scheduler_log, environment), logs=[scheduler_log])
    try:
        deadline = time.monotonic() + start_deadline
        cluster.address = _scheduler_address(cluster, scheduler_file, deadline)
        for number in range(workers):
            log = directory / f"worker-{number}.log"
            cluster.workers.append(_spawn(
                [dask, "worker", cluster.address, "--name", f"worker-{number}",
                 "--nworkers", "1", "--nthreads", "1", "--memory-limit", memory_limit,
                 *LOOPBACK_HTTP, "--host", "127.0.0.1",
                 "--local-directory", str(directory / f"worker-{number}"), *_tls_flags(tls)],
                log, environment))
            cluster.logs.append(log)
        cluster.worker_pids = _wait_for_workers(distributed, cluster, workers, deadline)
    except BaseException:
        cluster.close()
        raise
    return cluster


def _scheduler_address(cluster: Cluster, scheduler_file: Path, deadline: float) -> str:
    """The address the scheduler wrote to its file once it listens."""
    while time.monotonic() < deadline:
        cluster.check_running("waiting for the scheduler")
        try:
            return str(json.loads(scheduler_file.read_text())["address"])
        except (OSError, ValueError, KeyError):
            time.sleep(0.1)
    raise ClusterFailed(f"the Dask scheduler did not start in time:\n{cluster.log_tail()}")


def _wait_for_workers(distributed: ModuleType, cluster: Cluster, workers: int,
                      deadline: float) -> list[int]:
    """The worker processes' ids once the scheduler sees exactly ``workers`` workers."""
    seen: dict[str, Any] = {}
    with distributed.Client(cluster.address, security=cluster.security(), timeout="10s",
                            set_as_default=False) as client:
        while time.monotonic() < deadline:
            cluster.check_running(f"waiting for {workers} workers")
            seen = client.nthreads()
            if len(seen) == workers:
                return _worker_pids(client)
            if len(seen) > workers:
                break
            time.sleep(0.1)
    raise ClusterFailed(f"the Dask scheduler at {cluster.address} sees {len(seen)} workers, "
                        f"not {workers}:\n{cluster.log_tail()}")


def _worker_pids(client: Any) -> list[int]:
    """The worker processes' ids, in the order of their addresses."""
    pids = client.run(os.getpid)
    return [int(pids[address]) for address in sorted(pids)]
