"""The scheduler process: APScheduler running the nightly job on a cron from config.

It runs in its own process (``retention scheduler``), never inside web
workers. Jobs coalesce, never overlap, and still run if the process was
briefly down at the scheduled time (misfire grace).
"""

from __future__ import annotations

import logging
from datetime import date, datetime
from pathlib import Path

from apscheduler.schedulers.blocking import BlockingScheduler
from apscheduler.triggers.cron import CronTrigger

from pipelines.nightly import run_nightly
from pipelines.retrain import JOB_ID as RETRAIN_ID
from pipelines.retrain import retrain_job
from retention.config import Settings, load_settings
from retention.model_settings import model_settings

log = logging.getLogger(__name__)

JOB_ID = "nightly"


def nightly_job(config_path: str | None = None) -> None:
    """Module-level job function: settings are read fresh at each run."""
    settings = load_settings(Path(config_path) if config_path else None)
    as_of = date.today()
    result = run_nightly(settings, as_of)
    log.info(
        "nightly run for %s: etl run %s, score run %s, %d episodes scored",
        as_of, result.etl.run_id, result.score.run_id, result.score.scored,
    )


def build_scheduler(
    settings: Settings, config_path: str | None = None, run_now: bool = False
) -> BlockingScheduler:
    """A blocking scheduler with the nightly job; ``run_now`` also runs it once at start."""
    scheduler = BlockingScheduler(timezone=settings.schedule_timezone)
    trigger = CronTrigger.from_crontab(settings.schedule_cron, timezone=settings.schedule_timezone)
    # The first run time is the trigger's own unless a run now was asked for.
    first = {"next_run_time": datetime.now(trigger.timezone)} if run_now else {}
    scheduler.add_job(
        nightly_job, trigger, args=[config_path], id=JOB_ID, name="nightly ETL and scoring",
        replace_existing=True,
        coalesce=True,  # after downtime, missed runs collapse into one catch-up run
        max_instances=1,  # a run still going when the next is due is never doubled
        misfire_grace_time=settings.misfire_grace_seconds,
        **first,
    )
    # Weekly: retrain, evaluate and promote only through the gate (pipelines/retrain.py).
    scheduler.add_job(
        retrain_job,
        CronTrigger.from_crontab(model_settings(settings).retrain_cron,
                                 timezone=settings.schedule_timezone),
        args=[config_path], id=RETRAIN_ID, name="weekly retrain behind the promotion gate",
        replace_existing=True, coalesce=True, max_instances=1,
        misfire_grace_time=settings.misfire_grace_seconds,
    )
    return scheduler
