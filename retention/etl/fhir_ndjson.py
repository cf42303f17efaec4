"""Reading a FHIR R4 Bulk Data export (``$export`` NDJSON) onto the contract.

Most EHRs offer Bulk Data exports rather than access to their database. A directory
holds one or more export folders, each one ``$export``'s output with its
``manifest.json`` (the status response: ``transactionTime``, ``request``, ``output``,
``deleted``); a folder of NDJSON files without a manifest is one full export. The
source's state is the latest full export with each later incremental (``_since``)
export applied in ``transactionTime`` order: a resource replaces the one with the same
type and id, a ``deleted`` entry removes it. The rows of that state then pass the same
``since`` filters as the SQL sources' (``retention.etl.extract._statement``) on
``updated_at`` = ``meta.lastUpdated``, so an incremental run sees the rows changed and
a full reload reconciles deletions, as with a database.

Each line is parsed with its model (``fhir.resources`` ships no R4 package; R4B, 4.3,
is R4 with few changes, none known to touch the elements read here) and mapped at once
to contract values, text as a database driver would give it, so
``retention.etl.validation`` types and checks them:
a bad code or date is a row held under the usual rules. A line that is not a resource
of its file's type, or not valid FHIR, is handed over as a ``malformed_resource``
(``retention.etl.load.Extract``). Files are read line by line; the state holds the
mapped rows only, never the resources. ``docs/contract.md`` ("From FHIR Bulk Data")
says which element feeds which column. Session notes (``session_observations``) have
no FHIR mapping: no standard resource or code system carries a therapist's rupture
markers and repair steps, so that optional table is left empty.

fhir.resources is nearly all of the cost, so a cheap pre-scan (orjson) of every line
first finds each resource's newest version and whether the marks can let it through;
only those lines are validated, on several processes when there are many: a night's
cost follows what changed, not the size of the last full export.
"""

from __future__ import annotations

import contextlib
import gc
import itertools
import json
import logging
import multiprocessing
import re
import threading
import tomllib
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, field, fields, replace
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import orjson
import pandas as pd
from fhir.resources.R4B.appointment import Appointment
from fhir.resources.R4B.consent import Consent
from fhir.resources.R4B.episodeofcare import EpisodeOfCare
from fhir.resources.R4B.patient import Patient
from fhir.resources.R4B.questionnaireresponse import QuestionnaireResponse
from pydantic import ValidationError

from retention.clinic import contract
from retention.etl.extract import INCREMENTAL, SourceUnavailable
from retention.etl.load import MALFORMED_COLUMNS, Extract
from retention.settings import (
    CODED_COLUMNS,
    INSTRUMENT_CODE,
    INSTRUMENT_CODE_RULE,
    ConfigError,
)

if TYPE_CHECKING:
    from retention.clinic.registry import Registry

log = logging.getLogger(__name__)

MAPPING_FILE = Path(__file__).resolve().parents[2] / "config" / "mappings" / "fhir.toml"

# --- the mapping ----------------------------------------------------------------------


@dataclass(frozen=True)
class PatientMapping:
    """``[patient]``: clients, their identifiers and contact details."""

    identifier_systems: tuple[str, ...] = ()
    case_manager: str = "careManager"
    race_extension: str = "http://hl7.org/fhir/us/core/StructureDefinition/us-core-race"
    ethnicity_extension: str = "http://hl7.org/fhir/us/core/StructureDefinition/us-core-ethnicity"
    multiple_races: str = "multiracial"
    preferred_channel_extension: str = (
        "https://retention.example/fhir/StructureDefinition/preferred-contact-channel")
    may_text_extension: str = "https://retention.example/fhir/StructureDefinition/may-text"
    may_call_extension: str = "https://retention.example/fhir/StructureDefinition/may-call"
    races: Mapping[str, str] = field(default_factory=lambda: {
        "1002-5": "native_american", "2028-9": "asian", "2054-5": "black",
        "2076-8": "pacific_islander", "2106-3": "white"})
    ethnicities: Mapping[str, str] = field(default_factory=lambda: {"2135-2": "hispanic"})


@dataclass(frozen=True)
class EpisodeMapping:
    """``[episode]``: EpisodeOfCare as episodes."""

    program_system: str = "https://retention.example/fhir/CodeSystem/program"
    planned_discharge_extension: str = (
        "https://retention.example/fhir/StructureDefinition/planned-discharge")
    discharge_reason_extension: str = (
        "https://retention.example/fhir/StructureDefinition/discharge-reason")
    discharge_reason_system: str = "https://retention.example/fhir/CodeSystem/discharge-reason"
    programs: Mapping[str, str] = field(default_factory=dict)
    discharge_reasons: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class AppointmentMapping:
    """``[appointment]``: Appointment as appointments."""

    episode_extension: str = "http://hl7.org/fhir/StructureDefinition/workflow-episodeOfCare"
    service_type_system: str = "https://retention.example/fhir/CodeSystem/service-type"
    telehealth_system: str = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
    telehealth_codes: tuple[str, ...] = ("VR",)
    cancellation_system: str = (
        "http://terminology.hl7.org/CodeSystem/appointment-cancellation-reason")
    cancelled_by_client: tuple[str, ...] = (
        "pat", "pat-crs", "pat-cpp", "pat-dec", "pat-fb", "pat-lt", "pat-mt", "pat-mv",
        "pat-preg", "pat-swl", "pat-ucp")
    cancelled_by_clinic: tuple[str, ...] = (
        "prov", "prov-pers", "prov-dch", "prov-edu", "prov-hosp", "prov-labs", "prov-mri",
        "prov-onc", "maint", "meds-inc", "other", "oth-cms", "oth-err", "oth-fin", "oth-iv",
        "oth-int", "oth-mu", "oth-room", "oth-oerr", "oth-swie", "oth-weath")
    late_cancel: tuple[str, ...] = ("late",)
    statuses: Mapping[str, str] = field(default_factory=lambda: {
        "proposed": "scheduled", "pending": "scheduled", "booked": "scheduled",
        "waitlist": "scheduled", "arrived": "attended", "checked-in": "attended",
        "fulfilled": "attended", "noshow": "no_show",
        "entered-in-error": "cancelled_by_clinic"})
    service_types: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class QuestionnaireMapping:
    """``[questionnaire]``: QuestionnaireResponse as alliance measures and items."""

    appointment_extension: str = "https://retention.example/fhir/StructureDefinition/appointment"
    total_link_id: str = "total"
    goal_link_id: str = "goal"
    task_link_id: str = "task"
    bond_link_id: str = "bond"
    instruments: Mapping[str, tuple[str, ...]] = field(default_factory=lambda: {
        "SRS": ("https://retention.example/fhir/Questionnaire/srs",),
        "GSRS": ("https://retention.example/fhir/Questionnaire/gsrs",),
        "WAI-SR": ("https://retention.example/fhir/Questionnaire/wai-sr",),
        "ORS": ("https://retention.example/fhir/Questionnaire/ors",),
        "TAS": ("https://retention.example/fhir/Questionnaire/tas",)})


@dataclass(frozen=True)
class ConsentMapping:
    """``[consent]``: Consent as consents."""

    revoked_extension: str = "https://retention.example/fhir/StructureDefinition/revoked-at"
    purpose_system: str = "http://terminology.hl7.org/CodeSystem/v3-ActReason"
    purposes: Mapping[str, str] = field(default_factory=lambda: {
        "TREAT": "treatment", "HPAYMT": "payment", "HOPERAT": "health_care_operations",
        "COC": "care_coordination", "HRESCH": "research"})


SECTIONS: dict[str, type] = {"patient": PatientMapping, "episode": EpisodeMapping,
                             "appointment": AppointmentMapping,
                             "questionnaire": QuestionnaireMapping, "consent": ConsentMapping}
# Code tables whose values must be contract codes: (section, key) -> allowed values.
CODE_TABLES: dict[tuple[str, str], tuple[str, ...]] = {
    ("episode", "programs"): CODED_COLUMNS[("episodes", "program")],
    ("episode", "discharge_reasons"): CODED_COLUMNS[("episodes", "discharge_reason")],
    ("appointment", "statuses"): CODED_COLUMNS[("appointments", "status")],
    ("appointment", "service_types"): CODED_COLUMNS[("appointments", "service_type")],
    ("consent", "purposes"): CODED_COLUMNS[("consents", "purpose")],
}
CASE_MANAGER_SOURCES = ("careManager", "generalPractitioner")


@dataclass(frozen=True)
class FhirMapping:
    """What a clinic configures to read its FHIR export (``config/mappings/fhir.toml``)."""

    timezone: str = "UTC"
    patient: PatientMapping = field(default_factory=PatientMapping)
    episode: EpisodeMapping = field(default_factory=EpisodeMapping)
    appointment: AppointmentMapping = field(default_factory=AppointmentMapping)
    questionnaire: QuestionnaireMapping = field(default_factory=QuestionnaireMapping)
    consent: ConsentMapping = field(default_factory=ConsentMapping)

    @classmethod
    def default(cls) -> FhirMapping:
        """The defaults, which ``config/mappings/fhir.toml`` writes out (a test keeps them
        equal): the service needs no file when the clinic's EHR writes what they name."""
        return cls()

    @classmethod
    def from_file(cls, path: Path, registry: Registry | None = None) -> FhirMapping:
        try:
            with path.open("rb") as handle:
                raw = tomllib.load(handle)
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"FHIR mapping {path}: {exc}") from exc
        return cls.from_mapping(raw, str(path), registry=registry)

    @classmethod
    def from_mapping(cls, raw: Mapping[str, Any], where: str = "FHIR mapping",
                     registry: Registry | None = None) -> FhirMapping:
        """Check every key and value; a key the mapping does not know is refused (a typo
        would otherwise leave a default in force without a word).

        ``[questionnaire.instruments]`` may name any instrument code (as
        ``[etl.codes.alliance_measures.instrument]`` may); given the instrument
        ``registry`` (``Settings.instruments``), a code that is neither the contract's
        nor registered is refused too: its responses would be filed under a code
        nothing reads.
        """
        unknown = sorted(set(raw) - {"timezone", *SECTIONS})
        if unknown:
            raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)}; known: "
                              f"timezone, {', '.join(f'[{s}]' for s in SECTIONS)}")
        timezone = raw.get("timezone", "UTC")
        if not isinstance(timezone, str):
            raise ConfigError(f"{where}: timezone must be text (an IANA zone name)")
        try:
            ZoneInfo(timezone)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ConfigError(f"{where}: timezone {timezone!r} is not an IANA time zone") from exc
        parts: dict[str, Any] = {}
        for section, kind in SECTIONS.items():
            values = raw.get(section, {})
            if not isinstance(values, Mapping):
                raise ConfigError(f"{where}: [{section}] must be a table")
            parts[section] = _section(kind, section, values, where)
        out = cls(timezone=timezone, **parts)
        if out.patient.case_manager not in CASE_MANAGER_SOURCES:
            raise ConfigError(f"{where}: [patient] case_manager must be one of "
                              f"{', '.join(CASE_MANAGER_SOURCES)}")
        codes = sorted(out.questionnaire.instruments)
        malformed = [repr(c) for c in codes if not INSTRUMENT_CODE.fullmatch(c)]
        if malformed:
            raise ConfigError(f"{where}: [questionnaire.instruments] {', '.join(malformed)} "
                              f"are not instrument codes ({INSTRUMENT_CODE_RULE})")
        if registry is not None:
            unknown = [c for c in codes if c not in contract.INSTRUMENTS and c not in registry]
            if unknown:
                raise ConfigError(
                    f"{where}: [questionnaire.instruments] {', '.join(unknown)} are neither "
                    f"contract instruments ({', '.join(contract.INSTRUMENTS)}) nor registered "
                    f"in {registry.path}: register the form there (docs/contract.md, \"The "
                    "instrument registry\"), or correct the mapping")
        return out


def _section(kind: type, section: str, values: Mapping[str, Any], where: str) -> Any:
    """One section's dataclass from its table: each value of its default's type."""
    defaults = kind()
    known = {f.name: getattr(defaults, f.name) for f in fields(kind)}
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ConfigError(f"{where}: [{section}] unknown key(s) {', '.join(unknown)}; known: "
                          f"{', '.join(known)}")
    checked: dict[str, Any] = {}
    for key, value in values.items():
        name = f"[{section}] {key}"
        default = known[key]
        if isinstance(default, str):
            if not isinstance(value, str) or not value:
                raise ConfigError(f"{where}: {name} must be non-empty text")
            checked[key] = value
        elif isinstance(default, tuple):
            checked[key] = _texts(value, f"{where}: {name}")
        elif key == "instruments":
            if not isinstance(value, Mapping):
                raise ConfigError(f"{where}: {name} must be a table of lists of URLs")
            checked[key] = {str(k): _texts(v, f"{where}: {name}.{k}") for k, v in value.items()}
        else:
            if not isinstance(value, Mapping) or not all(
                    isinstance(v, str) for v in value.values()):
                raise ConfigError(f"{where}: {name} must be a table of codes (text)")
            allowed = CODE_TABLES.get((section, key))
            bad = sorted(v for v in value.values() if allowed and v not in allowed)
            if bad:
                raise ConfigError(f"{where}: {name} maps to unknown code(s) {', '.join(bad)}; "
                                  f"allowed: {', '.join(allowed or ())}")
            checked[key] = {str(k): v for k, v in value.items()}
    return replace(defaults, **checked)


def _texts(value: Any, name: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise ConfigError(f"{name} must be a list of non-empty text")
    return tuple(value)


# --- exports on disk -------------------------------------------------------------------

# The resource types read, and the contract table a resource of each type is held in
# when it cannot be read.
READ_TYPES: dict[str, str] = {
    "Patient": "clients", "EpisodeOfCare": "episodes", "Appointment": "appointments",
    "QuestionnaireResponse": "alliance_measures", "Consent": "consents",
}
MODELS: dict[str, Any] = {
    "Patient": Patient, "EpisodeOfCare": EpisodeOfCare, "Appointment": Appointment,
    "QuestionnaireResponse": QuestionnaireResponse, "Consent": Consent,
}
_TYPE_IN_NAME = re.compile(r"[A-Za-z]+")
_RESOURCE_TYPE = re.compile(rb'"resourceType"\s*:\s*"([A-Za-z]+)"')
KEEP_LINE = 20_000  # characters of an unreadable line the quarantine keeps


@dataclass(frozen=True)
class ExportFolder:
    """One ``$export``'s output: when it was taken, from when (None: a full export), files."""

    folder: Path
    transaction_time: datetime | None  # aware; None: no manifest (then the newest resource)
    since: datetime | None
    outputs: tuple[tuple[str | None, Path], ...]  # (resource type if known, file)
    deleted: tuple[Path, ...] = ()


def find_exports(directory: Path) -> list[ExportFolder]:
    """The export folders under ``directory`` (or ``directory`` itself), oldest first."""
    candidates = [directory] if _is_export(directory) else sorted(
        p for p in directory.iterdir() if p.is_dir() and _is_export(p))
    exports = [_export(p) for p in candidates]
    # Without a manifest an export's time is unknown until read: such a folder counts as
    # the oldest (it can only be a first full export; later ones come with manifests).
    return sorted(exports, key=lambda e: (e.transaction_time is not None,
                                          e.transaction_time or datetime.min.replace(tzinfo=UTC),
                                          e.folder.name))


def _is_export(path: Path) -> bool:
    return (path / "manifest.json").is_file() or any(path.glob("*.ndjson"))


def _export(folder: Path) -> ExportFolder:
    manifest_path = folder / "manifest.json"
    if not manifest_path.is_file():
        outputs = tuple((_type_from_name(p.name), p) for p in sorted(folder.glob("*.ndjson")))
        return ExportFolder(folder, None, None, outputs)
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        when = _instant(manifest["transactionTime"])
        request = str(manifest.get("request") or "")
        since_values = parse_qs(urlsplit(request).query).get("_since")
        # A '+' of the offset left unencoded in the request reads as a space.
        since = _instant(since_values[0].replace(" ", "+")) if since_values else None
        outputs = tuple((str(o["type"]) if o.get("type") else _type_from_name(str(o["url"])),
                         _local_file(folder, str(o["url"])))
                        for o in manifest.get("output") or [])
        deleted = tuple(_local_file(folder, str(d["url"])) for d in manifest.get("deleted") or [])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        # A manifest is written last: one that cannot be read is an export not finished.
        raise SourceUnavailable(f"the FHIR export {folder.name}: its manifest.json cannot be "
                                f"read ({type(exc).__name__})") from exc
    return ExportFolder(folder, when, since, outputs, deleted)


def _instant(text: Any) -> datetime:
    value = datetime.fromisoformat(str(text).replace("Z", "+00:00"))
    if value.tzinfo is None:
        raise ValueError("an instant without a time zone")
    return value


def _local_file(folder: Path, url: str) -> Path:
    """A manifest's file: relative names as they are, URLs by their last path segment
    (the files are fetched next to the manifest)."""
    name = urlsplit(url).path.rsplit("/", 1)[-1] if "://" in url else url
    path = (folder / name).resolve()
    if folder.resolve() not in path.parents:
        raise ValueError("a file outside the export folder")
    return path


def _type_from_name(name: str) -> str | None:
    """``Patient.ndjson``, ``1.Patient.ndjson``, ``patient_file_1.ndjson``: the type read."""
    lowered = {t.lower(): t for t in READ_TYPES}
    for token in _TYPE_IN_NAME.findall(Path(name).name):
        if token.lower() in lowered:
            return lowered[token.lower()]
    return None


def export_chain(exports: list[ExportFolder]) -> list[ExportFolder]:
    """The latest full export and the incremental ones after it, in order."""
    fulls = [i for i, e in enumerate(exports) if e.since is None]
    if not fulls:
        raise SourceUnavailable("the FHIR export directory holds incremental (_since) exports "
                                "only: a full export is needed to start from")
    chain = exports[fulls[-1]:]
    for before, after in itertools.pairwise(chain):
        if (before.transaction_time and after.since
                and after.since > before.transaction_time):
            log.warning("FHIR export %s starts (_since) after %s was taken: changes between "
                        "them are missing until the next full export", after.folder.name,
                        before.folder.name)
    return chain


# --- resources as contract values -------------------------------------------------------


@dataclass
class _Record:
    """One resource as contract values: its rows per table and when it last changed."""

    kind: str
    updated: datetime | None  # local, naive; None: not known
    rows: dict[str, list[tuple[Any, ...]]]
    links: dict[str, Any] = field(default_factory=dict)  # what other resources need of it


class _Mapper:
    """Resources as contract rows, by the clinic's mapping."""

    def __init__(self, mapping: FhirMapping) -> None:
        self.m = mapping
        self.zone = ZoneInfo(mapping.timezone)
        self.instrument_of: dict[str, str] = {}
        for instrument, urls in mapping.questionnaire.instruments.items():
            for url in urls:
                self.instrument_of[url] = instrument

    # values

    def stamp(self, value: Any) -> str | None:
        """A FHIR instant or dateTime as contract text: local time without a zone."""
        if value is None:
            return None
        if isinstance(value, datetime):
            local = value.astimezone(self.zone).replace(tzinfo=None) if value.tzinfo else value
            return local.isoformat(sep=" ")
        if isinstance(value, date):
            return value.isoformat()
        return str(value)  # a partial date or a leap second, as written

    def day(self, value: Any) -> str | None:
        """A FHIR date or dateTime as a contract date (the local day of a time)."""
        if isinstance(value, datetime):
            local = value.astimezone(self.zone) if value.tzinfo else value
            return local.date().isoformat()
        return self.stamp(value)

    def local(self, value: Any) -> datetime | None:
        if isinstance(value, datetime):
            return value.astimezone(self.zone).replace(tzinfo=None) if value.tzinfo else value
        return None

    def updated(self, resource: Any) -> tuple[str | None, datetime | None]:
        when = resource.meta.lastUpdated if resource.meta is not None else None
        return self.stamp(when), self.local(when)

    # resources

    def patient(self, p: Patient) -> _Record:
        pm = self.m.patient
        stamp, updated = self.updated(p)
        birth = p.birthDate
        birth_year: Any = birth.year if isinstance(birth, date) else (
            str(birth)[:4] if birth is not None else None)
        gp = next((i for r in p.generalPractitioner or []
                   if (i := _ref_id(r, "Practitioner")) is not None), None)
        client = (p.id, _ref_id(p.managingOrganization, "Organization"), None, birth_year,
                  p.gender, self.race(p))
        identifiers = [(i.system, i.value, p.id, stamp) for i in p.identifier or []
                       if i.system and i.value
                       and (not pm.identifier_systems or i.system in pm.identifier_systems)]
        rows: dict[str, list[tuple[Any, ...]]] = {"clients": [client],
                                                  "client_identifiers": identifiers}
        contact = self.contact(p, stamp)
        if contact is not None:
            rows["client_contacts"] = [contact]
        return _Record("Patient", updated, rows, {"gp": gp})

    def race(self, p: Patient) -> str | None:
        pm = self.m.patient
        ethnicity = _ext(p, pm.ethnicity_extension)
        for code in _omb_codes(ethnicity):
            if code in pm.ethnicities:
                return pm.ethnicities[code]
        race = _ext(p, pm.race_extension)
        labels = sorted({pm.races.get(c, c) for c in _omb_codes(race)})
        if len(labels) > 1:
            return pm.multiple_races
        if labels:
            return labels[0]
        return next((e.valueString for e in (race.extension or []) if e.url == "text"),
                    None) if race is not None else None

    def contact(self, p: Patient, stamp: str | None) -> tuple[Any, ...] | None:
        pm = self.m.patient
        names = p.name or []
        official = next((n for n in names if n.use == "official"), None) or next(
            (n for n in names if n.use not in ("usual", "nickname", "old")), None)
        usual = next((n for n in names if n.use in ("usual", "nickname")), None)
        phones = sorted((t for t in p.telecom or [] if t.system == "phone" and t.value),
                        key=lambda t: t.rank or 1_000_000)
        language = next((c for c in p.communication or [] if c.preferred), None) or next(
            iter(p.communication or []), None)
        channel = _ext(p, pm.preferred_channel_extension)
        may_text, may_call = (_ext(p, pm.may_text_extension), _ext(p, pm.may_call_extension))
        if not (official or usual or phones or language or channel or may_text or may_call):
            return None
        return (p.id, _name(official), _name(usual, given_only=True),
                phones[0].value if phones else None,
                channel.valueCode if channel is not None else None,
                may_text.valueBoolean if may_text is not None else None,
                may_call.valueBoolean if may_call is not None else None,
                _first_code(language.language) if language is not None else None, stamp)

    def episode(self, e: EpisodeOfCare) -> _Record:
        em = self.m.episode
        stamp, updated = self.updated(e)
        program = _code_in(e.type, em.program_system)
        reason_ext = _ext(e, em.discharge_reason_extension)
        reason = _ext_code(reason_ext, em.discharge_reason_system)
        planned = _ext(e, em.planned_discharge_extension)
        period = e.period
        start = period.start if period is not None else None
        row = (e.id, _ref_id(e.patient, "Patient"),
               em.programs.get(program, program) if program else None, self.day(start),
               self.day(planned.valueDate or planned.valueDateTime) if planned else None,
               self.day(period.end) if period is not None else None,
               em.discharge_reasons.get(reason, reason) if reason else None, stamp)
        return _Record("EpisodeOfCare", updated, {"episodes": [row]},
                       {"client": row[1], "care_manager": _ref_id(e.careManager, "Practitioner"),
                        "start": self.stamp(start) or ""})

    def appointment(self, a: Appointment) -> _Record:
        am = self.m.appointment
        stamp, updated = self.updated(a)
        client = clinician = None
        for participant in a.participant or []:
            client = client or _ref_id(participant.actor, "Patient")
            clinician = clinician or _ref_id(participant.actor, "Practitioner")
        episode = _episode_link(a, am.episode_extension) or next(
            (i for r in a.supportingInformation or []
             if (i := _ref_id(r, "EpisodeOfCare")) is not None), None)
        service = _code_in(a.serviceType, am.service_type_system) or _code_in(
            [a.appointmentType] if a.appointmentType else [], am.service_type_system)
        concepts = [*(a.serviceCategory or []), *(a.serviceType or []),
                    *([a.appointmentType] if a.appointmentType else [])]
        telehealth = any(c.system == am.telehealth_system and c.code in am.telehealth_codes
                         for concept in concepts for c in concept.coding or [])
        row = (a.id, episode, client, self.stamp(a.start), self.stamp(a.created),
               self.status(a), am.service_types.get(service, service) if service else None,
               telehealth, clinician, stamp)
        return _Record("Appointment", updated, {"appointments": [row]}, {"episode": episode})

    def status(self, a: Appointment) -> str | None:
        """FHIR's status as the contract's; a cancellation by its reason. What is not
        mapped passes as written ("cancelled:<reason>"), to be held as an unknown code."""
        am = self.m.appointment
        if a.status != "cancelled":
            return am.statuses.get(a.status, a.status) if a.status else None
        reason = _code_in([a.cancelationReason] if a.cancelationReason else [],
                          am.cancellation_system)
        for status, codes in (("late_cancel", am.late_cancel),
                              ("cancelled_by_client", am.cancelled_by_client),
                              ("cancelled_by_clinic", am.cancelled_by_clinic)):
            if reason in codes:
                return status
        return f"cancelled:{reason}" if reason else "cancelled"

    def response(self, q: QuestionnaireResponse) -> _Record | None:
        """A response to a configured instrument's questionnaire (None for any other, and
        for one not completed: in progress, stopped or entered in error)."""
        qm = self.m.questionnaire
        canonical = str(q.questionnaire or "").split("|", 1)[0]
        instrument = self.instrument_of.get(canonical)
        if instrument is None or q.status not in ("completed", "amended"):
            return None
        stamp, updated = self.updated(q)
        rater = ("client" if _ref_id(q.author, "Patient") else
                 "therapist" if (_ref_id(q.author, "Practitioner")
                                 or _ref_id(q.author, "PractitionerRole")) else None)
        scores: dict[str, Any] = {}
        items: list[tuple[Any, ...]] = []
        score_ids = {qm.total_link_id: "score_total", qm.goal_link_id: "goal",
                     qm.task_link_id: "task", qm.bond_link_id: "bond"}
        for item in _items(q.item or []):
            value = _answer(item)
            if item.linkId in score_ids:
                scores[score_ids[item.linkId]] = value
            elif value is not None:
                items.append((q.id, _item_number(item.linkId), value))
        appointment = _ref_id(_ext_value(q, qm.appointment_extension), "Appointment")
        row = (q.id, _episode_link(q, self.m.appointment.episode_extension),
               _ref_id(q.subject, "Patient"), appointment, instrument, rater,
               self.stamp(q.authored), scores.get("score_total"), scores.get("goal"),
               scores.get("task"), scores.get("bond"), stamp)
        return _Record("QuestionnaireResponse", updated,
                       {"alliance_measures": [row], "alliance_items": items},
                       {"appointment": appointment})

    def consent(self, c: Consent) -> _Record:
        """A consent in force only while active: an inactive one counts as revoked (by its
        extension, else when it last changed); a draft, proposed, rejected or erroneous
        one as never in force (revoked from the start of its first day)."""
        cm = self.m.consent
        stamp, updated = self.updated(c)
        provision = c.provision
        period = provision.period if provision is not None else None
        actors = provision.actor or [] if provision is not None else []
        recipient_actor = next((a for a in actors if any(
            cd.code == "IRCP" for cd in getattr(a.role, "coding", None) or [])),
            actors[0] if actors else None)
        recipient = _recipient(recipient_actor.reference) if recipient_actor else None
        purpose = next((p.code for p in (provision.purpose or [] if provision else [])
                        if p.system == cm.purpose_system and p.code), None)
        effective = self.day(period.start) if period is not None else None
        revoked_ext = _ext(c, cm.revoked_extension)
        revoked = None
        if revoked_ext is not None:
            revoked = self.stamp(revoked_ext.valueDateTime)
        elif c.status == "inactive":
            revoked = stamp
        elif c.status != "active" and effective is not None:
            revoked = f"{effective} 00:00:00"
        row = (c.id, _ref_id(c.patient, "Patient"), recipient,
               cm.purposes.get(purpose, purpose) if purpose else None, effective,
               self.day(period.end) if period is not None else None, revoked, stamp)
        return _Record("Consent", updated, {"consents": [row]})


def _ref_id(reference: Any, kind: str) -> str | None:
    """The id a reference names if it is of ``kind`` ("Patient/123", a full URL, a
    version: ".../Patient/123/_history/2")."""
    text = getattr(reference, "reference", None)
    if not text:
        return None
    parts = str(text).split("?", 1)[0].split("/")
    for i in range(len(parts) - 1):
        if parts[i] == kind and parts[i + 1]:
            return parts[i + 1]
    return None


def _recipient(reference: Any) -> str | None:
    """A named recipient by its id; a Group is a class of recipients ("class:<id>")."""
    group = _ref_id(reference, "Group")
    if group is not None:
        return contract.RECIPIENT_CLASS_PREFIX + group
    text = getattr(reference, "reference", None)
    return str(text).rstrip("/").split("/")[-1] if text else None


def _ext(resource: Any, url: str) -> Any:
    return next((e for e in getattr(resource, "extension", None) or [] if e.url == url), None)


def _ext_value(resource: Any, url: str) -> Any:
    found = _ext(resource, url)
    return found.valueReference if found is not None else None


def _episode_link(resource: Any, url: str) -> str | None:
    return _ref_id(_ext_value(resource, url), "EpisodeOfCare")


def _ext_code(extension: Any, system: str) -> str | None:
    """The code an extension holds: valueCode, or valueCoding / valueCodeableConcept of
    ``system``."""
    if extension is None:
        return None
    if extension.valueCode:
        return str(extension.valueCode)
    if extension.valueCoding is not None and extension.valueCoding.system == system:
        return extension.valueCoding.code
    if extension.valueCodeableConcept is not None:
        return _code_in([extension.valueCodeableConcept], system)
    return None


def _code_in(concepts: Any, system: str) -> str | None:
    for concept in concepts or []:
        for coding in concept.coding or []:
            if coding.system == system and coding.code:
                return str(coding.code)
    return None


def _first_code(concept: Any) -> str | None:
    for coding in getattr(concept, "coding", None) or []:
        if coding.code:
            return str(coding.code)
    return None


def _omb_codes(extension: Any) -> list[str]:
    if extension is None:
        return []
    return [e.valueCoding.code for e in extension.extension or []
            if e.url == "ombCategory" and e.valueCoding is not None and e.valueCoding.code]


def _name(name: Any, given_only: bool = False) -> str | None:
    if name is None:
        return None
    if name.text:
        return str(name.text)
    parts = list(name.given or []) if given_only else [*(name.given or []), name.family or ""]
    joined = " ".join(p for p in parts if p)
    return joined or None


def _items(items: list[Any]) -> Iterator[Any]:
    """Items in order, groups opened."""
    for item in items:
        if item.answer:
            yield item
        if item.item:
            yield from _items(item.item)


def _answer(item: Any) -> Any:
    """The first answer's value as a number where it is one, else as written."""
    answer = item.answer[0]
    for name in ("valueDecimal", "valueInteger"):
        value = getattr(answer, name, None)
        if value is not None:
            return float(value)
    if answer.valueCoding is not None:
        return answer.valueCoding.code
    return answer.valueString


_ITEM_NUMBER = re.compile(r"[A-Za-z_-]*?(\d+)")


def _item_number(link_id: str) -> Any:
    """"3", "item-3", "srs3" are item 3; any other linkId passes as written (a number
    the checks refuse)."""
    found = _ITEM_NUMBER.fullmatch(link_id)
    return int(found.group(1)) if found else link_id


# --- the source ------------------------------------------------------------------------

# Lines handed to fhir.resources at once (in a worker process, or in this one): large
# enough that a chunk's pickling is small beside its validation, small enough that a few
# in flight hold little memory.
CHUNK_LINES = 2_000
# The pre-scan compares a line's meta.lastUpdated with a mark in UTC; it keeps every
# line this much before the mark, wider than any zone's change of offset, and the exact
# rule is applied to the validated rows (``_frames``).
SCAN_SLACK = timedelta(hours=3)
_OFFSET_BITS = 40  # a line's place: (file number << 40 | byte offset) << 1 | selected
_RESOLVED = -1  # an index entry whose outcome is already in ``records``


@dataclass
class _Held:
    """A resource that could not be read, kept where its type puts it."""

    table: str
    key: str
    detail: str
    line: str
    updated: datetime | None


@dataclass(frozen=True)
class _File:
    """An output file of the chain: its type (None: each line says its own), its name in
    the quarantine's keys, and the time a held line without a readable lastUpdated takes."""

    kind: str | None
    path: Path
    where: str
    fallback: datetime | None


Outcome = _Record | _Held | None
Key = tuple[str, str]
# A chunk of lines to validate: the file's name and fallback time, (type, line) each.
Chunk = tuple[str, datetime | None, list[tuple[str, bytes]]]


class NdjsonSource:
    """A directory of FHIR Bulk Data exports as a clinic source (``read`` as ``read_source``)."""

    def __init__(self, directory: Path, mapping: FhirMapping, workers: int = 2) -> None:
        self.directory = Path(directory)
        self.mapping = mapping
        self.workers = max(1, workers)  # processes validating at once (etl.source_connections)
        self.parsed = 0  # resources parsed by the last read (for the run's figures)

    def dispose(self) -> None:
        """Nothing to release: files are opened and closed within ``read``."""

    def read(self, since: dict[str, datetime | None],
             held: Callable[[str], int] | None = None) -> tuple[Extract, datetime]:
        """The rows changed since each table's mark, by the SQL sources' rules, and the
        export's clock (its ``transactionTime``, as clinic local time).

        Two passes, so the cost follows what is read: every line is pre-scanned (orjson:
        type, id, lastUpdated, episode links) into an index of each resource's newest
        version; then only the versions the marks can let through are validated and
        mapped, on ``workers`` processes when there are many. ``held`` is not asked: the
        FHIR source reads every table it maps, and an optional table it has no resources
        for is simply empty (no table can go missing).
        """
        del held
        if not self.directory.is_dir():
            raise SourceUnavailable(f"the FHIR export directory {self.directory} is missing")
        exports = find_exports(self.directory)
        if not exports:
            raise SourceUnavailable(f"no FHIR export in {self.directory} yet")
        chain = export_chain(exports)
        mapper = _Mapper(self.mapping)
        scan = _Scan(since, mapper)
        self.parsed = 0
        for export in chain:
            scan.export(export)
        self.parsed += scan.parsed
        todo = sorted((code, key) for key, code in scan.index.items() if code >= 0 and code & 1)
        self._validate(todo, scan, mapper)
        if scan.incremental:
            self._validate(sorted(scan.needed_after(since)), scan, mapper)
        # In the index's order: a resource's place is its first version's, as it was.
        state = {key: record for key in scan.index
                 if (record := scan.records.get(key)) is not None}
        last = chain[-1].transaction_time
        if last is not None:
            clock = mapper.local(last)
        else:  # one export without a manifest: its newest resource read
            stamps = [r.updated for r in state.values()
                      if isinstance(r, _Record) and r.updated is not None]
            skipped = mapper.local(scan.newest_skipped)
            if skipped is not None:
                stamps.append(skipped)
            clock = max(stamps, default=None)
        if clock is None:
            raise SourceUnavailable("the FHIR export has neither a manifest nor a resource "
                                    "with meta.lastUpdated: its time is unknown")
        return _frames(state, since, self.mapping), clock

    def _validate(self, todo: list[tuple[int, Key]], scan: _Scan, mapper: _Mapper) -> None:
        """Validate and map the lines at ``todo``'s places into ``scan.records``; on worker
        processes when there are more than a chunk's worth (a pool costs its start)."""
        if not todo:
            return
        chunks = _chunks(todo, scan.files)
        if self.workers == 1 or len(todo) <= CHUNK_LINES:
            for keys, chunk in chunks:
                self._take(keys, _validate_lines(chunk, mapper), scan)
            return
        # Forked workers start at once with the modules loaded; fork is only safe with no
        # other thread running, so a threaded process starts them from a fresh server.
        method = ("fork" if "fork" in multiprocessing.get_all_start_methods()
                  and threading.active_count() == 1 else "forkserver")
        gc.freeze()  # the workers' collector then leaves the index's pages shared
        try:
            with ProcessPoolExecutor(self.workers, multiprocessing.get_context(method),
                                     initializer=_init_worker, initargs=(self.mapping,)) as pool:
                pending: deque[tuple[list[Key], Future[list[tuple[Outcome, bool]]]]] = deque()
                for keys, chunk in chunks:
                    pending.append((keys, pool.submit(_validate_chunk, chunk)))
                    if len(pending) >= 2 * self.workers:  # bounded: read on as results come
                        done_keys, future = pending.popleft()
                        self._take(done_keys, future.result(), scan)
                while pending:
                    done_keys, future = pending.popleft()
                    self._take(done_keys, future.result(), scan)
        finally:
            gc.unfreeze()

    def _take(self, keys: list[Key], results: list[tuple[Outcome, bool]], scan: _Scan) -> None:
        for key, (record, parsed) in zip(keys, results, strict=True):
            scan.records[key] = record
            self.parsed += parsed


class _Scan:
    """The pre-scan: each resource's newest version across the chain, where it is, and
    whether the marks can let it through (``index``); lines that cannot be keyed without
    fhir.resources (not JSON, not of their file's type, no usable id) are resolved at
    once, as before, into ``records``."""

    def __init__(self, since: Mapping[str, datetime | None], mapper: _Mapper) -> None:
        self.mapper = mapper
        self.index: dict[Key, int] = {}
        self.records: dict[Key, Outcome] = {}
        self.files: list[_File] = []
        self.parsed = 0
        self.newest_skipped: datetime | None = None  # aware; lines not validated
        # Below its type's threshold a line cannot reach the frames: None reads all.
        # Patients always (clients are read whole), episodes too when they give the case
        # manager (the latest episode's careManager, whatever changed).
        always = {"Patient"} | ({"EpisodeOfCare"} if mapper.m.patient.case_manager
                                == "careManager" else set())
        self.threshold: dict[str, datetime | None] = {}
        for kind, table in READ_TYPES.items():
            mark = since.get(table) if table in INCREMENTAL else None
            self.threshold[kind] = (None if kind in always or mark is None
                                    else mark.replace(tzinfo=mapper.zone) - SCAN_SLACK)
        self.incremental = any(t is not None for t in self.threshold.values())
        # The slots of changed episodes are read again: the appointments not otherwise
        # read, by every episode they name (a superset; ``_frames`` keeps the right ones).
        self.by_episode: dict[bytes, list[Key]] | None = (
            {} if since.get("appointments") is not None and since.get("episodes") is not None
            else None)

    def export(self, export: ExportFolder) -> None:
        """Index an export's lines (a later version replaces an earlier one), then take
        its deletions out."""
        fallback = self.mapper.local(export.transaction_time) if export.transaction_time else None
        for kind, path in export.outputs:
            if kind is not None and kind not in READ_TYPES:
                continue
            self.files.append(_File(kind, path, f"{export.folder.name}/{path.name}", fallback))
            self.file(len(self.files) - 1)
        for path in export.deleted:
            for _number, line in _lines(path):
                for key in _deleted(line):
                    self.index.pop(key, None)
                    self.records.pop(key, None)

    def file(self, file_no: int) -> None:
        f = self.files[file_no]
        index, records, threshold = self.index, self.records, self.threshold
        instrument_of = self.mapper.instrument_of
        episode_url = self.mapper.m.appointment.episode_extension
        by_episode, find_episodes = self.by_episode, _EPISODE_REF.findall
        with f.path.open("rb") as handle:
            offset = 0
            for number, raw in enumerate(handle, start=1):
                place = (file_no << _OFFSET_BITS | offset) << 1
                offset += len(raw)
                line = raw.strip()
                if not line:
                    continue
                kind = f.kind
                if kind is None:  # a file whose name says no type: each line says its own
                    found = _RESOURCE_TYPE.search(line)
                    kind = found.group(1).decode() if found else None
                    if kind not in READ_TYPES:
                        if kind is None:
                            log.warning("FHIR export %s line %d: no resource type; skipped",
                                        f.where, number)
                        continue
                try:
                    obj = orjson.loads(line)
                except orjson.JSONDecodeError:
                    obj = None
                rid = (obj.get("id") if type(obj) is dict and obj.get("resourceType") == kind
                       else None)
                if type(rid) is not str or not 0 < len(rid) <= 64:
                    self.resolve(kind, line, f, number)
                    continue
                key = (kind, rid)
                if kind == "QuestionnaireResponse":
                    canonical = obj.get("questionnaire")
                    if type(canonical) is str and canonical.split("|", 1)[0] not in instrument_of:
                        # Another questionnaire: not a measure, valid or not (``_held``).
                        index[key] = _RESOLVED
                        records[key] = None
                        continue
                cut = threshold[kind]
                stamp = None if cut is None else _stamp(obj)
                selected = cut is None or stamp is None or stamp >= cut
                if not selected:
                    if kind == "Appointment" and by_episode is not None:
                        # Without an escape the line holds its strings as written: every
                        # EpisodeOfCare/<id> in it is a superset of the one mapped, found
                        # at a fraction of the cost of walking the resource.
                        episodes = (find_episodes(line) if b"\\" not in line
                                    else _episode_refs(obj, episode_url))
                        if episodes is None:
                            selected = True
                        else:
                            for episode in episodes:
                                slots = by_episode.get(episode)
                                if slots is None:
                                    by_episode[episode] = [key]
                                else:
                                    slots.append(key)
                    if stamp is not None and (self.newest_skipped is None
                                              or stamp > self.newest_skipped):
                        self.newest_skipped = stamp
                index[key] = place | selected
                records.pop(key, None)

    def resolve(self, kind: str, line: bytes, f: _File, number: int) -> None:
        """A line the pre-scan cannot key, read as it always was (fhir.resources, then the
        quarantine): its key is the model's, or the file and line."""
        key, record, parsed = _outcome(kind, line, f.where, number, self.mapper, f.fallback)
        self.parsed += parsed
        if key is not None:
            self.index[key] = _RESOLVED
            self.records[key] = record

    def needed_after(self, since: Mapping[str, datetime | None]) -> set[tuple[int, Key]]:
        """Lines the first validation shows are needed: the slots of the episodes that
        changed, and the appointment a measure read takes its episode from."""
        wanted: set[Key] = set()
        episodes_mark = since.get("episodes")
        if self.by_episode is not None and episodes_mark is not None:
            for (kind, rid), record in self.records.items():
                if (kind == "EpisodeOfCare" and isinstance(record, _Record)
                        and record.updated is not None and record.updated >= episodes_mark):
                    wanted.update(self.by_episode.get(rid.encode(), ()))
        for (kind, _rid), record in self.records.items():
            if kind == "QuestionnaireResponse" and isinstance(record, _Record):
                row = record.rows["alliance_measures"][0]
                if row[1] is None and row[3] is not None:
                    wanted.add(("Appointment", str(row[3])))
        return {(code, key) for key in wanted
                if (code := self.index.get(key, _RESOLVED)) >= 0 and key not in self.records}


def _stamp(resource: dict[str, Any]) -> datetime | None:
    """meta.lastUpdated, aware; None where it is missing or not an instant."""
    meta = resource.get("meta")
    text = meta.get("lastUpdated") if type(meta) is dict else None
    if type(text) is not str:
        return None
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        return None
    return value if value.tzinfo is not None else None


_EPISODE_REF = re.compile(rb'EpisodeOfCare/([^"/?]+)')


def _episode_refs(resource: dict[str, Any], url: str) -> list[bytes] | None:
    """Every episode id (UTF-8) an Appointment's episode link or supportingInformation
    names (the mapped one is among them); None when their shape is not what FHIR allows."""
    references: list[Any] = []
    for name in ("extension", "supportingInformation"):
        items = resource.get(name)
        if items is None:
            continue
        if type(items) is not list:
            return None
        for item in items:
            if type(item) is not dict:
                return None
            if name == "supportingInformation":
                references.append(item.get("reference"))
            elif item.get("url") == url:
                value = item.get("valueReference")
                references.append(value.get("reference") if type(value) is dict else None)
    out = []
    for text in references:
        if text is None:
            continue
        if type(text) is not str:
            return None
        parts = text.split("?", 1)[0].split("/")
        out += [parts[i + 1].encode() for i in range(len(parts) - 1)
                if parts[i] == "EpisodeOfCare" and parts[i + 1]]
    return out


def _chunks(todo: list[tuple[int, Key]], files: list[_File]) -> Iterator[tuple[list[Key], Chunk]]:
    """The lines at ``todo``'s places (sorted), read a chunk at a time: never a whole file."""
    for file_no, places in itertools.groupby(todo, key=lambda t: t[0] >> (_OFFSET_BITS + 1)):
        f = files[file_no]
        with f.path.open("rb") as handle:
            keys: list[Key] = []
            lines: list[tuple[str, bytes]] = []
            for code, key in places:
                handle.seek((code >> 1) & ((1 << _OFFSET_BITS) - 1))
                keys.append(key)
                lines.append((key[0], handle.readline().strip()))
                if len(lines) >= CHUNK_LINES:
                    yield keys, (f.where, f.fallback, lines)
                    keys, lines = [], []
            if lines:
                yield keys, (f.where, f.fallback, lines)


_WORKER_MAPPER: _Mapper | None = None


def _init_worker(mapping: FhirMapping) -> None:
    global _WORKER_MAPPER  # one mapper per worker process
    _WORKER_MAPPER = _Mapper(mapping)


def _validate_chunk(chunk: Chunk) -> list[tuple[Outcome, bool]]:
    """In a worker: a chunk's lines as mapped rows (small to send back, unlike resources)."""
    assert _WORKER_MAPPER is not None
    return _validate_lines(chunk, _WORKER_MAPPER)


def _validate_lines(chunk: Chunk, mapper: _Mapper) -> list[tuple[Outcome, bool]]:
    where, fallback, lines = chunk
    # Indexed lines have a usable id: their key never needs the line's number.
    return [_outcome(kind, line, where, 0, mapper, fallback)[1:] for kind, line in lines]


def _outcome(kind: str, line: bytes, where: str, number: int, mapper: _Mapper,
             fallback: datetime | None) -> tuple[Key | None, Outcome, bool]:
    """A line validated and mapped: its key (None: it replaces nothing), its record (None:
    a resource not read, which still replaces what its id held), whether it parsed."""
    try:
        resource = MODELS[kind].model_validate_json(line)
    except ValidationError as exc:
        held = _held(kind, line, where, number, exc, mapper, fallback)
        return ((kind, held.key) if held is not None else None), held, False
    if resource.id is None:
        held = _held(kind, line, where, number, None, mapper, fallback)
        return ((kind, held.key) if held is not None else None), held, True
    record: _Record | None
    if kind == "Patient":
        record = mapper.patient(resource)
    elif kind == "EpisodeOfCare":
        record = None if resource.status == "entered-in-error" else mapper.episode(resource)
    elif kind == "Appointment":
        record = mapper.appointment(resource)
    elif kind == "QuestionnaireResponse":
        record = mapper.response(resource)
    else:
        record = mapper.consent(resource)
    return (kind, str(resource.id)), record, True


def _lines(path: Path) -> Iterator[tuple[int, bytes]]:
    """A file's non-empty lines, one at a time."""
    with path.open("rb") as handle:
        for number, line in enumerate(handle, start=1):
            stripped = line.strip()
            if stripped:
                yield number, stripped


def _deleted(line: bytes) -> list[tuple[str, str]]:
    """The (type, id) a deleted-resources Bundle line names (its DELETE entries)."""
    try:
        bundle = json.loads(line)
        entries = bundle.get("entry") or []
        out = []
        for entry in entries:
            request = entry.get("request") or {}
            if str(request.get("method", "")).upper() != "DELETE":
                continue
            parts = str(request.get("url", "")).split("?", 1)[0].strip("/").split("/")
            if len(parts) >= 2 and parts[-2] in READ_TYPES:
                out.append((parts[-2], parts[-1]))
        return out
    except (ValueError, AttributeError, TypeError):
        log.warning("a deleted-resources line of a FHIR export cannot be read; skipped")
        return []


def _held(kind: str, line: bytes, where: str, number: int, error: ValidationError | None,
          mapper: _Mapper, fallback: datetime | None) -> _Held | None:
    """A resource refused, keyed by its id where the line has one, else by file and line;
    None for a response that says it answers a questionnaire not read.

    Its detail names the elements and the kinds of error only: never a value.
    """
    resource: Any = None
    with contextlib.suppress(ValueError):
        resource = json.loads(line)
    if not isinstance(resource, dict):
        resource = None
    questionnaire = resource.get("questionnaire") if resource else None
    if (kind == "QuestionnaireResponse" and isinstance(questionnaire, str)
            and questionnaire.split("|", 1)[0] not in mapper.instrument_of):
        return None
    rid = resource.get("id") if resource else None
    key = str(rid) if isinstance(rid, str) and rid and len(rid) <= 64 else f"{where}:{number}"
    updated = fallback
    stamp = ((resource.get("meta") or {}).get("lastUpdated")
             if resource and isinstance(resource.get("meta"), dict) else None)
    if isinstance(stamp, str):
        with contextlib.suppress(ValueError):
            updated = mapper.local(_instant(stamp))
    if resource is None:
        detail = "the line is not a JSON object"
    elif resource.get("resourceType") != kind:
        detail = f"the line is not a {kind} resource"
    elif error is None:
        detail = f"the {kind} has no id"
    else:
        found = [f"{'.'.join(str(p) for p in e['loc']) or kind} ({e['type']})"
                 for e in error.errors()[:5]]
        detail = f"the {kind} is not valid FHIR R4: " + "; ".join(found)
    text = line.decode("utf-8", errors="replace")
    return _Held(READ_TYPES[kind], key[:200], detail[:500], text[:KEEP_LINE], updated)


# --- the state as contract frames --------------------------------------------------------


def _frames(state: Mapping[tuple[str, str], _Record | _Held], since: dict[str, datetime | None],
            mapping: FhirMapping) -> Extract:
    """Frames of the rows changed since the marks, as ``extract`` reads them."""

    def changed(table: str, updated: datetime | None) -> bool:
        mark = since.get(table) if table in INCREMENTAL else None
        if mark is None or table not in INCREMENTAL:
            return True
        return updated is not None and updated >= mark

    rows: dict[str, list[tuple[Any, ...]]] = {t: [] for t in contract.TABLES}
    held_rows: list[tuple[Any, ...]] = []
    episodes: dict[str, _Record] = {}
    appointments: dict[str, _Record] = {}
    for (kind, rid), record in state.items():
        if isinstance(record, _Record) and kind == "EpisodeOfCare":
            episodes[rid] = record
        elif isinstance(record, _Record) and kind == "Appointment":
            appointments[rid] = record
    # The case manager: the latest episode's careManager (by start), or the Patient's GP.
    managers: dict[str, tuple[str, str]] = {}
    for record in episodes.values():
        client, manager = record.links["client"], record.links["care_manager"]
        if client and manager and (client not in managers
                                   or record.links["start"] >= managers[client][0]):
            managers[client] = (record.links["start"], manager)
    episodes_mark = since.get("episodes")
    changed_episodes = {rid for rid, r in episodes.items()
                        if episodes_mark is not None and changed("episodes", r.updated)}
    for record in state.values():
        if isinstance(record, _Held):
            if changed(record.table, record.updated):
                held_rows.append((record.table, record.key, record.detail,
                                  json.dumps([{"resource": record.line}])))
            continue
        for table, table_rows in record.rows.items():
            if table == "clients":
                for row in table_rows:
                    manager = (record.links["gp"] if mapping.patient.case_manager
                               == "generalPractitioner" else managers.get(row[0], ("", None))[1])
                    rows[table].append((*row[:2], manager, *row[3:]))
            elif table == "alliance_items":
                continue
            elif table == "appointments":
                if changed(table, record.updated) or record.links["episode"] in changed_episodes:
                    rows[table].extend(table_rows)
            elif table == "alliance_measures":
                if changed(table, record.updated):
                    row = table_rows[0]
                    if row[1] is None and row[3] in appointments:  # the session's episode
                        row = (row[0], appointments[row[3]].links["episode"], *row[2:])
                    rows[table].append(row)
                    rows["alliance_items"].extend(record.rows.get("alliance_items", []))
            elif changed(table, record.updated):
                rows[table].extend(table_rows)
    frames = {t: pd.DataFrame(rows[t], columns=[c.name for c in contract.TABLES[t].columns],
                              dtype=object) for t in contract.TABLES}
    malformed = pd.DataFrame(held_rows, columns=MALFORMED_COLUMNS, dtype=object)
    return Extract(frames, malformed)
