"""The instrument registry: what each questionnaire a clinic sends is, and how to score it.

Read from ``config/instruments.toml`` (``Settings.instruments_file``) and checked
once, at start. Each ``[instruments.<code>]`` declares the form's items, their range
and reversed items, how the total and subscales are made from them, which way is
better, its published cutoff and reliable change (where there are such), its source,
and whether the model may read it (``model_input``). A clinic adds its own form by
registering it here, without code: the ETL then checks its measures against the
declared ranges and key (``retention.etl.validation``), and the pages show it. A code
nobody registered is still kept and shown, never read by the model.

SRS, GSRS, WAI-SR and ORS are also scored by name in ``retention.clinic.instruments``:
their entries must say what those constants say (a file that differs is refused), so
what the registry shows is what the service computes.

An ``[instruments.<code>.trajectory]`` table is kept as given, for the module that reads
it; nothing here interprets it.
"""

from __future__ import annotations

import functools
import tomllib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from retention.clinic import contract
from retention.clinic.instruments import (
    ORS_ITEM_RANGE,
    ORS_ITEMS,
    SRS_CUTOFF,
    SRS_ITEM_RANGE,
    SRS_ITEMS,
    WAI_SR_ITEM_RANGE,
    WAI_SR_KEY,
    WAI_SR_N_ITEMS,
    Scored,
)
from retention.config_base import (
    INSTRUMENT_CODE,
    INSTRUMENT_CODE_RULE,
    SHIPPED_INSTRUMENTS_FILE,
    ConfigError,
    unknown_keys,
)

KINDS = ("alliance", "outcome")
DIRECTIONS = ("better", "worse")
METHODS = ("sum", "mean")
# The measure columns a subscale of that name is recorded in (alliance_measures).
SUBSCALE_COLUMNS = ("goal", "task", "bond")
# Instruments whose features and checks are written for them by name: the registry must
# agree with their constants (``_BUILT_IN``).
NAMED = ("SRS", "GSRS", "WAI-SR", "ORS")

KEYS = {
    "name": "the instrument's name as the pages show it",
    "kind": f"one of {', '.join(KINDS)}",
    "raters": f"who fills it in: a list of {', '.join(contract.RATERS)}",
    "items": "item number = label, one per item",
    "item_range": "[lowest, highest] response of an item",
    "reversed": "the item numbers scored in reverse (default none)",
    "total": f"how the total is made from the items: {' or '.join(METHODS)}",
    "total_range": "[lowest, highest] total",
    "subscales": "name = { items = [...], score = \"mean\" or \"sum\" }",
    "higher_is": f"whether a higher total is {' or '.join(DIRECTIONS)}",
    "cutoff": "{ value = ..., meaning = \"...\" } (optional)",
    "reliable_change": "the published reliable change index, in total points (optional)",
    "model_input": "true if the model may read it, false to check and show it only",
    "scored_from_items": "false when the item key is not known: the total is taken as "
                         "the clinic records it and never recomputed (default true)",
    "source": "the published source (authors, year, journal), or the clinic's own form",
    "trajectory": "a table for the expected-course module (kept as given)",
}
# Words a ConfigError about one key of one instrument: (key, problem) -> error.
Fail = Callable[[str, str], ConfigError]
REQUIRED = ("name", "kind", "raters", "items", "item_range", "total", "total_range",
            "higher_is", "model_input", "source")


@dataclass(frozen=True)
class Subscale:
    """A subscale: its items and whether it is their mean or their sum."""

    items: tuple[int, ...]
    score: str


@dataclass(frozen=True)
class Cutoff:
    """A published cutoff on the total, and what crossing it means."""

    value: float
    meaning: str


@dataclass(frozen=True)
class Instrument:
    """One registered instrument, as ``config/instruments.toml`` declares it."""

    code: str
    name: str
    kind: str
    raters: tuple[str, ...]
    items: Mapping[int, str]
    item_range: tuple[float, float]
    reversed_items: tuple[int, ...]
    total: str
    total_range: tuple[float, float]
    subscales: Mapping[str, Subscale]
    higher_is: str
    cutoff: Cutoff | None
    reliable_change: float | None
    model_input: bool
    source: str
    scored_from_items: bool = True
    trajectory: Mapping[str, Any] = field(default_factory=dict)

    def score(self, items: Mapping[int, float]) -> Scored:
        """Score one administration from its item responses: reversed items turned
        (low + high - response), then the total and each subscale as declared.

        Raises ValueError when an item is missing or extra, a response is outside the
        item range, or the key is not registered (``scored_from_items = false``).
        """
        if not self.scored_from_items:
            raise ValueError(f"{self.code}: its item key is not registered "
                             "(scored_from_items = false), so no total is computed from "
                             "items; the total is taken as the clinic records it")
        expected = set(self.items)
        if set(items) != expected:
            missing, extra = sorted(expected - set(items)), sorted(set(items) - expected)
            said = [f"missing items {missing}"] if missing else []
            said += [f"items {extra} it does not have"] if extra else []
            raise ValueError(f"{self.code} needs items {sorted(expected)}: "
                             + " and ".join(said))
        low, high = self.item_range
        bad = sorted(n for n, v in items.items() if not low <= float(v) <= high)
        if bad:
            raise ValueError(f"{self.code} items {bad} are outside {low:g}-{high:g}")
        scored = {n: self.keyed(n, float(v)) for n, v in items.items()}
        total = _combine([scored[n] for n in sorted(scored)], self.total)
        subscales = {name: _combine([scored[n] for n in s.items], s.score)
                     for name, s in self.subscales.items()}
        return Scored(score_total=total, goal=subscales.get("goal"),
                      task=subscales.get("task"), bond=subscales.get("bond"),
                      subscales=subscales)

    def keyed(self, number: int, response: float) -> float:
        """A response as it counts towards the scores: turned for a reversed item."""
        low, high = self.item_range
        return low + high - response if number in self.reversed_items else response


@dataclass(frozen=True)
class Registry:
    """The registered instruments by code, and the file they were read from."""

    instruments: Mapping[str, Instrument]
    path: Path = SHIPPED_INSTRUMENTS_FILE

    def __contains__(self, code: object) -> bool:
        return code in self.instruments

    def __getitem__(self, code: str) -> Instrument:
        return self.instruments[code]

    def get(self, code: str) -> Instrument | None:
        return self.instruments.get(code)

    @property
    def codes(self) -> tuple[str, ...]:
        return tuple(self.instruments)

    @property
    def model_inputs(self) -> tuple[str, ...]:
        """The codes the model may read, in the file's order."""
        return tuple(c for c, i in self.instruments.items() if i.model_input)


def _combine(values: list[float], method: str) -> float:
    return float(sum(values) / len(values)) if method == "mean" else float(sum(values))


@functools.cache
def default_registry() -> Registry:
    """The shipped registry (``config/instruments.toml``), read once per process."""
    return load_registry(SHIPPED_INSTRUMENTS_FILE)


def load_registry(path: Path | str) -> Registry:
    """Read and check an instrument registry; ``ConfigError`` naming the file, the
    instrument and the key, with what to do, for anything that cannot work."""
    path = Path(path)
    try:
        with path.open("rb") as fh:
            raw = tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"instrument registry {path} does not exist: set instruments_file "
                          "(or RETENTION_INSTRUMENTS_FILE) to the registry's path, or leave "
                          "it unset for the shipped config/instruments.toml") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"instrument registry {path} is not valid TOML: {exc}") from None
    _refuse_unknown(raw, ["instruments"], f"{path}")
    table = raw.get("instruments")
    if not isinstance(table, Mapping) or not table:
        raise ConfigError(f"{path}: no [instruments.<code>] table; register at least one "
                          "instrument (see the shipped config/instruments.toml)")
    instruments = {}
    for code, entry in table.items():
        instruments[code] = _instrument(path, str(code), entry)
    return Registry(instruments=instruments, path=path)


def _instrument(path: Path, code: str, raw: Any) -> Instrument:
    where = f"{path}: [instruments.{code}]"
    if not INSTRUMENT_CODE.fullmatch(code):
        raise ConfigError(f"{where}: the code must be {INSTRUMENT_CODE_RULE} (what "
                          "alliance_measures.instrument holds); rename the table")
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{where} must be a table of keys ({', '.join(REQUIRED)})")
    _refuse_unknown(raw, KEYS, where)
    missing = [k for k in REQUIRED if k not in raw]
    if missing:
        raise ConfigError(f"{where} lacks {', '.join(missing)}: "
                          + "; ".join(f"{k} is {KEYS[k]}" for k in missing))

    def fail(key: str, problem: str) -> ConfigError:
        return ConfigError(f"{where} {key} {problem}")

    name, source = (_text(raw[k], fail(k, "must be text")) for k in ("name", "source"))
    kind = _choice(raw["kind"], KINDS, fail("kind", f"must be one of {', '.join(KINDS)}, "
                                                    f"got {raw['kind']!r}"))
    direction = _choice(raw["higher_is"], DIRECTIONS,
                        fail("higher_is", f"must be \"better\" or \"worse\" (what a higher "
                                          f"total means), got {raw['higher_is']!r}"))
    total = _choice(raw["total"], METHODS,
                    fail("total", f"must be \"sum\" or \"mean\", got {raw['total']!r}"))
    raters = raw["raters"]
    if (not isinstance(raters, list) or not raters
            or any(r not in contract.RATERS for r in raters)):
        raise fail("raters", f"must be a list of {', '.join(contract.RATERS)}, got {raters!r}")
    items = _items(raw["items"], fail)
    item_range = _range(raw["item_range"], fail("item_range", "must be [lowest, highest], "
                                                "two numbers with lowest < highest, got "
                                                f"{raw['item_range']!r}"))
    total_range = _range(raw["total_range"], fail("total_range", "must be [lowest, highest], "
                                                  "two numbers with lowest < highest, got "
                                                  f"{raw['total_range']!r}"))
    reversed_items = _numbers(raw.get("reversed", []), items, f"{where} reversed")
    subscales = _subscales(raw.get("subscales", {}), items, fail, where)
    scored_from_items = raw.get("scored_from_items", True)
    model_input = raw["model_input"]
    for key, value in (("model_input", model_input), ("scored_from_items", scored_from_items)):
        if not isinstance(value, bool):
            raise fail(key, f"must be true or false, got {value!r}")
    if scored_from_items:
        n = len(items) if total == "sum" else 1
        implied = (item_range[0] * n, item_range[1] * n)
        if implied != total_range:
            raise fail("total_range", f"{list(total_range)} disagrees with the items: the "
                       f"{total} of {len(items)} items of {item_range[0]:g}-{item_range[1]:g}"
                       f" runs {implied[0]:g}-{implied[1]:g}; correct either")
    cutoff = _cutoff(raw.get("cutoff"), total_range, fail)
    change = raw.get("reliable_change")
    if change is not None and not (_is_number(change) and 0 < change
                                   < total_range[1] - total_range[0]):
        raise fail("reliable_change", "must be a positive number of total points, smaller "
                   f"than the total's range, got {change!r}")
    trajectory = raw.get("trajectory", {})
    if not isinstance(trajectory, Mapping):
        raise fail("trajectory", "must be a table ([instruments.<code>.trajectory])")
    instrument = Instrument(
        code=code, name=name, kind=kind, raters=tuple(raters), items=items,
        item_range=item_range, reversed_items=reversed_items, total=total,
        total_range=total_range, subscales=subscales, higher_is=direction, cutoff=cutoff,
        reliable_change=None if change is None else float(change), model_input=model_input,
        source=source, scored_from_items=scored_from_items, trajectory=dict(trajectory))
    _check_built_in(instrument, where)
    return instrument


def _items(raw: Any, fail: Fail) -> dict[int, str]:
    if not isinstance(raw, Mapping) or not raw:
        raise fail("items", "must be a table of item number = label, e.g. 1 = \"overall\"")
    out = {}
    for key, label in raw.items():
        try:
            number = int(key)
        except ValueError:
            number = 0
        if number < 1 or str(number) != str(key):
            raise fail("items", f"has {key!r}, not an item number (1, 2, ...)")
        if not isinstance(label, str) or not label.strip():
            raise fail("items", f"{key} needs a label (text), got {label!r}")
        out[number] = label
    return dict(sorted(out.items()))


def _numbers(raw: Any, items: Mapping[int, str], said: str) -> tuple[int, ...]:
    """Item numbers of the instrument (a list), sorted; ``said``: where and which key."""
    if not isinstance(raw, list) or any(not isinstance(n, int) or isinstance(n, bool)
                                        for n in raw):
        raise ConfigError(f"{said} must be a list of item numbers, got {raw!r}")
    unknown = sorted(set(raw) - set(items))
    if unknown:
        raise ConfigError(f"{said} names items {unknown} the instrument does not have "
                          f"(its items are {sorted(items)})")
    return tuple(sorted(set(raw)))


def _subscales(raw: Any, items: Mapping[int, str], fail: Fail,
               where: str) -> dict[str, Subscale]:
    if not isinstance(raw, Mapping):
        raise fail("subscales", "must be a table of name = { items = [...], score = ... }")
    out = {}
    for name, entry in raw.items():
        if not isinstance(entry, Mapping) or set(entry) != {"items", "score"}:
            raise fail(f"subscales.{name}", "must be { items = [...], score = \"mean\" or "
                                            f"\"sum\" }}, got {entry!r}")
        score = _choice(entry["score"], METHODS, fail(f"subscales.{name}.score",
                                                      "must be \"mean\" or \"sum\""))
        numbers = _numbers(entry["items"], items, f"{where} subscales.{name}.items")
        if not numbers:
            raise fail(f"subscales.{name}.items", "must name at least one item")
        out[str(name)] = Subscale(items=numbers, score=score)
    return out


def _cutoff(raw: Any, total_range: tuple[float, float], fail: Fail) -> Cutoff | None:
    if raw is None:
        return None
    if (not isinstance(raw, Mapping) or set(raw) != {"value", "meaning"}
            or not _is_number(raw["value"]) or not isinstance(raw["meaning"], str)
            or not raw["meaning"].strip()):
        raise fail("cutoff", "must be { value = <total>, meaning = \"what crossing it "
                             f"means\" }}, got {raw!r}")
    if not total_range[0] < raw["value"] < total_range[1]:
        raise fail("cutoff", f"value {raw['value']} is not inside the total's range "
                             f"{total_range[0]:g}-{total_range[1]:g}")
    return Cutoff(value=float(raw["value"]), meaning=raw["meaning"].strip())


def _range(raw: Any, error: ConfigError) -> tuple[float, float]:
    if (not isinstance(raw, list) or len(raw) != 2 or not all(_is_number(v) for v in raw)
            or not raw[0] < raw[1]):
        raise error
    return float(raw[0]), float(raw[1])


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and (
        value == value and abs(value) != float("inf"))


def _text(value: Any, error: ConfigError) -> str:
    if not isinstance(value, str) or not value.strip():
        raise error
    return value.strip()


def _choice(value: Any, allowed: tuple[str, ...], error: ConfigError) -> str:
    if value not in allowed:
        raise error
    return str(value)


def _refuse_unknown(given: Iterable[str], known: Iterable[str], where: str) -> None:
    """Name every unknown key, with the known key it most likely meant."""
    known = list(known)
    named = unknown_keys(given, known)
    if named:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(named)}; "
                          f"known: {', '.join(known)}")


# What the service computes for the instruments it reads by name: items, ranges, key,
# and for those the features compare with a cutoff, the cutoff. A registry that says
# otherwise would show one thing and compute another.
_SRS = {"items": SRS_ITEMS, "item_range": SRS_ITEM_RANGE, "reversed_items": (),
        "total": "sum", "total_range": (0.0, 40.0), "subscales": {},
        "cutoff_value": SRS_CUTOFF, "model_input": True, "scored_from_items": True}
_BUILT_IN: dict[str, dict[str, Any]] = {
    "SRS": _SRS,
    "GSRS": _SRS,
    "WAI-SR": {"items_count": WAI_SR_N_ITEMS, "item_range": WAI_SR_ITEM_RANGE,
               "reversed_items": (), "total": "sum",
               "total_range": (WAI_SR_N_ITEMS * WAI_SR_ITEM_RANGE[0],
                               WAI_SR_N_ITEMS * WAI_SR_ITEM_RANGE[1]),
               "subscales": {k: Subscale(items=tuple(sorted(v)), score="mean")
                             for k, v in WAI_SR_KEY.items()},
               "cutoff_value": None, "model_input": True, "scored_from_items": True},
    "ORS": {"items": ORS_ITEMS, "item_range": ORS_ITEM_RANGE, "reversed_items": (),
            "total": "sum", "total_range": (0.0, 40.0), "subscales": {},
            "scored_from_items": True},
}


def built_in_facts(instrument: Instrument) -> dict[str, Any]:
    """The facts of ``instrument`` that ``_BUILT_IN`` fixes for its code (tests compare)."""
    fixed = _BUILT_IN.get(instrument.code, {})
    facts = {
        "items": dict(instrument.items), "items_count": len(instrument.items),
        "item_range": instrument.item_range, "reversed_items": instrument.reversed_items,
        "total": instrument.total, "total_range": instrument.total_range,
        "subscales": dict(instrument.subscales),
        "cutoff_value": instrument.cutoff.value if instrument.cutoff else None,
        "model_input": instrument.model_input,
        "scored_from_items": instrument.scored_from_items,
    }
    return {k: facts[k] for k in fixed}


def _check_built_in(instrument: Instrument, where: str) -> None:
    fixed = _BUILT_IN.get(instrument.code)
    if fixed is None:
        return
    found = built_in_facts(instrument)
    differ = [k for k, v in fixed.items() if found[k] != v]
    if differ:
        said = "; ".join(f"{k} must be {fixed[k]!r}, not {found[k]!r}" for k in differ)
        raise ConfigError(f"{where}: the service scores {instrument.code} by name "
                          f"(retention/clinic/instruments.py), so its entry must agree: "
                          f"{said}. Register a variant under a code of its own")
