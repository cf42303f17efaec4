"""The synthetic clinic's contact details: how case managers reach each client.

MADE-UP DATA. Names are drawn from fixed lists of given and family names, and every
phone number is in the range the North American Numbering Plan keeps for fiction
(555-0100 to 555-0199), under varied area codes: no number here rings anyone. Most
clients prefer a call or a text and allow both; some refuse one, a few are not known
either way. Most speak English, about 15% Spanish, a few Brazilian Portuguese,
Vietnamese, Chinese (simplified script) or Haitian Creole. About 5% of clients have no
contact row at all and some rows have no phone, so the pages meet both.

Drawn from a Generator of its own (seeded from the config's seed), never from the
simulation's stream nor the consents': the other tables, the features and the models
stay as they were.
"""

from __future__ import annotations

import numpy as np

from retention.clinic.synth.config import DAY, SynthConfig, day_number
from retention.clinic.synth.consents import first_admissions
from retention.clinic.synth.frames import Sink

GIVEN_NAMES = (
    "Aaliyah", "Adebayo", "Aiyana", "Alejandro", "Amara", "Anh", "Beatriz", "Carlos",
    "Daniel", "Darnell", "Deshawn", "Elizabeth", "Emily", "Fatima", "Gabriel", "Grace",
    "Hana", "Ibrahim", "Imani", "Jamal", "Jonathan", "Jose", "Katherine", "Kenji", "Lakota",
    "Luis", "Maria", "Mei", "Michael", "Nadia", "Omar", "Priya", "Robert", "Rosa", "Samuel",
    "Sofia", "Thanh", "Valentina", "Wei", "William",
)
FAMILY_NAMES = (
    "Adeyemi", "Ali", "Begay", "Brown", "Chen", "Cohen", "Diallo", "Garcia", "Gonzalez",
    "Hernandez", "Jean-Baptiste", "Johnson", "Khan", "Kim", "Kowalski", "Le", "Lee", "Lopez",
    "Martinez", "Mensah", "Murphy", "Nguyen", "Novak", "O'Brien", "Okafor", "Oliveira",
    "Park", "Patel", "Pham", "Pierre", "Rodriguez", "Santos", "Shah", "Silva", "Singh",
    "Smith", "Tran", "Tsosie", "Wang", "Williams",
)
# Short forms a client may go by; a client whose name has none may go by another name.
SHORT_FORMS = {
    "Alejandro": "Alex", "Daniel": "Dan", "Elizabeth": "Liz", "Gabriel": "Gabe",
    "Jonathan": "Jon", "Jose": "Pepe", "Katherine": "Kate", "Michael": "Mike",
    "Robert": "Bobby", "Samuel": "Sam", "Valentina": "Vale", "William": "Will",
    "Beatriz": "Bia", "Deshawn": "Shawn", "Fatima": "Tima",
}
OTHER_NAMES = ("Jay", "Max", "Sky", "River", "Dee", "Frankie", "Nico", "Lou", "Cruz", "Ren")
AREA_CODES = ("212", "213", "305", "312", "404", "415", "503", "512", "602", "617", "702",
              "718", "808", "907", "929", "210")
FICTIONAL_EXCHANGE = "555"  # 555-0100 to 555-0199: reserved for fiction

CHANNEL_SHARES = {"phone": 0.50, "text": 0.36, "email": 0.05, "in_person": 0.05,
                  "letter": 0.04}
LANGUAGE_SHARES = {"en": 0.78, "es": 0.15, "pt-BR": 0.02, "vi": 0.02, "zh-Hans": 0.015,
                   "ht": 0.015}
NO_ROW_SHARE = 0.05
NO_PHONE_SHARE = 0.06
PREFERRED_NAME_SHARE = 0.30
_STREAM = 40_411  # mixed into the seed: a stream apart from the simulation's and consents'


def fictional_phone(area_code: str, line: int) -> str:
    """A number in the fictional range: ``(617) 555-0142`` for line 42 (0-99)."""
    if not 0 <= line <= 99:
        raise ValueError("the fictional range has lines 0100 to 0199")
    return f"({area_code}) {FICTIONAL_EXCHANGE}-01{line:02d}"


def add_contacts(sink: Sink, config: SynthConfig) -> None:
    """Append each client's contact row to ``sink`` (all but about 5%), written on the day
    of their first admission or, for some, changed later before the snapshot."""
    rng = np.random.default_rng([_STREAM, config.seed])
    end = day_number(config.end)
    first_admitted = first_admissions(sink)
    clients = [str(c[0]) for c in sink.clients]
    n = len(clients)
    absent = rng.random(n) < NO_ROW_SHARE
    no_phone = rng.random(n) < NO_PHONE_SHARE
    if n >= 20:  # both cases at least once in any clinic a page is tried on
        first, second = (int(i) for i in rng.permutation(n)[:2])
        absent[first], no_phone[second], absent[second] = True, True, False
    channels, channel_p = list(CHANNEL_SHARES), np.array(list(CHANNEL_SHARES.values()))
    languages, language_p = list(LANGUAGE_SHARES), np.array(list(LANGUAGE_SHARES.values()))
    for number, client_id in enumerate(clients):
        given = GIVEN_NAMES[int(rng.integers(len(GIVEN_NAMES)))]
        family = FAMILY_NAMES[int(rng.integers(len(FAMILY_NAMES)))]
        preferred = _preferred_name(rng, given)
        area = AREA_CODES[int(rng.integers(len(AREA_CODES)))]
        phone = None if no_phone[number] else fictional_phone(area, int(rng.integers(100)))
        channel = channels[int(rng.choice(len(channels), p=channel_p / channel_p.sum()))]
        if phone is None and channel in ("phone", "text"):
            channel = "letter" if rng.random() < 0.5 else "in_person"
        may_text = _consent_to(rng, 0.76, 0.16)
        may_call = _consent_to(rng, 0.84, 0.08)
        if channel == "text":
            may_text = True
        if channel == "phone":
            may_call = True
        language = languages[int(rng.choice(len(languages), p=language_p / language_p.sum()))]
        admitted = first_admitted.get(client_id, end - 1)
        changed = admitted + int(rng.random() * (end - admitted)) if rng.random() < 0.3 \
            else admitted
        written = min(changed, end - 1) * DAY + 8 * 60 + int(rng.integers(0, 600))
        if absent[number]:
            continue  # drawn all the same: whether a client has a row moves no one else's
        sink.contacts.append((client_id, f"{given} {family}", preferred, phone, channel,
                              may_text, may_call, language, written))


def _preferred_name(rng: np.random.Generator, given: str) -> str | None:
    """About 30% go by a short form of their given name, or by another name."""
    if rng.random() >= PREFERRED_NAME_SHARE:
        return None
    other = OTHER_NAMES[int(rng.integers(len(OTHER_NAMES)))]
    return SHORT_FORMS.get(given, other)


def _consent_to(rng: np.random.Generator, yes: float, no: float) -> bool | None:
    """True with ``yes``, False with ``no``, else not known (None)."""
    r = rng.random()
    return True if r < yes else False if r < yes + no else None
