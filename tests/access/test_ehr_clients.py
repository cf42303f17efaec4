"""EHR clients for SMART Backend Services (``retention.access.ehr_clients``): what may be
registered, assertion ids used once, and revocation that reaches the live tokens; on
SQLite and PostgreSQL. Then the same through ``retention ehr-clients``."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from joserfc.jwk import ECKey, RSAKey
from sqlalchemy import Engine, create_engine, select

from retention.access.ehr_clients import (
    SCOPE_READ,
    ClientError,
    ScopeError,
    check_jwks,
    find_client,
    granted_scope,
    issue_token,
    list_clients,
    register_client,
    revoke_client,
    token_label,
    use_jti,
)
from retention.access.keys import check_key, create_key
from retention.clock import FixedClock
from retention.pipelines.cli import main
from retention.pipelines.commands.common import Context
from retention.store import schema, tables
from tests.conftest import REPO

NOW = datetime(2026, 6, 1, 9, 0)
LIFE = timedelta(minutes=5)


@pytest.fixture(scope="module")
def rsa() -> RSAKey:
    return RSAKey.generate_key(2048, {"kid": "rsa-1", "alg": "RS384", "use": "sig"})


@pytest.fixture(scope="module")
def ec() -> ECKey:
    return ECKey.generate_key("P-384", {"kid": "ec-1", "alg": "ES384"})


def public(*keys: Any) -> dict[str, Any]:
    return {"keys": [k.as_dict(private=False) for k in keys]}


@pytest.fixture
def store(store_url: str) -> Engine:
    engine = create_engine(store_url)
    with engine.begin() as conn:
        schema.upgrade(conn)
    return engine


def test_a_registered_client_is_found_with_what_it_may_see(store: Engine, rsa: RSAKey,
                                                           ec: ECKey) -> None:
    with store.begin() as conn:
        client_id = register_client(conn, jwks=public(rsa, ec), recipient="demo-ehr",
                                    clinics=["clinic-west", "clinic-east"], label="Epic", now=NOW)
    with store.connect() as conn:
        found = find_client(conn, client_id)
        assert find_client(conn, "0" * 12) is None and find_client(conn, "not an id") is None
        assert [c.client_id for c in list_clients(conn)] == [client_id]
    assert found is not None and found.active
    assert len(client_id) == 12 and int(client_id, 16) >= 0
    assert (found.recipient, found.clinics, found.scopes, found.label, found.created_at) == (
        "demo-ehr", ("clinic-east", "clinic-west"), (SCOPE_READ,), "Epic", NOW)
    assert found.jwks == public(rsa, ec)


@pytest.mark.parametrize("change", [
    "private_rsa", "private_ec", "symmetric", "p256", "rs256", "small_rsa", "no_kid",
    "same_kid", "encryption", "empty",
])
def test_keys_that_cannot_verify_smart_assertions_are_refused(rsa: RSAKey, ec: ECKey,
                                                              change: str) -> None:
    def small_rsa() -> dict[str, Any]:
        with pytest.warns(UserWarning, match="2048"):  # joserfc warns; registration refuses
            return public(RSAKey.generate_key(1024, {"kid": "small"}))

    jwks = {
        "private_rsa": lambda: {"keys": [rsa.as_dict(private=True)]},
        "private_ec": lambda: {"keys": [ec.as_dict(private=True)]},
        "symmetric": lambda: {"keys": [{"kty": "oct", "kid": "s", "k": "c2VjcmV0"}]},
        "p256": lambda: public(ECKey.generate_key("P-256", {"kid": "p256"})),
        "rs256": lambda: {"keys": [{**rsa.as_dict(private=False), "alg": "RS256"}]},
        "small_rsa": small_rsa,
        "no_kid": lambda: {"keys": [{k: v for k, v in ec.as_dict(private=False).items()
                                     if k != "kid"}]},
        "same_kid": lambda: {"keys": [rsa.as_dict(private=False),
                                      {**ec.as_dict(private=False), "kid": "rsa-1"}]},
        "encryption": lambda: {"keys": [{**ec.as_dict(private=False), "use": "enc"}]},
        "empty": lambda: {"keys": []},
    }[change]()
    with pytest.raises(ClientError):
        check_jwks(jwks)


def test_a_private_jwks_is_refused_at_registration_and_nothing_is_stored(
        store: Engine, rsa: RSAKey) -> None:
    with pytest.raises(ClientError, match="private"), store.begin() as conn:
        register_client(conn, jwks={"keys": [rsa.as_dict(private=True)]}, recipient="demo-ehr",
                        clinics=["clinic-east"], now=NOW)
    with store.connect() as conn:
        assert list_clients(conn) == []


@pytest.mark.parametrize("kwargs", [
    {"recipient": "not a recipient"}, {"recipient": ""}, {"clinics": []},
    {"scopes": ["system/Patient.read"]}, {"scopes": []},
])
def test_registrations_that_make_no_sense_are_refused(store: Engine, ec: ECKey,
                                                      kwargs: dict[str, Any]) -> None:
    values: dict[str, Any] = {"recipient": "demo-ehr", "clinics": ["clinic-east"], **kwargs}
    with pytest.raises(ClientError), store.begin() as conn:
        register_client(conn, jwks=public(ec), now=NOW, **values)


@pytest.mark.parametrize(("requested", "granted"), [
    (SCOPE_READ, SCOPE_READ), ("system/*.read", SCOPE_READ),
    (f"system/*.read {SCOPE_READ}", SCOPE_READ),
])
def test_scopes_are_narrowed_to_the_one_resource_served(requested: str, granted: str) -> None:
    assert granted_scope(requested, (SCOPE_READ,)) == granted


@pytest.mark.parametrize("requested", [
    None, "", "system/Patient.read", f"{SCOPE_READ} system/Patient.read", "system/*.write",
    "patient/RiskAssessment.read", "system/*.*",
])
def test_other_scopes_are_refused(requested: str | None) -> None:
    with pytest.raises(ScopeError):
        granted_scope(requested, (SCOPE_READ,))


def test_a_scope_the_client_was_not_registered_for_is_refused() -> None:
    with pytest.raises(ScopeError, match="not registered"):
        granted_scope(SCOPE_READ, ())


def test_an_assertion_id_is_used_once_until_it_expires(store: Engine, ec: ECKey) -> None:
    with store.begin() as conn:
        client_id = register_client(conn, jwks=public(ec), recipient="demo-ehr",
                                    clinics=["clinic-east"], now=NOW)
        other = register_client(conn, jwks=public(ec), recipient="demo-ehr",
                                clinics=["clinic-east"], now=NOW)
    expires = NOW + timedelta(minutes=6)
    with store.begin() as conn:
        assert use_jti(conn, client_id, "jti-1", expires, NOW)
    with store.begin() as conn:
        assert not use_jti(conn, client_id, "jti-1", expires, NOW + timedelta(minutes=1))
        assert use_jti(conn, other, "jti-1", expires, NOW)  # per client
        assert not use_jti(conn, client_id, "x" * 256, expires, NOW)
    with store.begin() as conn:  # once expired, the id is forgotten with its row
        assert use_jti(conn, client_id, "jti-1", expires + LIFE, expires + timedelta(seconds=1))
        kept = conn.execute(select(tables.ehr_client_jtis.c.expires_at)
                            .where(tables.ehr_client_jtis.c.client_id == client_id)).scalars()
        assert list(kept) == [expires + LIFE]


def test_an_access_token_is_an_ehr_key_with_the_clients_scope(store: Engine, ec: ECKey) -> None:
    with store.begin() as conn:
        client_id = register_client(conn, jwks=public(ec), recipient="demo-ehr",
                                    clinics=["clinic-east"], now=NOW)
        client = find_client(conn, client_id)
        assert client is not None
        key_id, token = issue_token(conn, client, LIFE, NOW)
        caller = check_key(conn, token, NOW).caller
        assert caller is not None and caller.key_id == key_id
        assert (caller.role, caller.clinics, caller.recipient, caller.expires_at) == (
            "ehr", ("clinic-east",), "demo-ehr", NOW + LIFE)
        assert check_key(conn, token, NOW + LIFE).outcome == "expired"


def test_revoking_a_client_revokes_its_live_tokens_only(store: Engine, ec: ECKey) -> None:
    later = NOW + timedelta(minutes=3)
    with store.begin() as conn:
        client_id = register_client(conn, jwks=public(ec), recipient="demo-ehr",
                                    clinics=["clinic-east"], now=NOW)
        client = find_client(conn, client_id)
        assert client is not None
        issue_token(conn, client, timedelta(minutes=1), NOW)  # expired by then
        _, live = issue_token(conn, client, LIFE, NOW)
        _, other = create_key(conn, "ehr", ["clinic-east"], recipient="demo-ehr", now=NOW,
                              label="manual key")
        assert revoke_client(conn, client_id, now=later) == 1
        assert revoke_client(conn, client_id, now=later + LIFE) == 0
        assert check_key(conn, live, later).outcome == "unauthenticated"
        assert check_key(conn, other, later).outcome == "ok"
        revoked = conn.execute(select(tables.api_keys.c.revoked_at).where(
            tables.api_keys.c.label == token_label(client_id))).scalars()
        # The live token is revoked now; the expired one is left as it was.
        assert sorted(revoked, key=lambda v: v is None) == [later, None]
        found = find_client(conn, client_id)
        assert found is not None and found.revoked_at == later and not found.active
        # No token for a revoked client: the key made is revoked before anyone has it.
        with pytest.raises(ClientError, match="revoked"):
            issue_token(conn, client, LIFE, later)
        live_keys = conn.execute(select(tables.api_keys.c.key_id).where(
            tables.api_keys.c.label == token_label(client_id),
            tables.api_keys.c.revoked_at.is_(None),
            tables.api_keys.c.expires_at > later)).all()
        assert live_keys == []
        with pytest.raises(ClientError, match="ehr-clients list"):
            revoke_client(conn, "0" * 12, now=later)


def test_register_list_revoke_from_the_command_line(tmp_path: Path, ec: ECKey,
                                                    rsa: RSAKey) -> None:
    store_url = f"sqlite:///{tmp_path / 'store.db'}"
    config = tmp_path / "cfg.toml"
    config.write_text(f'source_url = "sqlite:///{tmp_path / "clinic.db"}"\n'
                      f'store_url = "{store_url}"\n'
                      f'reasons_file = "{REPO / "config" / "reasons.toml"}"\n'
                      'public_base_url = "https://risk.clinic.example/api"\n')
    jwks, private = tmp_path / "jwks.json", tmp_path / "private.json"
    jwks.write_text(json.dumps(public(ec)))
    private.write_text(json.dumps({"keys": [rsa.as_dict(private=True)]}))
    run = CliRunner()

    def invoke(*args: str) -> Any:
        return run.invoke(main, ["--config", str(config), "ehr-clients", *args],
                          obj=Context(config_path=config, clock=FixedClock(NOW)))

    made = invoke("register", "--jwks", str(jwks), "--recipient", "demo-ehr",
                  "--clinic", "clinic-east", "--clinic", "clinic-west", "--label", "Epic")
    assert made.exit_code == 0, made.output
    client_id = made.stdout.strip()
    assert "https://risk.clinic.example/api/oauth/token" in made.stderr
    listed = invoke("list")
    assert listed.exit_code == 0 and client_id in listed.stdout and "active" in listed.stdout
    refused = invoke("register", "--jwks", str(private), "--recipient", "demo-ehr",
                     "--clinic", "clinic-east")
    assert refused.exit_code != 0 and "private" in refused.output
    assert invoke("revoke", client_id).exit_code == 0
    assert "revoked" in invoke("list").stdout
    unknown = invoke("revoke", "0" * 12)
    assert unknown.exit_code != 0 and "ehr-clients list" in unknown.output
    engine = create_engine(store_url)
    with engine.connect() as conn:
        assert [c.client_id for c in list_clients(conn)] == [client_id]
    engine.dispose()
