"""What the features read of the instrument registry: other registered alliance forms, the
ORS only while the model may read it, and the facts a model records so that scoring
refuses features built from another registry."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import numpy as np
import pytest

from retention.clinic.registry import Registry, default_registry, load_registry
from retention.features import build_features
from retention.features.builder import RegistryMismatch, check_registry, registry_facts
from retention.settings import SHIPPED_INSTRUMENTS_FILE
from tests.support.factories import ClinicBuilder, at

AS_OF = date(2026, 3, 20)
SHIPPED = SHIPPED_INSTRUMENTS_FILE.read_text()
# A clinic's own alliance form, scored the other way round (a higher total is worse).
XAS = """
[instruments.XAS]
name = "Example Alliance Strain form"
kind = "alliance"
raters = ["client"]
items = { 1 = "one", 2 = "two" }
item_range = [0, 10]
total = "sum"
total_range = [0, 20]
higher_is = "worse"
model_input = {model_input}
scored_from_items = false
source = "the clinic's own form"
"""
TRAJECTORY = """
[instruments.ORS.trajectory]
method = "log-linear recovery curve (Finch, Lambert & Schaalje 2001)"
rate_at_zero = 6.0
rate_per_intake = -0.2
spread = 4.0
band = 1.28
last_session = 20
source = "set by hand for this test"
"""


def xas(model_input: bool) -> str:
    return XAS.replace("{model_input}", str(model_input).lower())


def registry(tmp_path: Path, text: str = "", name: str = "instruments.toml",
             ors_shown_only: bool = False) -> Registry:
    """The shipped registry with ``text`` added (and the ORS made show-only)."""
    shipped = SHIPPED
    if ors_shown_only:
        ors = shipped.index("[instruments.ORS]")
        end = shipped.index("model_input = true", ors)
        shipped = shipped[:end] + "model_input = false" + shipped[end + 18:]
    path = tmp_path / name
    path.write_text(shipped + text)
    return load_registry(path)


def clinic() -> ClinicBuilder:
    b = ClinicBuilder()
    b.client("C1")
    b.episode("E1", "C1", "2026-01-05")
    b.appointment("E1", at("2026-03-10"))
    b.measure("E1", at("2026-03-10", 11), "XAS", 15.0)
    b.measure("E1", at("2026-03-20", 9), "XAS", 2.0)  # on the as-of date: not yet known
    b.ors("E1", at("2026-02-10", 9), [3, 4, 4, 4])
    b.ors("E1", at("2026-03-10", 9), [2, 3, 3, 3])
    b.client("C2")
    b.episode("E2", "C2", "2026-01-05")
    b.measure("E2", at("2026-03-01", 11), "UNREG", 3.0)  # nobody registered it
    return b


def test_a_registered_form_is_read_as_a_share_of_its_range_the_right_way_round(
        tmp_path: Path) -> None:
    reg = registry(tmp_path, xas(True))
    f = build_features(clinic().build(), AS_OF, reg)
    # 15 of 0-20 on a form where higher is worse: a quarter of the way from the worst end.
    assert f.loc["E1", "other_alliance_share"] == pytest.approx(0.25)
    assert np.isnan(f.loc["E2", "other_alliance_share"])  # unregistered: kept, never read


def test_a_form_registered_to_be_shown_only_is_never_read(tmp_path: Path) -> None:
    reg = registry(tmp_path, xas(False))
    f = build_features(clinic().build(), AS_OF, reg)
    assert np.isnan(f.loc["E1", "other_alliance_share"])


def test_the_ors_course_comes_from_the_registry_and_nothing_else(tmp_path: Path) -> None:
    data = clinic().build()
    without = build_features(data, AS_OF, default_registry())
    with_course = build_features(data, AS_OF, registry(tmp_path, TRAJECTORY))
    # 15 at intake, 11 at the second rating: change and deterioration need no course.
    for f in (without, with_course):
        assert f.loc["E1", "ors_change"] == pytest.approx(-4.0)
        assert f.loc["E1", "ors_reliable_deterioration"] == 0.0
    assert np.isnan(without.loc["E1", "ors_expected_gap"])
    assert np.isnan(without.loc["E1", "ors_not_on_track"])
    # Expected at rating 2 from 15: 15 + (6 - 0.2 * 15) * ln 2 = 17.08; the line is 5.12 lower.
    expected = 15 + (6.0 - 0.2 * 15) * np.log(2)
    assert with_course.loc["E1", "ors_expected_gap"] == pytest.approx(11 - expected)
    assert expected - 1.28 * 4.0 > 11  # under the line: not on track
    assert with_course.loc["E1", "ors_not_on_track"] == 1.0


def test_an_ors_registered_to_be_shown_only_is_not_read(tmp_path: Path) -> None:
    reg = registry(tmp_path, ors_shown_only=True)
    assert "ORS" in reg and "ORS" not in reg.model_inputs
    f = build_features(clinic().build(), AS_OF, reg)
    assert f.loc["E1", "ors_sessions"] == 0.0
    assert np.isnan(f.loc["E1", "ors_latest"])


def test_scoring_refuses_a_model_trained_under_other_registry_facts(tmp_path: Path) -> None:
    shipped = default_registry()
    metadata = {"version": "v1", "instruments": registry_facts(shipped)}
    check_registry(metadata, shipped)  # the same facts: scores
    check_registry({"version": "v0"}, shipped)  # trained before models recorded them
    for changed in (registry(tmp_path, TRAJECTORY, "a.toml"),
                    registry(tmp_path, xas(True), "b.toml")):
        with pytest.raises(RegistryMismatch, match=r"retrain \(`retention train`\)") as err:
            check_registry(metadata, changed)
        assert str(changed.path) in str(err.value)
    # A form registered to be shown only changes nothing the model reads.
    check_registry(metadata, registry(tmp_path, xas(False), "c.toml"))
