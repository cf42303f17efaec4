"""The scheduler process: APScheduler running the nightly job on a cron from config.

It runs in its own process (``retention scheduler``), never inside web
workers. Jobs coalesce, never overlap, and still run if the process was
briefly down at the scheduled time (misfire grace). A scheduler started after
downtime runs the missed slot once, if it is still within the grace time. Two
scheduler processes started by mistake still give one run per slot: the job
takes a lock on the store and skips a date whose list is published
(``pipelines.nightly.run_slot``).
"""

from __future__ import annotations

import logging
from datetime import date, datetime, timedelta
from pathlib import Path

from apscheduler.schedulers.blocking import BlockingScheduler
from apscheduler.triggers.cron import CronTrigger

from pipelines.nightly import run_slot
from pipelines.retrain import JOB_ID as RETRAIN_ID
from pipelines.retrain import retrain_job
from retention.config import Settings, load_settings
from retention.model_settings import model_settings

log = logging.getLogger(__name__)

JOB_ID = "nightly"


def nightly_job(config_path: str | None = None) -> None:
    """Module-level job function: settings are read fresh at each run."""
    settings = load_settings(Path(config_path) if config_path else None)
    trigger = CronTrigger.from_crontab(settings.schedule_cron, timezone=settings.schedule_timezone)
    slot = latest_slot(trigger, datetime.now(trigger.timezone))
    as_of = slot.date() if slot is not None else date.today()
    result = run_slot(settings, as_of)
    if result.skipped:
        log.info("nightly run for %s skipped: %s", as_of, result.skipped)
        return
    assert result.etl is not None and result.score is not None
    log.info(
        "nightly run for %s: etl run %s, score run %s, %d episodes scored",
        as_of, result.etl.run_id, result.score.run_id, result.score.scored,
    )


def latest_slot(trigger: CronTrigger, now: datetime) -> datetime | None:
    """The trigger's most recent fire time at or before ``now`` (within 8 days)."""
    fire = trigger.get_next_fire_time(None, now - timedelta(days=8))
    latest = None
    while fire is not None and fire <= now:
        latest = fire
        fire = trigger.get_next_fire_time(fire, fire + timedelta(seconds=1))
    return latest


def catch_up_due(settings: Settings, trigger: CronTrigger, now: datetime) -> bool:
    """Whether the last slot was missed (no list published for it) and is still in grace."""
    slot = latest_slot(trigger, now)
    if slot is None or (now - slot).total_seconds() > settings.misfire_grace_seconds:
        return False
    from pipelines.nightly import _published
    from retention.db import store_engine

    engine = store_engine(settings.store_url)
    try:
        return not _published(engine, slot.date())
    except Exception:  # a store that cannot be read now: the catch-up run will say why
        return True
    finally:
        engine.dispose()


def build_scheduler(
    settings: Settings, config_path: str | None = None, run_now: bool = False
) -> BlockingScheduler:
    """A blocking scheduler with the nightly job; ``run_now`` also runs it once at start."""
    scheduler = BlockingScheduler(timezone=settings.schedule_timezone)
    trigger = CronTrigger.from_crontab(settings.schedule_cron, timezone=settings.schedule_timezone)
    # The first run time is the trigger's own unless a run now was asked for, or the
    # last slot was missed while no scheduler ran: then it is caught up once, now.
    now = datetime.now(trigger.timezone)
    first = {"next_run_time": now} if run_now or catch_up_due(settings, trigger, now) else {}
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
