"""The evaluation report of a version: HTML with plots, and the same numbers as JSON.

Everything comes from the version's checked ``evaluation.json`` (hash-verified),
so a report cannot show numbers the training run did not produce. Plots: ROC and
precision-recall curves with the baselines, the calibration curve with intervals and
counts, the score distribution by outcome (one colour per scorer in every panel);
the calibration bound by decile, the subgroup table and the top features.
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

from retention.evaluation.gate import difference_text
from retention.evaluation.model_card import build_card, render_html
from retention.model import artifacts
from retention.model.booster import ModelError
from retention.model.registry import read_gate
from retention.model.signing import SigningKey

METRICS = ("auroc", "average_precision", "brier", "ece", "precision_at_k", "recall_at_k")


def load_version_record(models_dir: Path, version: str | None = None, *,
                        key: SigningKey | None = None) -> dict[str, Any]:
    """A version's metadata, evaluation and gate, after checking its signature and hashes."""
    version = version or artifacts.current_version(models_dir)
    metadata, contents = artifacts.read_checked(models_dir / version, version, key=key)
    if artifacts.EVALUATION_FILE not in contents:
        raise ModelError(f"model version {version!r} has no evaluation; "
                                  "retrain it with `retention train`")
    return {"metadata": metadata,
            "evaluation": json.loads(contents[artifacts.EVALUATION_FILE]),
            "gate": read_gate(models_dir, version)}


def write_report(models_dir: Path, out_dir: Path, version: str | None = None,
                 external: dict[str, Any] | None = None, *,
                 key: SigningKey | None = None) -> dict[str, Path]:
    """Write report.html, report.json, model-card.json and model-card.html for a version."""
    record = load_version_record(models_dir, version, key=key)
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
        calibration = evaluation.get("calibration") if subset == "all" else None
        parts.append(_img(_curves_figure(evaluation, data, calibration)))
        if subset == "all":
            parts.append(_calibration_html(calibration))
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
        f"{html.escape(_num(c['candidate']))} vs {html.escape(str(c.get('label', c['against'])))} "
        f"{html.escape(_num(c['reference']))}"
        + (f"; difference {html.escape(difference_text(c['difference']))}, "
           f"{html.escape(c['verdict'])}" if "difference" in c else "")
        + "</li>" for c in gate["checks"])
    advice = f"<p>{html.escape(gate['advice'])}</p>" if gate.get("advice") else ""
    return f"<h2>Promotion gate: {verdict}</h2><ul>{items}</ul>{advice}"


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


# One colour per scorer, the same in every panel: the candidate first, then the others in
# the evaluation's order.
PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2",
           "#7f7f7f")


def _colours(evaluation: dict[str, Any]) -> dict[str, str]:
    kinds = {"model": 0, "current": 1, "baseline": 2}
    order = sorted(evaluation["scorers"],
                   key=lambda n: (kinds.get(evaluation["scorers"][n]["kind"], 3), n))
    return {name: PALETTE[i % len(PALETTE)] for i, name in enumerate(order)}


def _curves_figure(evaluation: dict[str, Any], data: dict[str, Any],
                   calibration: dict[str, Any] | None = None) -> Any:
    """ROC, precision-recall, calibration and score distribution, one legend for all.

    The calibration panel shows every scorer with probabilities in its own colour; on
    all open episodes the model's points carry their 95% interval (clients resampled)
    and the number of rows in each bin.
    """
    colours = _colours(evaluation)
    fig, axes = plt.subplots(1, 4, figsize=(19, 4.6))
    roc, pr, cal, hist = axes
    for name, curves in data["curves"].items():
        if not curves:
            continue
        label = evaluation["scorers"][name]["label"]
        style = "-" if evaluation["scorers"][name]["kind"] != "baseline" else "--"
        colour = colours[name]
        roc.plot(curves["roc"]["fpr"], curves["roc"]["tpr"], style, color=colour, label=label)
        pr.plot(curves["pr"]["recall"], curves["pr"]["precision"], style, color=colour,
                label=label)
        if "calibration" not in curves:
            continue
        if name == "model" and calibration is not None:
            bins = calibration["bins"]
            x = [b["predicted"] for b in bins]
            y = [b["observed"]["value"] for b in bins]
            err = [[b["observed"]["value"] - b["observed"]["low"] for b in bins],
                   [b["observed"]["high"] - b["observed"]["value"] for b in bins]]
            cal.errorbar(x, y, yerr=err, fmt="o-", color=colour, capsize=3, label=label)
            for b in bins:
                cal.annotate(f"{b['n']}", (b["predicted"], b["observed"]["value"]),
                             textcoords="offset points", xytext=(4, -10), fontsize=6,
                             color=colour)
        else:
            cal.plot(curves["calibration"]["predicted"], curves["calibration"]["observed"],
                     "o" + style, color=colour, label=label, markersize=4)
    roc.plot([0, 1], [0, 1], ":", color="grey")
    roc.set(title="ROC", xlabel="false positive rate", ylabel="true positive rate")
    pr.axhline(data["base_rate"], ls=":", color="grey", label="base rate")
    pr.set(title="Precision-recall", xlabel="recall", ylabel="precision")
    cal.plot([0, 1], [0, 1], ":", color="grey", label="perfect calibration")
    cal.set(title="Calibration (10 bins; numbers: rows)", xlabel="predicted risk",
            ylabel="observed rate", xlim=(0, 1), ylim=(0, 1))
    model_hist = data["curves"].get("model", {}).get("histogram")
    if model_hist:
        edges = model_hist["edges"]
        width = edges[1] - edges[0]
        hist.bar(edges[:-1], model_hist["negatives"], width=width, align="edge", alpha=0.6,
                 color="#9ecae1", label="stayed engaged")
        hist.bar(edges[:-1], model_hist["positives"], width=width, align="edge", alpha=0.6,
                 color="#fc9272", label="disengaged")
        hist.set(title="Score distribution (model)", xlabel="calibrated risk", ylabel="rows")
        hist.legend(fontsize=7)
    for panel in (roc, pr, cal):
        panel.legend(fontsize=7, loc="lower right" if panel is not pr else "upper right")
    fig.tight_layout()
    return fig


def _calibration_html(calibration: dict[str, Any] | None) -> str:
    """The calibration bound and the deciles of predicted risk, with intervals."""
    if calibration is None:
        return "<p>No calibration check recorded for this version.</p>"
    b = calibration["bound"]
    verdict = ("within the bound" if b["met"] else
               "<span class='bad'>clearly beyond the bound</span>" if b["broken"] else
               "<span class='bad'>over the bound</span>, within chance at this size")
    rows = "".join(
        f"<tr><td>{d['group'] + 1}</td><td>{d['n']:,}</td>"
        f"<td>{d['low_risk']:.3f}&ndash;{d['high_risk']:.3f}</td><td>{d['predicted']:.3f}</td>"
        f"<td>{_fmt(d['observed'])}</td><td class='{_gap_class(d, b)}'>{_fmt(d['gap'])}</td>"
        "</tr>" for d in calibration["deciles"])
    return (f"<h2>Calibration: {verdict}</h2><p>Expected calibration error "
            f"{_fmt(calibration['ece'])} (bound {b['max_ece']}); mean predicted "
            f"{calibration['mean_predicted']:.3f} against "
            f"{calibration['observed_rate']:.3f} observed. Deciles of predicted risk with "
            f"{b['min_decile_rows']}+ rows may be off by at most {b['max_decile_gap']}. The "
            "bound is broken (and the gate refuses) only beyond chance: ECE's interval is "
            "corrected for its upward bias on small slices, and a decile must be off by more "
            "than its error allowing for every decile judged.</p>"
            "<table><tr><th>decile</th><th>rows</th><th>predicted range</th><th>mean "
            "predicted</th><th>observed</th><th>predicted &minus; observed</th></tr>"
            f"{rows}</table>")


def _gap_class(decile: dict[str, Any], bound: dict[str, Any]) -> str:
    judged = decile["n"] >= bound["min_decile_rows"]
    return "bad" if judged and abs(decile["gap"]["value"]) > bound["max_decile_gap"] else ""


def _img(fig: Any) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80)
    plt.close(fig)
    data = base64.b64encode(buf.getvalue()).decode()
    return f"<img alt='curves' src='data:image/png;base64,{data}'>"
