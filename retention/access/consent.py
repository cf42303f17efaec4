"""42 CFR Part 2 consent: which clients' records an outside recipient may be given.

Every record this service holds is a substance-use treatment record. The clinic's own
staff (case managers on the pages, analysts, administrators) use them inside the
program; a disclosure to anyone else (an EHR through an ``ehr`` key, a SMART Backend
Services client, a CDS Hooks client) needs the client's written consent (42 CFR 2.31,
2.33). The clinic maps its consents onto the contract's ``consents`` table; the ETL
keeps a checked copy (``clinic_consents``).

A consent covers a disclosure on day D to recipient R for purpose P when it names R
itself or a class of recipients the clinic counts R in (``class:<name>``, configured in
``[disclosure.recipient_classes]``), names P, is effective (``effective_on <= D``), has
not expired (no ``expires_on``, or ``D <= expires_on``) and was not revoked before the
disclosure (``revoked_at`` after it, or none; 2.31(a)(6)). Anything else withholds the
client, with the reason written to the audit record: the accounting of disclosures
(2.25) and of refusals comes from the same trail. Functions take a connection first and
never commit.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

import orjson
from sqlalchemy import ColumnElement, Connection, exists, false, func, or_, select

from retention.access.keys import RECIPIENT_ROLES, Caller
from retention.store.tables import api_keys, audit_log, copies

consents = copies["consents"]

# 42 CFR 2.32(a)(1), the notice that must accompany each disclosure made with consent
# (as revised by the 2024 final rule, 89 FR 12472; the full statement, not 2.32(a)(2)'s
# short one), with the consent's scope in words (2.32(b), ``Verdict.scope``).
NOTICE = (
    "This record which has been disclosed to you is protected by Federal confidentiality "
    "rules (42 CFR part 2). These rules prohibit you from using or disclosing this record, "
    "or testimony that describes the information contained in this record, in any civil, "
    "criminal, administrative, or legislative proceedings by any Federal, State, or local "
    "authority, against the patient, unless authorized by the consent of the patient, "
    "except as provided at 42 CFR 2.12(c)(5) or as authorized by a court in accordance with "
    "42 CFR 2.64 or 2.65. In addition, the Federal rules prohibit you from making any other "
    "use or disclosure of this record unless at least one of the following applies: (A) "
    "Further use or disclosure is expressly permitted by the written consent of the "
    "individual whose information is being disclosed in this record or as otherwise "
    "permitted by 42 CFR part 2. (B) You are a covered entity or business associate and "
    "have received the record for treatment, payment, or health care operations, or (C) "
    "You have received the record from a covered entity or business associate as "
    "permitted by 45 CFR part 164, subparts A and E. A general authorization for the "
    "release of medical or other information is NOT sufficient to meet the required "
    "elements of written consent to further use or redisclose the record (see 42 CFR 2.31)."
)

# Why a client was withheld from an outside recipient, most specific first.
NO_RECIPIENT = "key_names_no_recipient"
REVOKED = "consent_revoked"
EXPIRED = "consent_expired"
NOT_YET = "consent_not_yet_effective"
OTHER_PURPOSE = "consent_for_another_purpose"
OTHER_RECIPIENT = "consent_for_another_recipient"
NO_CONSENT = "no_consent"
CONSENTED = "consented"


def is_outside(caller: Caller) -> bool:
    """Whether the caller acts for a recipient outside the clinic (needs consent)."""
    return caller.recipient is not None or caller.role in RECIPIENT_ROLES


def names_for(recipient: str, classes: Mapping[str, Sequence[str]]) -> tuple[str, ...]:
    """What a consent covering ``recipient`` may name: it, or a class it is in."""
    return (recipient, *(f"class:{name}" for name, members in sorted(classes.items())
                         if recipient in members))


@dataclass(frozen=True)
class Verdict:
    """Whether one client may be disclosed, and under which consent or why not."""

    client_id: str
    reason: str
    consent_id: str | None = None
    # For a disclosure: the consent's scope in words, which must accompany it (2.32(b)).
    scope: str | None = None

    @property
    def allowed(self) -> bool:
        return self.reason == CONSENTED


def covers(row: Any, names: Sequence[str], purpose: str, at: datetime) -> str:
    """Why one consent row does or does not cover a disclosure at ``at``."""
    if row.recipient not in names:
        return OTHER_RECIPIENT
    if row.purpose != purpose:
        return OTHER_PURPOSE
    if row.revoked_at is not None and row.revoked_at <= at:
        return REVOKED
    day = at.date()
    if row.effective_on > day:
        return NOT_YET
    if row.expires_on is not None and row.expires_on < day:
        return EXPIRED
    return CONSENTED


# The order reasons are preferred in when a client has several consents: a revoked one
# for this recipient says more than a consent for someone else.
_SPECIFIC = (CONSENTED, REVOKED, EXPIRED, NOT_YET, OTHER_PURPOSE, OTHER_RECIPIENT, NO_CONSENT)


def check(connection: Connection, caller: Caller, client_ids: Iterable[str], policy: Policy
          ) -> dict[str, Verdict]:
    """Each client's verdict for a disclosure to ``caller`` under ``policy``."""
    wanted = list(dict.fromkeys(client_ids))
    if not is_outside(caller):
        return {c: Verdict(c, CONSENTED) for c in wanted}
    if caller.recipient is None:
        return {c: Verdict(c, NO_RECIPIENT) for c in wanted}
    names = names_for(caller.recipient, policy.classes)
    best: dict[str, Verdict] = {c: Verdict(c, NO_CONSENT) for c in wanted}
    if not wanted:
        return best
    rows = connection.execute(
        select(consents).where(consents.c.client_id.in_(wanted))
        .order_by(consents.c.client_id, consents.c.consent_id))
    for row in rows:
        reason = covers(row, names, policy.purpose, policy.at)
        held = best[row.client_id]
        if _SPECIFIC.index(reason) < _SPECIFIC.index(held.reason):
            best[row.client_id] = Verdict(row.client_id, reason, row.consent_id,
                                          scope_of(row) if reason == CONSENTED else None)
    return best


def scope_of(row: Any) -> str:
    """A consent's scope in words: what 2.32(b) allows in place of a copy of the consent."""
    until = f"until {row.expires_on:%Y-%m-%d}" if row.expires_on else "until revoked"
    return (f"Disclosed under the client's consent {row.consent_id}: to "
            f"{row.recipient.replace('class:', 'the class ')}, for {row.purpose.replace('_', ' ')},"
            f" effective {row.effective_on:%Y-%m-%d} {until}.")


@dataclass(frozen=True)
class Policy:
    """What a disclosure is checked against: its purpose, its time, the recipient classes."""

    purpose: str
    at: datetime  # naive, in the clinic's time zone, like the consents' own times
    classes: Mapping[str, Sequence[str]]

    @classmethod
    def at_utc(cls, purpose: str, now_utc: datetime, clinic_timezone: str,
               classes: Mapping[str, Sequence[str]]) -> Policy:
        """The policy for a disclosure at ``now_utc`` (naive UTC, the service's clock)."""
        local = now_utc.replace(tzinfo=UTC).astimezone(ZoneInfo(clinic_timezone))
        return cls(purpose, local.replace(tzinfo=None), classes)


def consented_clause(caller: Caller, client_id: Any, policy: Policy) -> ColumnElement[bool]:
    """SQL: the client (a column) has a consent covering a disclosure to ``caller``.

    The scoped reads put it in their WHERE for an outside caller, so a withheld client is
    neither returned nor counted in ranks.
    """
    if caller.recipient is None:
        return false()
    c, day = consents.c, policy.at.date()
    return exists().where(
        c.client_id == client_id,
        c.recipient.in_(names_for(caller.recipient, policy.classes)),
        c.purpose == policy.purpose,
        c.effective_on <= day,
        or_(c.expires_on.is_(None), c.expires_on >= day),
        or_(c.revoked_at.is_(None), c.revoked_at > policy.at),
    )


def audit_detail(verdicts: Mapping[str, Verdict]) -> dict[str, Any]:
    """What an audit record keeps of a disclosure: consents used and reasons withheld."""
    return {
        "consents": {c: v.consent_id for c, v in verdicts.items() if v.allowed},
        "withheld": {c: v.reason for c, v in verdicts.items() if not v.allowed},
    }


def consent_count(connection: Connection) -> int:
    """How many consents the clinic copy holds."""
    return int(connection.execute(select(func.count()).select_from(consents)).scalar_one())


def warnings(connection: Connection, at: datetime) -> list[str]:
    """What an operator must know at start: integrations that would be given nothing."""
    out = []
    if consent_count(connection) == 0:
        out.append("the clinic data maps no consents (contract table `consents`): EHR "
                   "integrations (ehr keys, SMART and CDS Hooks clients) are given no client "
                   "data until it does (docs/api.md, 'Consent and disclosure')")
    k = api_keys.c
    unnamed = connection.execute(
        select(func.count()).select_from(api_keys)
        .where(k.role.in_(sorted(RECIPIENT_ROLES)), k.recipient.is_(None),
               k.revoked_at.is_(None), or_(k.expires_at.is_(None), k.expires_at > at))
    ).scalar_one()
    if unnamed:
        out.append(f"{unnamed} live ehr key(s) name no recipient, so no consent can cover "
                   "them and they are given no client data: replace each with `retention "
                   "keys create --role ehr --recipient ID ...` and revoke the old one")
    return out


def disclosures(connection: Connection, client_id: str, start: datetime, end: datetime,
                withheld: bool = False) -> list[dict[str, Any]]:
    """The accounting of disclosures of one client's records to outside recipients (2.25).

    Each record of an outside recipient's request that returned the client: when, to
    whom (recipient and the key or client it used), what, and under which consent. With
    ``withheld``, also the requests for the client that were refused, and why.
    """
    a = audit_log.c
    needle = orjson.dumps(client_id).decode()
    for special in ("\\", "%", "_"):  # LIKE's own characters, escaped
        needle = needle.replace(special, "\\" + special)
    rows = connection.execute(
        select(audit_log).where(a.at >= start, a.at < end, a.recipient.is_not(None),
                                a.client_ids_json.like(f"%{needle}%", escape="\\"))
        .order_by(a.audit_id))
    out = []
    for r in rows:
        if client_id not in json.loads(r.client_ids_json):
            continue
        detail = json.loads(r.detail) if r.detail else {}
        consent_id = (detail.get("consents") or {}).get(client_id)
        reason = (detail.get("withheld") or {}).get(client_id)
        disclosed = r.outcome == "ok" and r.status == 200 and consent_id is not None
        if not disclosed and not withheld:
            continue
        out.append({"at": r.at, "recipient": r.recipient, "credential": r.key_id,
                    "what": DISCLOSED.get(r.action, r.action), "action": r.action,
                    "disclosed": disclosed, "consent_id": consent_id,
                    "withheld_because": None if disclosed else (reason or r.outcome),
                    "request_id": r.request_id})
    return out


# What each action discloses, in words for the client reading the accounting.
DISCLOSED = {
    "risk_list.read": "an entry on the dropout-risk list (risk, tier and reasons)",
    "client_risk.read": "the client's dropout risk, its reasons and recent history",
    "fhir.risk_assessment.search": "FHIR RiskAssessment(s): dropout risk and reasons",
    "fhir.risk_assessment.read": "a FHIR RiskAssessment: dropout risk and reasons",
    "cds.patient_view": "a CDS Hooks card: dropout risk tier and reasons",
}
