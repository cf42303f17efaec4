"""The client page's outcome ratings, ruptures and repair, and stage of the alliance.

The ORS chart is drawn on the server like the others (checked here without a browser:
its lines, its "not on track" marks compared as shown, text legible on a phone). Then
in Debian's Chromium, over real HTTP: a client of the synthetic clinic is given ORS
ratings, session ratings and the therapist's session notes, and the clinic an expected
ORS course in its instrument registry; the page shows the ORS against the expected and
lower lines, each rupture with the repair steps recorded and the next rating (most
recent first, and nothing written on or after the list's date), and the stage of the
alliance with its facts; axe-core finds no WCAG 2.x A/AA violation at 390 and 1366 px.
Full-page screenshots go to test-artifacts/screenshots/client-alliance*.png.
"""

from __future__ import annotations

import re
import shutil
import sqlite3
import threading
from collections.abc import Iterator
from datetime import date, datetime, timedelta
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright
from sqlalchemy import Connection, delete, func, insert, select
from werkzeug.serving import make_server

from retention.api import create_app
from retention.api.web import charts
from retention.clinic.trajectory import Trajectory, trajectory_toml
from retention.db.engines import store_engine
from retention.reasons.phrases import shown
from retention.settings import SHIPPED_INSTRUMENTS_FILE
from retention.store import tables
from tests.api.web.test_browser import (
    CHROMIUM,
    CHROMIUM_ARGS,
    DESKTOP,
    PHONE,
    chart_text_px,
    check_axe,
    no_sideways_scroll,
    open_details,
    screenshot,
    sign_in,
)
from tests.api.web.test_charts import NARROW_CAP, WIDE_CAP, WIDE_MIN, _drawings
from tests.api.web.test_charts import PHONE as PHONE_PX
from tests.conftest import Scored
from tests.support.apps import clock_on, make_key

CLINIC = "clinic-east"
# Made-up numbers for a clinic's expected course (a real one is fitted on its history).
TRAJECTORY = Trajectory(rate_at_zero=6.0, rate_per_intake=-0.15, spread=3.0, band=1.28,
                        source="test: made-up numbers")
# ORS (given at the start of the session) and SRS (at its end) on these days.
ORS = (("2026-04-20", 18), ("2026-04-27", 19), ("2026-05-04", 21), ("2026-05-11", 17),
       ("2026-05-18", 20))
SRS = (("2026-04-20", 38), ("2026-04-27", 31), ("2026-05-04", 37), ("2026-05-11", 36),
       ("2026-05-18", 36), ("2026-05-25", 33))
# (day, rupture, signs, repair steps, recorded_at): the therapist's notes.
NOTES = (
    ("2026-04-27", False, None, "acknowledged clarified", None),
    ("2026-05-04", False, None, "revisited_goals_tasks monitored", None),
    ("2026-05-18", True, "lack_of_trust", None, None),
    ("2026-05-20", False, None, "acknowledged took_responsibility", None),
    # noted before the list's date, but written on it: not known on the list
    ("2026-05-29", True, "anger", "revisited_goals_tasks", datetime(2026, 6, 1, 9)),
)


def at(day: str, hour: int, minute: int = 0) -> datetime:
    return datetime.fromisoformat(day).replace(hour=hour, minute=minute)


def ors_rows() -> list[dict[str, object]]:
    return [{"session": n, "measure_id": f"ors{n}", "administered_at": at(d, 10),
             "score_total": float(s)} for n, (d, s) in enumerate(ORS, start=1)]


# --- the chart, on the server -------------------------------------------------------


def test_the_ors_chart_has_the_expected_and_lower_lines_and_marks_what_is_off_track() -> None:
    markup = str(charts.ors_chart(ors_rows(), TRAJECTORY, {"ors4"}))
    svgs = re.findall(r"<svg .*?</svg>", markup)
    assert len(svgs) == 2
    for svg in svgs:
        assert 'role="img"' in svg and ">Outcome ratings (ORS) by session</title>" in svg
        assert svg.count('class="expected-line"') == svg.count('class="lower-line"') == 1
        assert svg.count('class="pt-ors-off"') == 1  # session 4: 17, under the lower line
        assert svg.count('class="pt-ors"') == 4
        assert svg.count('class="m-evidence"') == 1
        assert "clinical cutoff 25" in svg
    rows = charts.ors_table(ors_rows(), TRAJECTORY)
    lower4 = shown(float(TRAJECTORY.lower(18, 4)))
    assert rows[3]["lower"] == lower4 and rows[3]["not_on_track"] is True
    assert [r["not_on_track"] for r in rows] == [None, False, False, True, False]
    expected5 = shown(float(TRAJECTORY.expected(18, 5)))
    assert (f"Intake ORS 18 on 20 Apr 2026; latest 20 at session 5 on 18 May 2026, where "
            f"{expected5:g} was expected (on track). The latest is under the clinical "
            "cutoff of 25.") in svgs[0]
    assert "Session 4, 11 May 2026: ORS 17; expected" in markup and "not on track" in markup


def test_on_track_is_judged_as_shown_to_one_decimal() -> None:
    """A rating that shows as equal to the lower line is on it, not under it."""
    lower = float(TRAJECTORY.lower(18, 2))
    rows = [{"session": 1, "measure_id": "a", "administered_at": at("2026-04-20", 10),
             "score_total": 18.0},
            {"session": 2, "measure_id": "b", "administered_at": at("2026-04-27", 10),
             "score_total": shown(lower)}]
    assert charts.ors_table(rows, TRAJECTORY)[1]["not_on_track"] is False
    rows[1]["score_total"] = shown(lower) - 0.1
    assert charts.ors_table(rows, TRAJECTORY)[1]["not_on_track"] is True


def test_without_a_trajectory_the_ratings_and_the_cutoff_only() -> None:
    markup = str(charts.ors_chart(ors_rows(), None, set()))
    assert "expected-line" not in markup and "lower-line" not in markup
    assert "pt-ors-off" not in markup and markup.count('class="pt-ors"') == 10
    assert "No expected course is configured." in markup
    assert all(r["expected"] is None for r in charts.ors_table(ors_rows(), None))
    assert charts.ors_chart([], TRAJECTORY, set()) == ""


def test_the_ors_chart_text_is_legible_on_a_phone_and_not_huge_on_a_desktop() -> None:
    drawings = _drawings(str(charts.ors_chart(ors_rows(), TRAJECTORY, set())))
    width, sizes = drawings["narrow"]
    assert min(sizes) * PHONE_PX / width >= 11 and max(sizes) * NARROW_CAP / width <= 20
    width, sizes = drawings["wide"]
    assert min(sizes) * WIDE_MIN / width >= 11 and max(sizes) * WIDE_CAP / width <= 20


# --- the page, in a browser ---------------------------------------------------------


def _pick_client(conn: Connection, scored: Scored) -> tuple[str, str, int]:
    """A listed client of the clinic whose episode began over ten weeks before the list,
    has no planned discharge within six weeks and three or more sessions attended
    in the last 90 days (so its stage is read from the ratings): (client, episode,
    sessions attended)."""
    s, e, a = tables.scores, tables.copies["episodes"], tables.copies["appointments"]
    cutoff = datetime.combine(scored.as_of, datetime.min.time())
    attended = (select(func.count()).select_from(a)
                .where(a.c.episode_id == s.c.episode_id, a.c.status == "attended",
                       a.c.scheduled_at < cutoff, a.c.updated_at < cutoff,
                       a.c.scheduled_at >= cutoff - timedelta(days=90))
                .scalar_subquery())
    query = (select(s.c.client_id, s.c.episode_id, attended.label("attended"))
             .join(e, e.c.episode_id == s.c.episode_id)
             .where(s.c.as_of == scored.as_of, s.c.clinic_id == CLINIC,
                    e.c.admitted_on <= scored.as_of - timedelta(days=70),
                    (e.c.planned_discharge_on.is_(None))
                    | (e.c.planned_discharge_on > scored.as_of + timedelta(days=42)),
                    attended >= 3)
             .order_by(s.c.rank).limit(1))
    row = conn.execute(query).one()
    return str(row.client_id), str(row.episode_id), int(row.attended)


@pytest.fixture(scope="module")
def site(scored: Scored, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """The app on a real port over a copy of the scored store, one client's ratings and
    notes replaced by the ones above, and the registry with an expected ORS course."""
    assert scored.as_of == date(2026, 6, 1), "the ratings above are dated for this list"
    root = tmp_path_factory.mktemp("alliance")
    with sqlite3.connect(scored.settings.store_url.removeprefix("sqlite:///")) as src, \
            sqlite3.connect(root / "store.db") as dst:
        src.backup(dst)
    registry = root / "instruments.toml"
    shutil.copy(SHIPPED_INSTRUMENTS_FILE, registry)
    with registry.open("a", encoding="utf-8") as fh:
        fh.write("\n" + trajectory_toml(TRAJECTORY))
    engine = store_engine(f"sqlite:///{root / 'store.db'}")
    m, o = tables.copies["alliance_measures"], tables.copies["session_observations"]
    with engine.begin() as conn:
        client, episode, attended = _pick_client(conn, scored)
        conn.execute(delete(m).where(m.c.episode_id == episode))
        conn.execute(delete(o).where(o.c.episode_id == episode))
        base = {"episode_id": episode, "client_id": client, "appointment_id": None,
                "rater": "client", "goal": None, "task": None, "bond": None}
        conn.execute(insert(m), [
            {**base, "measure_id": f"t-{kind}-{n}", "instrument": kind,
             "administered_at": at(d, hour, minute), "score_total": float(score),
             "updated_at": at(d, hour, minute)}
            for kind, rows, hour, minute in (("ORS", ORS, 10, 0), ("SRS", SRS, 10, 50))
            for n, (d, score) in enumerate(rows)])
        conn.execute(insert(o), [
            {"observation_id": f"t-note-{n}", "episode_id": episode, "client_id": client,
             "appointment_id": None, "observed_at": at(d, 10), "recorded_at": recorded,
             "clinician_id": "th-1", "signs": signs, "rupture": rupture,
             "repair_steps": steps, "updated_at": recorded or at(d, 12)}
            for n, (d, rupture, signs, steps, recorded) in enumerate(NOTES)])
    token = make_key(engine, "case_manager", [CLINIC], label="Lee Okafor (clinic lead)")
    app = create_app(scored.settings.with_overrides(
        store_url=f"sqlite:///{root / 'store.db'}", instruments_file=str(registry)),
        TESTING=True, clock=clock_on(scored.as_of))
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield {"base": f"http://127.0.0.1:{server.server_port}", "token": token,
               "client": client, "attended": str(attended)}
    finally:
        server.shutdown()
        engine.dispose()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: apt-get install -y chromium (.ci/run does)")
    with sync_playwright() as p:
        launched = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield launched
        launched.close()


@pytest.fixture
def page(browser: Browser, site: dict[str, str]) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": DESKTOP[0], "height": DESKTOP[1]})
    opened = context.new_page()
    elsewhere: list[str] = []
    opened.on("request", lambda r: None if r.url.startswith(site["base"])
              else elsewhere.append(r.url))
    yield opened
    context.close()
    assert elsewhere == [], f"the pages asked for {elsewhere}"


@pytest.mark.slow
@pytest.mark.parametrize("size", [DESKTOP, PHONE], ids=["desktop", "phone"])
def test_a_clients_outcome_ratings_ruptures_and_stage(page: Page, site: dict[str, str],
                                                      size: tuple[int, int]) -> None:
    page.set_viewport_size({"width": size[0], "height": size[1]})
    sign_in(page, site)
    page.goto(site["base"] + f"/web/clients/{site['client']}")

    # The ORS against the course expected from the intake of 18, and its lower line.
    chart = page.get_by_role("img", name="Outcome ratings (ORS) by session")
    expect(chart).to_be_visible()
    expect(chart.locator("polyline.expected-line")).to_have_count(1)
    expect(chart.locator("polyline.lower-line")).to_have_count(1)
    expect(chart.locator(".pt-ors")).to_have_count(4)
    expect(chart.locator(".pt-ors-off")).to_have_count(1)
    expected5 = shown(float(TRAJECTORY.expected(18, 5)))
    expect(chart.locator("desc")).to_contain_text(
        f"latest 20 at session 5 on 18 May 2026, where {expected5:g} was expected (on track)")
    # the same as a table
    page.locator("section[aria-labelledby=ors-h] details summary").click()
    rows = page.locator("#ors-table tbody tr")
    expect(rows).to_have_count(5)
    expect(rows.nth(0)).to_contain_text("1 (intake)")
    fourth = rows.nth(3)
    expect(fourth).to_contain_text(f"{shown(float(TRAJECTORY.lower(18, 4))):g}")
    expect(fourth).to_contain_text("no: under the lower line")

    # Each rupture -> the repair steps recorded -> the next rating, most recent first.
    panel = page.locator("section.ruptures")
    expect(panel.get_by_role("heading", name="Ruptures and repair")).to_be_visible()
    cards = panel.locator("ol.rupture-cards > li")
    expect(cards.locator("h3")).to_have_text(["Rupture on 25 May 2026", "Rupture on 18 May 2026",
                                              "Rupture on 27 Apr 2026"])
    latest, noted, first = cards.nth(0), cards.nth(1), cards.nth(2)
    expect(latest).to_contain_text("The session rating (SRS) fell from 36 to 33 "
                                   "(3 points, under 36).")
    # the note of 29 May (its repair step too) was written on the list's date: not shown
    expect(latest).to_contain_text("No repair step recorded.")
    expect(latest).to_contain_text("No session rating since.")
    expect(noted).to_contain_text("Noted by the therapist in the session note "
                                  "(signs: lack of trust); the session rating (SRS) that day "
                                  "was 36.")
    # in the clinic's words for the codes (its reason catalogue)
    expect(noted.locator("li")).to_have_text(["Acknowledged", "Took responsibility"])
    expect(noted).to_contain_text("Next session rating 33 on 25 May 2026: under 36 and below "
                                  "the 36 before (not recovered).")
    expect(first.locator("li")).to_have_text([
        "Acknowledged", "Clarified", "Revisited goals and tasks",
        "Checked in with the session rating (SRS)"])
    expect(first).to_contain_text("Next session rating 37 on 04 May 2026: at or above 36 "
                                  "(recovered).")
    expect(panel).not_to_contain_text("anger")

    # The stage of the alliance, with the facts it was read from.
    stage = page.locator("section.stage")
    expect(stage.get_by_role("heading", name="Where treatment is")).to_be_visible()
    expect(stage).to_contain_text("Exploration: " + site["attended"] + " sessions attended "
                                  "in the last 3 months, "
                                  "latest session rating (SRS) 33 on 25 May, under 36")
    expect(stage).to_contain_text("not a clinician's judgement")

    check_axe(page, "a client's page with ORS, ruptures and stage")
    open_details(page)
    check_axe(page, "a client's page with ORS, ruptures and stage, its tables open")
    no_sideways_scroll(page, "a client's page with ORS, ruptures and stage")
    sizes = chart_text_px(page)
    assert sizes and min(sizes) >= 11, f"chart text {min(sizes):.1f} px"
    suffix = "" if size == DESKTOP else "-phone"
    screenshot(page, f"client-alliance{suffix}.png", full_page=True)


@pytest.mark.slow
def test_the_glossary_explains_the_new_words(page: Page, site: dict[str, str]) -> None:
    page.goto(site["base"] + "/web/glossary")
    for term in ("Outcome rating (ORS)", "Expected course and not on track", "Rupture",
                 "Repair", "Stage of the alliance"):
        expect(page.get_by_role("term").filter(has_text=re.compile(f"^{re.escape(term)}$"))
               ).to_have_count(1)
    for stage in ("Engagement", "Exploration", "Working phase", "Resolution"):
        expect(page.locator("#stages + dd")).to_contain_text(stage)
    check_axe(page, "the glossary")
