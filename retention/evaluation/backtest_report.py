"""The backtest's report: the pooled evaluation and each origin, as HTML beside its JSON.

The page is rendered from the JSON record alone (``Backtest.to_dict``), so it cannot
show a number the JSON does not hold; tables, plots and the calibration check are the
ones ``retention report`` draws for a version.
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

from retention.evaluation.report import (
    _calibration_html,
    _curves_figure,
    _img,
    _metrics_table,
)

JSON_FILE = "backtest.json"
HTML_FILE = "backtest.html"


def write_backtest_report(record: dict[str, Any], out_dir: Path) -> dict[str, Path]:
    """Write backtest.json and backtest.html to ``out_dir``; returns their paths by name."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {JSON_FILE: out_dir / JSON_FILE, HTML_FILE: out_dir / HTML_FILE}
    paths[JSON_FILE].write_text(json.dumps(record, indent=2, sort_keys=True, allow_nan=False))
    paths[HTML_FILE].write_text(render_backtest(record))
    return paths


def render_backtest(record: dict[str, Any]) -> str:
    """The HTML page, plots embedded as PNG so the file stands alone."""
    evaluation, period, s = record["evaluation"], record["period"], record["settings"]
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>Backtest as of {html.escape(record['as_of'])}</title>",
        "<style>body{font-family:sans-serif;max-width:75em;margin:2em auto}"
        "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;"
        "padding:.25em .5em;text-align:right}th:first-child,td:first-child{text-align:left}"
        ".bad{color:#b00}td.note{text-align:left}table.origins td{white-space:nowrap}"
        "</style></head><body>",
        f"<h1>Backtest as of {html.escape(record['as_of'])}</h1>",
        f"<p>Origins{_every(period['every_weeks'])} from {period['from']} to "
        f"{period['to']}: {period['scored']} scored, {period['skipped']} skipped. At each "
        "origin a model was trained as <code>retention train</code> trains one, on the "
        f"snapshots (every {s['snapshot_every_days']} days, at most "
        f"{s['training_window_days']} days back) whose {s['horizon_days']}-day outcome was "
        "known at the origin, and a logistic regression on the same rows; they and the "
        "clinic's rules scored the episodes open at the origin, whose outcome is the "
        f"{s['horizon_days']} days after it. Pooled: {evaluation['rows']:,} rows of "
        f"{evaluation['clients']:,} clients. Capacity: top {evaluation['capacity_k']} per "
        f"clinic per origin. 95% intervals: {evaluation['bootstrap']['samples']} bootstrap "
        "resamples of clients, the same for every scorer, so differences are paired. No "
        "model was saved and nothing was promoted.</p>",
    ]
    for subset, title in (("all", "All open episodes"),
                          ("engaged", "Still engaged (attended within "
                                      f"{evaluation['engaged_within_days']} days)")):
        data = evaluation["subsets"][subset]
        parts.append(f"<h2>{title}</h2><p>{data['n']:,} rows, {data['positives']:,} "
                     f"disengaged ({_share(data['base_rate'])}), {data['clients']:,} "
                     "clients.</p>")
        parts.append(_metrics_table(evaluation, data))
        calibration = evaluation.get("calibration") if subset == "all" else None
        parts.append(_img(_curves_figure(evaluation, data, calibration)))
        if subset == "all":
            parts.append(_calibration_html(calibration))
            parts.append("<p>No gate is applied by a backtest: the bound is shown as "
                         "<code>retention train</code> would judge it.</p>")
    parts.append(_origins_html(record))
    parts.append("<h2>Settings</h2><table>" + "".join(
        f"<tr><td>{html.escape(k)}</td><td>{html.escape(str(v))}</td></tr>"
        for k, v in _flat(s)) + f"<tr><td>data fingerprint</td><td>"
        f"{html.escape(record['data_fingerprint'][:16])}</td></tr></table>")
    parts.append("</body></html>")
    return "".join(parts)


def _origins_html(record: dict[str, Any]) -> str:
    """One row per origin: what was trained on and scored, and AUROC beside the best baseline."""
    best = record["best_baseline"]
    scorers = record["evaluation"]["scorers"]
    names = {subset: scorers[b]["label"] if b else "none" for subset, b in best.items()}
    rows = []
    for o in record["origins"]:
        head = f"<td>{o['origin']}</td>"
        if o["status"] != "scored":
            rows.append(f"<tr>{head}<td>{o['train_rows']:,}</td><td>{o['train_snapshots']}</td>"
                        f"<td colspan='9' class='note bad'>skipped: "
                        f"{html.escape(o['reason'])}</td></tr>")
            continue
        window = o["window"]
        cells = [f"{o['train_rows']:,}", str(o["train_snapshots"]),
                 f"{window.get('first_snapshot', '')} / {window.get('last_snapshot', '')}",
                 html.escape(o["calibration"]), f"{o['test_rows']:,}",
                 f"{o['positives']:,}", f"{o['engaged_rows']:,} ({o['engaged_positives']:,})"]
        for subset in ("all", "engaged"):
            figures = o["metrics"].get(subset, {})
            cells.append(_num(figures.get("model", {}).get("auroc")))
            b = best[subset]
            cells.append(_num(figures.get(b, {}).get("auroc")) if b else "&ndash;")
        rows.append(f"<tr>{head}{''.join(f'<td>{c}</td>' for c in cells)}</tr>")
    return (
        "<h2>Origin by origin</h2><p>Each origin's own AUROC (no interval: a single origin "
        "holds few outcomes). Best baseline: the one with the highest pooled AUROC, "
        f"{html.escape(names['all'])} on all open episodes and "
        f"{html.escape(names['engaged'])} on the still engaged.</p>"
        "<table class='origins'><tr><th rowspan='2'>origin</th><th colspan='4'>trained on</th>"
        "<th rowspan='2'>open episodes</th><th rowspan='2'>disengaged</th>"
        "<th rowspan='2'>still engaged (disengaged)</th><th colspan='2'>AUROC, all</th>"
        "<th colspan='2'>AUROC, still engaged</th></tr><tr><th>rows</th><th>snapshots</th>"
        "<th>from / to</th><th>calibration</th><th>model</th><th>best baseline</th>"
        "<th>model</th><th>best baseline</th></tr>" + "".join(rows) + "</table>"
    )


def _every(weeks: int | None) -> str:
    return f" every {weeks} weeks" if weeks else ""


def _num(value: Any) -> str:
    return f"{value:.3f}" if isinstance(value, int | float) else "&ndash;"


def _share(value: Any) -> str:
    return f"{value:.1%}" if isinstance(value, int | float) else "&ndash;"


def _flat(settings: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = []
    for key, value in settings.items():
        if isinstance(value, dict):
            out += _flat(value, f"{prefix}{key}.")
        else:
            out.append((f"{prefix}{key}", value))
    return out

