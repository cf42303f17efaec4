"""``retention demo`` for a newcomer: a busy port is refused before anything changes, and
the line it prints to try the list works as printed. Also the words of a key refused."""

from __future__ import annotations

import shlex
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import create_engine

from retention.access.keys import AccessError, create_key
from retention.api import create_app
from retention.db.engines import store_engine
from retention.db.locks import try_lock
from retention.pipelines.cli import main
from retention.pipelines.commands.serve import (
    DEMO_LOCK,
    _demo_sign_in,
    check_port_free,
    risk_list_curl,
)
from tests.conftest import AS_OF, REPO, Scored
from tests.support.apps import clock_on, copied_store


@pytest.fixture
def listening() -> Iterator[int]:
    """A port of the test's own (the system chooses it) that a server listens on."""
    with socket.socket() as server:
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as gunicorn binds
        server.bind(("127.0.0.1", 0))
        server.listen()
        yield int(server.getsockname()[1])


def demo_config(tmp_path: Path) -> tuple[Path, Path]:
    """A demo's var/ folder and a config file whose databases are in it."""
    var = tmp_path / "var"
    var.mkdir()
    config = tmp_path / "retention.toml"
    config.write_text(f'source_url = "sqlite:///{var / "clinic.db"}"\n'
                      f'store_url = "sqlite:///{var / "retention.db"}"\n'
                      f'models_dir = "{tmp_path / "models"}"\n'
                      f'reasons_file = "{REPO / "config" / "reasons.toml"}"\n')
    return var, config


def test_the_demo_refuses_a_busy_port_before_changing_anything(
    tmp_path: Path, listening: int
) -> None:
    """A second demo once rebuilt the first one's store, then found the port taken."""
    var, config = demo_config(tmp_path)
    # What the first demo is serving: here only bytes that must stay as they are.
    for name in ("clinic.db", "retention.db"):
        (var / name).write_bytes(b"the first demo's " + name.encode())
    before = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in var.iterdir()}

    result = CliRunner().invoke(main, ["--config", str(config), "demo", "--port",
                                       str(listening), "--today", AS_OF.isoformat()])

    assert result.exit_code == 1
    said = " ".join(result.stderr.split())
    assert (f"port {listening} is in use, probably by another demo or service: stop it, or "
            f"choose another port with `make demo PORT={listening + 1}` or `retention demo "
            f"--port {listening + 1}`. "
            f"Nothing in {var.resolve()}/ was changed") in said
    assert "demo [1/" not in said  # not a step was taken
    after = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in var.iterdir()}
    assert after == before  # no store rebuilt, no signing key written beside it
    assert not (tmp_path / "models").exists()


def test_a_second_demo_while_the_first_still_builds_is_refused(tmp_path: Path) -> None:
    """Nothing listens on the port while a demo builds its clinic: the demo's lock, held
    from its first step to its last request, refuses the second before it changes a thing."""
    var, config = demo_config(tmp_path)
    (var / "retention.db").write_bytes(b"the first demo's store, being built")
    engine = store_engine(f"sqlite:///{var / 'retention.db'}")
    try:
        with try_lock(engine, DEMO_LOCK) as first:  # the first demo, still building
            assert first
            before = {p.name: p.read_bytes() for p in var.iterdir()}
            result = CliRunner().invoke(main, ["--config", str(config), "demo", "--no-serve",
                                               "--today", AS_OF.isoformat()])
            after = {p.name: p.read_bytes() for p in var.iterdir()}
    finally:
        engine.dispose()
    assert result.exit_code == 1
    said = " ".join(result.stderr.split())
    assert f"another demo is building or serving from {var.resolve()}/: stop it first" in said
    assert "demo [1/" not in said and after == before
    assert not (tmp_path / "models").exists()


def test_the_demo_names_the_store_folder_relative_to_where_it_runs(
    tmp_path: Path, listening: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    config = tmp_path / "retention.toml"
    config.write_text('source_url = "sqlite:///var/clinic.db"\n'
                      'store_url = "sqlite:///var/retention.db"\n'
                      f'reasons_file = "{REPO / "config" / "reasons.toml"}"\n')
    result = CliRunner().invoke(main, ["--config", str(config), "demo", "--port",
                                       str(listening), "--today", AS_OF.isoformat()])
    assert result.exit_code == 1
    assert "Nothing in var/ was changed" in result.stderr
    assert not (tmp_path / "var").exists()


def test_a_port_a_stopped_demo_left_in_time_wait_is_not_refused() -> None:
    """The server closes its side first (gunicorn's sync workers do after each response),
    so its port lingers in TIME_WAIT for a minute after the demo stops. gunicorn binds
    with SO_REUSEADDR and would start; the check must not refuse what it would take."""
    with socket.socket() as server:
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as gunicorn binds
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = int(server.getsockname()[1])
        with socket.create_connection(("127.0.0.1", port)) as client:
            accepted, _ = server.accept()
            accepted.close()  # the server closes first
            assert client.recv(1) == b""  # its FIN has arrived
    # The connection's server end lingers: a bind without SO_REUSEADDR is refused.
    with socket.socket() as plain, pytest.raises(OSError):
        plain.bind(("127.0.0.1", port))
    check_port_free("127.0.0.1", port)  # raises if refused


def test_the_printed_curl_line_reads_the_list_with_the_case_managers_key(
    scored: Scored, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The demo once said "try http://.../v1/risk-list?limit=5": a browser gets a 401."""
    # _demo_sign_in sets these for the workers it forks; the test restores them after.
    monkeypatch.setenv("RETENTION_SECRET_KEY", "s" * 48)
    monkeypatch.setenv("RETENTION_INSECURE_COOKIES", "1")
    settings = copied_store(scored.settings, tmp_path)
    token = _demo_sign_in(settings, 8123)
    line = risk_list_curl(8123, token)
    assert line == (f"curl -H 'Authorization: Bearer {token}' "
                    "'http://127.0.0.1:8123/v1/risk-list?limit=5'")
    program, flag, header, url = shlex.split(line)
    assert (program, flag) == ("curl", "-H")
    name, _, value = header.partition(": ")
    path = url.removeprefix("http://127.0.0.1:8123")
    client = create_app(settings, TESTING=True, clock=clock_on(scored.as_of)).test_client()
    response = client.get(path, headers={name: value})
    assert response.status_code == 200, response.get_json()
    assert len(response.get_json()["items"]) == 5
    assert client.get(path).status_code == 401  # what the bare URL gave


@pytest.mark.parametrize(("role", "clinics", "recipient", "said"), [
    ("ehr", ["clinic-east"], None,
     "an ehr key acts for an outside recipient: name it with --recipient"),
    ("ehr", [], "epic", "an ehr key needs at least one --clinic"),
    ("analyst", [], None, "an analyst key needs at least one --clinic"),
    ("case_manager", [], None, "a case_manager key needs at least one --clinic"),
])
def test_a_refused_key_is_named_with_the_right_article(
    role: str, clinics: list[str], recipient: str | None, said: str
) -> None:
    engine = create_engine("sqlite://")  # refused before anything is written
    try:
        with pytest.raises(AccessError) as refused, engine.begin() as conn:
            create_key(conn, role, clinics, recipient=recipient)
    finally:
        engine.dispose()
    assert str(refused.value).startswith(said)
