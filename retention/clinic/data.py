"""Clinic data in memory: the contract tables as typed frames, and reading them.

The same reader serves the clinic's database (contract names) and the
service's own copy of it (prefixed names), so features are computed from one
shape of data wherever it came from.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from sqlalchemy import Connection, MetaData, String, inspect, select

from retention.clinic import contract

# Text columns of each contract table: pandas' string dtype whatever the driver gave.
TEXT_COLUMNS = {
    name: tuple(c.name for c in table.columns if isinstance(c.type, String))
    for name, table in contract.TABLES.items()
}


# Each episode's measures oldest first (ties by id): the order ``from_frames`` gives and
# the feature families and reasons read them in.
MEASURE_ORDER = ("episode_id", "administered_at", "measure_id")


def empty_frame(table: str) -> pd.DataFrame:
    """A contract table with no rows: what a missing optional table reads as."""
    return pd.DataFrame(columns=[c.name for c in contract.TABLES[table].columns])


@dataclass(frozen=True)
class ClinicData:
    """The contract tables as frames with parsed dates; the optional ones may be empty.

    Consents, identifiers and contacts ride along for disclosure and the case managers'
    calls, never for features: a read for features (the scoped read, training's whole
    copy) leaves them empty.
    """

    clients: pd.DataFrame
    episodes: pd.DataFrame
    appointments: pd.DataFrame
    measures: pd.DataFrame
    items: pd.DataFrame
    observations: pd.DataFrame = field(
        default_factory=lambda: empty_frame("session_observations"))
    consents: pd.DataFrame = field(default_factory=lambda: empty_frame("consents"))
    identifiers: pd.DataFrame = field(
        default_factory=lambda: empty_frame("client_identifiers"))
    contacts: pd.DataFrame = field(default_factory=lambda: empty_frame("client_contacts"))

    def frames(self) -> dict[str, pd.DataFrame]:
        """The frames under their contract table names."""
        return {
            "clients": self.clients,
            "episodes": self.episodes,
            "appointments": self.appointments,
            "alliance_measures": self.measures,
            "alliance_items": self.items,
            "session_observations": self.observations,
            "consents": self.consents,
            "client_identifiers": self.identifiers,
            "client_contacts": self.contacts,
        }

    @property
    def n_rows(self) -> int:
        return sum(len(f) for f in self.frames().values())


def read_clinic(connection: Connection, prefix: str = "") -> ClinicData:
    """Read the contract tables (``prefix`` + name) through ``connection``.

    An optional table of the contract (``contract.OPTIONAL_TABLES``) that is missing
    reads as empty.
    """
    existing = set(inspect(connection).get_table_names())
    frames: dict[str, pd.DataFrame] = {}
    for name, table in contract.TABLES.items():
        columns = [c.name for c in table.columns]
        if prefix + name not in existing:
            if name in contract.OPTIONAL_TABLES:
                frames[name] = empty_frame(name)
                continue
            raise LookupError(
                f"table {prefix + name!r} is missing from the database; "
                "see docs/contract.md for the tables a clinic must provide"
            )
        source = table.to_metadata(MetaData(), name=prefix + name)
        result = connection.execute(select(*[source.c[c] for c in columns]))
        frames[name] = pd.DataFrame(result.fetchall(), columns=columns)
    return from_frames(frames)


def from_frames(frames: dict[str, pd.DataFrame]) -> ClinicData:
    """Normalise raw contract frames: parse dates and timestamps, fix dtypes.

    Values may arrive typed (from the driver) or as text (PostgreSQL COPY): both
    give the same frames.
    """
    out = {name: frame.copy() for name, frame in frames.items()}
    # Optional, and absent from feature reads (or from older callers' frames).
    for name in (*contract.NOT_MODEL_INPUTS, "session_observations"):
        if name not in out:
            out[name] = empty_frame(name)
    for columns in (contract.DATE_COLUMNS, contract.TIMESTAMP_COLUMNS):
        for name, cols in columns.items():
            for col in cols:
                out[name][col] = _timestamps(out[name][col])
    appts = out["appointments"]
    appts["telehealth"] = _booleans(appts["telehealth"])
    observations = out["session_observations"]
    observations["rupture"] = _booleans(observations["rupture"])
    measures = out["alliance_measures"]
    for col in ("score_total", "goal", "task", "bond"):
        measures[col] = pd.to_numeric(measures[col]).astype(float)
    items = out.get("alliance_items")
    if items is None:
        items = pd.DataFrame(columns=["measure_id", "item_number", "response"])
    items["item_number"] = pd.to_numeric(items["item_number"]).astype("int64")
    items["response"] = pd.to_numeric(items["response"]).astype(float)
    clients = out["clients"]
    clients["birth_year"] = pd.to_numeric(clients["birth_year"])
    contacts = out["client_contacts"]
    for col in ("may_text", "may_call"):  # null: not known, never read as no
        contacts[col] = contacts[col].astype(object).map(
            lambda v: None if v is None or v is pd.NA or v != v else as_bool(v)
        ).astype("boolean")
    for name, frame in out.items():
        for col in TEXT_COLUMNS.get(name, ()):
            if col in frame.columns:
                frame[col] = frame[col].astype("str")
    # Sorted once here rather than by each of the five readers that need the order.
    measures = measures.sort_values(list(MEASURE_ORDER), ignore_index=True)
    return ClinicData(
        clients=clients,
        episodes=out["episodes"],
        appointments=appts,
        measures=measures,
        items=items,
        observations=observations,
        consents=out["consents"],
        identifiers=out["client_identifiers"],
        contacts=out["client_contacts"],
    )


def in_order(frame: pd.DataFrame, columns: tuple[str, ...]) -> bool:
    """Whether ``frame``'s rows already are as ``sort_values(columns)`` would put them.

    One comparison of neighbours per column, far cheaper than a sort. False, so the
    caller sorts, for anything it cannot compare: a missing value, a categorical, mixed
    types.
    """
    if len(frame) < 2:
        return True
    tied = np.ones(len(frame) - 1, dtype=bool)  # neighbours equal on the columns so far
    try:
        for column in columns:
            values = frame[column]
            if isinstance(values.dtype, pd.CategoricalDtype):  # sorted by category, not value
                return False
            if pd.api.types.is_datetime64_any_dtype(values):
                stamps = values.to_numpy()
                less, equal = stamps[:-1] < stamps[1:], stamps[:-1] == stamps[1:]
            else:
                array = pa.array(values)
                less = _filled(pc.less(array[:-1], array[1:]))
                equal = _filled(pc.equal(array[:-1], array[1:]))
            if (tied & ~less & ~equal).any():
                return False
            tied &= equal
            if not tied.any():
                return True
    except (pa.ArrowException, TypeError):
        return False
    return True


def _filled(compared: pa.Array) -> np.ndarray:
    """A comparison's result as booleans, a missing value's as False."""
    return np.asarray(pc.fill_null(compared, False).to_numpy(zero_copy_only=False), dtype=bool)


def _booleans(values: pd.Series) -> pd.Series:
    """``as_bool`` of each value, worked out once per distinct value (there are two or three)."""
    if pd.api.types.is_bool_dtype(values):
        return values
    distinct = pd.unique(values.dropna().to_numpy())
    meaning = pd.Series([as_bool(v) for v in distinct], index=distinct, dtype=object)
    # A missing value reads as False, as it always has.
    return values.map(meaning).astype(object).fillna(False).astype(bool)


def _timestamps(values: pd.Series) -> pd.Series:
    if pd.api.types.is_datetime64_any_dtype(values):
        return values.astype("datetime64[ns]")
    if values.dtype == object and len(values) and isinstance(values.dropna().iloc[0]
                                                              if values.notna().any() else None,
                                                              str):
        return pd.to_datetime(values, format="ISO8601").astype("datetime64[ns]")
    return pd.to_datetime(values).astype("datetime64[ns]")


TRUE_TEXT = frozenset({"t", "true", "1", "yes", "y"})
FALSE_TEXT = frozenset({"f", "false", "0", "no", "n"})


def bool_from_text(value: str) -> bool | None:
    """'t', 'true', '1', 'yes', 'y' (and their opposites) as a boolean; None otherwise."""
    lowered = value.strip().lower()
    return True if lowered in TRUE_TEXT else False if lowered in FALSE_TEXT else None


def as_bool(value: object) -> bool | None:
    """A boolean from a driver value or its text ('t', 'true', '1', ...); None if missing."""
    if value is None or (isinstance(value, float) and value != value):
        return None
    if isinstance(value, str):
        parsed = bool_from_text(value)
        if parsed is None:
            raise ValueError(f"not a boolean: {value!r}")
        return parsed
    return bool(value)


def in_days(delta: pd.Series) -> pd.Series:
    """A series of time differences in (fractional) days."""
    return delta.dt.total_seconds() / 86400.0


def as_timestamp(day: date) -> pd.Timestamp:
    """Midnight at the start of ``day``: data strictly before it is known on ``day``."""
    return pd.Timestamp(day)

