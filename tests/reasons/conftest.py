"""Fixtures of the reasons tests: the published list of the session's scored clinic."""

from __future__ import annotations

from typing import Any

import pandas as pd
import pytest

from retention.clinic.data import ClinicData
from tests.support.reasons import Published, read_published, read_store_inputs


@pytest.fixture(scope="module")
def published(scored: Any) -> Published:
    return read_published(scored)


@pytest.fixture(scope="module")
def source(scored: Any) -> ClinicData:
    return scored.clinic()


@pytest.fixture(scope="module")
def store_inputs(scored: Any) -> tuple[pd.DataFrame, ClinicData]:
    """What the scoring job reads: stored features and the store's copy of the clinic."""
    return read_store_inputs(scored)
