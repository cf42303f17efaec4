"""What tuning and the refit for serving cost, beside the single fit that came before them.

    .venv/bin/python benchmarks/training_cost.py [--clients 2000] [--today 2026-12-06]

Builds the demo clinic's training rows once, then times in one run (so the ratios hold
on a noisy machine): the old single fit (300 rounds, default shape, on the training
slice), tuning (the grid on two rolling-origin blocks), the evaluated fit with the
chosen settings, and the refit for serving with its four cross-fitted folds; then the
whole ``fit``. Recorded in docs/performance.md.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from datetime import date
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from retention.clinic.data import from_frames
from retention.clinic.synth import SynthConfig, generate
from retention.model.booster import to_matrix, train_booster
from retention.model.training import (
    engaged_rows,
    fit,
    refit_for_serving,
    snapshot_dates,
    time_split,
    training_rows,
)
from retention.model.tuning import tune


def timed(what: str, action: Callable[[], Any]) -> tuple[float, Any]:
    started = time.monotonic()
    result = action()
    seconds = time.monotonic() - started
    print(f"  {what:<46} {seconds:6.1f} s", flush=True)
    return seconds, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=2000)
    parser.add_argument("--today", type=date.fromisoformat, default=date(2026, 12, 6))
    args = parser.parse_args()
    data = from_frames(generate(SynthConfig(end=args.today, n_clients=args.clients,
                                            n_clinics=3, seed=7)))
    print(f"demo clinic of {args.clients:,} clients as of {args.today}")
    _, rows = timed("training rows (snapshot features)", lambda: training_rows(
        data, snapshot_dates(args.today, 30, 6, 540), 30, args.today))
    split = time_split(rows, 30)
    y = split.train["label"].to_numpy()
    old, _ = timed("old single fit (300 rounds, default shape)",
                   lambda: train_booster(to_matrix(split.train), y, 42))
    tuning_s, tuning = timed("tuning (4 shapes x 2 blocks, early stopping)", lambda: tune(
        split.train, horizon_days=30, seed=42, engaged=engaged_rows(split.train, 14)))
    evaluated, _ = timed(f"evaluated fit ({tuning.num_boost_round} rounds)",
                         lambda: train_booster(to_matrix(split.train), y, 42, tuning.shape,
                                               tuning.num_boost_round))
    refit, _ = timed("refit for serving + 4 cross-fitted folds",
                     lambda: refit_for_serving(rows, split, tuning, 42, "beta"))
    whole, _ = timed("the whole fit (with calibration choice)",
                     lambda: fit(rows, horizon_days=30, seed=42, trained_as_of=args.today))
    print(f"{len(rows):,} rows; boosting now costs {(tuning_s + evaluated + refit) / old:.1f}x "
          f"the old single fit; the whole fit {whole:.1f} s")


if __name__ == "__main__":
    main()
