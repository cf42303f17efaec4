"""42 CFR Part 2 security labels and the redisclosure notice on every FHIR resource we disclose.

Every record here is a Part 2 substance-use treatment record. The labels tell the
receiving system how to handle it (HL7 DS4P, the FHIR security labels): restricted
confidentiality, substance use disorder sensitivity, the law that applies, and that it
may not be disclosed again without the patient's consent. Part 2 (42 CFR 2.32) also
requires a written notice with each disclosure; a label is not one, so the notice
travels as ``RiskAssessment.note`` too.

Codes checked against HL7 Terminology (THO): v3-Confidentiality ``R``; v3-ActCode
``SUD`` (newer than R4's bundled copy of ActCode, which has only the older ``ETH``),
``42CFRPart2`` (ActUSPrivacyLaw) and ``NORDSCLCD`` (RefrainPolicy).
"""

from __future__ import annotations

from typing import Any

from retention.access.consent import NOTICE

CONFIDENTIALITY = "http://terminology.hl7.org/CodeSystem/v3-Confidentiality"
ACT_CODE = "http://terminology.hl7.org/CodeSystem/v3-ActCode"

RESTRICTED = {"system": CONFIDENTIALITY, "code": "R", "display": "restricted"}
SUD = {"system": ACT_CODE, "code": "SUD",
       "display": "substance use disorder information sensitivity"}
PART_2 = {"system": ACT_CODE, "code": "42CFRPart2", "display": "42 CFR Part2"}
NO_REDISCLOSURE = {"system": ACT_CODE, "code": "NORDSCLCD",
                   "display": "no redisclosure without consent directive"}
SECURITY_LABELS = (RESTRICTED, SUD, PART_2, NO_REDISCLOSURE)

# Resources that have a ``note`` (Annotation) element to carry the notice in.
WITH_NOTE = frozenset({"RiskAssessment"})


def label(resource: dict[str, Any]) -> dict[str, Any]:
    """``resource`` with the Part 2 labels in ``meta.security`` and, where it has a note, the
    notice; changed in place and returned."""
    meta = resource.setdefault("meta", {})
    present = {(c["system"], c["code"]) for c in meta.get("security", [])}
    meta["security"] = [*meta.get("security", []),
                        *(dict(c) for c in SECURITY_LABELS
                          if (c["system"], c["code"]) not in present)]
    if resource.get("resourceType") in WITH_NOTE:
        notes = resource.setdefault("note", [])
        if not any(n.get("text") == NOTICE for n in notes):
            notes.append({"text": NOTICE})
    return resource
