"""Charts drawn on the server as inline SVG: no script, no library, nothing from the internet.

Every mark has a <title> (read out by screen readers, shown on hover) and shape as
well as colour tells statuses apart; the page also carries the same data as tables.

Each chart is drawn twice, for two layouts, and the stylesheet shows the one that fits
the screen (``chart-narrow`` under 760 CSS px, ``chart-wide`` from there): an SVG is
scaled to its box, so one drawing 760 units wide put 11-unit text at 5 px on a 360 px
phone. The narrow one is 380 units wide with 13-unit text, about 1:1 on a phone; the
wide one keeps the detail of a desktop screen (its width is capped by the stylesheet,
so text stays near 12-15 px). The hidden copy is ``display: none``, out of the
accessibility tree, so a screen reader meets each chart once.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import date, datetime, timedelta
from typing import Any, NamedTuple

from markupsafe import Markup, escape

from retention.clinic.instruments import ORS_CUTOFF, SRS_CUTOFF
from retention.clinic.trajectory import Trajectory
from retention.reasons.phrases import plural, score_text, shown

MISSED = ("no_show", "late_cancel")
CANCELLED = ("cancelled_by_client", "cancelled_by_clinic")
STATUS_WORDS = {"attended": "attended", "no_show": "no-show", "late_cancel": "late cancellation",
                "cancelled_by_client": "cancelled by client",
                "cancelled_by_clinic": "cancelled by clinic", "scheduled": "booked"}


class Layout(NamedTuple):
    """One drawing of a chart: its width in SVG units, margins, text sizes in units, how
    many weeks apart the date labels are at least, and whether row names sit to the
    left of the plot (wide) or above their row (narrow)."""

    name: str
    width: int
    left: int
    right: int
    tick: int
    axis: int
    label_gap: int
    names_left: bool


NARROW = Layout("narrow", 380, 44, 8, 13, 13, 50, False)
WIDE = Layout("wide", 760, 84, 16, 12, 13, 44, True)
LAYOUTS = (NARROW, WIDE)


def _f(value: float) -> str:
    return f"{value:.1f}"


class _Scale:
    """Days to x pixels over [start, end]."""

    def __init__(self, start: date, end: date, layout: Layout) -> None:
        self.start, self.days = start, max((end - start).days, 1)
        self.layout = layout

    def x(self, when: date | datetime) -> float:
        day = when.date() if isinstance(when, datetime) else when
        frac = (day - self.start).days / self.days
        if isinstance(when, datetime):
            frac += (when.hour / 24) / self.days
        lay = self.layout
        return lay.left + frac * (lay.width - lay.left - lay.right)


def _tick(lay: Layout, x: float | str, y: float | str, words: str, anchor: str = "middle",
          css: str = "tick") -> str:
    size = lay.axis if css == "axis" else lay.tick
    return (f'<text class="{css}" x="{x}" y="{y}" font-size="{size}" text-anchor="{anchor}">'
            f'{words}</text>')


def _svg(lay: Layout, height: int, title: str, desc: str, body: Iterable[str],
         ident: str) -> str:
    ident = f"{ident}-{lay.name}"
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="chart chart-{lay.name}" '
        f'viewBox="0 0 {lay.width} {height}" role="img" aria-labelledby="{ident}-t {ident}-d">',
        f'<title id="{ident}-t">{escape(title)}</title><desc id="{ident}-d">{escape(desc)}</desc>',
        *body, "</svg>",
    ]
    return "".join(parts)


def _weeks(scale: _Scale, top: float, bottom: float) -> list[str]:
    """Week lines (Mondays) with day-month labels under ``bottom``, as many weeks apart
    as keeps the labels from running into each other."""
    out = []
    lay = scale.layout
    week = 7 * (lay.width - lay.left - lay.right) / scale.days
    every = max(1, -(-lay.label_gap // max(int(week), 1)))
    day = scale.start + timedelta(days=(7 - scale.start.weekday()) % 7)
    end = scale.start + timedelta(days=scale.days)
    n = 0
    while day <= end:
        x = _f(scale.x(day))
        out.append(f'<line class="grid" x1="{x}" x2="{x}" y1="{top}" y2="{bottom}"/>')
        if n % every == 0:
            words = f"{day.day} {day:%b}"
            half = 0.3 * lay.tick * len(words)  # about half the label's width
            at = float(x)
            anchor = ("start" if at - half < lay.left - 6 else
                      "end" if at + half > lay.width - 2 else "middle")
            shift = {"start": -2.0, "end": 2.0, "middle": 0.0}[anchor]
            out.append(_tick(lay, _f(at + shift), bottom + lay.tick + 3, words, anchor))
        day += timedelta(days=7)
        n += 1
    return out


def risk_chart(history: Sequence[Mapping[str, Any]], tiers: Mapping[str, float]) -> Markup:
    """The client's risk on each published list of the last weeks, with the tier lines."""
    if not history:
        return Markup("")
    return Markup("".join(_risk(lay, history, tiers) for lay in LAYOUTS))


def _risk(lay: Layout, history: Sequence[Mapping[str, Any]], tiers: Mapping[str, float]) -> str:
    first, last = history[0]["as_of"], history[-1]["as_of"]
    scale = _Scale(min(first, last - timedelta(days=14)), last, lay)
    top, bottom = 14.0, 134.0
    height = int(bottom) + lay.tick + 10

    def y(risk: float) -> float:
        return bottom - risk * (bottom - top)

    body = _weeks(scale, top, bottom)
    for pct in (0, 50, 100):
        body.append(_tick(lay, lay.left - 6, _f(y(pct / 100) + 4), f"{pct}%", "end"))
    end = lay.width - lay.right
    for name, cut in sorted(tiers.items(), key=lambda kv: kv[1]):
        body.append(f'<line class="threshold" x1="{lay.left}" x2="{end}" '
                    f'y1="{_f(y(cut))}" y2="{_f(y(cut))}"/>'
                    + _tick(lay, end, _f(y(cut) - 4), f"{escape(name)} from {cut:.0%}", "end"))
    points = " ".join(f"{_f(scale.x(h['as_of']))},{_f(y(h['risk']))}" for h in history)
    body.append(f'<polyline class="risk-line" points="{points}"/>')
    for h in history:
        body.append(f'<circle class="risk-point" cx="{_f(scale.x(h["as_of"]))}" '
                    f'cy="{_f(y(h["risk"]))}" r="3.5"><title>{h["as_of"]:%d %b %Y}: '
                    f'{h["risk"]:.0%} ({escape(h["tier"])})</title></circle>')
    desc = (f"Risk from {first:%d %b} to {last:%d %b}: from {history[0]['risk']:.0%} "
            f"to {history[-1]['risk']:.0%}.")
    return _svg(lay, height, "Risk of disengaging on each list", desc, body, "risk")


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
    return Markup("".join(_timeline(lay, appointments, measures, start, as_of, evidence)
                          for lay in LAYOUTS))


def _timeline(lay: Layout, appointments: Sequence[Mapping[str, Any]],
              measures: Sequence[Mapping[str, Any]], start: date, as_of: date,
              evidence: set[str]) -> str:
    end = as_of + timedelta(days=28)
    scale = _Scale(start, end, lay)
    # The narrow drawing names the sessions row above it, so everything moves down a line.
    down = 0 if lay.names_left else 16
    appt_y = 30 + down
    s_top, s_bottom, w_top, w_bottom = 64.0 + down, 184.0 + down, 214.0 + down, 274.0 + down
    height = int(w_bottom) + lay.tick + 10
    body = _weeks(scale, 14, w_bottom)
    today = _f(scale.x(as_of))
    body.append(f'<line class="today" x1="{today}" x2="{today}" y1="{lay.tick + 2}" '
                f'y2="{w_bottom}"/>' + _tick(lay, today, lay.tick, "list date"))
    if lay.names_left:
        body.append(_tick(lay, lay.left - 8, appt_y + 4, "Sessions", "end", "axis"))
    else:
        body.append(_tick(lay, 4, appt_y - 14, "Sessions", "start", "axis"))
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
        body.append(_tick(lay, lay.left - 6, _f(sy(score) + 4), str(score), "end"))
    line, right = _f(sy(SRS_CUTOFF)), lay.width - lay.right
    body.append(f'<line class="cutoff" x1="{lay.left}" x2="{right}" y1="{line}" y2="{line}"/>'
                + _tick(lay, right, _f(sy(SRS_CUTOFF) - 4), "concern line 36", "end"))
    body.append(_tick(lay, 4, s_top - 8, "SRS / GSRS", "start", "axis"))
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

    body.append(_tick(lay, 4, w_top - 8, "WAI-SR (12-60)", "start", "axis"))
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
    desc = (f"{plural(len(appointments), 'session')} from {start:%d %b} to {end:%d %b}: "
            f"{attended} attended, {missed} missed; "
            f"{plural(ruptures, 'session-rating rupture')}.")
    return _svg(lay, height, "Sessions and alliance ratings", desc, body, "timeline")


# The x axis of the ORS chart reaches this many sessions past the latest rating (at least
# ``ORS_MIN_SESSIONS``): where the expected course heads next.
ORS_AHEAD = 2
ORS_MIN_SESSIONS = 6


def ors_table(ors: Sequence[Mapping[str, Any]],
              trajectory: Trajectory | None) -> list[dict[str, Any]]:
    """Each ORS rating with the score expected at its session from the intake and the
    lower line, and whether it is under that line (not on track). Numbers are compared as
    shown, to one decimal, as the reasons compare them (``reasons.outcome``); without a
    trajectory the expected course is unknown (None)."""
    if not ors:
        return []
    intake = float(ors[0]["score_total"])
    sessions = [int(o["session"]) for o in ors]
    expected = trajectory.expected(intake, sessions) if trajectory else None
    lower = trajectory.lower(intake, sessions) if trajectory else None
    out = []
    for i, o in enumerate(ors):
        row = {**o, "expected": None, "lower": None, "not_on_track": None}
        if expected is not None and lower is not None and o["session"] > 1:
            row["expected"], row["lower"] = shown(expected[i]), shown(lower[i])
            row["not_on_track"] = shown(float(o["score_total"])) < row["lower"]
        out.append(row)
    return out


def ors_chart(ors: Sequence[Mapping[str, Any]], trajectory: Trajectory | None,
              evidence: set[str], cutoff: float = ORS_CUTOFF) -> Markup:
    """The client's ORS by session (1 = the intake) with the course expected from the
    intake, the lower "not on track" line and the clinical cutoff."""
    if not ors:
        return Markup("")
    rows = ors_table(ors, trajectory)
    return Markup("".join(_ors(lay, rows, trajectory, evidence, cutoff) for lay in LAYOUTS))


def _ors(lay: Layout, rows: Sequence[Mapping[str, Any]], trajectory: Trajectory | None,
         evidence: set[str], cutoff: float) -> str:
    last = int(rows[-1]["session"])
    n = max(last + ORS_AHEAD, ORS_MIN_SESSIONS)
    top, bottom = 14.0, 174.0
    height = int(bottom) + 2 * lay.tick + 14
    right = lay.width - lay.right

    def x(session: float) -> float:
        return lay.left + (session - 1) / (n - 1) * (right - lay.left)

    def y(score: float) -> float:
        return bottom - score / 40 * (bottom - top)

    body = []
    every = 1 if n <= 10 else 2 if n <= 20 else 5
    for s in range(1, n + 1):
        sx = _f(x(s))
        body.append(f'<line class="grid" x1="{sx}" x2="{sx}" y1="{top}" y2="{bottom}"/>')
        if s == 1 or s % every == 0:
            body.append(_tick(lay, sx, bottom + lay.tick + 3, str(s)))
    body.append(_tick(lay, _f((lay.left + right) / 2), bottom + 2 * lay.tick + 8,
                      "session (1 = intake)", "middle", "axis"))
    for score in (0, 10, 20, 30, 40):
        body.append(_tick(lay, lay.left - 6, _f(y(score) + 4), str(score), "end"))
    line = _f(y(cutoff))
    body.append(f'<line class="cutoff" x1="{lay.left}" x2="{right}" y1="{line}" y2="{line}"/>'
                + _tick(lay, right, _f(y(cutoff) - 4), f"clinical cutoff {cutoff:g}", "end"))
    intake = float(rows[0]["score_total"])
    if trajectory is not None:
        sessions = list(range(1, n + 1))
        for css, values in (("expected-line", trajectory.expected(intake, sessions)),
                            ("lower-line", trajectory.lower(intake, sessions))):
            pts = " ".join(f"{_f(x(s))},{_f(y(min(max(float(v), 0.0), 40.0)))}"
                           for s, v in zip(sessions, values, strict=True))
            body.append(f'<polyline class="{css}" points="{pts}"/>')
    if len(rows) > 1:
        pts = " ".join(f"{_f(x(r['session']))},{_f(y(r['score_total']))}" for r in rows)
        body.append(f'<polyline class="line-ors" points="{pts}"/>')
    for r in rows:
        px, py = x(r["session"]), y(r["score_total"])
        ring = (f'<circle class="m-evidence" cx="{_f(px)}" cy="{_f(py)}" r="9"/>'
                if r["measure_id"] in evidence else "")
        if r["not_on_track"]:
            d = 6
            mark = (f'<path class="pt-ors-off" d="M{_f(px)},{_f(py - d)} L{_f(px + d)},{_f(py)} '
                    f'L{_f(px)},{_f(py + d)} L{_f(px - d)},{_f(py)} z"/>')
        else:
            mark = f'<circle class="pt-ors" cx="{_f(px)}" cy="{_f(py)}" r="4.5"/>'
        body.append(f"<g>{ring}{mark}<title>{escape(_ors_words(r))}</title></g>")
    return _svg(lay, height, "Outcome ratings (ORS) by session", _ors_desc(rows, trajectory,
                                                                           cutoff), body, "ors")


def _ors_words(r: Mapping[str, Any]) -> str:
    """One rating as its mark's title: "Session 3, 12 May 2026: ORS 21; expected 24.5,
    not on track under 19.8"."""
    head = (f"Session {r['session']}, {r['administered_at']:%d %b %Y}: ORS "
            f"{score_text(r['score_total'])}")
    if r["session"] == 1:
        return head + " (intake)"
    if r["expected"] is None:
        return head
    state = "not on track" if r["not_on_track"] else "on track"
    return (f"{head}; expected {score_text(r['expected'])}, {state} (lower line "
            f"{score_text(r['lower'])})")


def _ors_desc(rows: Sequence[Mapping[str, Any]], trajectory: Trajectory | None,
              cutoff: float) -> str:
    first, last = rows[0], rows[-1]
    text = (f"Intake ORS {score_text(first['score_total'])} on "
            f"{first['administered_at']:%d %b %Y}")
    if len(rows) == 1:
        text += "; no rating since the intake."
    else:
        text += (f"; latest {score_text(last['score_total'])} at session {last['session']} "
                 f"on {last['administered_at']:%d %b %Y}")
        if last["expected"] is not None:
            where = (f"under the lower line of {score_text(last['lower'])}: not on track"
                     if last["not_on_track"] else "on track")
            text += f", where {score_text(last['expected'])} was expected ({where})."
        else:
            text += "."
    if trajectory is None:
        text += " No expected course is configured."
    above = "at or above" if shown(float(last["score_total"])) >= cutoff else "under"
    return text + f" The latest is {above} the clinical cutoff of {cutoff:g}."
