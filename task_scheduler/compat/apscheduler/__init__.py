"""APScheduler-style calls on task_scheduler: ``add_job``, triggers, job stores,
listeners and named scheduler instances. Change the imports, keep the calls::

    from task_scheduler.compat.apscheduler import BackgroundScheduler, CronTrigger

    scheduler = BackgroundScheduler(jobstores={"default": "sqlite:///jobs.db"}, timezone="UTC")
    scheduler.add_job(daily_report, "cron", hour=2, minute=30, id="daily_report")
    scheduler.add_job(heartbeat, "interval", seconds=30, id="heartbeat")
    scheduler.start()

Each `BackgroundScheduler` drives one `TaskScheduler` (``.task_scheduler``); a job is
a `FunctionTask` on a rule. What differs from APScheduler 3, on purpose:

- **Job stores.** ``jobstores={"default": ...}`` takes a URL in SQLAlchemy's form
  (``"sqlite:///jobs.db"`` relative, ``"sqlite:////var/lib/jobs.db"`` absolute,
  ``"memory://"``), `SQLAlchemyJobStore(url=...)` or `MemoryJobStore()`; one store.
  With a persistent store (SQLite, or PostgreSQL once that store exists) a job whose
  function is importable (``module:function``, not a lambda or closure) and whose
  args are JSON is stored **as data** (never pickled) and restored by every later
  process; ``replace_existing=True`` at each start updates it. A job that cannot be
  stored is refused with the reason (APScheduler raises ValueError too). Its state,
  history and counters live in that store (``task-scheduler list`` shows them).
- **Misfire grace** counts only how late the loop took the occurrence up (the
  process was down, suspended, or the clock jumped); waiting for a free worker is
  queueing and never drops a run. APScheduler 3 counts worker waits against
  ``misfire_grace_time`` (default 1 s) and silently loses work under load. Without
  ``misfire_grace_time`` a job takes the scheduler's (``scheduler.misfire_grace_time``,
  60 s).
- **day_of_week.** In ``CronTrigger(day_of_week=...)`` and ``add_job(..., "cron",
  day_of_week=...)`` numbers count as APScheduler counts them, 0 = Monday ... 6 =
  Sunday, and are translated, so a migrated job fires on the same days.
  ``CronTrigger.from_crontab`` reads crontab's numbering (0 and 7 = Sunday) as
  APScheduler 4 does; APScheduler 3's ``from_crontab`` read ``"0 2 * * 0"`` as
  Monday (its documented "historical mistake"), ours as Sunday.
- **day and day_of_week together.** APScheduler requires a day to match both; cron
  (and our rules) fire on a day matching either. Restricting both in a CronTrigger is
  refused with the rewrite (``day="1st mon"`` forms are translated to ``mon#1``).
  ``week`` and ``year`` fields are not supported.
- **Events** carry ``exception`` as a `JobFailure` holding the error text (the
  original exception object is not kept) and ``retval`` as the result's repr.
  A timeout is an ``EVENT_JOB_ERROR``. Scheduler-level events are not emitted.
- Async functions run on the worker threads, each in its own event loop
  (``AsyncIOScheduler`` is this class); ``ProcessPoolExecutor`` is not supported.
"""

from __future__ import annotations

from task_scheduler.compat.apscheduler.jobs import (
    EVENT_ALL,
    EVENT_JOB_ERROR,
    EVENT_JOB_EXECUTED,
    EVENT_JOB_MAX_INSTANCES,
    EVENT_JOB_MISSED,
    EVENT_JOB_SUBMITTED,
    AsyncIOExecutor,
    ConflictingIdError,
    Job,
    JobExecutionEvent,
    JobFailure,
    JobLookupError,
    MemoryJobStore,
    SQLAlchemyJobStore,
    ThreadPoolExecutor,
)
from task_scheduler.compat.apscheduler.schedulers import (
    AsyncIOScheduler,
    BackgroundScheduler,
    BlockingScheduler,
    SchedulerManager,
)
from task_scheduler.compat.apscheduler.triggers import BaseTrigger, CronTrigger, DateTrigger, IntervalTrigger

__all__ = [
    "EVENT_ALL",
    "EVENT_JOB_ERROR",
    "EVENT_JOB_EXECUTED",
    "EVENT_JOB_MAX_INSTANCES",
    "EVENT_JOB_MISSED",
    "EVENT_JOB_SUBMITTED",
    "AsyncIOExecutor",
    "AsyncIOScheduler",
    "BackgroundScheduler",
    "BaseTrigger",
    "BlockingScheduler",
    "ConflictingIdError",
    "CronTrigger",
    "DateTrigger",
    "IntervalTrigger",
    "Job",
    "JobExecutionEvent",
    "JobFailure",
    "JobLookupError",
    "MemoryJobStore",
    "SQLAlchemyJobStore",
    "SchedulerManager",
    "ThreadPoolExecutor",
]
