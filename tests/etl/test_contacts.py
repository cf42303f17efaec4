"""Contact details against the contract: what the case managers' pages may rely on, and
the rows held back from them. Every row in these tests is made up."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import date, datetime, time
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from sqlalchemy import Engine, select, text

from retention.casework import outreach
from retention.clinic import contract
from retention.clock import FixedClock
from retention.db.engines import source_engine, store_engine
from retention.etl.extract import INCREMENTAL
from retention.etl.load import QuarantineLimitExceeded
from retention.etl.quarantine import limits_broken
from retention.etl.validation import Context, validate
from retention.features import build_features
from retention.pipelines.etl import run_etl
from retention.settings import CODED_COLUMNS, ConfigError, EtlSettings, SourceMapping, parse_etl
from retention.store import tables
from retention.store.clinic_copy import read_clinic_copy
from tests.support.factories import ClinicBuilder, at
from tests.support.sources import AS_OF, Source

CLIENTS = pd.DataFrame([{"client_id": "C1", "clinic_id": "north"},
                        {"client_id": "C2", "clinic_id": "south"}])
NIGHT = FixedClock(datetime.combine(AS_OF, time(2, 30)))
NEXT_NIGHT = FixedClock(datetime(2026, 6, 2, 2, 30))
CHANNEL_CODES = {"TEL": "phone", "SMS": "text", "MAIL": "letter"}


def contact(client_id: str = "C1", **changes: Any) -> dict[str, Any]:
    row = {"client_id": client_id, "display_name": "Ana O'Brien", "preferred_name": "Annie",
           "phone": "(617) 555-0142", "preferred_channel": "text", "may_text": True,
           "may_call": None, "language": "pt-BR", "updated_at": "2026-01-05 08:00"}
    return {**row, **changes}


def held(rows: list[dict[str, Any]]) -> dict[tuple[str, str], str]:
    out = validate({"clients": CLIENTS, "client_contacts": pd.DataFrame(rows)}, Context())
    return {(t, k): r for t, k, r in zip(out.rejects["table_name"], out.rejects["row_key"],
                                         out.rejects["rule"], strict=True)}


# --- the contract -------------------------------------------------------------------


def test_contacts_are_optional_and_never_model_inputs() -> None:
    assert "client_contacts" in contract.OPTIONAL_TABLES
    assert "client_contacts" in contract.NOT_MODEL_INPUTS
    assert "client_contacts" in INCREMENTAL  # a new phone reaches the copy the next night
    # The channels a client prefers are those an outreach is recorded by.
    assert contract.CONTACT_CHANNELS == outreach.CHANNELS


def test_the_preferred_channel_is_a_coded_column_a_clinic_may_map() -> None:
    """[etl.codes.client_contacts.preferred_channel] is accepted (retention/settings.py
    lists the coded columns), and a mapping onto a code the contract lacks is refused."""
    assert CODED_COLUMNS[("client_contacts", "preferred_channel")] == contract.CONTACT_CHANNELS
    settings = parse_etl({"codes": {"client_contacts": {"preferred_channel": CHANNEL_CODES}}})
    assert settings.mapping.codes["client_contacts"]["preferred_channel"] == CHANNEL_CODES
    with pytest.raises(ConfigError, match="pigeon"):
        parse_etl({"codes": {"client_contacts": {"preferred_channel": {"P": "pigeon"}}}})


def test_contacts_never_move_a_feature() -> None:
    """Who may be texted, or speaks Spanish, is never a reason for a score."""
    def clinic(details: bool) -> ClinicBuilder:
        b = ClinicBuilder()
        for n, channel in enumerate(("phone", "text")):
            b.client(f"C{n}")
            b.episode(f"E{n}", f"C{n}", "2026-01-05")
            b.appointment(f"E{n}", at("2026-01-12"), "attended")
            b.appointment(f"E{n}", at("2026-01-19"), "no_show" if n else "attended")
            if details:
                b.contact(f"C{n}", preferred_channel=channel, may_text=bool(n), may_call=None,
                          language="es" if n else "en")
        return b

    with_details, without = clinic(True).build(), clinic(False).build()
    assert len(with_details.contacts) == 2 and without.contacts.empty
    assert with_details.contacts["may_call"].isna().all()
    day = date(2026, 2, 1)
    pd.testing.assert_frame_equal(build_features(with_details, day),
                                  build_features(without, day))


# --- checks -------------------------------------------------------------------------


def test_good_contacts_pass_typed_with_unknowns_kept_unknown() -> None:
    rows = [contact("C1"),
            contact("C2", display_name=None, preferred_name=None, phone=None,
                    preferred_channel=None, may_text="f", may_call="yes", language=None,
                    updated_at=datetime(2026, 2, 1, 9, 15))]
    out = validate({"clients": CLIENTS, "client_contacts": pd.DataFrame(rows)}, Context())
    assert out.rejects.empty
    valid = out.valid["client_contacts"]
    assert list(valid["client_id"]) == ["C1", "C2"]
    # Not known stays not known: never read as "no".
    assert valid["may_text"].tolist() == [True, False]
    assert valid["may_call"].isna().tolist() == [True, False]
    assert bool(valid["may_call"].iloc[1]) is True
    assert valid["updated_at"].iloc[1] == pd.Timestamp("2026-02-01 09:15")


@pytest.mark.parametrize("phone", [
    "(617) 555-0142", "617-555-0142", "617.555.0142", "+1 617 555 0142", "555-0142",
    "+44 (0)20 7946 0958", "617-555-0142 ext 12", "617-555-0142 ext. 3", "617 555 0142 x9",
    "6175550142X12",
])
def test_phones_as_clinics_write_them_pass(phone: str) -> None:
    assert held([contact(phone=phone)]) == {}


@pytest.mark.parametrize("phone", [
    "555-014",  # six digits
    "+1 617 555 0142 00000",  # sixteen
    "call her mother", "617/555/0142", "617-555-0142 ext", "++1 617 555 0142",
    "617-555-0142 #12", "ext 12",
])
def test_a_phone_that_is_no_phone_number_is_held(phone: str) -> None:
    assert held([contact("C2"), contact(phone=phone)]) == {("client_contacts", "C1"):
                                                            "malformed_phone"}


def test_a_held_contacts_detail_quotes_no_phone_or_language() -> None:
    rows = [contact("C1", phone="ring 617 555 01"), contact("C2", language="Kreyol ayisyen")]
    out = validate({"clients": CLIENTS, "client_contacts": pd.DataFrame(rows)}, Context())
    assert sorted(out.rejects["rule"]) == ["malformed_language", "malformed_phone"]
    details = " ".join(out.rejects["detail"])
    assert "617" not in details and "Kreyol" not in details


@pytest.mark.parametrize("language", ["en", "es", "pt-BR", "vi", "zh-Hans", "ht", "es-419",
                                      "zh-Hant-TW", "EN", "x-klingon", "de-CH-1901"])
def test_bcp47_tags_pass(language: str) -> None:
    assert held([contact(language=language)]) == {}


@pytest.mark.parametrize("language", ["english", "Spanish", "en_US", "en-", "e", "pt BR",
                                      "zh-Hans-", "123"])
def test_a_language_that_is_no_bcp47_tag_is_held(language: str) -> None:
    assert held([contact(language=language)]) == {("client_contacts", "C1"):
                                                   "malformed_language"}


@pytest.mark.parametrize(("changes", "rule"), [
    ({"preferred_channel": "pigeon"}, "unknown_code"),
    ({"preferred_channel": "SMS"}, "unknown_code"),  # the clinic's code, unmapped
    ({"may_text": "sometimes"}, "malformed_value"),
    ({"updated_at": None}, "missing_required"),
    ({"updated_at": "2026-02-30 10:00"}, "malformed_date"),
    ({"display_name": "N" * 129}, "too_long"),
    ({"preferred_name": "Ann\x00ie"}, "malformed_text"),
    ({"phone": "6" * 33}, "too_long"),
    ({"language": "en-" + "a" * 33}, "too_long"),
    ({"client_id": "C9"}, "orphan"),
])
def test_a_bad_contact_is_held_under_its_rule(changes: dict[str, Any], rule: str) -> None:
    key = changes.get("client_id", "C1")
    assert held([contact("C2"), contact(**changes)]) == {("client_contacts", key): rule}


def test_two_rows_for_one_client_are_held_whole() -> None:
    """Two phones for one client: the pages cannot tell which to dial."""
    assert held([contact(), contact(phone="(212) 555-0100")]) == {
        ("client_contacts", "C1"): "duplicate_key"}


def test_a_mapped_channel_code_passes() -> None:
    mapped = SourceMapping(codes={"client_contacts": {"preferred_channel": CHANNEL_CODES}})
    frame = mapped.apply_codes("client_contacts", pd.DataFrame([contact(preferred_channel="SMS")]))
    assert held(frame.to_dict("records")) == {}
    assert frame["preferred_channel"].tolist() == ["text"]


def test_a_clinics_bad_contacts_are_judged_against_its_own() -> None:
    """Contacts count towards a clinic's share through their client, like consents."""
    clients = pd.DataFrame([{"client_id": f"N{n}", "clinic_id": "north"} for n in range(24)]
                           + [{"client_id": f"S{n}", "clinic_id": "south"} for n in range(200)])
    rows = [contact(f"N{n}", phone="call me" if n < 12 else "555-0142") for n in range(24)]
    rows += [contact(f"S{n}") for n in range(200)]
    out = validate({"clients": clients, "client_contacts": pd.DataFrame(rows)}, Context())
    read = {t: len(out.checked[t]) for t in out.checked}
    scopes = {b.scope for b in limits_broken(out, read, EtlSettings())}
    assert "client_contacts of clinic 'north'" in scopes
    assert not any("south" in s for s in scopes)


# --- through the ETL ----------------------------------------------------------------


@pytest.fixture
def source(tmp_path: Path) -> Iterator[Source]:
    src = Source.synthetic(f"sqlite:///{tmp_path / 'clinic.db'}", n_clients=60)
    yield src
    src.dispose()


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Engine]:
    engine = store_engine(f"sqlite:///{tmp_path / 'store.db'}")
    yield engine
    engine.dispose()


def etl(src: Source, store_db: Engine, clock: FixedClock = NIGHT,
        settings: EtlSettings | None = None, full: bool | None = None) -> Any:
    engine = source_engine(src.url)
    try:
        return run_etl(engine, store_db, clock.now().date(), settings or EtlSettings(),
                       full=full, clock=clock)
    finally:
        engine.dispose()


def copied(store_db: Engine) -> dict[str, dict[str, Any]]:
    table = tables.copies["client_contacts"]
    with store_db.connect() as conn:
        return {r.client_id: dict(r._mapping) for r in conn.execute(select(table))}


def quarantined(store_db: Engine) -> dict[tuple[str, str], str]:
    q = tables.quarantine
    with store_db.connect() as conn:
        return {(r.table_name, r.row_key): r.rule
                for r in conn.execute(select(q.c.table_name, q.c.row_key, q.c.rule))}


def test_contacts_reach_the_copy_as_the_clinic_wrote_them(source: Source, store: Engine) -> None:
    result = etl(source, store)
    assert result.rows_quarantined == 0
    rows = source.rows("client_contacts")
    assert 0 < len(rows) < source.count("clients")  # some clients have no row
    copy = copied(store)
    assert set(copy) == {r["client_id"] for r in rows}
    for row in rows:
        assert copy[row["client_id"]] == row
    assert any(r["may_call"] is None for r in copy.values())  # not known stays not known
    with store.connect() as conn:  # training's read of the copy leaves them out
        assert read_clinic_copy(conn).contacts.empty


def test_bad_contacts_are_held_and_the_rest_of_the_run_is_fine(source: Source,
                                                               store: Engine) -> None:
    etl(source, store)
    before = copied(store)
    rows = sorted(before)[:4]
    stamp = datetime(2026, 6, 1, 12, 0)
    source.update("client_contacts", {"client_id": rows[0]}, phone="ask at the desk",
                  updated_at=stamp)
    source.update("client_contacts", {"client_id": rows[1]}, language="Portuguese",
                  updated_at=stamp)
    source.update("client_contacts", {"client_id": rows[2]}, preferred_channel="pigeon",
                  updated_at=stamp)
    source.update("client_contacts", {"client_id": rows[3]}, phone="(907) 555-0199 x7",
                  updated_at=stamp)
    result = etl(source, store, NEXT_NIGHT)
    assert not result.full and result.rows_quarantined == 3
    assert result.open_episodes > 0
    assert quarantined(store) == {("client_contacts", rows[0]): "malformed_phone",
                                  ("client_contacts", rows[1]): "malformed_language",
                                  ("client_contacts", rows[2]): "unknown_code"}
    after = copied(store)
    # Held rows leave the copy (the pages show nothing rather than a wrong number).
    assert set(after) == set(before) - set(rows[:3])
    assert after[rows[3]]["phone"] == "(907) 555-0199 x7"
    # Fixed at the source, a row is released the next night.
    source.update("client_contacts", {"client_id": rows[0]}, phone="(617) 555-0100",
                  updated_at=datetime(2026, 6, 2, 12, 0))
    etl(source, store, FixedClock(datetime(2026, 6, 3, 2, 30)))
    assert ("client_contacts", rows[0]) not in quarantined(store)
    assert copied(store)[rows[0]]["phone"] == "(617) 555-0100"


def test_a_clinics_own_channel_codes_are_mapped(source: Source, store: Engine) -> None:
    """[etl.codes.client_contacts.preferred_channel] maps the clinic's codes."""
    with source.engine.begin() as conn:
        for clinic_code, code in CHANNEL_CODES.items():
            conn.execute(text("UPDATE client_contacts SET preferred_channel = :c "
                              "WHERE preferred_channel = :code"), {"c": clinic_code, "code": code})
    with pytest.raises(QuarantineLimitExceeded, match="'SMS'"):
        etl(source, store, full=True)  # unmapped, the clinic's codes are unknown
    settings = parse_etl({"codes": {"client_contacts": {"preferred_channel": CHANNEL_CODES}}})
    mapped = etl(source, store, NEXT_NIGHT, settings, full=True)
    assert mapped.rows_quarantined == 0
    channels = {r["preferred_channel"] for r in copied(store).values()}
    assert {"phone", "text"} <= channels <= set(contract.CONTACT_CHANNELS)


def test_a_clinic_without_contacts_runs_as_before(source: Source, store: Engine) -> None:
    """The table is optional: most clinics do not map it (yet)."""
    with source.engine.begin() as conn:
        conn.execute(text("DROP TABLE client_contacts"))
    first = etl(source, store)
    second = etl(source, store, NEXT_NIGHT)
    assert first.open_episodes > 0 and not second.full
    assert first.rows_quarantined == second.rows_quarantined == 0
    assert copied(store) == {}
