"""The scheduler process: APScheduler running the nightly job on a cron from config.

It runs in its own process (``retention scheduler``), never inside web
workers. Jobs coalesce, never overlap, and still run if the process was
briefly down at the scheduled time (misfire grace). A scheduler started after
downtime runs the missed slot once, if it is still within the grace time. Two
scheduler processes started by mistake still give one run per slot: the job
takes a lock on the store and skips a date whose list is published
(``retention.pipelines.nightly.run_slot``). The weekly retrain takes a lock of its own
the same way (``retention.pipelines.retrain.run_retrain``), and its ETL waits for the
nightly job's on the store's ETL lock.
"""

from __future__ import annotations

import logging
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

from apscheduler.schedulers.blocking import BlockingScheduler
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.date import DateTrigger

from retention.clock import Clock, SystemClock
from retention.db.engines import store_engine
from retention.pipelines.nightly import is_published, run_slot
from retention.pipelines.retrain import JOB_ID as RETRAIN_ID
from retention.pipelines.retrain import retrain_job
from retention.settings import Settings, load_settings

log = logging.getLogger(__name__)

JOB_ID = "nightly"
RUN_NOW_ID = "nightly-now"


def nightly_job(config_path: str | None = None, as_of: str | None = None) -> None:
    """Module-level job function: settings are read fresh at each run.

    The run is for ``as_of`` (YYYY-MM-DD) if given, else for the date of the
    schedule's latest slot.
    """
    settings = load_settings(Path(config_path) if config_path else None)
    if as_of is not None:
        day = date.fromisoformat(as_of)
    else:
        trigger = CronTrigger.from_crontab(settings.schedule_cron,
                                           timezone=settings.schedule_timezone)
        now = datetime.now(trigger.timezone)
        slot = latest_slot(trigger, now)
        day = slot.date() if slot is not None else now.date()
    result = run_slot(settings, day)
    if result.skipped:
        log.info("nightly run for %s skipped: %s", day, result.skipped)
        return
    assert result.etl is not None and result.score is not None
    log.info(
        "nightly run for %s: etl run %s, score run %s, %d episodes scored",
        day, result.etl.run_id, result.score.run_id, result.score.scored,
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
    engine = store_engine(settings.store_url)
    try:
        return not is_published(engine, slot.date())
    except Exception:  # a store that cannot be read now: the catch-up run will say why
        return True
    finally:
        engine.dispose()


def build_scheduler(
    settings: Settings, config_path: str | None = None, run_now: bool = False,
    clock: Clock | None = None, run_now_as_of: date | None = None,
) -> BlockingScheduler:
    """A blocking scheduler with the nightly and weekly jobs.

    ``run_now`` also runs the nightly job once at start (for ``run_now_as_of``, or
    the latest slot's date); a slot missed while no scheduler ran is caught up once.
    """
    clock = clock or SystemClock()
    scheduler = BlockingScheduler(timezone=settings.schedule_timezone)
    trigger = CronTrigger.from_crontab(settings.schedule_cron, timezone=settings.schedule_timezone)
    now = clock.now().replace(tzinfo=UTC).astimezone(trigger.timezone)
    first = {"next_run_time": now} if not run_now and catch_up_due(settings, trigger, now) else {}
    scheduler.add_job(
        nightly_job, trigger, args=[config_path], id=JOB_ID, name="nightly ETL and scoring",
        replace_existing=True,
        coalesce=True,  # after downtime, missed runs collapse into one catch-up run
        max_instances=1,  # a run still going when the next is due is never doubled
        misfire_grace_time=settings.misfire_grace_seconds,
        **first,
    )
    if run_now:
        day = run_now_as_of.isoformat() if run_now_as_of else None
        scheduler.add_job(
            nightly_job, DateTrigger(run_date=now), args=[config_path, day], id=RUN_NOW_ID,
            name="nightly ETL and scoring, once now", replace_existing=True,
            misfire_grace_time=settings.misfire_grace_seconds,
        )
    # Weekly: retrain, evaluate and promote only through the gate (pipelines/retrain.py).
    scheduler.add_job(
        retrain_job,
        CronTrigger.from_crontab(settings.evaluation.retrain_cron,
                                 timezone=settings.schedule_timezone),
        args=[config_path], id=RETRAIN_ID, name="weekly retrain behind the promotion gate",
        replace_existing=True, coalesce=True, max_instances=1,
        misfire_grace_time=settings.misfire_grace_seconds,
    )
    return scheduler
