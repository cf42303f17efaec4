"""The pages in a real browser: Debian's Chromium, headless, driven by Playwright over real HTTP.

A case manager signs in, sees the list, opens a client, records an outreach, sees it
on the list and signs out; another clinic's client cannot be opened by URL; nothing
is fetched from anywhere but the service. Screenshots of the list and the client page
go to test-artifacts/screenshots/ (RETENTION_TEST_ARTIFACTS names another folder).

Every page also passes axe-core's WCAG 2.0, 2.1 and 2.2 A and AA rules on a phone
(390x844) and a desktop (1366x900) with its folded parts opened, and none scrolls
sideways down to 360 px; the charts' text is 11 CSS px or more on a phone.
"""

from __future__ import annotations

import csv
import io
import os
import re
import shutil
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from axe_playwright_python.sync_playwright import Axe
from playwright.sync_api import Browser, Locator, Page, expect, sync_playwright
from sqlalchemy import func, select
from werkzeug.serving import make_server

from retention.api import create_app
from retention.clinic.synth.consents import MRN_SYSTEM
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
# axe-core's rules for WCAG 2.0, 2.1 and 2.2, levels A and AA (not best practices).
WCAG_AA = ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa", "wcag22aa"]
PHONE, DESKTOP, SMALL_PHONE = (390, 844), (1366, 900), (360, 740)

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
    token = make_key(engine, "case_manager", [CLINIC], label="Lee Okafor (clinic lead)")
    s = tables.scores
    with engine.connect() as conn:
        other = conn.execute(select(s.c.client_id).where(
            s.c.as_of == scored.as_of, s.c.clinic_id != CLINIC).limit(1)).scalar_one()
        # The clinic's largest caseload: a case manager's morning with calls to make.
        caseload = conn.execute(
            select(s.c.case_manager_id).where(s.c.as_of == scored.as_of, s.c.clinic_id == CLINIC)
            .group_by(s.c.case_manager_id).order_by(func.count().desc(), s.c.case_manager_id)
            .limit(1)).scalar_one()
    cm_token = make_key(engine, "case_manager", [CLINIC], case_manager_id=caseload,
                        label="Dana Reyes")
    app = create_app(scored.settings.with_overrides(
        store_url=url, ehr_link_template="https://ehr.example/patient/{mrn}",
        ehr_link_system=MRN_SYSTEM), TESTING=True, clock=clock_on(scored.as_of))
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield {"base": f"http://127.0.0.1:{server.server_port}", "token": token,
               "other": str(other), "cm_token": cm_token, "caseload": str(caseload)}
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


def sign_in(page: Page, site: dict[str, str], key: str = "token") -> None:
    page.goto(site["base"] + "/web/")
    expect(page).to_have_url(re.compile(r"/web/sign-in"))
    page.get_by_label("Sign in with your access key").fill(site[key])
    page.get_by_role("button", name="Sign in").click()
    expect(page).to_have_url(re.compile(r"/web/$"))
    # The URL and the heading come before the stylesheet is applied; a layout measured
    # then is the unstyled page's (a busy machine showed a 738 px table at 360 px).
    page.wait_for_load_state("load")
    expect(page.get_by_role("heading", level=1)).to_be_visible()


def client_id_of(row: Locator) -> str:
    """The client id of a row of the list (``<tr id="c-...">``)."""
    ident = row.get_attribute("id")
    assert ident and ident.startswith("c-"), ident
    return ident.removeprefix("c-")


def open_details(page: Page) -> None:
    """Unfold every <details> (filters, quick record, tables), so that checks see them."""
    page.evaluate("document.querySelectorAll('details').forEach(d => { d.open = true; })")


def check_axe(page: Page, where: str) -> None:
    """Fail listing every axe-core WCAG 2.x A/AA violation on the page as it is now."""
    results = Axe().run(page, options={"runOnly": {"type": "tag", "values": WCAG_AA},
                                       "resultTypes": ["violations"]})
    violations = results.response["violations"]
    lines = []
    for v in violations:
        targets = ", ".join(" ".join(n["target"]) if isinstance(n["target"], list)
                            else str(n["target"]) for n in v["nodes"][:4])
        more = f" (+{len(v['nodes']) - 4} more)" if len(v["nodes"]) > 4 else ""
        lines.append(f"  {v['id']} ({v['impact']}): {v['help']} at {targets}{more}")
    size = page.viewport_size
    assert not violations, (f"axe on {where} at {size and size['width']} px:\n"
                            + "\n".join(lines))


def no_sideways_scroll(page: Page, where: str = "") -> None:
    """The page is no wider than the viewport; on failure, name what sticks out."""
    size = page.viewport_size
    assert size is not None
    width = page.evaluate("document.documentElement.scrollWidth")
    if width > size["width"]:
        wide = page.evaluate("""vw => [...document.querySelectorAll('body *')]
            .filter(e => e.getBoundingClientRect().right > vw + 0.5)
            .slice(0, 6).map(e => e.tagName.toLowerCase() + (e.id ? '#' + e.id : '')
              + (e.className && typeof e.className === 'string' ? '.' + e.className : '')
              + ' ' + Math.round(e.getBoundingClientRect().width) + 'px')""", size["width"])
        pytest.fail(f"{where or page.url} scrolls sideways at {size['width']} px: "
                    f"{width} px wide ({', '.join(wide)})")


def chart_text_px(page: Page) -> list[float]:
    """The on-screen size (CSS px) of every text in the charts shown: its font size in
    SVG units times the SVG's scale (its box width over its viewBox width)."""
    sizes: list[float] = page.evaluate("""() => [...document.querySelectorAll('svg.chart')]
        .filter(svg => svg.getBoundingClientRect().width > 0)
        .flatMap(svg => {
          const scale = svg.getBoundingClientRect().width / svg.viewBox.baseVal.width;
          return [...svg.querySelectorAll('text')].map(
            t => parseFloat(getComputedStyle(t).fontSize) * scale);
        })""")
    return sizes


@pytest.mark.parametrize("size", [DESKTOP, PHONE], ids=["desktop", "phone"])
def test_a_case_managers_morning(page: Page, site: dict[str, str],
                                 size: tuple[int, int]) -> None:
    """Sign in, today's calls, open a client, a call refused by the form and then saved,
    one recorded in two clicks from the list, the list exported and printed, sign out:
    with axe and no sideways scroll at every step."""
    page.set_viewport_size({"width": size[0], "height": size[1]})
    suffix = "" if size == DESKTOP else "-phone"

    def step(where: str) -> None:
        check_axe(page, where)
        no_sideways_scroll(page, where)

    sign_in(page, site, "cm_token")
    expect(page.get_by_role("heading", name="Today's calls")).to_be_visible()
    expect(page.get_by_text(f"Your caseload ({site['caseload']})")).to_be_visible()
    expect(page.get_by_text("List as of")).to_be_visible()
    rows = page.locator("table.daily tbody tr")
    assert rows.count() >= 3
    first, second = rows.nth(0), rows.nth(1)
    # Who to call and how: a name and a number (made up: the fictional 555-01xx range).
    phones = page.locator("table.daily a.phone").all_inner_texts()
    assert phones and all(re.fullmatch(r"\(\d{3}\) 555-01\d\d", p) for p in phones), phones
    assert page.locator("table.daily a[href^='tel:']").count() == len(phones)
    name = first.locator("th a").inner_text()
    client_id = client_id_of(first)
    assert name != client_id and not re.fullmatch(r"C\d+", name)  # a name, not an id
    step("today's calls")
    screenshot(page, f"list{suffix}.png")

    # Open the client: who they are and how to reach them come first.
    first.locator("th a").click()
    expect(page.get_by_role("heading", level=1)).to_contain_text(name)
    expect(page.get_by_role("heading", name=re.compile("^How to reach"))).to_be_visible()
    expect(page.get_by_role("img", name="Sessions and alliance ratings")).to_be_visible()
    expect(page.get_by_role("heading", name="Why, and what to do")).to_be_visible()
    step("a client's page")
    screenshot(page, f"client{suffix}.png", full_page=size == DESKTOP)

    # "Contacted" with no outcome is refused: the reason is in words, in view and focused.
    page.get_by_label("Contacted", exact=True).check()
    page.get_by_label("How you reached out").select_option("phone")
    page.get_by_role("button", name="Save outreach").click()
    error = page.locator("#outreach-error")
    expect(error).to_be_visible()
    expect(error).to_be_focused()
    expect(error).to_contain_text("Not saved. You chose Contacted")
    assert "re_engaged" not in error.inner_text()
    box = error.bounding_box()
    assert box and box["y"] >= 0 and box["y"] + box["height"] <= size[1], box
    expect(page.get_by_label("Contacted", exact=True)).to_be_checked()  # nothing typed is lost
    step("a refused outreach")

    page.get_by_label("Outcome (if contacted)").select_option("booked")
    page.get_by_label("Short note").fill("Booked Thu 10:00 with her counsellor")
    page.get_by_label("Back to the list after saving").check()
    page.get_by_role("button", name="Save outreach").click()
    expect(page).to_have_url(re.compile(rf"/web/\?recorded={client_id}#c-{client_id}$"))
    expect(page.get_by_role("status")).to_contain_text(f"Outreach for {client_id} saved")
    row = page.locator(f"tr#c-{client_id}")
    expect(row).to_contain_text("Reached by phone")
    expect(row).to_contain_text("booked a session")
    expect(row).to_contain_text("(you)")
    expect(row).to_be_in_viewport()
    not_under_the_header(page, row)

    # A call in two clicks: open "Record a call" on a row, press its result.
    other = client_id_of(second)
    second.locator("details.quick summary").click()
    second.get_by_role("button", name="No answer").click()
    expect(page).to_have_url(re.compile(rf"#c-{other}$"))
    row = page.locator(f"tr#c-{other}")
    expect(row).to_contain_text("Not reached by phone")
    expect(row).to_be_in_viewport()
    step("today's calls after two calls")

    # Today's list to take along: a spreadsheet and a page to print.
    shown = [client_id_of(r) for r in rows.all()]
    with page.expect_download() as download:
        page.get_by_role("link", name="Download as CSV").click()
    saved = download.value.path()
    lines = list(csv.DictReader(io.StringIO(Path(saved).read_text(encoding="utf-8"))))
    assert [r["client_id"] for r in lines] == shown
    assert any(r["phone"] in phones for r in lines)
    page.get_by_role("link", name="Print view").click()
    expect(page.get_by_text("Confidential")).to_be_visible()
    expect(page.locator("table.print-list tbody tr")).to_have_count(len(shown))
    page.emulate_media(media="print")  # on paper: the calls, not the menus and buttons
    for hidden in (".who", ".no-print"):
        expect(page.locator(hidden).first).to_be_hidden()
    expect(page.locator("table.print-list")).to_be_visible()
    page.emulate_media(media="screen")
    step("the print view")

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
    filters = page.locator("details.filters-box")
    if filters.count() and not filters.evaluate("d => d.open"):  # folded on small screens
        filters.locator("summary").click()
    tier = first.locator(".badge").inner_text().lower()  # the top row's tier is on the list
    page.get_by_label("Risk tier").select_option(tier)
    page.get_by_role("button", name="Show").click()
    expect(page).to_have_url(re.compile(rf"tier={tier}"))
    badges = page.locator("table.daily .badge").all_inner_texts()
    assert badges and {b.lower() for b in badges} == {tier}
    page.keyboard.press("Tab")  # the first stop is the skip link
    focused = page.evaluate("document.activeElement.textContent")
    assert focused == "Skip to content"


def not_under_the_header(page: Page, row: Locator) -> None:
    """A row reached by its link (#c-...) shows below the list's sticky header."""
    top = row.evaluate("e => e.getBoundingClientRect().top")
    header = page.evaluate("""() => { const h = document.querySelector('table.daily thead th');
        if (!h || getComputedStyle(h).position !== 'sticky') return 0;
        return h.getBoundingClientRect().bottom; }""")
    assert top >= header - 1, f"the row's top ({top:.0f}px) is under the header ({header:.0f}px)"


@pytest.mark.parametrize("size", [PHONE, DESKTOP], ids=["phone", "desktop"])
def test_pages_pass_axe_and_do_not_scroll_sideways(page: Page, site: dict[str, str],
                                                   size: tuple[int, int]) -> None:
    page.set_viewport_size({"width": size[0], "height": size[1]})
    page.goto(site["base"] + "/web/sign-in")
    check_axe(page, "the sign-in page")
    no_sideways_scroll(page, "the sign-in page")

    sign_in(page, site)
    check_axe(page, "the list")
    no_sideways_scroll(page, "the list")
    open_details(page)
    check_axe(page, "the list with filters and quick records open")
    no_sideways_scroll(page, "the list with filters and quick records open")

    rows = page.locator("table.daily tbody tr")
    last = client_id_of(rows.last)
    page.goto(site["base"] + f"/web/#c-{last}")
    not_under_the_header(page, page.locator(f"tr#c-{last}"))

    page.goto(site["base"] + f"/web/clients/{client_id_of(rows.first)}")
    expect(page.get_by_role("img", name="Sessions and alliance ratings")).to_be_visible()
    check_axe(page, "a client's page")
    open_details(page)
    check_axe(page, "a client's page with its tables open")
    no_sideways_scroll(page, "a client's page with its tables open")
    sizes = chart_text_px(page)
    assert sizes and min(sizes) >= 11, f"chart text {min(sizes):.1f} px"
    assert max(sizes) <= 20, f"chart text {max(sizes):.1f} px"

    page.goto(site["base"] + "/web/glossary")
    check_axe(page, "the glossary")
    no_sideways_scroll(page, "the glossary")

    answer = page.goto(site["base"] + "/web/no-such-page")
    assert answer is not None and answer.status == 404
    check_axe(page, "the 404 page")
    no_sideways_scroll(page, "the 404 page")


def test_a_small_phone_does_not_scroll_sideways(page: Page, site: dict[str, str]) -> None:
    page.set_viewport_size({"width": SMALL_PHONE[0], "height": SMALL_PHONE[1]})
    sign_in(page, site)
    no_sideways_scroll(page, "the list")
    open_details(page)
    no_sideways_scroll(page, "the list with filters and quick records open")
    first = page.locator("table.daily tbody tr").first
    page.goto(site["base"] + f"/web/clients/{client_id_of(first)}")
    open_details(page)
    no_sideways_scroll(page, "a client's page with its tables open")
    radio = page.get_by_label("Contacted", exact=True).bounding_box()
    assert radio and radio["width"] >= 24 and radio["height"] >= 24, radio


def test_chart_text_is_legible_on_a_phone(page: Page, site: dict[str, str]) -> None:
    page.set_viewport_size({"width": PHONE[0], "height": PHONE[1]})
    sign_in(page, site)
    first = page.locator("table.daily tbody tr").first
    page.goto(site["base"] + f"/web/clients/{client_id_of(first)}")
    for name in ("Risk of disengaging on each list", "Sessions and alliance ratings"):
        chart = page.get_by_role("img", name=name)
        expect(chart).to_be_visible()
        box = chart.bounding_box()
        assert box and box["x"] >= 0 and box["x"] + box["width"] <= PHONE[0], box
    sizes = chart_text_px(page)
    assert sizes and min(sizes) >= 11, f"chart text {min(sizes):.1f} px at {PHONE[0]} px"
    # and as laid out: the smallest text's box is at least 11 px tall
    height = page.evaluate("""() => Math.min(...[...document.querySelectorAll('svg.chart text')]
        .map(t => t.getBoundingClientRect().height).filter(h => h > 0))""")
    assert height >= 11, f"chart text boxes {height:.1f} px tall"


SCREENSHOTS = ("list.png", "client.png", "list-phone.png", "client-phone.png")


def test_screenshots_were_saved() -> None:
    for name in SCREENSHOTS:
        shot = ARTIFACTS / "screenshots" / name
        assert shot.exists() and shot.stat().st_size > 10_000, name
    if os.environ.get("RETENTION_UPDATE_SCREENSHOTS"):
        target = REPO / "docs" / "screenshots"
        target.mkdir(parents=True, exist_ok=True)
        for name in SCREENSHOTS:
            shutil.copy(ARTIFACTS / "screenshots" / name, target / name)
