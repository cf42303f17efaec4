"""The promotion gate on the demo clinic across consecutive days: does the demo pass on any date?

    .venv/bin/python benchmarks/demo_gate.py [--start 2026-11-29] [--days 14] [--clients 2000]

For each day, the demo's synthetic clinic (seed 7) is generated with that day as today,
trained as `retention train` trains it (tuned, evaluated, refit) in memory, and judged
by the gate. Prints, per day, the engaged AUROC of the model, the best clinic rule and
the logistic regression with the paired differences, the interval gate's verdict and
what the old point-estimate gate (beat the best baseline, regression included) would
have said. Recorded in docs/model.md.
"""

from __future__ import annotations

import argparse
import sys
import time
from datetime import date, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from retention.clinic.data import from_frames
from retention.clinic.synth import SynthConfig, generate
from retention.evaluation.candidate import assess
from retention.evaluation.gate import best_rule, difference_text, gate
from retention.evaluation.heldout import best_baseline
from retention.model.training import (
    fit_as_configured,
    snapshot_dates,
    time_split,
    training_rows,
)
from retention.settings import load_settings

CONFIG = Path(__file__).resolve().parents[1] / "config" / "retention.toml"


def judge(day: date, clients: int) -> dict[str, object]:
    settings = load_settings(CONFIG)
    ms = settings.evaluation
    data = from_frames(generate(SynthConfig(end=day, n_clients=clients, n_clinics=3, seed=7)))
    dates = snapshot_dates(day, settings.horizon_days, settings.snapshot_every_days,
                           settings.training_window_days)
    rows = training_rows(data, dates, settings.horizon_days, day)
    model = fit_as_configured(rows, settings, day)
    split = time_split(rows, settings.horizon_days, ms.evaluate_share, ms.calibrate_share)
    evaluation = assess(model, split, data.clients, ms,
                        engaged_within_days=settings.engaged_within_days, seed=settings.seed)
    decision = gate(model.version, evaluation, ms.promotion_tolerance)
    engaged = evaluation["subsets"]["engaged"]
    rule = best_rule(evaluation)
    assert rule is not None
    _, best = best_baseline(evaluation)
    model_auroc = engaged["metrics"]["model"]["auroc"]["value"]
    return {
        "day": day, "model": model_auroc, "rule": rule,
        "rule_auroc": engaged["metrics"][rule]["auroc"]["value"],
        "vs_rule": difference_text(engaged["differences"][rule]["auroc"]),
        "lr_auroc": engaged["metrics"]["logistic_regression"]["auroc"]["value"],
        "vs_lr": difference_text(engaged["differences"]["logistic_regression"]["auroc"]),
        "passed": decision.passed, "old_gate": model_auroc > best,
        "shape": model.metadata["tuning"]["shape"],
        "rounds": model.metadata["num_boost_round"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--start", type=date.fromisoformat, default=date(2026, 11, 29))
    parser.add_argument("--days", type=int, default=14)
    parser.add_argument("--clients", type=int, default=2000)
    args = parser.parse_args()
    print("| today | weekday | model | best rule | vs rule | regression | vs regression "
          "| gate | old gate | shape, rounds |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    started = time.monotonic()
    passed = old = 0
    for i in range(args.days):
        day = args.start + timedelta(days=i)
        r = judge(day, args.clients)
        passed += bool(r["passed"])
        old += bool(r["old_gate"])
        shape = r["shape"]
        assert isinstance(shape, dict)
        print(f"| {day} | {day:%a} | {r['model']:.3f} | {r['rule']} {r['rule_auroc']:.3f} | "
              f"{r['vs_rule']} | {r['lr_auroc']:.3f} | {r['vs_lr']} | "
              f"{'passed' if r['passed'] else 'refused'} | "
              f"{'passed' if r['old_gate'] else 'refused'} | "
              f"{shape['num_leaves']}/{shape['min_data_in_leaf']}, {r['rounds']} |", flush=True)
        print(f"  ({i + 1}/{args.days} days, {time.monotonic() - started:.0f} s)",
              file=sys.stderr, flush=True)
    print(f"\n{args.days} days of {args.clients:,} clients: the interval gate passed {passed}, "
          f"the old point-estimate gate {old}; {time.monotonic() - started:.0f} s")


if __name__ == "__main__":
    main()
