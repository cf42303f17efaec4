"""Run the whole pipeline on real CTN-0027 data and print the evaluation with baselines.

    .venv/bin/python benchmarks/ctn0094_run.py [--data DIR] [--work DIR]

Writes the clinic database, the store, the model version and its report under
``--work`` (default: a fresh temporary directory; the data never enters the
repository) and prints the held-out metrics with 95% client-bootstrap intervals.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

from sqlalchemy import create_engine

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.ctn0094_loader import ENROLMENT_DAYS, FIRST_ADMISSION, load_frames
from retention.clinic.synth import write
from retention.db.engines import source_engine, store_engine
from retention.evaluation.report import write_report
from retention.model.signing import model_key, resolve_key
from retention.pipelines.commands.model import calibration_line
from retention.pipelines.etl import run_etl
from retention.pipelines.train import run_training
from retention.settings import settings_from_mapping

DATA = Path("/work/shared/data/ctn0094-trial27")
# Train as of 60 days after the last admission: enrolment is still running in the
# evaluation window, so it holds early-treatment snapshots like a live clinic's.
AS_OF = FIRST_ADMISSION + timedelta(days=ENROLMENT_DAYS + 60)
METRICS = ("auroc", "average_precision", "brier", "ece", "precision_at_k", "recall_at_k")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--work", type=Path, default=None)
    parser.add_argument("--capacity-k", type=int, default=20)
    parser.add_argument("--bootstrap", type=int, default=200)
    parser.add_argument("--engaged-days", type=int, default=14,
                        help="'Still engaged' = attended within this many days (default 14).")
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="ctn0094-"))
    work.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()

    def say(msg: str) -> None:
        print(f"[{time.monotonic() - started:6.1f}s] {msg}", file=sys.stderr, flush=True)

    say(f"loading {args.data}")
    frames = load_frames(args.data)
    say("mapped: " + ", ".join(f"{k} {len(v):,}" for k, v in frames.items()))
    source_url = f"sqlite:///{work / 'clinic.db'}"
    (work / "clinic.db").unlink(missing_ok=True)
    (work / "store.db").unlink(missing_ok=True)
    engine = create_engine(source_url)
    with engine.begin() as conn:
        write(conn, frames)
    engine.dispose()
    # A signing key of this run's own, not the account's default one in ~/.config.
    key_file = work / "model-signing.key"
    resolve_key(default_file=key_file, create=True)
    settings = settings_from_mapping({
        "source_url": source_url,
        "store_url": f"sqlite:///{work / 'store.db'}",
        "models_dir": str(work / "models"),
        "model_key_file": str(key_file),
        "training_window_days": ENROLMENT_DAYS + 60,
        "engaged_within_days": args.engaged_days,
        "evaluation": {"capacity_k": args.capacity_k, "bootstrap_samples": args.bootstrap},
    })
    source, store_db = source_engine(settings.source_url), store_engine(settings.store_url)
    say(f"ETL as of {AS_OF}")
    run_etl(source, store_db, AS_OF)
    say(f"training (snapshots every {settings.snapshot_every_days} days)")
    result = run_training(settings, store_db, AS_OF,
                          progress=lambda d, t: d % 20 == 0 and say(f"  snapshots {d}/{t}"))
    paths = write_report(settings.models_dir, work / "reports", result.version,
                         key=model_key(settings))
    ev = result.evaluation
    print(f"CTN-0027 as of {AS_OF}: version {result.version}, {result.rows:,} snapshot rows; "
          f"evaluation {ev['snapshot_dates']['first']}..{ev['snapshot_dates']['last']}, "
          f"{ev['rows']:,} rows of {ev['clients']:,} clients; top {ev['capacity_k']} per date")
    for subset in ("all", "engaged"):
        data = ev["subsets"][subset]
        print(f"\n{subset}: n {data['n']:,}, disengaged {data['positives']:,} "
              f"({data['base_rate']:.1%}), clients {data['clients']:,}")
        print(f"  {'scorer':<38}" + "".join(f"{m:>22}" for m in METRICS))
        for name, values in data["metrics"].items():
            cells = "".join(f"{_ci(values[m]):>22}" for m in METRICS)
            print(f"  {ev['scorers'][name]['label']:<38}{cells}")
    print("\n" + calibration_line(result))
    print("gate:", "passed" if result.gate.passed else "refused: "
          + "; ".join(result.gate.refusals))
    print("fairness flags:", ev["fairness"]["all"]["flags"] or "none")
    print("top features:", ", ".join(f"{f['feature']} {f['gain_share']:.2f}"
                                     for f in ev["top_features"][:6]))
    source.dispose()
    store_db.dispose()
    say(f"done: report in {paths['report.html']}")


def _ci(ci: dict) -> str:
    if ci["value"] is None:
        return "-"
    if ci["low"] is None:
        return f"{ci['value']:.3f}"
    return f"{ci['value']:.3f} ({ci['low']:.3f}-{ci['high']:.3f})"


if __name__ == "__main__":
    main()
