"""The charts stay legible on a phone and are not huge on a desktop.

An SVG is scaled to its box: text of ``font-size`` units in a drawing ``viewBox`` units
wide shows at font-size x (box width / viewBox width) CSS px. The stylesheet
(api/web/static/web.css) shows the narrow drawing under 760 CSS px and the wide one
from there; these numbers follow its paddings.
"""

from __future__ import annotations

import re
from datetime import date, datetime, timedelta

import pytest

from retention.api.web import charts

AS_OF = date(2026, 6, 1)
# A 360 px phone: main's padding (.75rem a side) and the figure's (.25rem and a 1 px
# border a side) leave 326 px for the chart.
PHONE = 360 - 2 * 12 - 2 * (4 + 1)
NARROW_CAP = 560  # svg.chart-narrow max-width
# The narrowest screen that gets the wide drawing (760 px): main's 1.2rem a side and the
# figure's .5rem and 1 px border a side.
WIDE_MIN = 760 - 2 * 19.2 - 2 * (8 + 1)
WIDE_CAP = 900  # svg.chart-wide max-width
SMALLEST, LARGEST = 11, 20  # CSS px


def _history() -> list[dict[str, object]]:
    return [{"as_of": AS_OF - timedelta(days=7 * w), "risk": 0.2 + 0.03 * w,
             "tier": "medium"} for w in range(12, -1, -1)]


def _timeline() -> str:
    start = AS_OF - timedelta(weeks=12)
    appointments = [{"appointment_id": f"a{i}", "scheduled_at": datetime.combine(
        start + timedelta(days=4 * i), datetime.min.time()).replace(hour=10),
        "status": ("attended", "no_show", "cancelled_by_client", "scheduled")[i % 4],
        "service_type": "individual", "telehealth": i % 3 == 0} for i in range(28)]
    measures = [{"measure_id": f"m{i}", "instrument": "SRS", "rater": "client",
                 "administered_at": datetime.combine(start + timedelta(days=7 * i),
                                                     datetime.min.time()),
                 "score_total": 38 - i, "rupture": i == 4} for i in range(10)]
    measures.append({"measure_id": "w1", "instrument": "WAI-SR", "rater": "therapist",
                     "administered_at": datetime.combine(start, datetime.min.time()),
                     "score_total": 48, "rupture": False})
    return str(charts.timeline_chart(appointments, measures, start, AS_OF, {"a1", "m4"}))


def _drawings(markup: str) -> dict[str, tuple[float, list[float]]]:
    """Each drawing's layout name: (viewBox width, the font sizes of its texts)."""
    out = {}
    for svg in re.findall(r"<svg .*?</svg>", markup):
        name = re.search(r'class="chart chart-(\w+)"', svg)
        box = re.search(r'viewBox="0 0 ([\d.]+) [\d.]+"', svg)
        assert name and box, svg[:200]
        sizes = [float(s) for s in re.findall(r'<text [^>]*font-size="([\d.]+)"', svg)]
        assert len(sizes) == svg.count("<text "), "every text carries its own font size"
        out[name.group(1)] = (float(box.group(1)), sizes)
    return out


def _risk() -> str:
    return str(charts.risk_chart(_history(), {"medium": 0.2, "high": 0.4}))


@pytest.mark.parametrize("chart", ["risk", "timeline"])
def test_chart_text_is_legible_on_a_phone_and_not_huge_on_a_desktop(chart: str) -> None:
    drawings = _drawings(_risk() if chart == "risk" else _timeline())
    assert set(drawings) == {"narrow", "wide"}
    width, sizes = drawings["narrow"]
    assert sizes
    on_phone = min(sizes) * PHONE / width
    assert on_phone >= SMALLEST, f"{on_phone:.1f} px on a 360 px phone"
    assert max(sizes) * NARROW_CAP / width <= LARGEST
    width, sizes = drawings["wide"]
    assert min(sizes) * WIDE_MIN / width >= SMALLEST, "too small on a 760 px screen"
    assert max(sizes) * WIDE_CAP / width <= LARGEST, "huge on a desktop"


def test_each_drawing_keeps_the_charts_semantics() -> None:
    risk, timeline = _risk(), _timeline()
    for markup, title in ((risk, "Risk of disengaging on each list"),
                          (timeline, "Sessions and alliance ratings")):
        svgs = re.findall(r"<svg .*?</svg>", markup)
        assert len(svgs) == 2
        for svg in svgs:
            assert 'role="img"' in svg and f">{title}</title>" in svg and "<desc " in svg
            labelled = re.search(r'aria-labelledby="([^"]+)"', svg)
            assert labelled is not None
            for ident in labelled.group(1).split():
                assert f'id="{ident}"' in svg
    ids = re.findall(r'id="([^"]+)"', risk + timeline)
    assert len(ids) == len(set(ids)), "ids are unique on the page"
    assert risk.count('class="threshold"') == 4  # two tier lines in each drawing
    assert timeline.count('class="m-evidence"') == 4  # a session and a rating, twice
    assert timeline.count("concern line 36") == 2
    assert charts.risk_chart([], {}) == ""


def _desc(markup: str) -> set[str]:
    return set(re.findall(r"<desc [^>]*>([^<]*)</desc>", markup))


def test_the_timeline_description_counts_in_words_a_listener_can_trust() -> None:
    """What a screen reader says for the timeline (to four weeks past the as-of date): its
    counts, each noun in the number its count takes."""
    assert _desc(_timeline()) == {
        "28 sessions from 09 Mar to 29 Jun: 7 attended, 7 missed; 1 session-rating rupture."}
    one = {"appointment_id": "a1", "scheduled_at": datetime(2026, 5, 20, 10),
           "status": "no_show", "service_type": "individual", "telehealth": False}
    ratings = [{"measure_id": f"m{i}", "instrument": "SRS", "rater": "client",
                "administered_at": datetime(2026, 5, 10 + i), "score_total": 30.0,
                "rupture": True} for i in range(2)]
    chart = str(charts.timeline_chart([one], ratings, date(2026, 5, 1), AS_OF, set()))
    assert _desc(chart) == {
        "1 session from 01 May to 29 Jun: 0 attended, 1 missed; 2 session-rating ruptures."}
