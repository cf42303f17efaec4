"""The clinic-editable reason catalogue: wording per family and the lines between concern and
reassurance.

Read from ``config/reasons.toml`` and checked once: every family the model explains
with has a title for a concern, one for a reassuring fact and a suggested next step,
every threshold is present with the clinical source it comes from, and every sign and
repair step a therapist may note (``retention.clinic.contract``) has its words, each sign
with the repair prompt tied to it.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from retention.clinic import contract
from retention.clinic.instruments import ORS_CUTOFF, ORS_RELIABLE_CHANGE
from retention.clinic.registry import Instrument, Registry, default_registry
from retention.clinic.trajectory import ORS, Trajectory, configured_trajectory
from retention.features import spec
from retention.features.alliance import OWN_FEATURES


class CatalogueError(ValueError):
    """The reason catalogue does not cover the model's reason families, or is malformed."""


@dataclass(frozen=True)
class Family:
    """A reason family as the clinic words it."""

    code: str
    title: str  # under "Why": the fact is a concern
    suggestion: str
    reassuring_title: str  # under "Going well" (context families: the same heading)


@dataclass(frozen=True)
class Attendance:
    """Missed and client-cancelled sessions as a share of the client-facing ones."""

    concern_share_above: float
    reassure_sessions_at_least: int
    reassure_share_at_most: float


@dataclass(frozen=True)
class Contact:
    """Gaps in contact: days since attending, misses in a row, nothing booked."""

    concern_days_since_attended_above: int
    concern_consecutive_misses_at_least: int
    concern_nothing_booked_within_days: int
    reassure_attended_within_days: int


@dataclass(frozen=True)
class SessionRating:
    """SRS and GSRS totals (0-40) and items (0-10)."""

    concern_below: float
    concern_drop_at_least: float
    item_concern_below: float


@dataclass(frozen=True)
class WorkingAlliance:
    """WAI-SR subscale means (1-5) and the client-therapist difference."""

    concern_below: float
    reassure_from: float
    concern_client_below_therapist_by: float


@dataclass(frozen=True)
class Sign:
    """A sign of strain a therapist may note, as the clinic words it, and the repair prompt
    tied to it (a prompt for the clinician's judgement, never an instruction)."""

    code: str
    group: str  # one of contract.SIGN_GROUPS
    words: str  # "withdrawal": what a sentence says the therapist noted
    prompt: str


@dataclass(frozen=True)
class ObservedWords:
    """How the therapist's session notes are worded: every sign of the contract (in its
    order) and every repair step ("acknowledged", "revisited goals and tasks")."""

    signs: Mapping[str, Sign]
    repair_steps: Mapping[str, str]


@dataclass(frozen=True)
class OutcomeLines:
    """The ORS lines, from the instrument registry rather than this file: the clinical
    cutoff, the reliable change and the clinic's expected course (None: none fitted)."""

    cutoff: float
    reliable_change: float
    trajectory: Trajectory | None
    # The other alliance forms the model reads (``other_alliance_share``), by code.
    other_forms: Mapping[str, Instrument] = field(default_factory=dict)


@dataclass(frozen=True)
class Thresholds:
    """What the phrasers read: the lines between a concern and a reassuring fact, each with
    its clinical source, and the words of the therapist's notes."""

    attendance: Attendance
    contact: Contact
    session_rating: SessionRating
    working_alliance: WorkingAlliance
    sources: Mapping[str, str]
    observed: ObservedWords
    outcome: OutcomeLines = OutcomeLines(ORS_CUTOFF, ORS_RELIABLE_CHANGE, None)


@dataclass(frozen=True)
class Catalogue:
    """The clinic-editable wording of reason families and the thresholds that orient facts."""

    families: Mapping[str, Family]
    thresholds: Thresholds

    @property
    def observed(self) -> ObservedWords:
        """The words of the therapist's notes: signs with their prompts, repair steps."""
        return self.thresholds.observed

    def check_covers(self, families: Sequence[str]) -> None:
        """Refuse a catalogue that lacks a family the model explains with."""
        missing = sorted(set(families) - set(self.families))
        if missing:
            raise CatalogueError(
                f"the reason catalogue has no entry for {', '.join(missing)}; "
                "add them to config/reasons.toml"
            )

    def digest_parts(self) -> list[Any]:
        """What of the catalogue shapes a published list (for its inputs digest)."""
        return [sorted((f.code, f.title, f.reassuring_title, f.suggestion)
                       for f in self.families.values()),
                repr(self.thresholds)]


SECTIONS: dict[str, type] = {"attendance": Attendance, "contact": Contact,
                             "session_rating": SessionRating,
                             "working_alliance": WorkingAlliance}


def load_catalogue(path: Path, registry: Registry | None = None) -> Catalogue:
    """Read and check the reason catalogue; the ORS lines come from the instrument
    ``registry`` (``Settings.instruments``; the shipped one by default)."""
    try:
        raw = tomllib.loads(path.read_text())
    except FileNotFoundError as exc:
        raise CatalogueError(f"reason catalogue {path} not found") from exc
    families = {}
    for code, entry in raw.get("families", {}).items():
        if code not in spec.FAMILIES:
            raise CatalogueError(f"{path}: unknown reason family {code!r}")
        missing = [k for k in ("title", "suggestion", "reassuring_title") if not entry.get(k)]
        if missing:
            raise CatalogueError(f"{path}: family {code!r} needs {', '.join(missing)}")
        families[code] = Family(code=code, title=entry["title"], suggestion=entry["suggestion"],
                                reassuring_title=entry["reassuring_title"])
    thresholds = replace(_thresholds(path, raw, _observed(path, raw)),
                         outcome=outcome_lines(registry or default_registry()))
    catalogue = Catalogue(families=families, thresholds=thresholds)
    catalogue.check_covers(spec.FAMILIES)
    return catalogue


def outcome_lines(registry: Registry) -> OutcomeLines:
    """The ORS's cutoff and reliable change as registered, and the clinic's expected course."""
    ors = registry.get(ORS)
    cutoff = ors.cutoff.value if ors is not None and ors.cutoff is not None else ORS_CUTOFF
    reliable = (ors.reliable_change if ors is not None and ors.reliable_change is not None
                else ORS_RELIABLE_CHANGE)
    others = {code: registry[code] for code in registry.model_inputs
              if code not in OWN_FEATURES and registry[code].kind == "alliance"}
    return OutcomeLines(cutoff, reliable, configured_trajectory(registry), others)


def _observed(path: Path, raw: Mapping[str, Any]) -> ObservedWords:
    signs = _coded(path, raw, "signs", tuple(contract.SIGNS), ("words", "prompt"))
    steps = _coded(path, raw, "repair_steps", contract.REPAIR_STEPS, ("words",))
    return ObservedWords(
        signs={code: Sign(code, contract.SIGNS[code], entry["words"], entry["prompt"])
               for code, entry in signs.items()},
        repair_steps={code: entry["words"] for code, entry in steps.items()},
    )


def _coded(path: Path, raw: Mapping[str, Any], section: str, codes: Sequence[str],
           keys: Sequence[str]) -> dict[str, dict[str, str]]:
    """``[section.<code>]`` for exactly the contract's ``codes`` (in their order), each with
    non-empty text under ``keys``: a code of the contract without words, or a code it does
    not know, is refused."""
    given = raw.get(section, {})
    if not isinstance(given, Mapping):
        raise CatalogueError(f"{path}: [{section}] must be a table of [{section}.<code>] "
                             "entries")
    unknown = [code for code in given if code not in codes]
    if unknown:
        raise CatalogueError(f"{path}: [{section}.{unknown[0]}] is not a code of the clinic "
                             f"contract (known: {', '.join(codes)})")
    lacking = [code for code in codes if code not in given]
    if lacking:
        raise CatalogueError(f"{path}: [{section}.{lacking[0]}] is missing: every code of the "
                             f"clinic contract needs {' and '.join(keys)} "
                             f"(missing: {', '.join(lacking)})")
    out = {}
    for code in codes:
        entry = given[code]
        if not isinstance(entry, Mapping):
            raise CatalogueError(f"{path}: [{section}.{code}] must be a table")
        extra = sorted(set(entry) - set(keys))
        if extra:
            raise CatalogueError(f"{path}: [{section}.{code}] does not know "
                                 f"{', '.join(extra)}")
        for key in keys:
            value = entry.get(key)
            if not isinstance(value, str) or not value.strip():
                raise CatalogueError(f"{path}: [{section}.{code}] {key} must be non-empty "
                                     "text")
        out[code] = {key: str(entry[key]).strip() for key in keys}
    return out


def _thresholds(path: Path, raw: Mapping[str, Any], observed: ObservedWords) -> Thresholds:
    given = raw.get("thresholds", {})
    parsed: dict[str, Any] = {}
    sources = {}
    for name, kind in SECTIONS.items():
        section = dict(given.get(name) or {})
        source = section.pop("source", None)
        if not source:
            raise CatalogueError(f"{path}: [thresholds.{name}] needs the clinical source of its "
                                 "lines (source = \"...\")")
        names = [f.name for f in fields(kind)]
        unknown = sorted(set(section) - set(names))
        lacking = [n for n in names if n not in section]
        if unknown or lacking:
            raise CatalogueError(f"{path}: [thresholds.{name}] "
                                 + (f"does not know {', '.join(unknown)}; " if unknown else "")
                                 + (f"lacks {', '.join(lacking)}" if lacking else ""))
        try:
            parsed[name] = kind(**{n: _number(v, f"[thresholds.{name}] {n}", path)
                                   for n, v in section.items()})
        except TypeError as exc:
            raise CatalogueError(f"{path}: [thresholds.{name}]: {exc}") from exc
        sources[name] = str(source)
    return Thresholds(**parsed, sources=sources, observed=observed)


def _number(value: Any, where: str, path: Path) -> float | int:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise CatalogueError(f"{path}: {where} must be a number, got {value!r}")
    return value
