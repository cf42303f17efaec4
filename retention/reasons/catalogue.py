"""The clinic-editable reason catalogue: wording per family and the lines between concern and
reassurance.

Read from ``config/reasons.toml`` and checked once: every family the model explains
with has a title for a concern, one for a reassuring fact and a suggested next step,
and every threshold is present with the clinical source it comes from.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from retention.features import spec


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
class Thresholds:
    """The lines between a concern and a reassuring fact, each with its clinical source."""

    attendance: Attendance
    contact: Contact
    session_rating: SessionRating
    working_alliance: WorkingAlliance
    sources: Mapping[str, str]


@dataclass(frozen=True)
class Catalogue:
    """The clinic-editable wording of reason families and the thresholds that orient facts."""

    families: Mapping[str, Family]
    thresholds: Thresholds

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


def load_catalogue(path: Path) -> Catalogue:
    """Read and check the reason catalogue."""
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
    catalogue = Catalogue(families=families, thresholds=_thresholds(path, raw))
    catalogue.check_covers(spec.FAMILIES)
    return catalogue


def _thresholds(path: Path, raw: Mapping[str, Any]) -> Thresholds:
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
    return Thresholds(**parsed, sources=sources)


def _number(value: Any, where: str, path: Path) -> float | int:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise CatalogueError(f"{path}: {where} must be a number, got {value!r}")
    return value
