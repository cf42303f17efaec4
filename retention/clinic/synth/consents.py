"""The synthetic clinic's consents and EHR identifiers: every case a disclosure check meets.

Every client gets one MRN in the demo EHR's system. Most clients (80%) hold an
active "treatment" consent for the class of treating providers, for the demo EHR by
name, or both; the rest are spread over no consent, one that expired, one that was
revoked, one naming another EHR and one for another purpose, so a demo shows each.

Drawn from a Generator of their own (seeded from the config's seed), never from the
simulation's stream: the other tables, the features and the models stay as they were.
"""

from __future__ import annotations

import numpy as np

from retention.clinic.synth.config import DAY, SynthConfig, day_number
from retention.clinic.synth.frames import Sink

# The demo EHR's medical record numbers (an OID under the documentation arc 3.9999).
MRN_SYSTEM = "urn:oid:2.16.840.1.113883.3.9999.1"
DEMO_RECIPIENT = "demo-ehr"
OTHER_RECIPIENT = "other-ehr"
TREATING_PROVIDERS = "class:treating_providers"

# Each client's case and its share of clients; the first three are the active 80%.
CASES: dict[str, float] = {
    "class": 0.32,  # treatment, class:treating_providers
    "named": 0.20,  # treatment, demo-ehr
    "both": 0.28,  # both of the above
    "none": 0.04,  # no consent at all
    "expired": 0.04,  # treatment, demo-ehr, expired before the snapshot
    "revoked": 0.04,  # treatment, demo-ehr, revoked before the snapshot
    "other_recipient": 0.04,  # treatment, other-ehr only
    "other_purpose": 0.04,  # payment, demo-ehr only
}
_STREAM = 20_231  # mixed into the seed: a stream apart from the simulation's
_MRN_STEP = 7_654_321  # coprime to 10**7: client numbers map to distinct 7-digit MRNs


def first_admissions(sink: Sink) -> dict[str, int]:
    """Each client's first admission day: what their MRN, consents and contacts date from."""
    first: dict[str, int] = {}
    for episode in sink.episodes:
        client_id, admit_day = str(episode[1]), int(episode[3])
        first[client_id] = min(admit_day, first.get(client_id, admit_day))
    return first


def add_consents_and_identifiers(sink: Sink, config: SynthConfig) -> None:
    """Append each client's MRN and consents to ``sink``, dated from their first admission."""
    rng = np.random.default_rng([_STREAM, config.seed])
    end = day_number(config.end)
    first_admitted = first_admissions(sink)
    clients = [str(c[0]) for c in sink.clients]
    n = len(clients)
    names = list(CASES)
    shares = np.array(list(CASES.values()))
    cases = rng.choice(len(names), size=n, p=shares / shares.sum())
    # Each case at least once when there are enough clients, wherever it lands.
    for k, at in enumerate(rng.permutation(n)[:len(names)]):
        cases[at] = k
    offset = int(rng.integers(10**7))
    for number, (client_id, case) in enumerate(zip(clients, cases, strict=True)):
        admitted = first_admitted.get(client_id, end - 1)
        registered = admitted * DAY + 8 * 60 + int(rng.integers(0, 60))
        mrn = f"MRN{(offset + number * _MRN_STEP) % 10**7:07d}"
        sink.identifiers.append((MRN_SYSTEM, mrn, client_id, registered))
        _consents(sink, rng, client_id, names[int(case)], admitted, end)


def _consents(sink: Sink, rng: np.random.Generator, client_id: str, case: str,
              admitted: int, end: int) -> None:
    """The consent rows of one client's case: signed at intake, stamped before ``end``."""
    signed = admitted * DAY + 9 * 60 + int(rng.integers(0, 420))
    # Active consents run until revoked, or to a date past the snapshot.
    expires = None if rng.random() < 0.5 else end + int(rng.integers(30, 540))

    def consent(recipient: str, purpose: str, expires_on: int | None = expires,
                revoked: int | None = None, effective: int = admitted) -> None:
        sink.consents.append((client_id, recipient, purpose, effective, expires_on, revoked,
                              signed if revoked is None else revoked))

    if case in ("class", "both"):
        consent(TREATING_PROVIDERS, "treatment")
    if case in ("named", "both"):
        consent(DEMO_RECIPIENT, "treatment")
    if case == "expired":
        expired = max(admitted, end - 1 - int(rng.integers(0, 90)))
        consent(DEMO_RECIPIENT, "treatment", expired, effective=min(admitted, expired))
    if case == "revoked":
        day = admitted + int(rng.random() * (end - 1 - admitted))
        consent(DEMO_RECIPIENT, "treatment",
                revoked=max(day * DAY + 9 * 60 + int(rng.integers(0, 480)), signed + 1))
    if case == "other_recipient":
        consent(OTHER_RECIPIENT, "treatment")
    if case == "other_purpose":
        consent(DEMO_RECIPIENT, "payment")
