"""What the settings and the instrument registry both read, in a module of its own so that
neither has to import the other: the configuration error, the shipped registry's path,
the form of an instrument code, and the naming of unknown keys."""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable
from pathlib import Path

# The instrument registry shipped with the service (``retention.clinic.registry``).
SHIPPED_INSTRUMENTS_FILE = Path(__file__).resolve().parents[1] / "config" / "instruments.toml"

# An instrument code: any short code a clinic sends is kept and shown (the registry,
# config/instruments.toml, says which the model reads), so the instruments a clinic may
# send or map onto are not a closed list: these are the codes the contract's column holds.
INSTRUMENT_CODE = re.compile(r"[A-Za-z0-9_.-]{1,16}")
INSTRUMENT_CODE_RULE = "1-16 letters, digits, '_', '.' or '-'"


class ConfigError(ValueError):
    """The configuration is missing a value or holds one that cannot work."""


def unknown_keys(given: Iterable[str], known: Iterable[str]) -> list[str]:
    """Every key of ``given`` not in ``known``, named with the known key it most likely
    meant ("colour (did you mean color?)")."""
    known = list(known)
    return [f"{key} (did you mean {close[0]}?)" if (close := difflib.get_close_matches(
        key, known, n=1)) else key for key in sorted(set(given) - set(known))]
