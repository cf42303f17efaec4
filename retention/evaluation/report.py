"""The evaluation report of a version: HTML with plots, and the same numbers as JSON.

Everything comes from the version's checked ``evaluation.json`` (hash-verified),
so a report cannot show numbers the training run did not produce. Plots:
calibration curve, ROC and precision-recall curves with the baselines, the
score distribution by outcome, the subgroup table and the top features.
"""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from retention.evaluation.model_card import build_card, render_html
from retention.model import artifacts
from retention.model.booster import ModelError
from retention.model.registry import read_gate

METRICS = ("auroc", "average_precision", "brier", "ece", "precision_at_k", "recall_at_k")


def load_version_record(models_dir: Path, version: str | None = None) -> dict[str, Any]:
    """A version's metadata, evaluation and gate, after checking every hash."""
    version = version or artifacts.current_version(models_dir)
    metadata, contents = artifacts.read_checked(models_dir / version, version)
    if artifacts.EVALUATION_FILE not in contents:
        raise ModelError(f"model version {version!r} has no evaluation; "
                                  "retrain it with `retention train`")
    return {"metadata": metadata,
            "evaluation": json.loads(contents[artifacts.EVALUATION_FILE]),
            "gate": read_gate(models_dir, version)}


def write_report(models_dir: Path, out_dir: Path, version: str | None = None,
                 external: dict[str, Any] | None = None) -> dict[str, Path]:
    """Write report.html, report.json, model-card.json and model-card.html for a version."""
    record = load_version_record(models_dir, version)
    meta, evaluation = record["metadata"], record["evaluation"]
    folder = out_dir / meta["version"]
    folder.mkdir(parents=True, exist_ok=True)
    card = build_card(meta, evaluation, record["gate"], external)
    summary = {"version": meta["version"], "window": meta["window"],
               "evaluation": evaluation, "gate": record["gate"]}
    paths = {
        "report.html": folder / "report.html",
        "report.json": folder / "report.json",
        "model-card.json": folder / "model-card.json",
        "model-card.html": folder / "model-card.html",
    }
    paths["report.json"].write_text(json.dumps(summary, indent=2, sort_keys=True))
    paths["report.html"].write_text(render_report(meta, evaluation, record["gate"]))
    paths["model-card.json"].write_text(json.dumps(card, indent=2, sort_keys=True))
    paths["model-card.html"].write_text(render_html(card))
    return paths


def render_report(meta: dict[str, Any], evaluation: dict[str, Any],
                  gate: dict[str, Any] | None) -> str:
    """The HTML report, plots embedded as PNG so the file stands alone."""
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>Evaluation {html.escape(meta['version'])}</title>",
        "<style>body{font-family:sans-serif;max-width:75em;margin:2em auto}"
        "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;"
        "padding:.25em .5em;text-align:right}th:first-child,td:first-child{text-align:left}"
        ".bad{color:#b00}</style></head><body>",
        f"<h1>Model {html.escape(meta['version'])}</h1>",
        f"<p>Trained as of {meta['trained_as_of']}; window {html.escape(str(meta['window']))}. "
        f"Evaluation rows: {evaluation['rows']:,} snapshots of {evaluation['clients']:,} "
        f"clients, {evaluation['snapshot_dates']['first']} to "
        f"{evaluation['snapshot_dates']['last']}. Capacity: top {evaluation['capacity_k']} "
        f"per clinic per date. 95% intervals: {evaluation['bootstrap']['samples']} bootstrap "
        "resamples of clients (clustered: one client appears in many weekly snapshots).</p>",
        _gate_html(gate),
    ]
    for subset, title in (("all", "All open episodes"),
                          ("engaged", "Still engaged (attended within "
                                      f"{evaluation['engaged_within_days']} days)")):
        data = evaluation["subsets"][subset]
        parts.append(f"<h2>{title}</h2><p>{data['n']:,} rows, {data['positives']:,} "
                     f"disengaged ({data['base_rate']:.1%}), {data['clients']:,} clients.</p>")
        parts.append(_metrics_table(evaluation, data))
        parts.append(_img(_curves_figure(evaluation, data)))
    parts.append("<h2>Subgroups (all open episodes)</h2>")
    parts.append(_fairness_html(evaluation["fairness"]["all"]))
    parts.append("<h2>Top features (share of total gain)</h2><table><tr><th>feature</th>"
                 "<th>gain share</th></tr>" + "".join(
                     f"<tr><td>{html.escape(f['feature'])}</td><td>{f['gain_share']:.3f}</td></tr>"
                     for f in evaluation["top_features"]) + "</table>")
    parts.append("</body></html>")
    return "".join(parts)


def _fmt(ci: dict[str, Any]) -> str:
    if ci["value"] is None:
        return "&ndash;"
    if ci["low"] is None:
        return f"{ci['value']:.3f}"
    return f"{ci['value']:.3f} <small>({ci['low']:.3f}&ndash;{ci['high']:.3f})</small>"


def _metrics_table(evaluation: dict[str, Any], data: dict[str, Any]) -> str:
    head = "".join(f"<th>{m.replace('_', ' ')}</th>" for m in METRICS)
    rows = []
    for name, values in data["metrics"].items():
        label = html.escape(evaluation["scorers"][name]["label"])
        cells = "".join(f"<td>{_fmt(values[m])}</td>" for m in METRICS)
        rows.append(f"<tr><td>{label}</td>{cells}</tr>")
    diffs = "".join(
        f"<li>model &minus; {html.escape(evaluation['scorers'][n]['label'])}: AUROC "
        f"{_fmt(d['auroc'])}, average precision {_fmt(d['average_precision'])}</li>"
        for n, d in data["differences"].items()
    )
    return (f"<table><tr><th>scorer</th>{head}</tr>{''.join(rows)}</table>"
            f"<p>Paired differences (same client resamples):</p><ul>{diffs}</ul>")


def _gate_html(gate: dict[str, Any] | None) -> str:
    if gate is None:
        return "<p>No promotion gate decision recorded.</p>"
    verdict = "passed" if gate["passed"] else "<span class='bad'>refused</span>"
    items = "".join(
        f"<li>{'&#10003;' if c['passed'] else '&#10007;'} {html.escape(c['check'])}: "
        f"{html.escape(_num(c['candidate']))} vs {html.escape(str(c['against']))} "
        f"{html.escape(_num(c['reference']))}</li>" for c in gate["checks"])
    return f"<h2>Promotion gate: {verdict}</h2><ul>{items}</ul>"


def _num(v: Any) -> str:
    return f"{v:.3f}" if isinstance(v, int | float) else "n/a"


def _cell(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.3f}"
    return "n/a" if v is None else str(v)


def _fairness_html(report: dict[str, Any]) -> str:
    cols = ("n", "positives", "base_rate", "mean_risk", "auroc", "ece", "flag_rate",
            "recall_at_k")
    head = "".join(f"<th>{c.replace('_', ' ')}</th>" for c in cols)
    rows = []
    for dim, table in report["groups"].items():
        for g in table:
            cells = "".join(f"<td>{_cell(g[c])}</td>" for c in cols)
            gaps = html.escape("; ".join(g["gaps"])) if g["judged"] else "too few to judge"
            rows.append(f"<tr><td>{html.escape(dim)}: {html.escape(g['group'])}</td>{cells}"
                        f"<td class='{'bad' if g['gaps'] else ''}'>{gaps}</td></tr>")
    return (f"<p>Tolerance {report['tolerance']}; groups need {report['min_outcomes']} "
            f"outcomes of each kind to be judged.</p><table><tr><th>group</th>{head}"
            f"<th>gaps</th></tr>{''.join(rows)}</table>")


def _curves_figure(evaluation: dict[str, Any], data: dict[str, Any]) -> Any:
    fig, axes = plt.subplots(1, 4, figsize=(18, 4.2))
    roc, pr, cal, hist = axes
    for name, curves in data["curves"].items():
        if not curves:
            continue
        label = evaluation["scorers"][name]["label"]
        style = "-" if evaluation["scorers"][name]["kind"] != "baseline" else "--"
        roc.plot(curves["roc"]["fpr"], curves["roc"]["tpr"], style, label=label)
        pr.plot(curves["pr"]["recall"], curves["pr"]["precision"], style, label=label)
        if "calibration" in curves:
            cal.plot(curves["calibration"]["predicted"], curves["calibration"]["observed"],
                     "o" + style, label=label)
    roc.plot([0, 1], [0, 1], ":", color="grey")
    roc.set(title="ROC", xlabel="false positive rate", ylabel="true positive rate")
    pr.axhline(data["base_rate"], ls=":", color="grey")
    pr.set(title="Precision-recall", xlabel="recall", ylabel="precision")
    cal.plot([0, 1], [0, 1], ":", color="grey")
    cal.set(title="Calibration", xlabel="predicted risk", ylabel="observed rate")
    model_hist = data["curves"].get("model", {}).get("histogram")
    if model_hist:
        edges = model_hist["edges"]
        width = edges[1] - edges[0]
        hist.bar(edges[:-1], model_hist["negatives"], width=width, align="edge", alpha=0.6,
                 label="stayed engaged")
        hist.bar(edges[:-1], model_hist["positives"], width=width, align="edge", alpha=0.6,
                 label="disengaged")
        hist.set(title="Score distribution (model)", xlabel="calibrated risk", ylabel="rows")
        hist.legend(fontsize=7)
    roc.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    return fig


def _img(fig: Any) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80)
    plt.close(fig)
    data = base64.b64encode(buf.getvalue()).decode()
    return f"<img alt='curves' src='data:image/png;base64,{data}'>"
