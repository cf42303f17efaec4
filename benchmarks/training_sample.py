"""Is a model trained on a sample of a network's clients as accurate as one trained on all of them?

    .venv/bin/python benchmarks/training_sample.py --clients 20000 --clinics 16 \\
        --samples 2500,5000,10000 [--repeats 1] [--seed 42] [--today 2026-06-01]

``[evaluation] training_sample_clients`` makes a training read only a sample of clients,
drawn by clinic (``retention.model.sampling``), so that its memory follows the sample and
not the network. This measures what the sample costs in accuracy. A synthetic network
(``--clients`` clients in ``--clinics`` clinics, ``training_window_days`` of history,
the caseload raised as in ``benchmarks/nightly.py``) is generated in memory; its training
rows are built once, for every client, and split once by time (``time_split``, the
shares of ``[evaluation]``). The evaluation slice of *every* client is the yardstick
all models are judged on.

For each size in ``--samples``, and for every client ("all"), the clients are drawn with
``stratified_clients`` (``--repeats`` draws, seeds ``--seed`` on), their rows taken from
the rows built for all (features are per episode, so a client's rows do not depend on
which other clients are read), and fitted as `retention train` fits
(``retention.model.training.fit_as_configured``), with the default settings, so its own split,
tuning and calibration see only the sample.
Each model is judged, as the gate judges a candidate, by its evaluated fit
(``TrainedModel.judged``: the served fit is refit on every row, the evaluation dates
included): it ranks by the raw score (AUROC, average precision) and its calibrated risk
is scored for Brier and expected calibration error. That fit never saw the yardstick's
rows, the sampled clients' included: the sample's snapshot dates are the network's, so
its split holds out the same evaluation dates (checked for every draw). The fit seed is
``--seed`` for every model; only the draw changes between repeats.

Intervals are 95% percentile bootstraps over clients of the evaluation slice
(``retention.evaluation.bootstrap``, ``bootstrap_samples`` resamples), the same
resamples for every model, so the difference from "all" has a paired interval. A sample
is *as accurate* when both ends of that interval, for AUROC and average precision, are
within ``promotion_tolerance``; the gate's own test against the model in service is the
low end alone ("no worse").

The peak memory printed at the end is the whole benchmark's (the training rows of every
client dominate it): a real training with a sample reads and builds only the sample's
rows, so its memory follows the sample. Report on stdout (Markdown), progress on stderr,
a one-line summary last.
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
from dataclasses import dataclass, replace
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.metrics import average_precision_score, brier_score_loss, roc_auc_score

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from retention.clinic.data import from_frames
from retention.clinic.synth import SynthConfig, generate
from retention.engine.memory import peak_rss_mib
from retention.evaluation import bootstrap
from retention.evaluation.heldout import model_scorer
from retention.model.sampling import stratified_clients
from retention.model.training import (
    Split,
    fit_as_configured,
    snapshot_dates,
    time_split,
    training_rows,
)
from retention.settings import Settings

SYNTH_SEED = 20261126
# Bootstrap weights held at once at most (resamples x evaluation rows): the resamples are
# drawn in chunks, each chunk with a seed of its own, the same chunks for every model.
MAX_WEIGHTS = 4_000_000


def say(message: str) -> None:
    print(f"training_sample: {message}", file=sys.stderr, flush=True)


@dataclass
class Trained:
    """One model's scores on the common evaluation slice, and what its training took."""

    label: str
    n: int | None
    seed: int | None
    clients: int
    rows: int
    train_rows: int
    fit_seconds: float
    calibration: str
    score: np.ndarray
    probability: np.ndarray


def same_held_out(rows: pd.DataFrame, sample_rows: pd.DataFrame, split: Split,
                  settings: Settings) -> bool:
    """Whether the sample's own split trains and calibrates only before the yardstick."""
    if set(sample_rows["as_of"].unique()) == set(rows["as_of"].unique()):
        return True  # the split is a function of the snapshot dates alone
    ev = settings.evaluation
    own = time_split(sample_rows, settings.horizon_days, ev.evaluate_share, ev.calibrate_share)
    gap = pd.Timedelta(days=settings.horizon_days)
    return bool(pd.Timestamp(own.calibrate_until) + gap <= pd.Timestamp(split.evaluate_from))


def train_one(label: str, n: int | None, seed: int | None, rows: pd.DataFrame,
              clients: pd.DataFrame, split: Split, settings: Settings, today: date) -> Trained:
    """Draw the clients, fit on their rows as ``pipelines/train.py`` does, score the slice."""
    chosen = None if n is None or seed is None else stratified_clients(clients, n, seed)
    sample_rows = (rows if chosen is None else
                   rows[rows["client_id"].isin(chosen)].reset_index(drop=True))
    if not same_held_out(rows, sample_rows, split, settings):
        raise RuntimeError(f"{label}: the sample's split would train on the evaluation dates")
    say(f"{label}: fitting on {sample_rows['client_id'].nunique():,} clients, "
        f"{len(sample_rows):,} rows")
    started = time.monotonic()
    trained = fit_as_configured(sample_rows, settings, today)
    seconds = time.monotonic() - started
    scorer = model_scorer(trained.judged, split.evaluate)
    assert scorer.probability is not None
    say(f"{label}: fit in {seconds:.1f} s ({trained.judged.calibrator.method} calibration)")
    return Trained(label, n, seed, int(sample_rows["client_id"].nunique()), len(sample_rows),
                   int(trained.metadata["rows"]["train"]), seconds,
                   trained.judged.calibrator.method, scorer.score, scorer.probability)


def bootstrapped(models: list[Trained], y: np.ndarray, clients: np.ndarray, samples: int,
                 seed: int) -> dict[str, dict[str, np.ndarray]]:
    """AUROC and average precision of every model on the same client resamples."""
    chunk = max(1, min(samples, MAX_WEIGHTS // max(len(y), 1)))
    out: dict[str, dict[str, list[np.ndarray]]] = {
        m.label: {"auroc": [], "average_precision": []} for m in models}
    for i, start in enumerate(range(0, samples, chunk)):
        w = bootstrap.client_weights(clients, min(chunk, samples - start), seed + i)
        for m in models:
            ranked = bootstrap.ranking_metrics(w, y, m.score)
            for metric in ("auroc", "average_precision"):
                out[m.label][metric].append(ranked[metric])
        del w
    return {label: {k: np.concatenate(v) for k, v in metrics.items()}
            for label, metrics in out.items()}


def judge(models: list[Trained], y: np.ndarray, clients: np.ndarray,
          settings: Settings) -> list[dict[str, Any]]:
    """Point estimates, intervals and paired differences from "all", per model."""
    ev = settings.evaluation
    boots = bootstrapped(models, y, clients, ev.bootstrap_samples, ev.bootstrap_seed)
    ones = np.ones((1, len(y)))
    points = {m.label: {"auroc": float(roc_auc_score(y, m.score)),
                        "average_precision": float(average_precision_score(y, m.score))}
              for m in models}
    tol = ev.promotion_tolerance
    results = []
    for m in models:
        result: dict[str, Any] = {"model": m}
        for metric in ("auroc", "average_precision"):
            point = points[m.label][metric]
            result[metric] = bootstrap.interval(boots[m.label][metric], point)
            result[f"delta_{metric}"] = bootstrap.interval(
                boots[m.label][metric] - boots["all"][metric],
                point - points["all"][metric])
        result["brier"] = float(brier_score_loss(y, m.probability))
        result["ece"] = float(bootstrap.probability_metrics(ones, y, m.probability)["ece"][0])
        deltas = [result[f"delta_{k}"] for k in ("auroc", "average_precision")]
        within = all(d["low"] >= -tol and d["high"] <= tol for d in deltas)
        no_worse = all(d["low"] >= -tol for d in deltas)
        result["verdict"] = ("reference" if m.n is None else
                             f"within ±{tol:g}" if within else
                             f"no worse by {tol:g}" if no_worse else "possibly worse")
        results.append(result)
    return results


def ci(value: dict[str, float], signed: bool = False) -> str:
    fmt = "{:+.3f}" if signed else "{:.3f}"
    return (f"{fmt.format(value['value'])} "
            f"[{fmt.format(value['low'])}, {fmt.format(value['high'])}]")


def table(results: list[dict[str, Any]]) -> list[str]:
    lines = ["| n | seed | clients with rows | rows (train slice) | fit s | calibration "
             "| AUROC [95% CI] | ΔAUROC vs all [95% CI] | AP [95% CI] | ΔAP vs all [95% CI] "
             "| Brier | ECE | as accurate? |",
             "|---|---|--:|--:|--:|---|---|---|---|---|--:|--:|---|"]
    for r in results:
        m: Trained = r["model"]
        reference = m.n is None
        lines.append(
            f"| {'all' if reference else f'{m.n:,}'} | {'—' if m.seed is None else m.seed} "
            f"| {m.clients:,} | {m.rows:,} ({m.train_rows:,}) | {m.fit_seconds:.1f} "
            f"| {m.calibration} | {ci(r['auroc'])} "
            f"| {'—' if reference else ci(r['delta_auroc'], signed=True)} "
            f"| {ci(r['average_precision'])} "
            f"| {'—' if reference else ci(r['delta_average_precision'], signed=True)} "
            f"| {r['brier']:.4f} | {r['ece']:.4f} | {r['verdict']} |")
    return lines


def main() -> None:
    settings = Settings(source_url="", store_url="")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=20_000)
    parser.add_argument("--clinics", type=int, default=16)
    parser.add_argument("--samples", default="2500,5000,10000",
                        help="sample sizes, comma-separated (every client is always fitted)")
    parser.add_argument("--repeats", type=int, default=1,
                        help="draws per sample size, with seeds --seed, --seed + 1, ...")
    parser.add_argument("--seed", type=int, default=settings.seed,
                        help="the first draw's seed, and the fit's")
    parser.add_argument("--today", type=date.fromisoformat, default=date(2026, 6, 1))
    args = parser.parse_args()
    sizes = sorted({int(s) for s in args.samples.split(",") if s.strip()})
    if any(s < 1 or s >= args.clients for s in sizes) or args.repeats < 1:
        parser.error("each sample must be between 1 and --clients - 1; --repeats at least 1")
    settings = Settings(source_url="", store_url="", seed=args.seed)
    ev = settings.evaluation

    say(f"a network of {args.clients:,} clients in {args.clinics} clinics as of {args.today}")
    started = time.monotonic()
    data = from_frames(generate(SynthConfig(
        end=args.today, n_clients=args.clients, n_clinics=args.clinics,
        history_days=settings.training_window_days, seed=SYNTH_SEED,
        extra_sessions_per_week=4, episode_length_scale=3.0)))
    synth_seconds = time.monotonic() - started
    say(f"generated in {synth_seconds:.1f} s")

    dates = snapshot_dates(args.today, settings.horizon_days, settings.snapshot_every_days,
                           settings.training_window_days)

    def progress(done: int, total: int) -> None:
        if done % 10 == 0 or done == total:
            say(f"training rows: {done}/{total} snapshot dates")

    started = time.monotonic()
    rows = training_rows(data, dates, settings.horizon_days, args.today, progress,
                         registry=settings.instruments)
    rows_seconds = time.monotonic() - started
    say(f"{len(rows):,} training rows of {len(dates)} snapshot dates in {rows_seconds:.1f} s")
    split = time_split(rows, settings.horizon_days, ev.evaluate_share, ev.calibrate_share)
    evaluation = split.evaluate.reset_index(drop=True)
    # Only the evaluation slice and the boundaries are kept: the other slices of every
    # client's rows would double the memory the rows take.
    empty = rows.iloc[:0]
    split = replace(split, train=empty, calibrate=empty, evaluate=evaluation)
    y = evaluation["label"].to_numpy(float)
    eval_clients = evaluation["client_id"].astype(str).to_numpy()
    say(f"evaluation slice from {split.evaluate_from}: {len(evaluation):,} rows of "
        f"{len(np.unique(eval_clients)):,} clients, base rate {y.mean():.3f}")
    clients = data.clients[["client_id", "clinic_id"]]

    draws: list[tuple[str, int | None, int | None]] = [("all", None, None)]
    draws += [(f"{n} #{args.seed + r}", n, args.seed + r)
              for n in sizes for r in range(args.repeats)]
    models = []
    for label, n, seed in draws:
        models.append(train_one(label, n, seed, rows, clients, split, settings, args.today))
        gc.collect()
    say(f"bootstrapping {ev.bootstrap_samples} resamples of clients")
    results = judge(models, y, eval_clients, settings)

    print(f"# Training on a sample of clients: {args.clients:,} clients, {args.clinics} "
          f"clinics, as of {args.today}\n")
    print(f"- network generated in {synth_seconds:.1f} s; training rows of every client built "
          f"once: {len(rows):,} rows of {len(dates)} snapshot dates in {rows_seconds:.1f} s")
    print(f"- common evaluation slice (every client's snapshots from {split.evaluate_from}): "
          f"{len(evaluation):,} rows of {len(np.unique(eval_clients)):,} clients, base rate "
          f"{y.mean():.3f}; judged by each model's evaluated fit, which trained up to "
          f"{split.train_until} and calibrated up to {split.calibrate_until}")
    print(f"- 95% intervals: {ev.bootstrap_samples} client resamples, paired across models; "
          f"tolerance {ev.promotion_tolerance:g} (AUROC and AP)\n")
    print("\n".join(table(results)))
    peak = peak_rss_mib()
    print(f"\nPeak memory (VmHWM) of this benchmark: {peak:,.0f} MiB, dominated by the training "
          "rows of every client; a training with a sample reads and builds only the sample's "
          "rows, so its memory follows the sample.\n")
    samples = [r for r in results if r["model"].n is not None]
    within = [r for r in samples if r["verdict"].startswith("within")]
    smallest = min((r["model"].n for r in within), default=None)
    worst = min(samples, key=lambda r: r["delta_auroc"]["low"])
    print(f"Summary: {len(within)} of {len(samples)} samples as accurate as all "
          f"{args.clients:,} clients (ΔAUROC and ΔAP within ±{ev.promotion_tolerance:g}); "
          f"smallest such n: {'none' if smallest is None else f'{smallest:,}'}; lowest ΔAUROC "
          f"bound {worst['delta_auroc']['low']:+.3f} ({worst['model'].label}); peak "
          f"{peak:,.0f} MiB")


if __name__ == "__main__":
    main()
