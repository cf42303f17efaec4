"""Checking source rows against the contract: what passes is copied, the rest quarantined.

Every row read from the clinic's database is checked before it reaches the copy.
A row that breaks a rule goes to quarantine with the first rule it broke (in the
order of ``RULES``) and the run goes on without it. Checks are vectorised over
whole tables; rules that look across tables (orphans, appointments before
admission, a total that disagrees with its items) use the rows read in this run
together with the ``Context`` of what the store already holds.

Alliance measures are checked with their items: a measure whose item breaks a
range, or whose total disagrees with its items, is quarantined together with all
its items, so the copy never holds half a measure. SRS, GSRS and WAI-SR have rules of
their own; every other instrument the registry (``config/instruments.toml``, handed in
with the ``Context``) declares is checked against its declared ranges and key. An
instrument nobody registered is kept as sent: any code of 1-16 letters, digits, '_',
'.' or '-' is, whether the registry knows it or not.

Any value a source can send is a row's problem, never the run's: bytes, control
characters, text longer than the store's column, a date in year 9999, a number
beyond 32 bits each break a rule of their own, so what reaches the copy is what
both stores and the features can hold.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any

import langcodes
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from pandas.api.types import infer_dtype
from sqlalchemy import String

from retention.clinic import contract, ids
from retention.clinic.data import bool_from_text
from retention.clinic.instruments import SRS_ITEMS, WAI_SR_KEY, WAI_SR_N_ITEMS
from retention.clinic.registry import SUBSCALE_COLUMNS, Instrument, Registry, default_registry
from retention.settings import CODED_COLUMNS, INSTRUMENT_CODE_RULE, OPEN_CODES
from retention.store import tables

# Every rule, with what it means. A row is quarantined under the first rule it breaks;
# rows under one key (duplicates) are listed under the earliest rule here.
RULES: dict[str, str] = {
    "duplicate_key": "two or more rows share the key",
    "missing_required": "a required field is empty",
    "malformed_text": "text that is bytes, or holds a NUL or another control character",
    "too_long": "text longer than the store's column for it (64 characters for an id)",
    "malformed_date": "a date or timestamp that cannot be read",
    "date_out_of_range": "a date before 1900 or from 2100 on: no clinic's record has one",
    "malformed_value": "a number or yes/no that cannot be read",
    "number_out_of_range": "a number the store cannot hold: infinite, or a whole number "
                           "beyond 32 bits",
    "unknown_code": "a code the contract (and the configured mapping) does not know",
    "malformed_code": f"an instrument code that is not {INSTRUMENT_CODE_RULE}",
    "malformed_recipient": "a consent's recipient with a space, or a class:<name> without "
                           "a name",
    "malformed_system": "an identifier's system that is not a URI (scheme:rest, no space "
                        "or '|')",
    "malformed_phone": "a contact's phone that is not a phone number: digits, spaces, "
                       "+ ( ) - . and an extension (ext/x), 7-15 digits before it",
    "malformed_language": "a contact's language that is not a BCP 47 tag (en, es, pt-BR)",
    "orphan": "refers to a client, episode or measure the source does not have",
    "episode_of_another_client": "an appointment, measure or note whose episode is another "
                                 "client's",
    "discharge_before_admission": "discharged before admitted",
    "expiry_before_effective": "a consent that expires before it takes effect",
    "before_admission": "appointment scheduled before its episode's admission",
    "far_future": "appointment scheduled implausibly far after its row was written",
    "recorded_before_observed": "a session note recorded before its session was observed",
    "unknown_item": "an item number the instrument does not have",
    "srs_total_out_of_range": "SRS/GSRS total outside 0-40",
    "srs_item_out_of_range": "SRS/GSRS item outside 0-10",
    "wai_total_out_of_range": "WAI-SR total outside 12-60",
    "wai_subscale_out_of_range": "WAI-SR goal, task or bond outside 1-5",
    "wai_item_out_of_range": "WAI-SR item outside 1-5",
    "total_out_of_range": "a registered instrument's total outside its registered range",
    "subscale_out_of_range": "a registered instrument's goal, task or bond outside the "
                             "range its items allow",
    "item_out_of_range": "a registered instrument's item outside its registered range",
    "total_disagrees_with_items": "a given total or subscale that disagrees with its items",
    "measure_quarantined": "an item of a measure that is quarantined",
}

ORDER = tuple(contract.TABLES)
KEYS = {name: [c.name for c in t.primary_key.columns] for name, t in contract.TABLES.items()}
REQUIRED = {
    name: [c.name for c in t.columns if not c.nullable] for name, t in contract.TABLES.items()
}
NUMBERS = {
    "clients": ("birth_year",),
    "alliance_measures": ("score_total", "goal", "task", "bond"),
    "alliance_items": ("item_number", "response"),
}
INTEGERS = {"clients": ("birth_year",), "alliance_items": ("item_number",)}
BOOLEANS = {"appointments": ("telehealth",), "client_contacts": ("may_text", "may_call"),
            "session_observations": ("rupture",)}
# Instruments with rules of their own (above); the registry's others get the generic ones.
NAMED_RULES = ("SRS", "GSRS", "WAI-SR")
# A session note's space-separated codes, and what each may hold.
NOTE_CODES = {"signs": ("sign", tuple(contract.SIGNS)),
              "repair_steps": ("repair step", contract.REPAIR_STEPS)}
TOTAL_TOLERANCE = 0.051  # totals are recorded to a tenth
SUBSCALE_TOLERANCE = 0.01
REJECT_COLUMNS = ["table_name", "row_key", "rule", "detail", "rows_json", "n_rows"]
# Dates a clinic's record can hold ([EARLIEST, LATEST)). The service computes with
# nanosecond timestamps (1677-2262); a date outside the window is a typing error.
EARLIEST = pd.Timestamp("1900-01-01")
LATEST = pd.Timestamp("2100-01-01")
INT32_MAX = 2**31 - 1  # the store's Integer columns
# Text columns and how many characters the store's copy holds (tables.py). Codes are
# left to ``unknown_code``, which names the value whatever its length.
TEXT_LENGTHS = {
    name: {c.name: int(c.type.length) for c in tables.copies[name].columns
           if isinstance(c.type, String) and c.type.length and (name, c.name) not in CODED_COLUMNS}
    for name in ORDER
}
# C0 and C1 control characters and DEL: no id or contract text holds one, and
# PostgreSQL cannot store NUL at all.
CONTROL = "[\\x00-\\x1f\\x7f-\\x9f]"
_CONTROL = re.compile(CONTROL)
# A class of recipients ("class:treating_providers"); any other recipient is one named
# recipient, whose id holds no space.
RECIPIENT_CLASS = re.compile(re.escape(contract.RECIPIENT_CLASS_PREFIX)
                             + r"[A-Za-z0-9][A-Za-z0-9_.-]*")
# A URI as FHIR names a code or identifier system: a scheme, a colon, the rest. Never a
# '|': the quarantine's key joins system and value with one.
SYSTEM_URI = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:[^\s|]+")
# A phone number as a clinic writes one, leniently: digits, spaces, + ( ) - . and an
# extension ("ext 12", "ext. 12", "x12"); 7-15 digits before the extension (E.164 has at
# most 15).
PHONE = re.compile(r"(?P<number>\+?[0-9 ().-]+?)(?:\s*(?:ext\.?|x)\s*[0-9]{1,6})?\s*",
                   re.IGNORECASE)
PHONE_DIGITS = (7, 15)
BYTES_TAG = "$bytes"  # how ``rows_json`` keeps a value that came as bytes
ROW_KEY_LENGTH = int(getattr(tables.quarantine.c.row_key.type, "length", None) or 200)


@dataclass
class Context:
    """What the store already holds, for the rules that look beyond the rows read, and
    the instrument registry the measures are checked against (the settings' one,
    ``Settings.instruments``; the shipped one when none is given).

    Empty for a full reload, where the rows read are the whole source.
    """

    client_ids: pd.Index = field(default_factory=lambda: pd.Index([], dtype=object))
    episode_ids: pd.Index = field(default_factory=lambda: pd.Index([], dtype=object))
    admitted_on: pd.Series = field(default_factory=lambda: pd.Series([], dtype="datetime64[ns]"))
    # The client of each episode in ``admitted_on``, by episode id.
    episode_clients: pd.Series = field(default_factory=lambda: pd.Series([], dtype=object))
    measure_ids: pd.Index = field(default_factory=lambda: pd.Index([], dtype=object))
    instruments: pd.Series = field(default_factory=lambda: pd.Series([], dtype=object))
    registry: Registry = field(default_factory=default_registry)


@dataclass
class Outcome:
    """Rows that passed (typed, contract columns) and rows quarantined (one entry per key)."""

    valid: dict[str, pd.DataFrame]
    rejects: pd.DataFrame
    checked: dict[str, pd.DataFrame]  # the rows given, per table, in the order given
    ok: dict[str, pd.Series]  # whether each row given passed, in the order given
    # The first rule each row given broke (None where it passed), in the order given: of
    # the tables with a row that broke one.
    rules: dict[str, pd.Series] = field(default_factory=dict)
    # Per coded column (table, column): whether each row given holds a code that is
    # neither the contract's nor mapped onto one, whatever rule the row broke first.
    unmapped: dict[tuple[str, str], pd.Series] = field(default_factory=dict)

    @property
    def keys(self) -> dict[str, pd.Series]:
        """The row keys checked, per table, in the order given.

        Worked out on demand: a full reload of millions of rows never needs them all.
        """
        return {name: _row_keys(name, frame) for name, frame in self.checked.items()}

    def rejected_keys(self, table: str) -> pd.Index:
        r = self.rejects
        return pd.Index(r.loc[r["table_name"] == table, "row_key"])

    def counts(self) -> dict[str, dict[str, int]]:
        """Quarantined source rows by table and rule."""
        out: dict[str, dict[str, int]] = {}
        grouped = self.rejects.groupby(["table_name", "rule"])["n_rows"].sum()
        for key, n in grouped.items():
            parts: tuple[Any, ...] = tuple(key)  # type: ignore[arg-type]
            out.setdefault(str(parts[0]), {})[str(parts[1])] = int(n)
        return out


class _Checked:
    """One table's rows: raw values, typed values, and the first rule each row broke."""

    def __init__(self, table: str, raw: pd.DataFrame) -> None:
        self.table = table
        columns = [c.name for c in contract.TABLES[table].columns]
        # No copies of millions of rows unless needed: same columns, a fresh index, and
        # empty text read as missing, column by column.
        if list(raw.columns) != columns:
            raw = raw.reindex(columns=columns)
        if not isinstance(raw.index, pd.RangeIndex) or raw.index.start != 0:
            raw = raw.reset_index(drop=True)
        for col in columns:
            if raw[col].dtype == object or isinstance(raw[col].dtype, pd.StringDtype):
                blank = raw[col].eq("")
                if blank.any():
                    raw[col] = raw[col].astype(object).mask(blank)
        self.raw = raw
        self.typed = pd.DataFrame(index=self.raw.index)
        # The first rule each row broke, and its detail, made at the first flag: most
        # tables of most runs have none, and two object columns of every row read were
        # half a GiB of a 100,000-client first night (docs/performance.md).
        self._rule: pd.Series | None = None
        self._detail: pd.Series | None = None
        self.unmapped: dict[str, pd.Series] = {}
        self._unflagged = np.ones(len(raw), dtype=bool)  # rule.isna(), kept as flags are set

    @property
    def flagged(self) -> bool:
        """Whether any row broke a rule."""
        return self._rule is not None

    @property
    def rule(self) -> pd.Series:
        """The first rule each row broke (None where none)."""
        if self._rule is None:
            self._rule = pd.Series(None, index=self.raw.index, dtype=object)
        return self._rule

    @property
    def detail(self) -> pd.Series:
        """What each row's first rule found (None where none)."""
        if self._detail is None:
            self._detail = pd.Series(None, index=self.raw.index, dtype=object)
        return self._detail

    def keys(self, ix: pd.Index) -> pd.Series:
        """The keys of the rows ``ix``, as quarantine records them."""
        return _row_keys(self.table, self.raw.loc[ix])

    def flag(self, mask: pd.Series | np.ndarray, rule: str,
             detail: str | pd.Series | Callable[[pd.Index], pd.Series]) -> None:
        """Mark rows under ``rule`` unless they already broke an earlier one.

        ``detail`` is text, or a function that words it for the rows marked only (most
        runs mark none of millions of rows: wording them all would dominate the check).
        """
        hit = np.asarray(mask, dtype=bool) & self._unflagged
        if not hit.any():
            return
        self._unflagged &= ~hit
        mask = pd.Series(hit, index=self.raw.index)
        self.rule[mask] = rule
        if callable(detail):
            self.detail[mask] = detail(mask.index[mask])
        elif isinstance(detail, pd.Series):
            self.detail[mask] = detail[mask]
        else:
            self.detail[mask] = detail

    @property
    def ok(self) -> pd.Series:
        """Rows that broke no rule so far."""
        return pd.Series(self._unflagged.copy(), index=self.raw.index)


def validate(
    raw: Mapping[str, pd.DataFrame],
    context: Context,
    *,
    codes_allowed: Mapping[tuple[str, str], tuple[str, ...]] = CODED_COLUMNS,
    max_days_ahead: int = 366,
) -> Outcome:
    """Check the rows of each contract table in ``raw`` (raw values, any types)."""
    checked = {name: _Checked(name, raw.get(name, pd.DataFrame())) for name in ORDER}
    for c in checked.values():
        _row_rules(c, codes_allowed)
    _disclosure_rules(checked["consents"], checked["client_identifiers"])
    _contact_rules(checked["client_contacts"])
    observations = checked["session_observations"]
    _note_code_rules(observations)

    clients, episodes = checked["clients"], checked["episodes"]
    appts, measures, items = (checked["appointments"], checked["alliance_measures"],
                              checked["alliance_items"])
    client_ids = _with(context.client_ids, clients.raw["client_id"])
    episode_ids = _with(context.episode_ids, episodes.raw["episode_id"])
    measure_ids = _with(context.measure_ids, measures.raw["measure_id"])

    _orphans(episodes, {"client_id": client_ids})
    e = episodes.typed
    episodes.flag(e["discharged_on"].notna() & (e["discharged_on"] < e["admitted_on"]),
                  "discharge_before_admission", "discharged_on is before admitted_on")

    _orphans(appts, {"episode_id": episode_ids, "client_id": client_ids})
    # Each episode's admission and client (as a position in ``client_ids``).
    admitted = _trusted(context.admitted_on, episodes, e["admitted_on"])
    theirs = _trusted(context.episode_clients, episodes, episodes.raw["client_id"])
    clients_of = pd.Series(ids.positions(theirs.astype(object), client_ids), index=theirs.index)
    _another_clients(appts, clients_of, client_ids)
    a = appts.typed
    start = _lookup(admitted, appts.raw["episode_id"])
    appts.flag(pd.to_datetime(start).notna() & (a["scheduled_at"] < pd.to_datetime(start)),
               "before_admission",
               lambda ix: "scheduled_at " + _txt(a["scheduled_at"], ix)
               + " is before admission on " + pd.to_datetime(start.loc[ix]).dt.date.astype(str))
    ahead = a["scheduled_at"] - a["updated_at"]
    appts.flag(ahead > pd.Timedelta(days=max_days_ahead), "far_future",
               lambda ix: "scheduled_at " + _txt(a["scheduled_at"], ix) + " is more than "
               f"{max_days_ahead} days after the row was written")

    _orphans(measures, {"episode_id": episode_ids, "client_id": client_ids})
    _another_clients(measures, clients_of, client_ids)
    _orphans(items, {"measure_id": measure_ids})
    _measure_rules(measures, items, context)

    _orphans(observations, {"episode_id": episode_ids, "client_id": client_ids})
    _another_clients(observations, clients_of, client_ids)
    o = observations.typed
    # A note counts from when it was written: one written before its session is a typo
    # that would make it known too early.
    observations.flag(o["recorded_at"].notna() & (o["recorded_at"] < o["observed_at"]),
                      "recorded_before_observed",
                      lambda ix: "recorded_at " + _txt(o["recorded_at"], ix)
                      + " is before observed_at " + _txt(o["observed_at"], ix))

    consents = checked["consents"]
    _orphans(consents, {"client_id": client_ids})
    _orphans(checked["client_identifiers"], {"client_id": client_ids})
    _orphans(checked["client_contacts"], {"client_id": client_ids})
    k = consents.typed
    consents.flag(k["expires_on"].notna() & (k["expires_on"] < k["effective_on"]),
                  "expiry_before_effective",
                  lambda ix: "expires_on " + _txt(k["expires_on"].dt.date, ix)
                  + " is before effective_on " + _txt(k["effective_on"].dt.date, ix))

    valid = {name: _valid_frame(c) for name, c in checked.items()}
    rejects = pd.concat([_rejects(c) for c in checked.values()], ignore_index=True)
    return Outcome(valid=valid, rejects=rejects,
                   checked={name: c.raw for name, c in checked.items()},
                   ok={name: c.ok for name, c in checked.items()},
                   rules={name: c.rule for name, c in checked.items() if c.flagged},
                   unmapped={(name, col): mask for name, c in checked.items()
                             for col, mask in c.unmapped.items()})


# A full reload checks these first: the other tables' rules look at them (is the client
# or episode known, whose episode is it, when was it admitted), never the other way.
LOOKED_UP = ("clients", "episodes", "consents", "client_identifiers", "client_contacts")
# The rest, nearly all of a network's rows: checked against ``reference``, whole or in
# the key ranges of a reload in parts (``retention.etl.parts``: every row of a key, and a
# measure's items with it, in one range).
LOOKING_UP = tuple(t for t in ORDER if t not in LOOKED_UP)


def validate_full(raw: Mapping[str, pd.DataFrame], registry: Registry, *,
                  max_days_ahead: int = 366) -> Outcome:
    """A full reload's check, in the two phases a network's is split into: the
    ``LOOKED_UP`` tables, then the others against their ``reference``. The outcome is
    that of one ``validate`` of every table (tests/etl/test_validation.py)."""
    first = validate({t: raw[t] for t in LOOKED_UP if t in raw}, Context(registry=registry),
                     max_days_ahead=max_days_ahead)
    rest = validate({t: raw[t] for t in LOOKING_UP if t in raw}, reference(first, registry),
                    max_days_ahead=max_days_ahead)
    return _joined(first, rest)


def reference(looked_up: Outcome, registry: Registry) -> Context:
    """What rows of the ``LOOKING_UP`` tables are checked against, from the ``LOOKED_UP``
    rows of the same full reload: every client and episode id read (a row naming a
    quarantined one is held for that, not as an orphan), and each good episode's
    admission and client. Against it, any part of those rows is held as the whole is."""
    episodes = looked_up.checked["episodes"]
    good = looked_up.ok["episodes"].to_numpy(dtype=bool)
    good_ids = episodes["episode_id"].to_numpy()[good]
    none = pd.Index([], dtype=object)
    return Context(
        client_ids=_with(none, looked_up.checked["clients"]["client_id"]),
        episode_ids=_with(none, episodes["episode_id"]),
        admitted_on=pd.Series(looked_up.valid["episodes"]["admitted_on"].to_numpy(),
                              index=good_ids),
        episode_clients=pd.Series(episodes["client_id"].to_numpy()[good], index=good_ids,
                                  dtype=object),
        registry=registry,
    )


def rejects_in_order(parts: list[pd.DataFrame]) -> pd.DataFrame:
    """The rejects of checks of different tables or key ranges, table by table in the
    contract's order as one ``validate`` gives them (each part's own order kept)."""
    rejects = pd.concat(parts, ignore_index=True)
    position = rejects["table_name"].map({t: n for n, t in enumerate(ORDER)})
    return rejects.iloc[np.argsort(position.to_numpy(), kind="stable")].reset_index(drop=True)


def _joined(first: Outcome, rest: Outcome) -> Outcome:
    """One outcome of two that checked different tables, as one ``validate`` gives it."""
    def of(table: str) -> Outcome:
        return first if table in LOOKED_UP else rest

    return Outcome(valid={t: of(t).valid[t] for t in ORDER},
                   rejects=rejects_in_order([first.rejects, rest.rejects]),
                   checked={t: of(t).checked[t] for t in ORDER},
                   ok={t: of(t).ok[t] for t in ORDER},
                   rules={t: of(t).rules[t] for t in ORDER if t in of(t).rules},
                   unmapped={(t, c): m for t in ORDER
                             for (u, c), m in of(t).unmapped.items() if u == t})


# --- row rules ----------------------------------------------------------------------


def _row_rules(c: _Checked, codes_allowed: Mapping[tuple[str, str], tuple[str, ...]]) -> None:
    table, raw = c.table, c.raw
    keys = KEYS[table]
    key_present = raw[keys].notna().all(axis=1)
    dup = _duplicated(raw, keys) & key_present

    def sharing(ix: pd.Index) -> pd.Series:
        shared = c.keys(ix)
        return "rows sharing this key: " + shared.map(shared.value_counts()).astype(str)

    c.flag(dup, "duplicate_key", sharing)
    for col in REQUIRED[table]:
        c.flag(raw[col].isna(), "missing_required", f"{col} is empty")
    for col, most in TEXT_LENGTHS[table].items():
        unfit, length = _text_facts(raw[col])
        c.flag(unfit, "malformed_text", f"{col} is bytes or holds a control character")
        c.flag(length > most, "too_long", _said(f"{col} has ", pd.Series(length, index=raw.index),
                                                f" characters, more than {most}"))
    dates = contract.DATE_COLUMNS.get(table, ())
    stamps = contract.TIMESTAMP_COLUMNS.get(table, ())
    for col in (*dates, *stamps):
        parsed = _parse_timestamps(raw[col])
        held = _holdable(parsed)
        typed = parsed.where(held).astype("datetime64[ns]")
        c.typed[col] = typed.dt.normalize() if col in dates else typed
        c.flag(raw[col].notna() & parsed.isna(), "malformed_date",
               _said(f"{col} ", raw[col], " is not a date"))
        c.flag(~held, "date_out_of_range",
               _said(f"{col} ", raw[col], f" is outside {EARLIEST.year}-{LATEST.year - 1}"))
    for col in NUMBERS.get(table, ()):
        values = raw[col]
        blob = _blobs(values)
        parsed = pd.to_numeric(values.mask(blob) if blob.any() else values,
                               errors="coerce").astype(float)
        bad = values.notna() & parsed.isna()
        finite = pd.Series(np.isfinite(parsed.to_numpy()), index=raw.index)
        beyond = parsed.notna() & ~finite
        if col in INTEGERS.get(table, ()):
            bad |= finite & (parsed != np.floor(parsed))
            beyond |= finite & (parsed.abs() > INT32_MAX)
        c.typed[col] = parsed
        c.flag(bad, "malformed_value",
               _said(f"{col} ", values, " is not a number"))
        c.flag(beyond, "number_out_of_range",
               _said(f"{col} ", values, " is beyond what the store holds"))
    for col in BOOLEANS.get(table, ()):
        parsed = raw[col].map(_bool_or_nan)
        c.typed[col] = parsed
        c.flag(raw[col].notna() & parsed.isna(), "malformed_value",
               _said(f"{col} ", raw[col], " is not yes/no"))
    for (t, col), allowed in codes_allowed.items():
        if t != table:
            continue
        pattern = OPEN_CODES.get((t, col))
        if pattern is not None:
            # Open codes: any well-formed one is kept (the registry says what it is).
            malformed = pd.Series(_judged(raw[col], _not_matching(pattern)), index=raw.index)
            c.unmapped[col] = malformed
            c.flag(malformed, "malformed_code",
                   _said(f"{col} ", raw[col], f" is not a code of {INSTRUMENT_CODE_RULE}"))
            continue
        unknown = raw[col].notna() & ~raw[col].isin(allowed)
        c.unmapped[col] = unknown
        c.flag(unknown, "unknown_code",
               _said(f"{col} ", raw[col], " is not a contract code"))


def _disclosure_rules(consents: _Checked, identifiers: _Checked) -> None:
    """A recipient a disclosure can be matched to; a system an identifier search can name."""
    recipient = consents.raw["recipient"]
    consents.flag(_failing(recipient, _bad_recipient), "malformed_recipient",
                  _said("recipient ", recipient, " is neither a name without spaces nor "
                        f"{contract.RECIPIENT_CLASS_PREFIX}<name>"))
    system = identifiers.raw["system"]
    identifiers.flag(_failing(system, lambda v: SYSTEM_URI.fullmatch(v) is None),
                     "malformed_system",
                     _said("system ", system, " is not a URI (scheme:rest)"))


def _contact_rules(contacts: _Checked) -> None:
    """A phone a case manager can dial, a language tag the pages can name. The details
    never quote the value: a contact's phone or language is no one's business but the
    case managers' (the raw row is kept with the entry, as for every table)."""
    contacts.flag(_failing(contacts.raw["phone"], _bad_phone), "malformed_phone",
                  "phone is not a phone number (digits, spaces, + ( ) - . and an extension; "
                  f"{PHONE_DIGITS[0]}-{PHONE_DIGITS[1]} digits)")
    contacts.flag(_failing(contacts.raw["language"], _bad_language),
                  "malformed_language", "language is not a BCP 47 tag (en, es, pt-BR)")


def _note_code_rules(notes: _Checked) -> None:
    """Every sign and repair step a session note lists is one of the contract's codes;
    the detail names the codes that are not (codes, never notes)."""
    for column, (what, known) in NOTE_CODES.items():
        unknown = _unknown_note_codes(notes.raw[column], frozenset(known))
        notes.flag(unknown.notna(), "unknown_code",
                   _said(f"{column} holds ", unknown,
                         f", not {'a' if what[0] not in 'aeiou' else 'an'} {what} code "
                         f"({', '.join(known)})"))


def _unknown_note_codes(values: pd.Series, known: frozenset[str]) -> pd.Series:
    """Per value, the space-separated codes in it that are not ``known`` (quoted, as
    text), or None; judged once per distinct value. Bytes are ``malformed_text``'s."""
    out = pd.Series(None, index=values.index, dtype=object)
    present = values.notna().to_numpy()
    if not present.any():
        return out
    codes, distinct = pd.factorize(values.astype(object))
    found: list[str | None] = []
    for value in distinct:
        if isinstance(value, bytes | bytearray | memoryview):
            found.append(None)
            continue
        unknown = [t for t in str(value).split() if t not in known]
        found.append(", ".join(repr(t[:40]) for t in unknown[:5]) if unknown else None)
    spread = np.array(found, dtype=object)[np.maximum(codes, 0)]
    keep = present & (codes >= 0)
    out[keep] = spread[keep]
    return out


def _bad_language(value: str) -> bool:
    """Not a BCP 47 tag whose subtags are registered (langcodes checks them against the
    IANA registry: "es", "pt-BR", "zh-Hans"; not "Spanish"); "_" is never a separator."""
    return "_" in value or not langcodes.tag_is_valid(value)


def _bad_phone(value: str) -> bool:
    """Not digits and the usual punctuation, or too few or too many digits."""
    found = PHONE.fullmatch(value)
    if found is None:
        return True
    digits = sum(ch.isdigit() for ch in found.group("number"))
    low, high = PHONE_DIGITS
    return not low <= digits <= high


def _bad_recipient(value: str) -> bool:
    """Spaces, or a class prefix (in any case) not followed by a name."""
    if value != value.strip() or any(ch.isspace() for ch in value):
        return True
    prefix = contract.RECIPIENT_CLASS_PREFIX
    return value[:len(prefix)].lower() == prefix and RECIPIENT_CLASS.fullmatch(value) is None


def _not_matching(pattern: re.Pattern[str]) -> Callable[[Any], bool]:
    """Whether a value is not text matching ``pattern`` whole."""
    return lambda value: not (isinstance(value, str) and pattern.fullmatch(value) is not None)


def _judged(values: pd.Series, bad: Callable[[Any], bool]) -> np.ndarray:
    """Which present values ``bad`` holds for, whatever their type, judged once per
    distinct value."""
    present = values.notna().to_numpy()
    if not present.any():
        return np.zeros(len(values), dtype=bool)
    codes, distinct = pd.factorize(values.astype(object))
    verdict = np.array([bad(v) for v in distinct], dtype=bool)
    return present & (codes >= 0) & verdict[np.maximum(codes, 0)]


def _failing(values: pd.Series, bad: Callable[[str], bool]) -> np.ndarray:
    """Which text values ``bad`` holds for, judged once per distinct value (other values,
    such as bytes or numbers, are other rules' to judge)."""
    return _judged(values, lambda v: isinstance(v, str) and bad(v))


def _orphans(c: _Checked, parents: Mapping[str, pd.Index]) -> None:
    for col, present in parents.items():
        missing = c.raw[col].notna() & (ids.positions(c.raw[col], present) < 0)
        c.flag(missing, "orphan",
               _said(f"{col} ", c.raw[col], " is not in the source"))


def _trusted(stored: pd.Series, episodes: _Checked, read: pd.Series) -> pd.Series:
    """A fact of each episode that is valid now, by episode id: the store's (``stored``),
    overridden by the episodes read in this run (``read``, in their order); a quarantined
    episode's is not trusted, so absent."""
    good = episodes.ok
    return pd.concat([stored[~stored.index.isin(episodes.raw["episode_id"])],
                      pd.Series(read.loc[good].to_numpy(),
                                index=episodes.raw.loc[good, "episode_id"])])


def _another_clients(c: _Checked, clients_of: pd.Series, client_ids: pd.Index) -> None:
    """Hold a row whose episode is another client's: whose record it is cannot be told,
    and counted for its episode it could be a reason on that client's list that their
    page (which reads a client's rows by client and episode) does not show."""
    theirs = np.asarray(pd.api.extensions.take(
        clients_of.to_numpy(dtype=np.int64), ids.positions(c.raw["episode_id"], clients_of.index),
        allow_fill=True, fill_value=-1))
    mine = ids.positions(c.raw["client_id"], client_ids)
    c.flag((theirs >= 0) & (mine >= 0) & (theirs != mine), "episode_of_another_client",
           lambda ix: "episode_id " + _txt(c.raw["episode_id"], ix) + " is not client_id "
           + _txt(c.raw["client_id"], ix) + "'s episode")


def _measure_rules(measures: _Checked, items: _Checked, context: Context) -> None:
    """Ranges of totals, subscales and items; totals against items; items follow measures.

    SRS, GSRS and WAI-SR by their own rules; every other registered instrument by what
    the registry declares (``_registered_rules``); an unregistered one is not checked.
    """
    m, raw = measures.typed, measures.raw
    instrument = raw["instrument"]
    srs = instrument.isin(["SRS", "GSRS"])
    wai = instrument == "WAI-SR"
    total = m["score_total"]
    measures.flag(srs & total.notna() & ((total < 0) | (total > 40)), "srs_total_out_of_range",
                  lambda ix: "score_total " + _txt(total, ix) + " is outside 0-40")
    measures.flag(wai & total.notna() & ((total < 12) | (total > 60)), "wai_total_out_of_range",
                  lambda ix: "score_total " + _txt(total, ix) + " is outside 12-60")
    for scale in ("goal", "task", "bond"):
        v = m[scale]
        measures.flag(wai & v.notna() & ((v < 1) | (v > 5)), "wai_subscale_out_of_range",
                      _said(f"{scale} ", v, " is outside 1-5"))
    registered = {code: inst for code, inst in context.registry.instruments.items()
                  if code not in NAMED_RULES}
    mine = {code: pd.Series(np.asarray(instrument == code, dtype=bool), index=raw.index)
            for code in registered}
    for code, inst in registered.items():
        low, high = inst.total_range
        measures.flag(mine[code] & total.notna() & ((total < low) | (total > high)),
                      "total_out_of_range",
                      _said("score_total ", total, f" is outside {low:g}-{high:g} ({code})"))
        for scale, (s_low, s_high) in _subscale_ranges(inst).items():
            v = m[scale]
            measures.flag(mine[code] & v.notna() & ((v < s_low) | (v > s_high)),
                          "subscale_out_of_range",
                          _said(f"{scale} ", v, f" is outside {s_low:g}-{s_high:g} ({code})"))

    # Items: their measure's instrument decides the item numbers and range.
    # The measure read in this run (its first row) decides, else the one the store holds.
    # ``at``: each item's measure row among those read (-1 if not read), found once and
    # used by every per-measure rule below.
    at = ids.positions(items.raw["measure_id"], raw["measure_id"])
    read = at >= 0
    # Taken from the measures' own array (a categorical stays one: no Python object
    # per item of millions).
    item_instrument = pd.Series(instrument.array.take(np.maximum(at, 0)),
                                index=items.raw.index).where(read)
    if not read.all() and len(context.instruments):
        stored = _lookup(context.instruments, items.raw.loc[~read, "measure_id"])
        item_instrument = item_instrument.astype(object)
        item_instrument[~read] = stored
    number, response = items.typed["item_number"], items.typed["response"]
    i_srs = item_instrument.isin(["SRS", "GSRS"])
    i_wai = item_instrument == "WAI-SR"
    i_mine = {code: pd.Series(np.asarray(item_instrument == code, dtype=bool),
                              index=items.raw.index) for code in registered}
    checked = i_srs | i_wai
    valid_number = (i_srs & number.isin(list(SRS_ITEMS))) | (
        i_wai & number.isin(list(range(1, WAI_SR_N_ITEMS + 1))))
    for code, inst in registered.items():
        checked |= i_mine[code]
        valid_number |= i_mine[code] & number.isin(list(inst.items))
    valid_number |= ~checked
    items.flag(number.notna() & ~valid_number, "unknown_item",
               lambda ix: "item_number " + _txt(number, ix) + " is not an item of "
               + _txt(item_instrument, ix))
    items.flag(i_srs & response.notna() & ((response < 0) | (response > 10)),
               "srs_item_out_of_range",
               lambda ix: "response " + _txt(response, ix) + " is outside 0-10")
    items.flag(i_wai & response.notna() & ((response < 1) | (response > 5)),
               "wai_item_out_of_range",
               lambda ix: "response " + _txt(response, ix) + " is outside 1-5")
    for code, inst in registered.items():
        low, high = inst.item_range
        items.flag(i_mine[code] & response.notna() & ((response < low) | (response > high)),
                   "item_out_of_range",
                   _said("response ", response, f" is outside {low:g}-{high:g} ({code})"))

    # A measure breaks the first rule any of its items broke.
    bad_items = items.raw.loc[items.rule.isin(
        ["unknown_item", "srs_item_out_of_range", "wai_item_out_of_range",
         "item_out_of_range"])] if items.flagged else items.raw.iloc[:0]
    if len(bad_items):
        first = pd.DataFrame({
            "measure_id": bad_items["measure_id"],
            "rule": items.rule[bad_items.index],
            "detail": "item " + bad_items["item_number"].astype(str) + ": "
                      + items.detail[bad_items.index].astype(str),
        }).drop_duplicates("measure_id")
        first = first.set_index("measure_id")
        hit = _lookup(first["rule"], raw["measure_id"])
        for rule in first["rule"].unique():
            measures.flag(hit == rule, str(rule),
                          lambda ix: _lookup(first["detail"], raw.loc[ix, "measure_id"]))

    # Totals and subscales against complete, valid item sets: sums and counts per
    # measure row over the items' positions (millions of items, no grouping of text
    # keys). A measure id read twice sums on its first row; both rows are quarantined
    # as duplicates already.
    ok = items.ok.to_numpy()
    if ok.any():
        def per_measure(use: np.ndarray, weights: np.ndarray | None = None) -> pd.Series:
            """Per measure row: the count (or sum of ``weights``) of its items in ``use``."""
            use = use & read
            sums = np.bincount(at[use], minlength=len(raw),
                               weights=None if weights is None else weights[use])
            return pd.Series(sums, index=raw.index)

        responses = response.to_numpy(dtype=float)
        have = per_measure(ok)
        summed = per_measure(ok, responses)
        complete = (srs & (have == len(SRS_ITEMS))) | (wai & (have == WAI_SR_N_ITEMS))
        off = complete & total.notna() & ((total - summed).abs() > TOTAL_TOLERANCE)
        measures.flag(off, "total_disagrees_with_items",
                      lambda ix: "score_total " + _txt(total, ix) + " but items sum to "
                      + _txt(summed.round(2), ix))
        numbers = number.to_numpy(dtype=float)
        for scale, key in WAI_SR_KEY.items():
            in_scale = ok & np.isin(numbers, list(key))
            # The mean of the scale's items, only where all of them are there.
            mean = (per_measure(in_scale, responses) / len(key)).where(
                per_measure(in_scale) == len(key))
            v = m[scale]
            off = wai & complete & v.notna() & mean.notna()
            off &= (v - mean).abs() > SUBSCALE_TOLERANCE
            if off.any():
                measures.flag(off, "total_disagrees_with_items",
                              f"{scale} " + v.astype(str) + " but its items average "
                              + mean.round(2).astype(str))
        for code, inst in registered.items():
            if inst.scored_from_items:
                _registered_totals(measures, inst, mine[code] & (have == len(inst.items)),
                                   i_mine[code].to_numpy() & ok, numbers, responses,
                                   per_measure)

    # Items of a quarantined measure go with it.
    # (A measure id read twice is quarantined on both rows, so its first row tells.)
    items.flag(read & ~measures.ok.to_numpy()[np.maximum(at, 0)], "measure_quarantined",
               lambda ix: "measure " + _txt(items.raw["measure_id"], ix) + " is quarantined")


def _subscale_ranges(inst: Instrument) -> dict[str, tuple[float, float]]:
    """The range of each subscale the measure rows record (goal, task, bond)."""
    low, high = inst.item_range
    out = {}
    for scale, sub in inst.subscales.items():
        if scale in SUBSCALE_COLUMNS:
            n = len(sub.items) if sub.score == "sum" else 1
            out[scale] = (low * n, high * n)
    return out


def _registered_totals(measures: _Checked, inst: Instrument, complete: pd.Series,
                       own: np.ndarray, numbers: np.ndarray, responses: np.ndarray,
                       per_measure: Callable[..., pd.Series]) -> None:
    """A registered instrument's given total and subscales against its complete item
    sets, scored with its key (reversed items turned, sums or means as declared)."""
    m = measures.typed
    low, high = inst.item_range
    keyed = np.where(own & np.isin(numbers, list(inst.reversed_items)),
                     low + high - responses, responses)
    checks = [("score_total", "items", inst.total, len(inst.items), own)]
    checks += [(scale, "its items", sub.score, len(sub.items),
                own & np.isin(numbers, list(sub.items)))
               for scale, sub in inst.subscales.items() if scale in SUBSCALE_COLUMNS]
    for column, whose, method, n, use in checks:
        value = per_measure(use, keyed)
        if method == "mean":
            value = value / n
        value = value.where(per_measure(use) == n)
        given = m[column]
        tolerance = SUBSCALE_TOLERANCE if method == "mean" else TOTAL_TOLERANCE
        off = complete & given.notna() & value.notna() & ((given - value).abs() > tolerance)
        verb = "average" if method == "mean" else "sum to"
        if inst.reversed_items:
            verb += ", reversed items turned,"
        measures.flag(off, "total_disagrees_with_items",
                      _compared(f"{column} ", given, f" but {whose} {verb} ", value,
                                f" ({inst.code})"))


def _compared(prefix: str, given: pd.Series, middle: str, computed: pd.Series,
              suffix: str) -> Callable[[pd.Index], pd.Series]:
    """A detail worded, when needed: the value given against the value computed."""
    return lambda ix: (prefix + _txt(given, ix) + middle + _txt(computed.round(2), ix)
                       + suffix)


# --- helpers ------------------------------------------------------------------------


def _with(known: pd.Index, read: pd.Series) -> pd.Index:
    """Ids the store holds together with those read (just those read on a full reload)."""
    read_ids = pd.Index(read.dropna())
    return read_ids if known.empty else known.union(read_ids)


def _duplicated(raw: pd.DataFrame, keys: list[str]) -> pd.Series:
    """Rows whose key another row shares: text ids by sorting, others on integer codes."""
    if len(keys) == 1:
        shared = _shared_text(raw[keys[0]])
        if shared is not None:
            return pd.Series(shared, index=raw.index)
    codes = [_codes(raw[k]) for k in keys]
    if len(codes) == 1:
        (code,) = codes
        counts = np.bincount(code[code >= 0], minlength=int(code.max(initial=0)) + 1)
        return pd.Series((code >= 0) & (counts[np.maximum(code, 0)] > 1), index=raw.index)
    if math.prod(int(part.max(initial=0)) + 2 for part in codes) >= 2**62:
        return raw.duplicated(subset=keys, keep=False)  # codes too many to pack in one int
    combined = np.zeros(len(raw), dtype=np.int64)
    for part in codes:
        combined = combined * (int(part.max(initial=0)) + 2) + (part + 1)
    if bool(np.all(combined[1:] > combined[:-1])):
        return pd.Series(False, index=raw.index)
    # Neighbours after a stable sort (cheap when the source sends rows in key order).
    order = np.argsort(combined, kind="stable")
    return pd.Series(_shared_neighbours(combined[order][1:] == combined[order][:-1], order),
                     index=raw.index)


# Out-of-order neighbours, as a share of rows, up to which text ids are sorted to find
# those shared; beyond it hashing them (``_codes``) costs no more than sorting.
NEARLY_SORTED = 0.01


def _shared_text(values: pd.Series) -> np.ndarray | None:
    """Which text ids another row shares; None for ids that are not text, or far from order.

    A source usually sends rows in key order, or nearly: in the order of its table's
    storage, where rows updated or written late sit out of place. Ids that strictly
    increase are unique, which one comparison of neighbours shows; a few out of place
    are sorted, which is quicker than coding them by hash. Missing ids share nothing.
    """
    array = _text_array(values)
    if array is None:
        return None
    n = len(array)
    if n < 2:
        return np.zeros(n, dtype=bool)
    in_order = pc.less(array.slice(0, n - 1), array.slice(1)).fill_null(False)
    out_of_order = n - 1 - int(pc.sum(in_order).as_py() or 0)
    if out_of_order == 0 and array.null_count == 0:
        return np.zeros(n, dtype=bool)
    if out_of_order > NEARLY_SORTED * n:
        return None
    order = pc.sort_indices(array)  # missing ids last; equal to nothing
    ordered = array.take(order)
    same = pc.equal(ordered.slice(1), ordered.slice(0, n - 1)).fill_null(False)
    return _shared_neighbours(np.asarray(same), np.asarray(order))


def _shared_neighbours(same: np.ndarray, order: np.ndarray) -> np.ndarray:
    """Rows equal to a neighbour in ``order``, given ``same`` for each pair of neighbours."""
    shared = np.zeros(len(order), dtype=bool)
    shared[1:] |= same
    shared[:-1] |= same
    out = np.empty(len(order), dtype=bool)
    out[order] = shared
    return out


def _text_array(values: pd.Series) -> pa.Array | None:
    """Text values as one Arrow array (string or, as pandas 3 keeps it, large_string)."""
    if not (values.dtype == object or isinstance(values.dtype, pd.StringDtype)):
        return None
    try:
        array = pa.array(values, from_pandas=True)
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        return None
    if isinstance(array, pa.ChunkedArray):
        array = array.combine_chunks()
    if not (pa.types.is_string(array.type) or pa.types.is_large_string(array.type)):
        return None
    return array


def _codes(values: pd.Series) -> np.ndarray:
    """Dense integer codes of the values (-1 for missing)."""
    return np.asarray(pd.factorize(values)[0], dtype=np.int64)


def _lookup(mapping: pd.Series, keys: pd.Series) -> pd.Series:
    """``mapping[key]`` for each key (missing where absent), whatever the keys' dtype."""
    at = ids.positions(keys, mapping.index)
    spread = pd.api.extensions.take(mapping.to_numpy(), at, allow_fill=True)
    return pd.Series(spread, index=keys.index)


def _said(prefix: str, values: pd.Series, suffix: str) -> Callable[[pd.Index], pd.Series]:
    """A detail worded, when needed, for the rows marked: prefix, their value, suffix."""
    return lambda ix: prefix + _txt(values, ix) + suffix


def _txt(values: pd.Series, ix: pd.Index, width: int = 40) -> pd.Series:
    """Values of the rows ``ix`` as short text, for a quarantine detail (bytes as their
    repr: they need not be text in any encoding)."""
    picked = values.loc[ix]
    if picked.dtype == object:
        picked = picked.map(_shown).astype(object)
    return picked.astype(str).str.slice(0, width)


def _shown(value: Any) -> str:
    return repr(bytes(value)) if isinstance(value, bytes | bytearray | memoryview) else str(value)


def _row_keys(table: str, raw: pd.DataFrame) -> pd.Series:
    """The row's key as text; a key of two columns joins them with '|' (an item's
    measure and item number, an identifier's system and value).

    A key the quarantine cannot hold as it is (bytes, a control character, longer than
    an id) is held as "bad key", its start escaped and a hash of all of it; a missing
    one as "no key" and a hash of the row. Neither is ever a key of the copy.
    """
    keys = KEYS[table]
    if len(keys) == 1:
        key = raw[keys[0]].astype(object)
        unfit, length = _text_facts(raw[keys[0]])
        unfit |= length > TEXT_LENGTHS[table].get(keys[0], ROW_KEY_LENGTH)
    elif table != "alliance_items":
        # system|value: a system holds no '|' (SYSTEM_URI), so the first one splits them.
        blobs = {k: _blobs(raw[k]) for k in keys}
        key = _key_text(raw[keys[0]], blobs[keys[0]])
        for k in keys[1:]:
            key = key + "|" + _key_text(raw[k], blobs[k])
        key = key.where(raw[keys].notna().all(axis=1), None)
        unfit, length = _text_facts(key)
        unfit |= length > ROW_KEY_LENGTH
        for blob in blobs.values():  # bytes are never a key of the copy
            unfit |= blob.to_numpy()
    else:
        blob = _blobs(raw["item_number"])
        measure_blob = _blobs(raw["measure_id"])
        number = pd.to_numeric(raw["item_number"].mask(blob), errors="coerce")
        whole = number.notna() & (number == np.floor(number)) & (number.abs() < 2**53)
        # Whole numbers as integers ("3", not "3.0"); anything else as it came.
        shown = _key_text(raw["item_number"], blob)
        shown[whole] = number[whole].astype("int64").astype(str).astype(object)
        key = _key_text(raw["measure_id"], measure_blob) + "|" + shown
        key = key.where(raw[keys].notna().all(axis=1), None)
        unfit, length = _text_facts(key)
        unfit |= length > ROW_KEY_LENGTH
        unfit |= (blob | measure_blob).to_numpy()  # bytes are never a key of the copy
    missing = key.isna()
    unfit &= ~missing.to_numpy()
    if missing.any() or unfit.any():
        key = key.copy()
        key[missing] = [
            "no key " + hashlib.sha1(_row_json(r).encode()).hexdigest()[:12]
            for r in raw.loc[missing].to_dict("records")
        ]
        key[unfit] = [_unfit_key(str(k)) for k in key[unfit]]
    return key.astype(str)


def _key_text(values: pd.Series, blob: pd.Series) -> pd.Series:
    """A key column as text to join; bytes (``blob``), which need not decode, as their repr."""
    if blob.any():
        return values.map(_shown).astype(object)
    return values.astype(str).astype(object)


UNFIT_KEY_PREFIXES = ("no key ", "bad key ")


def _unfit_key(key: str) -> str:
    """A key the quarantine can hold: its start, escaped, and a hash of all of it."""
    escaped = key.encode("unicode_escape").decode("ascii")[:40]
    digest = hashlib.sha1(key.encode("utf-8", "surrogatepass")).hexdigest()[:16]
    return f"bad key {escaped} {digest}"


def read_timestamps(values: pd.Series) -> pd.Series:
    """Dates and timestamps as the service holds them (datetime64[ns]); NaT for any
    value that is not one, or is outside [EARLIEST, LATEST)."""
    parsed = _parse_timestamps(values)
    return parsed.where(_holdable(parsed)).astype("datetime64[ns]")


def _holdable(parsed: pd.Series) -> pd.Series:
    """Missing, or a date within [EARLIEST, LATEST)."""
    return parsed.isna() | ((parsed >= EARLIEST) & (parsed < LATEST))


def _parse_timestamps(values: pd.Series) -> pd.Series:
    """Dates and timestamps as read, at a resolution that holds them; NaT where none is.

    Text is read as ISO 8601, and whole numbers as their digits (SQLite keeps the text
    "20260105" in a date column as a number). Bytes, other numbers and text with a
    time zone are not read: the contract's times are the clinic's local time.
    """
    if isinstance(values.dtype, pd.DatetimeTZDtype):
        return pd.Series(pd.NaT, index=values.index, dtype="datetime64[ns]")
    if pd.api.types.is_datetime64_dtype(values.dtype):
        return values
    if values.isna().all():
        return pd.Series(pd.NaT, index=values.index, dtype="datetime64[ns]")
    if infer_dtype(values, skipna=True) not in ("string", "datetime", "date", "datetime64"):
        values = values.map(_date_or_text).astype(object)
    try:
        parsed = pd.to_datetime(values, format="ISO8601", errors="coerce")
    except (ValueError, TypeError, OverflowError):  # local times among zoned ones
        return _each_timestamp(values)
    if isinstance(parsed.dtype, pd.DatetimeTZDtype):
        return pd.Series(pd.NaT, index=values.index, dtype="datetime64[ns]")
    return parsed


def _date_or_text(value: Any) -> Any:
    """What can be read as a date: text, times, and whole numbers as their digits."""
    if isinstance(value, str | datetime | date | np.datetime64):
        return value
    if isinstance(value, int | np.integer) and not isinstance(value, bool | np.bool_):
        return str(value)
    return None


def _each_timestamp(values: pd.Series) -> pd.Series:
    """``_parse_timestamps`` value by value, for a column that mixes time zones in."""
    out = np.full(len(values), np.datetime64("NaT"), dtype="datetime64[us]")
    for i, value in enumerate(values):
        try:
            stamp = pd.to_datetime(value, format="ISO8601")
        except (ValueError, TypeError, OverflowError):
            continue
        if isinstance(stamp, pd.Timestamp) and stamp is not pd.NaT and stamp.tzinfo is None:
            out[i] = stamp.as_unit("us").to_datetime64()
    return pd.Series(out, index=values.index)


def _blobs(values: pd.Series) -> pd.Series:
    """Which values are bytes (a BLOB where text, a date or a number belongs)."""
    if values.dtype != object:
        return pd.Series(False, index=values.index)
    kind = infer_dtype(values, skipna=True)
    if kind == "bytes":
        return values.notna()
    if kind not in ("mixed", "mixed-integer"):
        return pd.Series(False, index=values.index)
    return values.map(lambda v: isinstance(v, bytes | bytearray | memoryview)).astype(bool)


def _text_facts(values: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """Per value: whether it cannot be stored as text (bytes, a control character), and
    its length as text (0 when missing). Arrow's kernels, or once per category."""
    n = len(values)
    if isinstance(values.dtype, pd.CategoricalDtype):
        unfit, length = _text_facts(pd.Series(values.cat.categories, dtype=object))
        codes = np.asarray(values.cat.codes)
        at = np.maximum(codes, 0)
        if not len(unfit):
            return np.zeros(n, dtype=bool), np.zeros(n, dtype=np.int64)
        return (codes >= 0) & unfit[at], np.where(codes >= 0, length[at], 0)
    array = _as_arrow_text(values)
    if array is not None:
        unfit = pc.match_substring_regex(array, CONTROL).fill_null(False)
        length = pc.utf8_length(array).fill_null(0)
        return (np.asarray(unfit.to_numpy(zero_copy_only=False), dtype=bool),
                np.asarray(length.to_numpy(zero_copy_only=False), dtype=np.int64))
    unfit_list, length_list = [], []
    for value in values:  # mixed types: rare, value by value
        if value is None or value is pd.NA or (isinstance(value, float) and value != value):
            unfit_list.append(False)
            length_list.append(0)
        elif isinstance(value, bytes | bytearray | memoryview):
            unfit_list.append(True)
            length_list.append(len(value))
        else:
            text = str(value)
            unfit_list.append(_CONTROL.search(text) is not None)
            length_list.append(len(text))
    return np.array(unfit_list, dtype=bool), np.array(length_list, dtype=np.int64)


def _as_arrow_text(values: pd.Series) -> pa.Array | pa.ChunkedArray | None:
    """The values as Arrow text (numbers written as text); None where some are not
    text (bytes, mixed types) or cannot be encoded."""
    try:
        array = pa.array(values, from_pandas=True)
    except (pa.ArrowInvalid, pa.ArrowTypeError, UnicodeError):
        return None
    kind = array.type
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        return array
    if (pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_boolean(kind)
            or pa.types.is_null(kind)):
        return pc.cast(array, pa.string())
    return None


def _printable(text: pd.Series) -> pd.Series:
    """Text with its control characters escaped (\\x00), for a detail the store keeps."""
    return text.astype(str).str.replace(
        CONTROL, lambda m: f"\\x{ord(m.group(0)):02x}", regex=True)


def _bool_or_nan(value: Any) -> Any:
    if value is None:
        return np.nan
    if isinstance(value, str):
        parsed = bool_from_text(value)
        return np.nan if parsed is None else parsed
    if isinstance(value, bool | np.bool_ | int | np.integer):
        return bool(value)
    return np.nan


def _valid_frame(c: _Checked) -> pd.DataFrame:
    """The rows that passed, typed as the contract types them (dates as midnight)."""
    ok = c.ok
    every = bool(ok.all())
    out = c.raw.copy(deep=False) if every else c.raw.loc[ok].copy()
    for col in c.typed.columns:
        out[col] = c.typed[col] if every else c.typed.loc[ok, col]
    for col in INTEGERS.get(c.table, ()):
        out[col] = out[col].astype("Int64")
    for col in BOOLEANS.get(c.table, ()):
        # A nullable yes/no keeps its nulls (not known is never no).
        nullable = contract.TABLES[c.table].c[col].nullable
        out[col] = out[col].astype("boolean" if nullable else bool)
    return out.reset_index(drop=True)


def _rejects(c: _Checked) -> pd.DataFrame:
    bad = ~c.ok
    if not bad.any():
        return pd.DataFrame(columns=REJECT_COLUMNS)
    rows = c.raw.loc[bad]
    frame = pd.DataFrame({
        "row_key": c.keys(rows.index).to_numpy(),
        "rule": c.rule[bad].to_numpy(),
        "detail": c.detail[bad].astype(str).to_numpy(),
        "row": [_row_json(r) for r in rows.to_dict("records")],
    })
    # One entry per key: duplicates keep every row, the first rule by rule order.
    rank = frame["rule"].map({r: i for i, r in enumerate(RULES)})
    frame = frame.assign(rank=rank).sort_values(["row_key", "rank", "row"])
    grouped = frame.groupby("row_key", sort=True)
    out = grouped.agg(rule=("rule", "first"), detail=("detail", "first"),
                      rows=("row", list), n_rows=("row", "size")).reset_index()
    out["rows_json"] = out["rows"].map(lambda rs: "[" + ", ".join(rs) + "]")
    out["table_name"] = c.table
    out["detail"] = _printable(out["detail"]).str.slice(0, 500)
    return out[REJECT_COLUMNS]


def _row_json(row: Mapping[Any, Any]) -> str:
    """A raw row as JSON (ASCII: a NUL or any other character is escaped)."""
    return json.dumps({str(k): _json_value(v) for k, v in row.items()}, sort_keys=True)


def _json_value(value: Any) -> Any:
    """A raw value as JSON keeps it, so that checking it again gives the same answer:
    text, numbers and yes/no as they came, bytes tagged, times as ISO text."""
    if value is None or value is pd.NaT or value is pd.NA:
        return None
    if isinstance(value, float | np.floating) and np.isnan(value):
        return None
    if isinstance(value, pd.Timestamp | datetime):
        return value.isoformat(sep=" ")
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, bytes | bytearray | memoryview):
        return {BYTES_TAG: bytes(value).hex()}
    if isinstance(value, np.generic):
        return _json_value(value.item())
    if isinstance(value, str | bool | int | float):
        return value
    return str(value)


def rows_from_json(rows_json: str) -> list[dict[str, Any]]:
    """The raw rows a quarantine entry holds, as they came (bytes as bytes)."""
    return [{k: bytes.fromhex(v[BYTES_TAG]) if isinstance(v, dict) and BYTES_TAG in v else v
             for k, v in row.items()} for row in json.loads(rows_json)]
