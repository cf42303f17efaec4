"""What each feature family adds: the model with every feature against the model without one.

    .venv/bin/python benchmarks/families.py [--clients 2000] [--seed 7] [--today 2026-12-06]
                                            [--samples 200] [--no-trajectory]

Builds a synthetic clinic's training rows once (``retention.model.training``: 30-day
horizon, snapshots every 6 days over 540 days, as the demo trains), then fits the model
as the service does (``training.fit`` with ``refit=False``: tuned on the training slice,
calibrated on the next, the *evaluated* fit) with every feature, and once more for each
family of ``retention.features.spec`` with that family's columns blanked. A blanked
column is all missing, which LightGBM cannot split on: the family is gone while the
feature list, the monotone constraints and the trainer stay as they are. Every fit is
judged on the same held-out evaluation slice by ``retention.evaluation.heldout.evaluate``
(AUROC and average precision on all open episodes and on clients still engaged, 14
days), and the full model minus each blanked one is given with a paired 95% percentile
bootstrap interval over the same resampled clients.

The expected ORS course that not-on-track is judged against is fitted, as
``retention trajectory`` fits it for a clinic, on the clinic's ORS from before the
evaluation slice (``retention.clinic.trajectory.fit_from_clinic``) and put in the
instrument registry the features read. ``--no-trajectory`` keeps the shipped registry,
which has none: then ``ors_expected_gap`` and ``ors_not_on_track`` are always missing.

One caveat: tuning picks its tree shape on still-engaged clients, read from
``days_since_attended`` and ``attended_28d``; with their family blanked it picks on all
clients instead. The evaluation's engaged subset always uses the real values.

Progress goes to stderr; the summary table (markdown) to stdout.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from retention.clinic.data import ClinicData, from_frames
from retention.clinic.registry import Registry, default_registry
from retention.clinic.synth import SynthConfig, generate
from retention.clinic.trajectory import ORS, fit_from_clinic
from retention.evaluation.heldout import Scorer, evaluate
from retention.features.spec import FAMILIES, FEATURES
from retention.model.training import fit, snapshot_dates, time_split, training_rows

HORIZON_DAYS = 30
EVERY_DAYS = 6
WINDOW_DAYS = 540
ENGAGED_WITHIN_DAYS = 14
CAPACITY_K = 10
FIT_SEED = 42
SUBSETS = ("all", "engaged")
EVALUATE_SHARE = 0.2  # time_split's default: the latest fifth of the snapshot dates


def with_trajectory(data: ClinicData, before: date) -> tuple[Registry, str]:
    """The shipped registry with the expected ORS course fitted on ratings before ``before``."""
    registry = default_registry()
    fitted = fit_from_clinic(data, before)
    ors = replace(registry[ORS], trajectory=fitted.to_mapping())
    return replace(registry, instruments={**registry.instruments, ORS: ors}), fitted.source


def family_columns() -> dict[str, list[str]]:
    """Each family of the spec with its feature columns, in spec order; empty ones left out."""
    columns = {family: [f.name for f in FEATURES if f.family == family] for family in FAMILIES}
    # A feature whose family is not listed still gets a row of its own.
    for f in FEATURES:
        columns.setdefault(f.family, [])
        if f.name not in columns[f.family]:
            columns[f.family].append(f.name)
    return {family: names for family, names in columns.items() if names}


def blanked(rows: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    """``rows`` with ``columns`` all missing (object columns as None, numbers as NaN)."""
    out = rows.copy()
    for name in columns:
        out[name] = None if out[name].dtype == object else np.nan
    return out


def scorer(rows: pd.DataFrame, evaluation: pd.DataFrame, name: str, kind: str,
           today: date) -> Scorer:
    """Fit on ``rows`` as the service does; score the evaluation slice's rows (same order)."""
    model = fit(rows, horizon_days=HORIZON_DAYS, seed=FIT_SEED, trained_as_of=today,
                refit=False)
    raw = model.raw_score(evaluation)
    return Scorer(name, name, kind, raw, model.calibrator.predict(raw))


def progress(message: str, started: float) -> None:
    print(f"[{time.monotonic() - started:7.1f} s] {message}", file=sys.stderr, flush=True)


def interval(value: dict[str, float], digits: int = 3) -> str:
    return (f"{value['value']:+.{digits}f} ({value['low']:+.{digits}f} to "
            f"{value['high']:+.{digits}f})")


def table(result: dict[str, Any], families: dict[str, list[str]]) -> str:
    """The summary: the full model, then each family's model without it and the difference."""
    lines = []
    for subset in SUBSETS:
        part = result["subsets"][subset]
        metrics, differences = part["metrics"], part["differences"]
        full = metrics["model"]
        lines += [
            f"\n{subset} open episodes: {part['n']:,} rows of {part['clients']:,} clients, "
            f"{part['positives']:,} disengaged ({part['base_rate']:.1%})",
            "",
            "| model | features | AUROC | AP | full minus this: AUROC (95% CI) "
            "| full minus this: AP (95% CI) |",
            "|---|---|---|---|---|---|",
            f"| all features | {sum(len(c) for c in families.values())} | "
            f"{full['auroc']['value']:.3f} | {full['average_precision']['value']:.3f} | - | - |",
        ]
        for family, columns in families.items():
            name = f"without {family}"
            m, d = metrics[name], differences[name]
            lines.append(
                f"| without {family} | {len(columns)} | {m['auroc']['value']:.3f} | "
                f"{m['average_precision']['value']:.3f} | {interval(d['auroc'])} | "
                f"{interval(d['average_precision'])} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=7, help="the synthetic clinic's seed")
    parser.add_argument("--today", type=date.fromisoformat, default=date(2026, 12, 6))
    parser.add_argument("--samples", type=int, default=200, help="bootstrap resamples")
    parser.add_argument("--no-trajectory", action="store_true",
                        help="no expected ORS course (the shipped registry)")
    args = parser.parse_args()
    started = time.monotonic()
    config = SynthConfig(end=args.today, n_clients=args.clients, n_clinics=3, seed=args.seed)
    data = from_frames(generate(config))
    progress(f"synthetic clinic: {args.clients:,} clients, seed {args.seed}, "
             f"as of {args.today}", started)
    dates = snapshot_dates(args.today, HORIZON_DAYS, EVERY_DAYS, WINDOW_DAYS)
    evaluate_from = dates[-max(1, round(len(dates) * EVALUATE_SHARE))]
    registry, course = default_registry(), "none (the shipped registry)"
    if not args.no_trajectory:
        registry, course = with_trajectory(data, evaluate_from)
    progress(f"expected ORS course: {course}", started)
    rows = training_rows(
        data, dates, HORIZON_DAYS, args.today,
        progress=lambda i, n: progress(f"snapshot features {i}/{n}", started)
        if i % 15 == 0 or i == n else None, registry=registry)
    split = time_split(rows, HORIZON_DAYS, evaluate_share=EVALUATE_SHARE)
    # The course was fitted on nothing the evaluation judges.
    assert split.evaluate_from == evaluate_from, (split.evaluate_from, evaluate_from)
    evaluation = split.evaluate
    families = family_columns()
    progress(f"{len(rows):,} rows; evaluation slice {len(evaluation):,}; "
             f"{len(families)} families", started)
    scorers = [scorer(rows, evaluation, "model", "model", args.today)]
    progress("fitted with all features", started)
    for i, (family, columns) in enumerate(families.items(), start=1):
        scorers.append(scorer(blanked(rows, columns), blanked(evaluation, columns),
                              f"without {family}", "ablation", args.today))
        progress(f"fitted without {family} ({len(columns)} columns) [{i}/{len(families)}]",
                 started)
    result = evaluate(evaluation, scorers, engaged_within_days=ENGAGED_WITHIN_DAYS,
                      capacity_k=CAPACITY_K, samples=args.samples, seed=FIT_SEED)
    progress("evaluated", started)
    span = result["snapshot_dates"]
    print(f"What each family adds: synthetic clinic of {args.clients:,} clients (seed "
          f"{args.seed}) as of {args.today}; evaluation slice {span['first']} to "
          f"{span['last']} ({span['count']} snapshot dates); paired client bootstrap, "
          f"{args.samples} resamples. Expected ORS course: {course}.")
    print(table(result, families))


if __name__ == "__main__":
    main()
