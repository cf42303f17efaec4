"""The instrument registry (config/instruments.toml): what it ships, how it scores, and
how a broken file is refused at start, naming the file and the key."""

from __future__ import annotations

import random
import re
from pathlib import Path

import pytest

from retention.clinic import contract
from retention.clinic.instruments import (
    ORS_CUTOFF,
    ORS_ITEM_RANGE,
    ORS_ITEMS,
    ORS_RELIABLE_CHANGE,
    SRS_CUTOFF,
    SRS_ITEM_RANGE,
    SRS_ITEMS,
    WAI_SR_ITEM_RANGE,
    WAI_SR_KEY,
    WAI_SR_N_ITEMS,
    score_ors,
    score_srs,
    score_wai_sr,
)
from retention.clinic.registry import default_registry, load_registry
from retention.settings import (
    SHIPPED_INSTRUMENTS_FILE,
    ConfigError,
    load_settings,
    settings_from_mapping,
)
from tests.support.factories import OWN_FORM

REPO = Path(__file__).resolve().parents[2]
URLS = {"source_url": "sqlite:///clinic.db", "store_url": "sqlite:///store.db"}


def registry_file(tmp_path: Path, body: str, name: str = "instruments.toml") -> Path:
    path = tmp_path / name
    path.write_text(body)
    return path


# --- what ships -----------------------------------------------------------------------


def test_the_shipped_registry_holds_the_instruments_the_contract_names() -> None:
    registry = default_registry()
    assert registry.path == SHIPPED_INSTRUMENTS_FILE == REPO / "config" / "instruments.toml"
    assert registry.codes == ("SRS", "GSRS", "WAI-SR", "ORS", "TAS")
    assert set(registry.codes) == set(contract.INSTRUMENTS) - {"other"}
    # Registered instruments are model inputs; a clinic's own form may be shown only.
    assert registry.model_inputs == registry.codes
    assert registry["ORS"].kind == "outcome"
    assert {registry[c].kind for c in ("SRS", "GSRS", "WAI-SR", "TAS")} == {"alliance"}
    assert all(i.higher_is == "better" and i.source for i in registry.instruments.values())


def test_the_shipped_entries_equal_the_constants_the_service_scores_with() -> None:
    """retention/clinic/instruments.py scores SRS, GSRS, WAI-SR and ORS by name: the
    registry the pages show must say the same."""
    registry = default_registry()
    for code in ("SRS", "GSRS"):
        srs = registry[code]
        assert dict(srs.items) == SRS_ITEMS
        assert srs.item_range == SRS_ITEM_RANGE and srs.total_range == (0.0, 40.0)
        assert srs.cutoff is not None and srs.cutoff.value == SRS_CUTOFF
        assert (srs.total, srs.reversed_items, srs.raters) == ("sum", (), ("client",))
    wai = registry["WAI-SR"]
    assert len(wai.items) == WAI_SR_N_ITEMS and wai.item_range == WAI_SR_ITEM_RANGE
    assert {k: s.items for k, s in wai.subscales.items()} == {
        k: tuple(sorted(v)) for k, v in WAI_SR_KEY.items()}
    assert {s.score for s in wai.subscales.values()} == {"mean"}
    assert wai.reversed_items == () and wai.cutoff is None
    assert wai.raters == contract.RATERS
    # Each WAI-SR item's label is the subscale its key puts it in.
    assert {n: label for n, label in wai.items.items()} == {
        n: k for k, key in WAI_SR_KEY.items() for n in key}
    ors = registry["ORS"]
    assert dict(ors.items) == ORS_ITEMS and ors.item_range == ORS_ITEM_RANGE
    assert ors.cutoff is not None and ors.cutoff.value == ORS_CUTOFF == 25
    assert ors.reliable_change == ORS_RELIABLE_CHANGE == 5
    assert (ors.total, ors.total_range, ors.raters) == ("sum", (0.0, 40.0), ("client",))


def test_the_registry_scores_as_the_named_functions_do() -> None:
    registry = default_registry()
    draw = random.Random(20261206)
    for _ in range(50):
        srs = {n: round(draw.uniform(0, 10), 1) for n in SRS_ITEMS}
        for code in ("SRS", "GSRS"):
            assert registry[code].score(srs) == score_srs(srs)
        ors = {n: round(draw.uniform(0, 10), 1) for n in ORS_ITEMS}
        assert registry["ORS"].score(ors) == score_ors(ors)
        wai = {n: float(draw.randint(1, 5)) for n in range(1, 13)}
        assert registry["WAI-SR"].score(wai) == score_wai_sr(wai)


def test_the_tas_is_registered_with_its_checked_parts_only() -> None:
    """Which TASC-r items are reversed, and which form bond and task, could not be checked
    against the published scale: no key is registered, and no total is computed from
    items (one would be wrong by the reversed items)."""
    tas = default_registry()["TAS"]
    assert (len(tas.items), tas.item_range, tas.total, tas.total_range) == (
        12, (1.0, 4.0), "sum", (12.0, 48.0))
    assert tas.reversed_items == () and dict(tas.subscales) == {} and tas.cutoff is None
    assert not tas.scored_from_items
    with pytest.raises(ValueError, match="TAS: its item key is not registered"):
        tas.score({n: 4.0 for n in range(1, 13)})


# --- scoring --------------------------------------------------------------------------


def test_ors_total_is_the_sum_of_its_four_lines() -> None:
    # Miller et al. (2003): each line is marked 0-10 (to a tenth); the total is the sum.
    # 4.2 + 6.0 + 5.5 + 3.8 = 19.5, below the adult cutoff of 25.
    scored = default_registry()["ORS"].score({1: 4.2, 2: 6.0, 3: 5.5, 4: 3.8})
    assert scored.score_total == pytest.approx(19.5)
    assert scored.subscales == {} and scored.goal is None


def test_wai_sr_worked_example_follows_the_published_key() -> None:
    # Hatcher & Gillaspy (2006): task = items 1, 2, 10, 12; goal = 4, 6, 8, 11;
    # bond = 3, 5, 7, 9, each the mean of its items; the total is the sum of all twelve.
    responses = [4, 5, 2, 3, 3, 4, 2, 5, 1, 4, 3, 5]
    scored = default_registry()["WAI-SR"].score(dict(enumerate(responses, start=1)))
    assert scored.task == (4 + 5 + 4 + 5) / 4 == 4.5
    assert scored.goal == (3 + 4 + 5 + 3) / 4 == 3.75
    assert scored.bond == (2 + 3 + 2 + 1) / 4 == 2.0
    assert scored.score_total == 41.0
    assert scored.subscales == {"goal": 3.75, "task": 4.5, "bond": 2.0}


def test_a_reversed_item_is_turned_before_totals_and_subscales(tmp_path: Path) -> None:
    form = load_registry(registry_file(tmp_path, OWN_FORM))["CLINIC-X"]
    assert not form.model_input and form.reversed_items == (2,)
    # Item 2 answered 1 ("felt rushed": not at all) counts as 1 + 5 - 1 = 5.
    scored = form.score({1: 5, 2: 1, 3: 4})
    assert scored.score_total == pytest.approx((5 + 5 + 4) / 3)
    assert scored.bond == scored.subscales["bond"] == 10.0
    assert form.keyed(2, 2.0) == 4.0 and form.keyed(1, 2.0) == 2.0


@pytest.mark.parametrize(("items", "said"), [
    ({1: 5, 2: 1}, r"CLINIC-X needs items \[1, 2, 3\]: missing items \[3\]"),
    ({1: 5, 2: 1, 3: 4, 4: 2}, r"items \[4\] it does not have"),
    ({1: 5, 2: 0, 3: 4}, r"CLINIC-X items \[2\] are outside 1-5"),
    ({1: 5, 2: float("nan"), 3: 4}, r"items \[2\] are outside 1-5"),
])
def test_an_incomplete_or_out_of_range_set_is_refused(
        tmp_path: Path, items: dict[int, float], said: str) -> None:
    form = load_registry(registry_file(tmp_path, OWN_FORM))["CLINIC-X"]
    with pytest.raises(ValueError, match=said):
        form.score(items)


def test_a_trajectory_table_is_kept_as_given(tmp_path: Path) -> None:
    body = OWN_FORM + ('\n[instruments.CLINIC-X.trajectory]\nmodel = "made up"\n'
                       'points = [1, 2.5]\nby_intake = { low = 3 }\n')
    form = load_registry(registry_file(tmp_path, body))["CLINIC-X"]
    assert form.trajectory == {"model": "made up", "points": [1, 2.5], "by_intake": {"low": 3}}
    assert default_registry()["SRS"].trajectory == {}


# --- a broken registry is refused, naming the file and the key -----------------------


def broken(body: str, old: str, new: str) -> str:
    assert old in body
    return body.replace(old, new)


@pytest.mark.parametrize(("change", "said"), [
    (("higher_is = \"better\"\n", ""), r"\[instruments\.CLINIC-X\] lacks higher_is: higher_is "
                                       r"is whether a higher total is better or worse"),
    (("higher_is = \"better\"", "higher_is = \"up\""),
     r"\[instruments\.CLINIC-X\] higher_is must be \"better\" or \"worse\".*got 'up'"),
    (("item_range = [1, 5]", "item_range = [5, 1]"),
     r"\[instruments\.CLINIC-X\] item_range must be \[lowest, highest\].*got \[5, 1\]"),
    (("total_range = [1, 5]", "total_range = [1, 15]"),
     r"\[instruments\.CLINIC-X\] total_range \[1.0, 15.0\] disagrees with the items: the "
     r"mean of 3 items of 1-5 runs 1-5"),
    (("kind = \"alliance\"", "kind = \"mood\""), r"kind must be one of alliance, outcome"),
    (("reversed = [2]", "reverse = [2]"), r"unknown key\(s\) reverse \(did you mean reversed\?\)"),
    (("reversed = [2]", "reversed = [7]"),
     r"\[instruments\.CLINIC-X\] reversed names items \[7\] the instrument does not have"),
    (("raters = [\"client\"]", "raters = [\"parent\"]"), r"raters must be a list of client, "
                                                         r"therapist, got \['parent'\]"),
    (("model_input = false", "model_input = \"no\""), r"model_input must be true or false"),
    (("score = \"sum\"", "score = \"median\""), r"subscales\.bond\.score must be"),
    (("[instruments.CLINIC-X]", "[instruments.\"our form\"]"),
     r"\[instruments\.our form\]: the code must be 1-16 letters"),
    (("source = \"the clinic's own form\"",
      "source = \"the clinic's own form\"\ncutoff = { value = 9, meaning = \"low\" }"),
     r"cutoff value 9 is not inside the total's range 1-5"),
])
def test_a_broken_entry_names_the_file_the_instrument_and_the_key(
        tmp_path: Path, change: tuple[str, str], said: str) -> None:
    path = registry_file(tmp_path, broken(OWN_FORM, *change), "clinic-forms.toml")
    with pytest.raises(ConfigError, match=said) as failure:
        load_registry(path)
    assert str(failure.value).startswith(str(path))


def test_a_missing_or_unreadable_file_says_what_to_do(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.toml"
    with pytest.raises(ConfigError, match=re.escape(f"instrument registry {missing} does not "
                                                    "exist: set instruments_file")):
        load_registry(missing)
    with pytest.raises(ConfigError, match="is not valid TOML"):
        load_registry(registry_file(tmp_path, "[instruments.X\n"))
    with pytest.raises(ConfigError, match=r"no \[instruments.<code>\] table"):
        load_registry(registry_file(tmp_path, "# nothing yet\n"))


def test_an_instrument_the_service_scores_by_name_cannot_be_changed(tmp_path: Path) -> None:
    """A file that widened the SRS's items would be shown while the service goes on
    scoring 0-10: refused, pointing to a code of its own."""
    shipped = SHIPPED_INSTRUMENTS_FILE.read_text()
    srs_range = "[instruments.SRS]\nname = \"Session Rating Scale\"\nkind = \"alliance\"\n" \
                "raters = [\"client\"]\nitem_range = [0, 10]\n"
    changed = broken(shipped, srs_range, srs_range.replace("[0, 10]", "[0, 100]")).replace(
        "total_range = [0, 40]\nhigher_is = \"better\"\ncutoff = { value = 36",
        "total_range = [0, 400]\nhigher_is = \"better\"\ncutoff = { value = 36", 1)
    with pytest.raises(ConfigError, match=r"\[instruments\.SRS\]: the service scores SRS by "
                                          r"name .* item_range must be \(0\.0, 10\.0\)"):
        load_registry(registry_file(tmp_path, changed))
    off = broken(shipped, "cutoff = { value = 36, meaning = \"a total below 36 signals a "
                          "concern with the session's",
                 "cutoff = { value = 30, meaning = \"a total below 30 signals a concern with "
                 "the session's")
    with pytest.raises(ConfigError, match=r"cutoff_value must be 36\.0, not 30\.0"):
        load_registry(registry_file(tmp_path, off))


# --- settings ---------------------------------------------------------------------------


def test_settings_read_the_shipped_registry_by_default() -> None:
    settings = settings_from_mapping(URLS)
    assert settings.instruments_file == SHIPPED_INSTRUMENTS_FILE
    assert settings.instruments is default_registry()


def test_settings_read_the_registry_the_environment_names(tmp_path: Path) -> None:
    path = registry_file(tmp_path, OWN_FORM)
    config = registry_file(tmp_path, 'source_url = "sqlite:///c.db"\nstore_url = '
                           '"sqlite:///s.db"\n', "retention.toml")
    settings = load_settings(config, environ={"RETENTION_INSTRUMENTS_FILE": str(path)})
    assert settings.instruments_file == path
    assert settings.instruments.codes == ("CLINIC-X",)
    assert settings.with_overrides(instruments_file=str(SHIPPED_INSTRUMENTS_FILE)) \
        .instruments.codes == default_registry().codes


def test_a_broken_registry_stops_the_settings_at_start(tmp_path: Path) -> None:
    path = registry_file(tmp_path, broken(OWN_FORM, "higher_is = \"better\"",
                                          "higher_is = \"higher\""))
    with pytest.raises(ConfigError, match=re.escape(f"{path}: [instruments.CLINIC-X] "
                                                    "higher_is")):
        settings_from_mapping({**URLS, "instruments_file": str(path)})


def test_the_instrument_mapping_accepts_registered_codes_only(tmp_path: Path) -> None:
    """[etl.codes.alliance_measures.instrument] maps a clinic's codes onto a contract
    instrument or a registered one; a typo is refused at start."""
    own = registry_file(tmp_path, default_registry().path.read_text() + OWN_FORM)
    mapping = {"codes": {"alliance_measures": {"instrument": {
        "Session Rating": "SRS", "CHK": "CLINIC-X", "ORS v2": "ORS"}}}}
    settings = settings_from_mapping({**URLS, "instruments_file": str(own), "etl": mapping})
    assert settings.etl.mapping.codes["alliance_measures"]["instrument"]["CHK"] == "CLINIC-X"
    with pytest.raises(ConfigError, match=r"maps onto CLINIC-Y, neither a contract instrument "
                                          r".* nor registered in .*instruments\.toml"):
        settings_from_mapping({**URLS, "instruments_file": str(own), "etl": {"codes": {
            "alliance_measures": {"instrument": {"CHK": "CLINIC-Y"}}}}})
    with pytest.raises(ConfigError, match=r"maps to 'Clinic Y', not a code of 1-16 letters"):
        settings_from_mapping({**URLS, "etl": {"codes": {
            "alliance_measures": {"instrument": {"CHK": "Clinic Y"}}}}})
