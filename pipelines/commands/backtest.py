"""``retention backtest``: how the model would have done at this clinic, origin by origin."""

from __future__ import annotations

from datetime import date, datetime
from pathlib import Path
from typing import Any

import click
from sqlalchemy import func, select

from retention.clinic.data import ClinicData
from retention.db.engines import store_engine
from retention.evaluation.backtest import (
    Backtest,
    BacktestError,
    EmptyPeriod,
    LabelWindowOpen,
    NoUsableOrigin,
    OriginResult,
    origin_dates,
    run_backtest,
)
from retention.evaluation.backtest_report import write_backtest_report
from retention.evaluation.baselines import LOGISTIC
from retention.evaluation.gate import best_rule, verdict
from retention.pipelines.commands.common import Context, as_of_option, progress, say
from retention.settings import Settings
from retention.store import schema
from retention.store.clinic_copy import read_clinic_copy
from retention.store.tables import runs

DAY = click.DateTime(formats=["%Y-%m-%d"])

# What to do next, by what stopped the backtest.
ADVICE = {
    LabelWindowOpen: "use an earlier --to (or leave it out: the latest origin whose outcome "
                     "is known), or a later --as-of once the store holds those days",
    EmptyPeriod: "use an earlier --from",
    NoUsableOrigin: "use a later --from (each origin needs enough labelled history before "
                    "it), or check that the store holds the clinic's history "
                    "(`retention etl --full`)",
}


@click.command()
@as_of_option
@click.option("--from", "start", type=DAY, default=None,
              help="Earliest origin (YYYY-MM-DD). Default: six months before --to.")
@click.option("--to", "end", type=DAY, default=None,
              help="Latest origin (YYYY-MM-DD); its outcome window must end by the as-of "
                   "date. Default: a horizon before the as-of date.")
@click.option("--every-weeks", type=click.IntRange(min=1), default=4, show_default=True,
              help="Weeks between origins, counted back from --to.")
@click.option("--out", "out_dir", type=click.Path(path_type=Path), default=None,
              help="Directory for backtest.html and backtest.json "
                   "(default: reports/backtest-<as-of>).")
@click.pass_obj
def backtest(obj: Context, as_of: datetime | None, start: datetime | None,
             end: datetime | None, every_weeks: int, out_dir: Path | None) -> None:
    """Retrain at origins every few weeks and score the episodes open at each; pool and judge.

    At each origin the model is trained on what was known then (snapshots whose outcome
    window ended by the origin) and scores the episodes open at it, beside the clinic's
    rules and a logistic regression on the same rows. Pooled over the origins: AUROC,
    average precision, calibration and precision at capacity with client-bootstrap
    intervals. Nothing is saved to the registry.
    """
    settings = obj.settings()
    day = obj.day(as_of)
    try:
        origins = origin_dates(day, settings.horizon_days, every_weeks=every_weeks,
                               start=_day(start), end=_day(end))
    except BacktestError as exc:
        raise _refusal(exc) from exc
    say(f"backtest: {len(origins)} origin(s) every {every_weeks} weeks from {origins[0]} to "
        f"{origins[-1]}, as of {day}; reading the store ...")
    data = _read_store(settings, day)
    say("backtest: building snapshots once for every origin ...")
    try:
        result = run_backtest(data, settings, origins, day, every_weeks=every_weeks,
                              on_origin=_said, progress=progress("snapshots"))
    except BacktestError as exc:
        raise _refusal(exc) from exc
    except ValueError as exc:
        raise click.ClickException(str(exc)) from exc
    record = result.to_dict()
    paths = write_backtest_report(record, out_dir or Path("reports") / f"backtest-{day}")
    for line in summary_lines(result, record):
        say(line)
    say(f"backtest: wrote {', '.join(str(p) for p in paths.values())}")


def _read_store(settings: Settings, as_of: date) -> ClinicData:
    """The store's whole copy of the clinic data, if it reaches ``as_of``.

    Outcomes are read up to the as-of date: a copy last brought up to date before it
    would show clients who came, in days it does not hold, as disengaged.
    """
    engine = store_engine(settings.store_url)
    try:
        with engine.connect() as conn:
            if schema.current_revision(conn) is None:
                raise click.ClickException("the store is empty (no schema): run `retention "
                                           "etl` first")
            copied_until = conn.execute(
                select(func.max(runs.c.as_of))
                .where(runs.c.kind == "etl", runs.c.status == "succeeded")
            ).scalar()
            if copied_until is not None and copied_until < as_of:
                raise click.ClickException(
                    f"the store's copy was last updated by an ETL run as of {copied_until}, "
                    f"before the as-of date {as_of}: outcomes after it are not in the copy; "
                    f"use --as-of {copied_until} (or earlier), or run `retention etl` first")
            data = read_clinic_copy(conn)
    finally:
        engine.dispose()
    if data.episodes.empty:
        raise click.ClickException("the store holds no clinic data: run `retention etl` first")
    return data


def _refusal(exc: BacktestError) -> click.ClickException:
    advice = next((text for kind, text in ADVICE.items() if isinstance(exc, kind)), "")
    return click.ClickException(f"{exc}; {advice}" if advice else str(exc))


def _said(done: int, total: int, origin: OriginResult) -> None:
    """One line per origin as it finishes."""
    head = f"backtest [{done}/{total}] origin {origin.origin}:"
    if origin.scored:
        say(f"{head} trained on {origin.train_rows:,} rows, scored {origin.test_rows:,} open "
            f"episodes ({origin.positives:,} disengaged)")
    else:
        say(f"{head} skipped, {origin.reason}")


def summary_lines(result: Backtest, record: dict[str, Any]) -> list[str]:
    """The pooled model, the best clinic rule and the regression, with paired intervals and
    the gate's verdicts, on the engaged and on all rows."""
    ev = record["evaluation"]
    scored = result.scored
    lines = [f"backtest: pooled {len(scored)} of {len(result.origins)} origins "
             f"({scored[0].origin} to {scored[-1].origin}): {ev['rows']:,} open episodes of "
             f"{ev['clients']:,} clients; 95% intervals from {ev['bootstrap']['samples']} "
             "resamples of clients"]
    for subset, title in (("engaged", "still engaged (attended within "
                                      f"{ev['engaged_within_days']} days)"),
                          ("all", "all open episodes")):
        data = ev["subsets"][subset]
        metrics = data["metrics"]
        lines.append(f"  {title}: {data['n']:,} rows, {data['positives']:,} disengaged")
        lines.append(f"    model: {_auroc_ap(metrics['model'])}")
        # As the gate compares: the best of the clinic's own rules, and the regression.
        for other in (best_rule(ev, subset), LOGISTIC):
            if other is None or other not in data["differences"]:
                continue
            diff = data["differences"][other]
            lines.append(f"    {ev['scorers'][other]['label']}: {_auroc_ap(metrics[other])}")
            lines.append(f"      model minus it: {_auroc_ap(diff, True)}; AUROC "
                         f"{verdict(diff['auroc'])}")
    at_k = ev["subsets"]["engaged"]["metrics"]["model"]["precision_at_k"]
    lines.append(f"  model precision at capacity (top {ev['capacity_k']} per clinic per "
                 f"origin, still engaged): {_ci(at_k)}")
    lines.append(f"  calibration (model, pooled): {_calibration(ev['calibration'])}")
    return lines


def _auroc_ap(metrics: dict[str, Any], signed: bool = False) -> str:
    return (f"AUROC {_ci(metrics['auroc'], signed)}, "
            f"AP {_ci(metrics['average_precision'], signed)}")


def _ci(ci: dict[str, Any], signed: bool = False) -> str:
    fmt = "{:+.3f}" if signed else "{:.3f}"
    if ci["value"] is None:
        return "n/a"
    if ci["low"] is None:
        return fmt.format(ci["value"])
    return (f"{fmt.format(ci['value'])} ({fmt.format(ci['low'])} to "
            f"{fmt.format(ci['high'])})")


def _calibration(report: dict[str, Any]) -> str:
    bound = report["bound"]
    text = f"ECE {_ci(report['ece'])} (bound {bound['max_ece']})"
    gap = bound["worst_decile_gap"]
    if gap is not None:
        text += f", worst decile off by {_ci(gap, signed=True)} (bound {bound['max_decile_gap']})"
    verdict = ("within the bound" if bound["met"] else "clearly beyond the bound"
               if bound["broken"] else "over the bound, within chance at this size")
    return f"{text}: {verdict}"


def _day(value: datetime | None) -> date | None:
    return value.date() if value is not None else None
