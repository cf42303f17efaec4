"""The synthetic clinic as a FHIR R4 Bulk Data export: NDJSON files and a manifest.

Written by the same mapping the reader (``retention.etl.fhir_ndjson``) reads with, so
tests, the benchmark and a demo have an export whose contract rows are known. An
incremental export (``since``) holds only the resources changed since then, and the
resources deleted (a ``deleted`` file of DELETE Bundles, Bulk Data v2).

What FHIR does not carry is made up here and never read back: an Appointment's end
(its start plus 50 minutes: R4 wants both or neither), a Consent's scope and category.
What the contract holds and FHIR carries once only is written once: a client's
identifiers and contact details share the Patient's ``meta.lastUpdated``. Session notes
(``session_observations``) have no FHIR mapping and are not written (``as_exported``
gives the frames as the export carries them).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote
from zoneinfo import ZoneInfo

import numpy as np
import orjson
import pandas as pd

from retention.clinic import contract
from retention.etl.fhir_ndjson import FhirMapping

# Compact, as Bulk Data servers write; numpy scalars a frame may hold as numbers.
ORJSON_OPTIONS = orjson.OPT_SERIALIZE_NUMPY
PREFERRED_STATUS = {"scheduled": "booked", "attended": "fulfilled", "no_show": "noshow"}
CANCELLATIONS = ("late_cancel", "cancelled_by_client", "cancelled_by_clinic")
SESSION_MINUTES = 50


def as_exported(frames: Mapping[str, pd.DataFrame]) -> dict[str, pd.DataFrame]:
    """The frames as an export carries them: a client's identifiers and contact details
    last changed when the Patient did (the later of the two); no session notes."""
    out = {name: frame.copy() for name, frame in frames.items()}
    if "session_observations" in out:
        out["session_observations"] = out["session_observations"].iloc[0:0]
    stamps = _patient_stamps(frames)
    for table in ("client_identifiers", "client_contacts"):
        frame = out[table]
        frame["updated_at"] = frame["client_id"].map(stamps).astype("datetime64[us]")
    return out


def _patient_stamps(frames: Mapping[str, pd.DataFrame]) -> pd.Series:
    """Each client's Patient.meta.lastUpdated: the latest of its identifiers' and contact
    details' updated_at, else its first episode's."""
    parts = [frames[t][["client_id", "updated_at"]] for t in ("client_identifiers",
                                                              "client_contacts")]
    first_episode = frames["episodes"].groupby("client_id")["updated_at"].min()
    latest = pd.concat(parts).groupby("client_id")["updated_at"].max()
    return latest.combine_first(first_episode)


def write_export(frames: Mapping[str, pd.DataFrame], directory: Path, transaction_time: datetime,
                 since: datetime | None = None, *, mapping: FhirMapping | None = None,
                 deleted: Mapping[str, Iterable[str]] | None = None) -> Path:
    """Write ``frames`` as one ``$export`` folder at ``directory`` (created) and return it.

    ``transaction_time`` and ``since`` are the manifest's times (naive ones are the
    clinic's local time, as the frames' are); with ``since`` only resources whose
    ``meta.lastUpdated`` is at or after it are written, and ``deleted`` (resource type ->
    ids) go in a deleted-resources file.
    """
    mapping = mapping or FhirMapping.default()
    writer = _Writer(frames, mapping)
    transaction_time = writer.aware(transaction_time)
    since = None if since is None else writer.aware(since)
    directory.mkdir(parents=True, exist_ok=True)
    mark = None if since is None else since.astimezone(writer.zone).replace(tzinfo=None)
    outputs = []
    for kind, resources in (("Patient", writer.patients()), ("EpisodeOfCare", writer.episodes()),
                            ("Appointment", writer.appointments()),
                            ("QuestionnaireResponse", writer.responses()),
                            ("Consent", writer.consents())):
        name = f"{kind}.ndjson"
        count = 0
        with (directory / name).open("wb") as handle:
            for updated, resource in resources:
                if mark is not None and updated < mark:
                    continue
                handle.write(orjson.dumps(resource, option=ORJSON_OPTIONS) + b"\n")
                count += 1
        outputs.append({"type": kind, "url": name, "count": count})
    request = "$export"
    if since is not None:
        request += "?_since=" + quote(since.isoformat())
    manifest: dict[str, Any] = {"transactionTime": transaction_time.isoformat(),
                                "request": request, "requiresAccessToken": False,
                                "output": outputs, "error": []}
    gone = [(kind, rid) for kind, ids in (deleted or {}).items() for rid in ids]
    if gone:
        with (directory / "deleted.ndjson").open("w", encoding="utf-8") as handle:
            for kind, rid in gone:
                handle.write(json.dumps({
                    "resourceType": "Bundle", "type": "transaction",
                    "entry": [{"request": {"method": "DELETE", "url": f"{kind}/{rid}"}}]}) + "\n")
        manifest["deleted"] = [{"type": "Bundle", "url": "deleted.ndjson"}]
    (directory / "manifest.json").write_text(json.dumps(manifest, indent=2), encoding="utf-8")
    return directory


def _inverse(codes: Mapping[str, str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for fhir_code, ours in codes.items():
        out.setdefault(ours, fhir_code)
    return out


def _records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    """Rows as dicts of Python values, a missing one as None (one vectorised pass, not a
    check per value)."""
    clean = frame.astype(object).where(frame.notna(), None)
    return [{str(k): v for k, v in row.items()} for row in clean.to_dict("records")]


def _missing(value: Any) -> bool:
    return value is None or value is pd.NaT or value is pd.NA or (
        isinstance(value, float | np.floating) and np.isnan(value))


def _ref(kind: str, rid: str) -> dict[str, str]:
    return {"reference": f"{kind}/{rid}"}


class _Writer:
    """Contract rows as R4 resources, by the mapping read backwards."""

    def __init__(self, frames: Mapping[str, pd.DataFrame], mapping: FhirMapping) -> None:
        self.f = frames
        self.m = mapping
        self.zone = ZoneInfo(mapping.timezone)

    def aware(self, value: datetime) -> datetime:
        return value if value.tzinfo is not None else value.replace(tzinfo=self.zone)

    def instant(self, value: Any) -> str:
        stamp = value.to_pydatetime() if isinstance(value, pd.Timestamp) else (
            value if isinstance(value, datetime) else pd.Timestamp(value).to_pydatetime())
        return stamp.replace(tzinfo=self.zone).isoformat()

    def when(self, value: Any) -> datetime:
        """A frame's timestamp as a naive datetime (what the ``since`` cut compares)."""
        return value.to_pydatetime() if isinstance(value, pd.Timestamp) else (
            value if isinstance(value, datetime) else pd.Timestamp(value).to_pydatetime())

    def day(self, value: Any) -> str:
        if isinstance(value, date) and not isinstance(value, datetime):
            return value.isoformat()
        return pd.Timestamp(value).date().isoformat()

    def meta(self, updated: Any) -> dict[str, str]:
        return {"lastUpdated": self.instant(updated)}

    def patients(self) -> Iterator[tuple[datetime, dict[str, Any]]]:
        pm = self.m.patient
        stamps = _patient_stamps(self.f).to_dict()
        identifiers: dict[Any, list[dict[str, Any]]] = {}
        for i in _records(self.f["client_identifiers"]):
            identifiers.setdefault(i["client_id"], []).append(i)
        contacts = {r["client_id"]: r for r in _records(self.f["client_contacts"])}
        for c in _records(self.f["clients"]):
            rid = c["client_id"]
            updated = self.when(stamps[rid])
            p: dict[str, Any] = {"resourceType": "Patient", "id": rid, "meta": self.meta(updated),
                                 "managingOrganization": _ref("Organization", c["clinic_id"])}
            extensions = self.race(c["race_ethnicity"])
            if c["case_manager_id"] and pm.case_manager == "generalPractitioner":
                p["generalPractitioner"] = [_ref("Practitioner", c["case_manager_id"])]
            if c["birth_year"] is not None:
                p["birthDate"] = f"{int(c['birth_year']):04d}"
            if c["sex"]:
                p["gender"] = c["sex"]
            ids = [{"system": i["system"], "value": i["value"]} for i in identifiers.get(rid, [])]
            if ids:
                p["identifier"] = ids
            contact = contacts.get(rid)
            if contact is not None:
                extensions += self.contact(p, contact)
            if extensions:
                p["extension"] = extensions
            yield updated, p

    def race(self, label: str | None) -> list[dict[str, Any]]:
        pm = self.m.patient
        if not label:
            return []
        omb = "urn:oid:2.16.840.1.113883.6.238"
        ethnicity = _inverse(pm.ethnicities).get(label)
        if ethnicity is not None:
            return [{"url": pm.ethnicity_extension, "extension": [
                {"url": "ombCategory", "valueCoding": {"system": omb, "code": ethnicity}}]}]
        races = _inverse(pm.races)
        codes = ([races[label]] if label in races else list(pm.races)[:2]
                 if label == pm.multiple_races else [])
        parts: list[dict[str, Any]] = [{"url": "ombCategory",
                                        "valueCoding": {"system": omb, "code": code}}
                                       for code in codes]
        if not codes:
            parts.append({"url": "text", "valueString": label})
        return [{"url": pm.race_extension, "extension": parts}]

    def contact(self, p: dict[str, Any], c: dict[str, Any]) -> list[dict[str, Any]]:
        """Contact details into ``p``; returns the extensions they need."""
        pm = self.m.patient
        names: list[dict[str, Any]] = []
        if c["display_name"]:
            *given, family = str(c["display_name"]).split(" ")
            names.append({"use": "official", "text": c["display_name"], "family": family,
                          **({"given": given} if given else {})})
        if c["preferred_name"]:
            names.append({"use": "usual", "given": [c["preferred_name"]]})
        if names:
            p["name"] = names
        if c["phone"]:
            p["telecom"] = [{"system": "phone", "value": c["phone"], "rank": 1}]
        if c["language"]:
            p["communication"] = [{"preferred": True, "language": {"coding": [
                {"system": "urn:ietf:bcp:47", "code": c["language"]}]}}]
        extensions: list[dict[str, Any]] = []
        if c["preferred_channel"]:
            extensions.append({"url": pm.preferred_channel_extension,
                               "valueCode": c["preferred_channel"]})
        for column, url in (("may_text", pm.may_text_extension),
                            ("may_call", pm.may_call_extension)):
            if c[column] is not None:
                extensions.append({"url": url, "valueBoolean": bool(c[column])})
        return extensions

    def episodes(self) -> Iterator[tuple[datetime, dict[str, Any]]]:
        em = self.m.episode
        programs, reasons = _inverse(em.programs), _inverse(em.discharge_reasons)
        clients = self.f["clients"]
        managers = dict(zip(clients["client_id"], clients["case_manager_id"], strict=True))
        for e in _records(self.f["episodes"]):
            updated = self.when(e["updated_at"])
            period = {"start": self.day(e["admitted_on"])}
            if e["discharged_on"] is not None:
                period["end"] = self.day(e["discharged_on"])
            r: dict[str, Any] = {
                "resourceType": "EpisodeOfCare", "id": e["episode_id"], "meta": self.meta(updated),
                "status": "finished" if e["discharged_on"] is not None else "active",
                "type": [{"coding": [{"system": em.program_system,
                                      "code": programs.get(e["program"], e["program"])}]}],
                "patient": _ref("Patient", e["client_id"]), "period": period}
            manager = managers.get(e["client_id"])
            if not _missing(manager) and self.m.patient.case_manager == "careManager":
                r["careManager"] = _ref("Practitioner", str(manager))
            extensions: list[dict[str, Any]] = []
            if e["planned_discharge_on"] is not None:
                extensions.append({"url": em.planned_discharge_extension,
                                   "valueDate": self.day(e["planned_discharge_on"])})
            if e["discharge_reason"] is not None:
                code = reasons.get(e["discharge_reason"], e["discharge_reason"])
                extensions.append({"url": em.discharge_reason_extension, "valueCodeableConcept": {
                    "coding": [{"system": em.discharge_reason_system, "code": code}]}})
            if extensions:
                r["extension"] = extensions
            yield updated, r

    def appointments(self) -> Iterator[tuple[datetime, dict[str, Any]]]:
        am = self.m.appointment
        services = _inverse(am.service_types)
        statuses = _inverse(am.statuses)
        statuses.update({k: v for k, v in PREFERRED_STATUS.items() if am.statuses.get(v) == k})
        reasons = {"late_cancel": am.late_cancel, "cancelled_by_client": am.cancelled_by_client,
                   "cancelled_by_clinic": am.cancelled_by_clinic}
        for a in _records(self.f["appointments"]):
            updated = self.when(a["updated_at"])
            start = pd.Timestamp(a["scheduled_at"])
            r: dict[str, Any] = {
                "resourceType": "Appointment", "id": a["appointment_id"],
                "meta": self.meta(updated),
                "extension": [{"url": am.episode_extension,
                               "valueReference": _ref("EpisodeOfCare", a["episode_id"])}],
                "serviceType": [{"coding": [{"system": am.service_type_system, "code": services.get(
                    a["service_type"], a["service_type"])}]}],
                "start": self.instant(start),
                "end": self.instant(start + timedelta(minutes=SESSION_MINUTES)),
                "participant": [{"actor": _ref("Patient", a["client_id"]), "status": "accepted"}]}
            if a["status"] in CANCELLATIONS:
                r["status"] = "cancelled"
                r["cancelationReason"] = {"coding": [{"system": am.cancellation_system,
                                                      "code": reasons[a["status"]][0]}]}
            else:
                r["status"] = statuses.get(a["status"], a["status"])
            if a["telehealth"]:
                r["appointmentType"] = {"coding": [{"system": am.telehealth_system,
                                                    "code": am.telehealth_codes[0]}]}
            if a["booked_at"] is not None:
                r["created"] = self.instant(a["booked_at"])
            if a["clinician_id"]:
                r["participant"].append({"actor": _ref("Practitioner", a["clinician_id"]),
                                         "status": "accepted"})
            yield updated, r

    def responses(self) -> Iterator[tuple[datetime, dict[str, Any]]]:
        qm = self.m.questionnaire
        # Each measure's items in item order, grouped once (not a frame per measure).
        ordered = self.f["alliance_items"].sort_values(["measure_id", "item_number"],
                                                       kind="stable")
        items: dict[Any, list[tuple[Any, Any]]] = {}
        for measure, number, response in zip(ordered["measure_id"].tolist(),
                                             ordered["item_number"].tolist(),
                                             ordered["response"].tolist(), strict=True):
            items.setdefault(measure, []).append((number, response))
        appts = self.f["appointments"]
        clinicians = dict(zip(appts["appointment_id"], appts["clinician_id"], strict=True))
        scores = {"score_total": qm.total_link_id, "goal": qm.goal_link_id,
                  "task": qm.task_link_id, "bond": qm.bond_link_id}
        for m in _records(self.f["alliance_measures"]):
            if m["instrument"] not in qm.instruments:
                raise ValueError(f"no questionnaire URL is configured for {m['instrument']} "
                                 "([questionnaire.instruments]): the reader would skip it")
            updated = self.when(m["updated_at"])
            clinician = clinicians.get(m["appointment_id"]) if m["appointment_id"] else None
            author = (_ref("Patient", m["client_id"]) if m["rater"] == "client" else
                      _ref("Practitioner", str(clinician) if not _missing(clinician)
                           else "therapist"))
            answers = [{"linkId": str(int(number)), "answer": [{"valueDecimal": float(response)}]}
                       for number, response in items.get(m["measure_id"], [])]
            answers += [{"linkId": link, "answer": [{"valueDecimal": float(m[column])}]}
                        for column, link in scores.items() if m[column] is not None]
            extensions = [{"url": self.m.appointment.episode_extension,
                           "valueReference": _ref("EpisodeOfCare", m["episode_id"])}]
            if m["appointment_id"]:
                extensions.append({"url": qm.appointment_extension,
                                   "valueReference": _ref("Appointment", m["appointment_id"])})
            r: dict[str, Any] = {
                "resourceType": "QuestionnaireResponse", "id": m["measure_id"],
                "meta": self.meta(updated), "extension": extensions,
                "questionnaire": qm.instruments[m["instrument"]][0], "status": "completed",
                "subject": _ref("Patient", m["client_id"]),
                "authored": self.instant(m["administered_at"]), "author": author}
            if answers:
                r["item"] = answers
            yield updated, r

    def consents(self) -> Iterator[tuple[datetime, dict[str, Any]]]:
        cm = self.m.consent
        purposes = _inverse(cm.purposes)
        prefix = contract.RECIPIENT_CLASS_PREFIX
        for k in _records(self.f["consents"]):
            updated = self.when(k["updated_at"])
            recipient = str(k["recipient"])
            actor = (_ref("Group", recipient[len(prefix):]) if recipient.startswith(prefix)
                     else _ref("Organization", recipient))
            period = {"start": self.day(k["effective_on"])}
            if k["expires_on"] is not None:
                period["end"] = self.day(k["expires_on"])
            r: dict[str, Any] = {
                "resourceType": "Consent", "id": k["consent_id"], "meta": self.meta(updated),
                "status": "inactive" if k["revoked_at"] is not None else "active",
                "scope": {"coding": [{
                    "system": "http://terminology.hl7.org/CodeSystem/consentscope",
                    "code": "patient-privacy"}]},
                "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0"}]}],
                "patient": _ref("Patient", k["client_id"]),
                "provision": {"type": "permit", "period": period, "actor": [{
                    "role": {"coding": [{
                        "system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType",
                        "code": "IRCP"}]},
                    "reference": actor}],
                    "purpose": [{"system": cm.purpose_system,
                                 "code": purposes.get(k["purpose"], k["purpose"])}]}}
            if k["revoked_at"] is not None:
                r["extension"] = [{"url": cm.revoked_extension,
                                   "valueDateTime": self.instant(k["revoked_at"])}]
            yield updated, r
