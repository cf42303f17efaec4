"""Stored features: JSON documents read back as written, NaN and infinity included."""

from __future__ import annotations

import json

from retention.store.features import _json_array


def test_stored_json_is_read_back_with_nan_and_infinity() -> None:
    documents = ['{"a": 1.5, "b": null}', '{"a": NaN, "b": Infinity}']
    assert repr(_json_array(documents)) == repr([json.loads(d) for d in documents])
    assert _json_array(documents[:1]) == [{"a": 1.5, "b": None}]
