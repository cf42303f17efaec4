"""Consents and the EHR's identifiers against the contract: what a disclosure check and a
search by MRN may rely on, and the rows held back from them."""

from __future__ import annotations

from datetime import date, datetime
from typing import Any

import pandas as pd
import pytest

from retention.etl.load import _key_frame, _key_tuples
from retention.etl.quarantine import limits_broken
from retention.etl.validation import Context, validate
from retention.settings import EtlSettings, SourceMapping

MRN = "urn:oid:2.16.840.1.113883.3.9999.1"
CLIENTS = pd.DataFrame([{"client_id": "C1", "clinic_id": "north"},
                        {"client_id": "C2", "clinic_id": "south"}])


def consent(consent_id: str, **changes: Any) -> dict[str, Any]:
    row = {"consent_id": consent_id, "client_id": "C1", "recipient": "class:treating_providers",
           "purpose": "treatment", "effective_on": "2026-01-05", "expires_on": None,
           "revoked_at": None, "updated_at": "2026-01-05 09:00"}
    return {**row, **changes}


def identifier(mrn: str, **changes: Any) -> dict[str, Any]:
    row = {"system": MRN, "value": mrn, "client_id": "C1", "updated_at": "2026-01-05 08:00"}
    return {**row, **changes}


def held(consents: list[dict[str, Any]] | None = None,
         identifiers: list[dict[str, Any]] | None = None) -> dict[tuple[str, str], str]:
    raw = {"clients": CLIENTS, "consents": pd.DataFrame(consents or []),
           "client_identifiers": pd.DataFrame(identifiers or [])}
    out = validate(raw, Context())
    return {(t, k): r for t, k, r in zip(out.rejects["table_name"], out.rejects["row_key"],
                                         out.rejects["rule"], strict=True)}


def test_good_consents_and_identifiers_pass_typed() -> None:
    raw = {"clients": CLIENTS,
           "consents": pd.DataFrame([
               consent("K1"),
               consent("K2", recipient="epic-north", expires_on="2026-01-05",
                       revoked_at="2026-03-01 14:30", updated_at="2026-03-01 14:30"),
               consent("K3", client_id="C2", recipient="class:care_team.v2", purpose="payment",
                       effective_on=date(2026, 2, 1), expires_on=date(2027, 2, 1))]),
           "client_identifiers": pd.DataFrame([
               identifier("MRN0000001"), identifier("MRN0000002", client_id="C2"),
               identifier("MRN0000001", system="https://ehr.example/mrn", client_id="C2")])}
    out = validate(raw, Context())
    assert out.rejects.empty
    consents = out.valid["consents"]
    assert list(consents["consent_id"]) == ["K1", "K2", "K3"]
    assert consents["effective_on"].dt.date.tolist() == [date(2026, 1, 5), date(2026, 1, 5),
                                                         date(2026, 2, 1)]
    assert consents["revoked_at"].iloc[1] == pd.Timestamp("2026-03-01 14:30")
    assert consents["revoked_at"].iloc[[0, 2]].isna().all()
    assert len(out.valid["client_identifiers"]) == 3


@pytest.mark.parametrize(("changes", "rule"), [
    ({"purpose": "decision_support"}, "unknown_code"),
    ({"purpose": None}, "missing_required"),
    ({"recipient": ""}, "missing_required"),
    ({"recipient": "   "}, "malformed_recipient"),
    ({"recipient": "r" * 129}, "too_long"),
    ({"recipient": "class:"}, "malformed_recipient"),
    ({"recipient": "class: treating_providers"}, "malformed_recipient"),
    ({"recipient": "Class:nurses"}, "malformed_recipient"),
    ({"recipient": "epic north"}, "malformed_recipient"),
    ({"expires_on": "2026-01-04"}, "expiry_before_effective"),
    ({"effective_on": "2026-02-30"}, "malformed_date"),
    ({"revoked_at": "yesterday"}, "malformed_date"),
    ({"client_id": "C9"}, "orphan"),
])
def test_a_bad_consent_is_held_under_its_rule(changes: dict[str, Any], rule: str) -> None:
    assert held([consent("K1"), consent("K2", **changes)]) == {("consents", "K2"): rule}


@pytest.mark.parametrize(("changes", "rule"), [
    ({"system": "MRN"}, "malformed_system"),
    ({"system": "local mrn:1"}, "malformed_system"),
    ({"system": "urn:a|b"}, "malformed_system"),
    ({"system": "s:" + "x" * 254}, "too_long"),
    ({"value": "V" * 129}, "too_long"),
    ({"client_id": "C9"}, "orphan"),
    ({"updated_at": None}, "missing_required"),
])
def test_a_bad_identifier_is_held_under_its_rule(changes: dict[str, Any], rule: str) -> None:
    rows = [identifier("MRN0000001"), identifier("MRN0000002", **changes)]
    found = held(identifiers=rows)
    assert list(found.values()) == [rule]
    assert next(iter(found))[0] == "client_identifiers"


def test_one_identifier_for_two_clients_is_held_whole() -> None:
    """An MRN that names two clients names neither: a search by it must find nobody."""
    rows = [identifier("MRN0000001"), identifier("MRN0000001", client_id="C2"),
            identifier("MRN0000002")]
    assert held(identifiers=rows) == {
        ("client_identifiers", f"{MRN}|MRN0000001"): "duplicate_key"}


def test_identifier_keys_go_back_to_their_columns() -> None:
    """The copy deletes a held identifier by system and value: a value may hold a '|'."""
    frame = pd.DataFrame([identifier("A|B")])
    keys = _key_tuples("client_identifiers", frame)
    assert list(keys) == [f"{MRN}|A|B"]
    back = _key_frame("client_identifiers", pd.Index(keys))
    assert back.to_dict("records") == [{"system": MRN, "value": "A|B"}]


def test_a_clinics_bad_consents_are_judged_against_its_own() -> None:
    """Consents count towards a clinic's share through their client, like episodes."""
    rows = [consent(f"K{n}", client_id="C1", purpose="XX" if n < 12 else "treatment")
            for n in range(24)]
    rows += [consent(f"L{n}", client_id="C2") for n in range(200)]
    raw = {"clients": CLIENTS, "consents": pd.DataFrame(rows)}
    out = validate(raw, Context())
    read = {t: len(out.checked[t]) for t in out.checked}
    scopes = {b.scope for b in limits_broken(out, read, EtlSettings())}
    assert "consents of clinic 'north'" in scopes
    assert "consents.purpose" in scopes  # the share of an unmapped code, too
    assert not any("south" in s for s in scopes)


def test_a_mapped_purpose_code_passes() -> None:
    mapped = SourceMapping(codes={"consents": {"purpose": {"TX": "treatment"}}})
    frame = mapped.apply_codes("consents", pd.DataFrame([consent("K1", purpose="TX")]))
    assert held(frame.to_dict("records")) == {}
    assert frame["purpose"].tolist() == ["treatment"]


def test_revoked_at_and_updated_at_are_timestamps_not_dates() -> None:
    raw = {"clients": CLIENTS, "consents": pd.DataFrame([consent(
        "K1", revoked_at=datetime(2026, 3, 1, 14, 30, 15), updated_at=datetime(2026, 3, 1, 15))])}
    out = validate(raw, Context())
    assert out.valid["consents"]["revoked_at"].iloc[0] == pd.Timestamp("2026-03-01 14:30:15")
