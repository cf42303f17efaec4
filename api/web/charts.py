"""Charts drawn on the server as inline SVG: no script, no library, nothing from the internet.

Every mark has a <title> (read out by screen readers, shown on hover) and shape as
well as colour tells statuses apart; the page also carries the same data as tables.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import date, datetime, timedelta
from typing import Any

from markupsafe import Markup, escape

from retention.clinic.instruments import SRS_CUTOFF

WIDTH, LEFT, RIGHT = 760, 84, 16
MISSED = ("no_show", "late_cancel")
CANCELLED = ("cancelled_by_client", "cancelled_by_clinic")
STATUS_WORDS = {"attended": "attended", "no_show": "no-show", "late_cancel": "late cancellation",
                "cancelled_by_client": "cancelled by client",
                "cancelled_by_clinic": "cancelled by clinic", "scheduled": "booked"}


def _f(value: float) -> str:
    return f"{value:.1f}"


class _Scale:
    """Days to x pixels over [start, end]."""

    def __init__(self, start: date, end: date) -> None:
        self.start, self.days = start, max((end - start).days, 1)

    def x(self, when: date | datetime) -> float:
        day = when.date() if isinstance(when, datetime) else when
        frac = (day - self.start).days / self.days
        if isinstance(when, datetime):
            frac += (when.hour / 24) / self.days
        return LEFT + frac * (WIDTH - LEFT - RIGHT)


def _svg(height: int, title: str, desc: str, body: Iterable[str], ident: str) -> Markup:
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" viewBox="0 0 {WIDTH} {height}" '
        f'role="img" aria-labelledby="{ident}-t {ident}-d">',
        f'<title id="{ident}-t">{escape(title)}</title><desc id="{ident}-d">{escape(desc)}</desc>',
        *body, "</svg>",
    ]
    return Markup("".join(parts))


def _weeks(scale: _Scale, top: float, bottom: float) -> list[str]:
    """Week ticks (Mondays) with day-month labels under ``bottom``."""
    out = []
    day = scale.start + timedelta(days=(7 - scale.start.weekday()) % 7)
    end = scale.start + timedelta(days=scale.days)
    while day <= end:
        x = _f(scale.x(day))
        out.append(f'<line class="grid" x1="{x}" x2="{x}" y1="{top}" y2="{bottom}"/>'
                   f'<text class="tick" x="{x}" y="{bottom + 14}" text-anchor="middle">'
                   f'{day.day} {day:%b}</text>')
        day += timedelta(days=7)
    return out


def risk_chart(history: Sequence[Mapping[str, Any]], tiers: Mapping[str, float]) -> Markup:
    """The client's risk on each published list of the last weeks, with the tier lines."""
    if not history:
        return Markup("")
    first, last = history[0]["as_of"], history[-1]["as_of"]
    scale = _Scale(min(first, last - timedelta(days=14)), last)
    top, bottom, height = 12.0, 132.0, 160

    def y(risk: float) -> float:
        return bottom - risk * (bottom - top)

    body = _weeks(scale, top, bottom)
    for pct in (0, 50, 100):
        body.append(f'<text class="tick" x="{LEFT - 8}" y="{_f(y(pct / 100) + 4)}" '
                    f'text-anchor="end">{pct}%</text>')
    for name, cut in sorted(tiers.items(), key=lambda kv: kv[1]):
        body.append(f'<line class="threshold" x1="{LEFT}" x2="{WIDTH - RIGHT}" '
                    f'y1="{_f(y(cut))}" y2="{_f(y(cut))}"/><text class="tick" '
                    f'x="{WIDTH - RIGHT}" y="{_f(y(cut) - 4)}" text-anchor="end">'
                    f'{escape(name)} from {cut:.0%}</text>')
    points = " ".join(f"{_f(scale.x(h['as_of']))},{_f(y(h['risk']))}" for h in history)
    body.append(f'<polyline class="risk-line" points="{points}"/>')
    for h in history:
        body.append(f'<circle class="risk-point" cx="{_f(scale.x(h["as_of"]))}" '
                    f'cy="{_f(y(h["risk"]))}" r="3.5"><title>{h["as_of"]:%d %b %Y}: '
                    f'{h["risk"]:.0%} ({escape(h["tier"])})</title></circle>')
    desc = (f"Risk from {first:%d %b} to {last:%d %b}: from {history[0]['risk']:.0%} "
            f"to {history[-1]['risk']:.0%}.")
    return _svg(height, "Risk of disengaging on each list", desc, body, "risk")


def _appointment_mark(x: float, y: float, status: str, evidence: bool) -> str:
    if status == "attended":
        mark = f'<circle class="m-attended" cx="{_f(x)}" cy="{y}" r="6"/>'
    elif status in MISSED:
        d = 6
        mark = (f'<path class="m-missed" d="M{_f(x - d)},{y - d} L{_f(x + d)},{y + d} '
                f'M{_f(x - d)},{y + d} L{_f(x + d)},{y - d}"/>')
    elif status in CANCELLED:
        mark = f'<rect class="m-cancelled" x="{_f(x - 5)}" y="{y - 5}" width="10" height="10"/>'
    else:
        mark = f'<circle class="m-booked" cx="{_f(x)}" cy="{y}" r="5.5"/>'
    ring = f'<circle class="m-evidence" cx="{_f(x)}" cy="{y}" r="10"/>' if evidence else ""
    return ring + mark


def timeline_chart(appointments: Sequence[Mapping[str, Any]], measures: Sequence[Mapping[str, Any]],
                   start: date, as_of: date, evidence: set[str]) -> Markup:
    """Appointments by status, then SRS and GSRS (0-40, line at 36, ruptures), then WAI-SR."""
    end = as_of + timedelta(days=28)
    scale = _Scale(start, end)
    appt_y, s_top, s_bottom, w_top, w_bottom, height = 30, 64.0, 184.0, 214.0, 274.0, 300
    body = _weeks(scale, 14, w_bottom)
    today = _f(scale.x(as_of))
    body.append(f'<line class="today" x1="{today}" x2="{today}" y1="10" y2="{w_bottom}"/>'
                f'<text class="tick" x="{today}" y="10" text-anchor="middle">list date</text>')
    body.append(f'<text class="axis" x="{LEFT - 8}" y="{appt_y + 4}" text-anchor="end">'
                'Sessions</text>')
    for a in appointments:
        words = STATUS_WORDS.get(a["status"], a["status"])
        x = scale.x(a["scheduled_at"])
        mark = _appointment_mark(x, appt_y, a["status"], a["appointment_id"] in evidence)
        body.append(f'<g>{mark}'
                    f'<title>{a["scheduled_at"]:%a %d %b %H:%M}: {escape(words)} '
                    f'({escape(a["service_type"])}{", telehealth" if a["telehealth"] else ""})'
                    f'{" - evidence for a reason" if a["appointment_id"] in evidence else ""}'
                    '</title></g>')

    def sy(score: float) -> float:
        return s_bottom - score / 40 * (s_bottom - s_top)

    for score in (0, 20, 40):
        body.append(f'<text class="tick" x="{LEFT - 8}" y="{_f(sy(score) + 4)}" '
                    f'text-anchor="end">{score}</text>')
    line = _f(sy(SRS_CUTOFF))
    body.append(f'<line class="cutoff" x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{line}" '
                f'y2="{line}"/><text class="tick" x="{WIDTH - RIGHT}" y="{_f(sy(SRS_CUTOFF) - 4)}"'
                ' text-anchor="end">concern line 36</text>')
    body.append(f'<text class="axis" x="4" y="{s_top - 8}">SRS / GSRS</text>')
    for instrument, css in (("SRS", "srs"), ("GSRS", "gsrs")):
        rated = [m for m in measures if m["instrument"] == instrument and m["rater"] == "client"
                 and m["score_total"] is not None]
        if len(rated) > 1:
            pts = " ".join(f"{_f(scale.x(m['administered_at']))},{_f(sy(m['score_total']))}"
                           for m in rated)
            body.append(f'<polyline class="line-{css}" points="{pts}"/>')
        for m in rated:
            x, yy = scale.x(m["administered_at"]), sy(m["score_total"])
            ring = (f'<circle class="m-evidence" cx="{_f(x)}" cy="{_f(yy)}" r="9"/>'
                    if m["measure_id"] in evidence else "")
            rupture = (f'<path class="m-rupture" d="M{_f(x)},{_f(yy + 8)} l-6,11 h12 z"/>'
                       if m["rupture"] else "")
            body.append(f'<g>{ring}<circle class="pt-{css}" cx="{_f(x)}" cy="{_f(yy)}" r="4"/>'
                        f'{rupture}<title>{m["administered_at"]:%d %b}: {instrument} '
                        f'{m["score_total"]:g}{" - rupture" if m["rupture"] else ""}</title></g>')

    def wy(score: float) -> float:
        return w_bottom - (score - 12) / 48 * (w_bottom - w_top)

    body.append(f'<text class="axis" x="4" y="{w_top - 8}">WAI-SR (12-60)</text>')
    for m in measures:
        if m["instrument"] != "WAI-SR" or m["score_total"] is None:
            continue
        x, yy = scale.x(m["administered_at"]), wy(m["score_total"])
        css = "wai-client" if m["rater"] == "client" else "wai-therapist"
        body.append(f'<g><rect class="pt-{css}" x="{_f(x - 4)}" y="{_f(yy - 4)}" width="8" '
                    f'height="8"/><title>{m["administered_at"]:%d %b}: WAI-SR by '
                    f'{escape(m["rater"])} {m["score_total"]:g}</title></g>')
    attended = sum(a["status"] == "attended" for a in appointments)
    missed = sum(a["status"] in MISSED for a in appointments)
    ruptures = sum(bool(m["rupture"]) for m in measures)
    desc = (f"{len(appointments)} sessions from {start:%d %b} to {end:%d %b}: {attended} "
            f"attended, {missed} missed; {ruptures} session-rating ruptures.")
    return _svg(height, "Sessions and alliance ratings", desc, body, "timeline")
