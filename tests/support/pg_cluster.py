"""A PostgreSQL server of a test's own, for what must never touch the shared one: stopping
the server mid-read, and roles (which belong to a whole server, not a database).

``private_pg`` (function fixture): ``initdb`` into a fresh temporary directory, a server
on a free port of 127.0.0.1 with trust authentication and its socket inside that
directory, stopped (immediately) and removed after the test. PostgreSQL refuses to run
as root: under root the server runs as the ``postgres`` account. Without the server
binaries the fixture skips, or with ``CI`` set fails.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

SERVER_ACCOUNT = "postgres"


def _bindir() -> Path | None:
    found = shutil.which("initdb")
    if found:
        return Path(found).resolve().parent
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    return versions[-1].parent if versions else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Cluster:
    """A running server of the test's own."""

    root: Path
    port: int
    bindir: Path

    @property
    def data(self) -> Path:
        return self.root / "data"

    def url(self, database: str = "postgres", user: str = "postgres") -> str:
        return f"postgresql+psycopg://{user}@127.0.0.1:{self.port}/{database}"

    def libpq(self, database: str = "postgres", user: str = "postgres") -> str:
        return f"postgresql://{user}@127.0.0.1:{self.port}/{database}"

    def _run(self, *args: str) -> None:
        command = [str(self.bindir / args[0]), *args[1:]]
        if os.geteuid() == 0:
            command = ["runuser", "-u", SERVER_ACCOUNT, "--", *command]
        subprocess.run(command, check=True, capture_output=True, timeout=120)

    def start(self) -> None:
        options = (f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 "
                   "-c fsync=off -c full_page_writes=off")
        self._run("pg_ctl", "-D", str(self.data), "-o", options, "-l", str(self.root / "log"),
                  "-w", "start")

    def stop(self) -> None:
        """Stop at once, as a crash or a pulled cable would (sessions are cut)."""
        self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")

    def running(self) -> bool:
        return (self.data / "postmaster.pid").exists()


@pytest.fixture
def private_pg() -> Iterator[Cluster]:
    """A PostgreSQL server for this test alone; removed after it."""
    bindir = _bindir()
    problem = None if bindir else "the PostgreSQL server binaries (initdb) are not installed"
    if bindir and os.geteuid() == 0 and shutil.which("runuser") is None:
        problem = "running as root without runuser to start PostgreSQL as another account"
    if problem:
        if os.environ.get("CI"):
            pytest.fail(problem, pytrace=False)
        pytest.skip(problem)
    assert bindir is not None
    root = Path(tempfile.mkdtemp(prefix="retention-pg-"))
    if os.geteuid() == 0:
        shutil.chown(root, SERVER_ACCOUNT, SERVER_ACCOUNT)
    cluster = Cluster(root, _free_port(), bindir)
    try:
        cluster._run("initdb", "-D", str(cluster.data), "-A", "trust", "-U", "postgres",
                     "-E", "UTF8", "--no-sync")
        cluster.start()
        yield cluster
    finally:
        if cluster.running():
            with contextlib.suppress(subprocess.SubprocessError):
                cluster.stop()
        shutil.rmtree(root, ignore_errors=True)
