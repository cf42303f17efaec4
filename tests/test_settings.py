"""Settings (``retention.settings``): a clinic's mapping is checked when it is read."""

from __future__ import annotations

import pytest

from retention.settings import ConfigError, parse_etl


def test_mapping_settings_are_checked() -> None:
    with pytest.raises(ConfigError, match="not a contract table"):
        parse_etl({"queries": {"visits": "SELECT 1"}})
    with pytest.raises(ConfigError, match="unknown code"):
        parse_etl({"codes": {"appointments": {"status": {"NS": "vanished"}}}})
    with pytest.raises(ConfigError, match="must be a SELECT"):
        parse_etl({"queries": {"appointments": "DELETE FROM visits"}})
    with pytest.raises(ConfigError, match="unknown setting"):
        parse_etl({"overlap": 5})
