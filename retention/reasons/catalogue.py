"""The clinic-editable wording of reason families: a title and a suggested next step each.

Read from ``config/reasons.toml`` and checked to cover every family the model explains with.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from retention.features import spec


class CatalogueError(ValueError):
    """The reason catalogue does not cover the model's reason families."""


@dataclass(frozen=True)
class Family:
    """A reason family as the clinic words it: a title and a suggested next step."""

    code: str
    title: str
    suggestion: str


@dataclass(frozen=True)
class Catalogue:
    """The clinic-editable wording of reason families (``config/reasons.toml``)."""

    families: Mapping[str, Family]

    def check_covers(self, families: Sequence[str]) -> None:
        """Refuse a catalogue that lacks a family the model explains with."""
        missing = sorted(set(families) - set(self.families))
        if missing:
            raise CatalogueError(
                f"the reason catalogue has no entry for {', '.join(missing)}; "
                "add them to config/reasons.toml"
            )


def load_catalogue(path: Path) -> Catalogue:
    """Read and validate the reason catalogue."""
    try:
        raw = tomllib.loads(path.read_text())
    except FileNotFoundError as exc:
        raise CatalogueError(f"reason catalogue {path} not found") from exc
    families = {}
    for code, entry in raw.get("families", {}).items():
        if code not in spec.FAMILIES:
            raise CatalogueError(f"{path}: unknown reason family {code!r}")
        if not entry.get("title") or not entry.get("suggestion"):
            raise CatalogueError(f"{path}: family {code!r} needs a title and a suggestion")
        families[code] = Family(code=code, title=entry["title"], suggestion=entry["suggestion"])
    catalogue = Catalogue(families=families)
    catalogue.check_covers(spec.FAMILIES)
    return catalogue
