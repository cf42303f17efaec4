"""The pages in a real browser: Debian's Chromium, headless, driven by Playwright over real HTTP.

A case manager signs in, sees the list, opens a client, records an outreach, sees it
on the list and signs out; another clinic's client cannot be opened by URL; nothing
is fetched from anywhere but the service. Screenshots of the list and the client page
go to test-artifacts/screenshots/ (RETENTION_TEST_ARTIFACTS names another folder).
"""

from __future__ import annotations

import os
import re
import shutil
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright
from sqlalchemy import select
from werkzeug.serving import make_server

from retention.api import create_app
from retention.db.engines import store_engine
from retention.store import tables
from tests.conftest import REPO, Scored
from tests.support.apps import clock_on, make_key

CHROMIUM = os.environ.get("RETENTION_CHROMIUM", "/usr/bin/chromium")
# Without the background-networking flags Chromium tries to reach Google and this
# machine's closed network refuses it.
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
ARTIFACTS = Path(os.environ.get("RETENTION_TEST_ARTIFACTS", REPO / "test-artifacts"))
CLINIC = "clinic-east"

# Chromium starts in about a second, and the screenshots test checks what the morning took.
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def site(scored: Scored, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """The app on a real port over a private copy of the scored store, and two keys."""
    root = tmp_path_factory.mktemp("browser")
    source = scored.settings.store_url.removeprefix("sqlite:///")
    with sqlite3.connect(source) as src, sqlite3.connect(root / "store.db") as dst:
        src.backup(dst)
    url = f"sqlite:///{root / 'store.db'}"
    engine = store_engine(url)
    token = make_key(engine, "case_manager", [CLINIC], label="Dana Reyes")
    with engine.connect() as conn:
        other = conn.execute(select(tables.scores.c.client_id).where(
            tables.scores.c.as_of == scored.as_of, tables.scores.c.clinic_id != CLINIC)
            .limit(1)).scalar_one()
    app = create_app(scored.settings.with_overrides(store_url=url), TESTING=True,
                     clock=clock_on(scored.as_of))
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield {"base": f"http://127.0.0.1:{server.server_port}", "token": token,
               "other": str(other)}
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
    context = browser.new_context(viewport={"width": 1366, "height": 900})
    opened = context.new_page()
    elsewhere: list[str] = []
    opened.on("request", lambda r: None if r.url.startswith(site["base"])
              else elsewhere.append(r.url))
    yield opened
    context.close()
    assert elsewhere == [], f"the pages asked for {elsewhere}"


def screenshot(page: Page, name: str, full_page: bool = False) -> None:
    folder = ARTIFACTS / "screenshots"
    folder.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(folder / name), full_page=full_page)


def sign_in(page: Page, site: dict[str, str]) -> None:
    page.goto(site["base"] + "/web/")
    expect(page).to_have_url(re.compile(r"/web/sign-in"))
    page.get_by_label("Sign in with your access key").fill(site["token"])
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("heading", name="Whom to reach today")).to_be_visible()


def test_a_case_managers_morning(page: Page, site: dict[str, str]) -> None:
    sign_in(page, site)
    rows = page.locator("table.daily tbody tr")
    assert rows.count() > 5
    expect(page.get_by_text("List as of")).to_be_visible()
    clinics = page.locator("table.daily tbody th .sub").all_inner_texts()
    assert clinics and all(CLINIC in c for c in clinics)
    screenshot(page, "list.png")

    first = rows.first.locator("th a")
    client_id = first.inner_text()
    first.click()
    expect(page.get_by_role("heading", name=f"Client {client_id}")).to_be_visible()
    expect(page.get_by_role("img", name="Sessions and alliance ratings")).to_be_visible()
    expect(page.get_by_role("img", name="Risk of disengaging on each list")).to_be_visible()
    expect(page.get_by_text("Next step:").first).to_be_visible()
    expect(page.get_by_text("How to read the points")).to_be_visible()
    screenshot(page, "client.png", full_page=True)

    page.get_by_label("Contacted", exact=True).check()
    page.get_by_label("How you reached out").select_option("phone")
    page.get_by_label("Outcome (if contacted)").select_option("booked")
    page.get_by_label("Short note").fill("Booked Thu 10:00 with her counsellor")
    page.get_by_label("Back to the list after saving").check()
    page.get_by_role("button", name="Save outreach").click()
    expect(page.get_by_role("heading", name="Whom to reach today")).to_be_visible()
    row = page.locator(f"tr#c-{client_id}")
    expect(row).to_contain_text("Reached by phone")
    expect(row).to_contain_text("booked")
    expect(row).to_contain_text("(you)")

    page.get_by_role("button", name="Sign out").click()
    expect(page.get_by_text("You are signed out.")).to_be_visible()
    page.goto(site["base"] + f"/web/clients/{client_id}")
    expect(page).to_have_url(re.compile(r"/web/sign-in"))


def test_another_clinics_client_cannot_be_opened_by_url(page: Page,
                                                         site: dict[str, str]) -> None:
    sign_in(page, site)
    answer = page.goto(site["base"] + f"/web/clients/{site['other']}")
    assert answer is not None and answer.status == 404
    expect(page.get_by_role("heading", name="Client not on your list")).to_be_visible()
    expect(page.get_by_role("img")).to_have_count(0)


def test_list_works_on_a_tablet_and_by_keyboard(page: Page, site: dict[str, str]) -> None:
    sign_in(page, site)
    page.set_viewport_size({"width": 820, "height": 1180})
    first = page.locator("table.daily tbody tr").first
    expect(first).to_be_visible()
    assert first.evaluate("e => getComputedStyle(e).display") == "block"  # rows become cards
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= 820, f"the page scrolls sideways on a tablet ({width}px)"
    page.get_by_label("Risk tier").select_option("high")
    page.get_by_role("button", name="Show").click()
    badges = page.locator("table.daily .badge").all_inner_texts()
    assert badges and {b.lower() for b in badges} == {"high"}
    page.keyboard.press("Tab")  # the first stop is the skip link
    focused = page.evaluate("document.activeElement.textContent")
    assert focused == "Skip to content"


def test_screenshots_were_saved() -> None:
    for name in ("list.png", "client.png"):
        shot = ARTIFACTS / "screenshots" / name
        assert shot.exists() and shot.stat().st_size > 10_000, name
    if os.environ.get("RETENTION_UPDATE_SCREENSHOTS"):
        target = REPO / "docs" / "screenshots"
        target.mkdir(parents=True, exist_ok=True)
        for name in ("list.png", "client.png"):
            shutil.copy(ARTIFACTS / "screenshots" / name, target / name)
