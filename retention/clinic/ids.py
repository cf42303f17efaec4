"""Matching ids over millions of rows: which values are among some ids, and where.

pandas matches Arrow-backed text element by element in Python in places
(``Series.isin`` builds its lookup set one scalar at a time); Arrow's hash kernels
do it in C++. Categorical values are matched once per category.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc


def member(values: pd.Series, ids: Any) -> pd.Series:
    """``values.isin(ids)``, the same answer, without per-element Python."""
    return pd.Series(positions(values, ids) >= 0, index=values.index)


def positions(values: pd.Series | pd.Index, within: Any) -> np.ndarray:
    """Each value's position in ``within`` (its first), -1 where absent or missing."""
    if isinstance(values.dtype, pd.CategoricalDtype):
        categorical = pd.Series(values, copy=False).cat
        per_category = positions(pd.Index(categorical.categories), within)
        codes = np.asarray(categorical.codes)
        return np.where(codes >= 0, per_category[np.maximum(codes, 0)], -1)
    try:
        found = pc.index_in(_arrow_text(values), value_set=_arrow_text(within))
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
        return np.asarray(pd.Index(np.asarray(within, dtype=object)).get_indexer(
            np.asarray(values, dtype=object)))
    return np.asarray(found.fill_null(-1).to_numpy(zero_copy_only=False), dtype=np.int64)


def _arrow_text(values: Any) -> pa.Array | pa.ChunkedArray:
    """Text ids as one Arrow type; anything else (numbers, mixed) raises ArrowTypeError."""
    if isinstance(values, pd.Series | pd.Index) and isinstance(values.dtype,
                                                               pd.CategoricalDtype):
        values = values.astype(object)
    if isinstance(values, pd.Series | pd.Index) and isinstance(values.dtype, pd.StringDtype):
        array = pa.array(values)
    else:
        array = pa.array(np.asarray(values, dtype=object), from_pandas=True)
    if not (pa.types.is_string(array.type) or pa.types.is_large_string(array.type)
            or pa.types.is_null(array.type)):
        raise pa.ArrowTypeError(f"ids are {array.type}, not text")
    return array.cast(pa.large_string())
