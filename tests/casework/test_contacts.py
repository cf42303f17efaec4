"""Contact details (``retention.casework.contacts``): read only inside the caller's scope,
with the link into the EHR filled in safely. Every name and number here is made up."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from typing import Any

import pytest
from sqlalchemy import Connection, Engine, event, insert, select

from retention.access.keys import Caller
from retention.casework.contacts import Contact, contacts_for, tel_href
from retention.store import tables

MRN = "urn:oid:2.16.840.1.113883.3.9999.1"
CHART = "https://ehr.example/chart/{mrn}?tab=summary"
BY_ID = "https://ehr.example/find?client={client_id}"
WRITTEN = datetime(2026, 5, 1, 9, 0)

NORTH = Caller("k-north", "case_manager", ("clinic-x",))
CASELOAD = Caller("k-cm", "case_manager", ("clinic-x",), case_manager_id="cm-a")
ADMIN = Caller("k-admin", "admin", None)
ANALYST = Caller("k-analyst", "analyst", None)
EHR = Caller("k-ehr", "ehr", ("clinic-x",), recipient="demo-ehr")


def add_clients(conn: Connection, rows: list[tuple[str, str, str]]) -> None:
    conn.execute(insert(tables.copies["clients"]), [
        {"client_id": c, "clinic_id": clinic, "case_manager_id": cm, "birth_year": 1980,
         "sex": "female", "race_ethnicity": None} for c, clinic, cm in rows])


def add_contacts(conn: Connection, client_ids: list[str], **values: Any) -> None:
    conn.execute(insert(tables.copies["client_contacts"]), [{
        "client_id": c, "display_name": f"Test {c}", "preferred_name": None,
        "phone": "(617) 555-0142", "preferred_channel": "phone", "may_text": True,
        "may_call": None, "language": "en", "updated_at": WRITTEN, **values}
        for c in client_ids])


def add_identifier(conn: Connection, client_id: str, value: str, system: str = MRN,
                   written: datetime = WRITTEN) -> None:
    conn.execute(insert(tables.copies["client_identifiers"]), {
        "system": system, "value": value, "client_id": client_id, "updated_at": written})


@pytest.fixture
def store(private_store: tuple[str, Engine]) -> Iterator[Engine]:
    """The scored store, with clients of two clinics of the test's own added to its copy:
    T-N1 (cm-a) and T-N2 (cm-b) in clinic-x, T-S1 in clinic-y."""
    _, engine = private_store
    with engine.begin() as conn:
        add_clients(conn, [("T-N1", "clinic-x", "cm-a"), ("T-N2", "clinic-x", "cm-b"),
                           ("T-N3", "clinic-x", "cm-a"), ("T-N4", "clinic-x", "cm-a"),
                           ("T-S1", "clinic-y", "cm-c")])
        add_contacts(conn, ["T-N1", "T-N2", "T-S1"])
        conn.execute(tables.copies["client_contacts"].update()
                     .where(tables.copies["client_contacts"].c.client_id == "T-N2")
                     .values(phone=None, may_text=False, preferred_name="Nico",
                             display_name="Nicolás O'Brien", language="es"))
    yield engine


def read(engine: Engine, caller: Caller, ids: list[str], **link: str) -> dict[str, Contact]:
    with engine.connect() as conn:
        return contacts_for(conn, caller, ids, **link)


ASKED = ["T-N1", "T-N2", "T-N3", "T-S1", "T-NOBODY"]


def test_a_client_of_another_clinic_is_never_read_even_by_id(store: Engine) -> None:
    assert set(read(store, NORTH, ASKED)) == {"T-N1", "T-N2"}
    assert set(read(store, Caller("k-y", "case_manager", ("clinic-y",)), ASKED)) == {"T-S1"}
    assert read(store, NORTH, ["T-S1"]) == {}


def test_a_caseload_key_reads_its_caseload_only(store: Engine) -> None:
    assert set(read(store, CASELOAD, ASKED)) == {"T-N1"}


def test_an_admin_reads_every_clinic(store: Engine) -> None:
    assert set(read(store, ADMIN, ASKED)) == {"T-N1", "T-N2", "T-S1"}


def test_callers_without_client_data_or_acting_for_an_ehr_read_nothing(store: Engine) -> None:
    """Contact details go to the clinic's own staff only: never to an EHR, consent or not."""
    assert read(store, ANALYST, ASKED) == {}
    assert read(store, EHR, ASKED) == {}
    assert read(store, Caller("k-none", "case_manager", ()), ASKED) == {}


def test_details_are_read_as_stored_and_unknown_stays_unknown(store: Engine) -> None:
    found = read(store, NORTH, ["T-N1", "T-N2"])
    assert found["T-N1"] == Contact(
        client_id="T-N1", display_name="Test T-N1", preferred_name=None,
        phone="(617) 555-0142", preferred_channel="phone", may_text=True, may_call=None,
        language="en", ehr_link=None)
    n2 = found["T-N2"]
    assert (n2.display_name, n2.preferred_name, n2.phone, n2.may_text, n2.language) == (
        "Nicolás O'Brien", "Nico", None, False, "es")


def test_the_ehr_link_is_filled_with_the_mrn_quoted(store: Engine) -> None:
    with store.begin() as conn:
        add_identifier(conn, "T-N1", "MRN 1/2?#&x")
        add_identifier(conn, "T-N2", "OTHER-7", system="https://other.example/ids")
        add_identifier(conn, "T-N3", "MRN0000003")  # no contact row, but a link
        add_identifier(conn, "T-S1", "MRN0000009")  # another clinic's
    found = read(store, NORTH, ASKED, link_template=CHART, link_system=MRN)
    assert found["T-N1"].ehr_link == "https://ehr.example/chart/MRN%201%2F2%3F%23%26x?tab=summary"
    assert found["T-N2"].ehr_link is None  # no MRN under the configured system
    assert found["T-N3"] == Contact("T-N3", None, None, None, None, None, None, None,
                                    "https://ehr.example/chart/MRN0000003?tab=summary")
    assert set(found) == {"T-N1", "T-N2", "T-N3"}  # not T-S1, whatever it has
    # An MRN template without the system names no MRN: no links.
    unlinked = read(store, NORTH, ASKED, link_template=CHART)
    assert set(unlinked) == {"T-N1", "T-N2"}
    assert all(c.ehr_link is None for c in unlinked.values())


def test_the_newest_of_two_mrns_is_linked(store: Engine) -> None:
    """A merged record keeps its old MRN beside the new one: the newer is the chart."""
    with store.begin() as conn:
        add_identifier(conn, "T-N1", "MRN-OLD", written=datetime(2025, 1, 1))
        add_identifier(conn, "T-N1", "MRN-NEW", written=datetime(2026, 3, 1))
    found = read(store, NORTH, ["T-N1"], link_template=CHART, link_system=MRN)
    assert found["T-N1"].ehr_link == "https://ehr.example/chart/MRN-NEW?tab=summary"


def test_the_ehr_link_by_client_id_is_quoted_too(store: Engine) -> None:
    with store.begin() as conn:
        add_clients(conn, [("T N/5?", "clinic-x", "cm-a")])
    found = read(store, NORTH, [*ASKED, "T N/5?"], link_template=BY_ID)
    assert found["T-N1"].ehr_link == "https://ehr.example/find?client=T-N1"
    # A client with no contact row still gets its link: the id is all it needs.
    assert found["T N/5?"].ehr_link == "https://ehr.example/find?client=T%20N%2F5%3F"
    assert found["T N/5?"].phone is None
    assert set(found) == {"T-N1", "T-N2", "T-N3", "T N/5?"}  # in scope; no T-S1
    assert all(c.ehr_link is None for c in read(store, NORTH, ASKED).values())


def test_a_list_of_thousands_is_read_in_chunks(store: Engine) -> None:
    many = [f"T-M{n:05d}" for n in range(1234)]
    with store.begin() as conn:
        add_clients(conn, [(c, "clinic-x", "cm-a") for c in many])
        add_clients(conn, [(f"T-Y{n:05d}", "clinic-y", "cm-c") for n in range(700)])
        add_contacts(conn, many[::2])
        add_contacts(conn, [f"T-Y{n:05d}" for n in range(700)])
    statements: list[str] = []

    def count(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if "clinic_clients" in statement:
            statements.append(statement)

    event.listen(store, "before_cursor_execute", count)
    try:
        asked = [*many, *(f"T-Y{n:05d}" for n in range(700)), *many[:10]]  # repeats too
        found = read(store, NORTH, asked, link_template=BY_ID)
    finally:
        event.remove(store, "before_cursor_execute", count)
    assert set(found) == set(many)  # every one in scope (links), none of clinic-y
    assert sum(c.phone is not None for c in found.values()) == len(many[::2])
    assert len(set(asked)) == 1934 and len(statements) == 4  # at most 500 ids a query


def test_the_synthetic_clinics_contacts_stay_in_their_clinics(store: Engine) -> None:
    clients, copy = tables.copies["clients"], tables.copies["client_contacts"]
    with store.connect() as conn:
        clinic_of = dict(conn.execute(select(clients.c.client_id, clients.c.clinic_id)).all())
        with_row = set(conn.execute(select(copy.c.client_id)).scalars())
    every = sorted(clinic_of)
    assert set(read(store, ADMIN, every)) == with_row
    north = Caller("k", "case_manager", ("clinic-north",))
    found = read(store, north, every)
    assert found and {clinic_of[c] for c in found} == {"clinic-north"}
    assert set(found) == {c for c in with_row if clinic_of[c] == "clinic-north"}


@pytest.mark.parametrize(("phone", "href"), [
    ("(617) 555-0142", "tel:6175550142"),
    ("+1 (617) 555-0142", "tel:+16175550142"),
    (" +44 20 7946 0958 ", "tel:+442079460958"),
    ("617.555.0142 ext. 12", "tel:6175550142"),
    ("617-555-0142x12", "tel:6175550142"),
    ("617 555 0142 EXT 3", "tel:6175550142"),
    ("555-0142", "tel:5550142"),
    ("555-014", None),  # six digits: nothing to dial
    ("x1234567", None),  # an extension alone
    ("", None),
    (None, None),
    ("1-800-FLOWERS", None),
])
def test_tel_href(phone: str | None, href: str | None) -> None:
    assert tel_href(phone) == href
