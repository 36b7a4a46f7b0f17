"""The schedulers under test, behind one small adapter each.

task_scheduler runs with its memory and SQLite stores; APScheduler 3 runs as a
BackgroundScheduler with MemoryJobStore and with SQLAlchemyJobStore on SQLite. All
use 10 worker threads (the scripts scenario uses 4) and their default settings
otherwise: the point is what a user gets out of the box. Jobs are added the way a
user adds them: one ``add_task`` / ``add_job`` call per job to a started scheduler
with a listener on; ``bulk=True`` measures task_scheduler's ``add_tasks`` instead.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

SYSTEMS = ("ts-memory", "ts-sqlite", "aps-memory", "aps-sqlite")


class TaskSchedulerSystem:
    """task_scheduler: ``add_task`` per job, or its bulk ``add_tasks`` (``bulk``)."""

    def __init__(self, store: str, directory: Path, workers: int = 10, bulk: bool = False) -> None:
        import task_scheduler
        from task_scheduler import SchedulerConfig, TaskScheduler

        self.ts = task_scheduler  # imported once, as a user's module does

        url = "memory://" if store == "memory" else "sqlite://state.db"
        settings: dict[str, Any] = {"url": url}
        self.schema: str | None = None
        if store == "postgres":  # only in the cluster scenario (bench/cluster.py): a fresh schema, dropped at stop
            from bench.cluster import URL, execute

            self.schema = f"bench_{os.getpid()}"
            execute(f"DROP SCHEMA IF EXISTS {self.schema} CASCADE")
            settings = {"url": URL, "schema": self.schema}
        self.config = SchedulerConfig.from_dict(
            {
                "scheduler": {"base_dir": str(directory), "timezone": "UTC", "max_workers": workers},
                "store": settings,
                "tasks": {"allowed_script_dirs": None},
                "logging": {"log_file": None, "console": False},
            }
        )
        self.scheduler = TaskScheduler(self.config)
        self.bulk = bulk
        self.pending: list[Any] = []
        self.missed_count = 0
        from task_scheduler import EventType

        self.scheduler.add_listener(self._on_missed, EventType.MISSED | EventType.MAX_INSTANCES)

    def _on_missed(self, event: object) -> None:
        self.missed_count += 1

    def start(self) -> None:
        self.scheduler.start()

    def add_interval(self, job_id: str, seconds: float, start: datetime, func: Callable[..., Any], *args: Any) -> None:
        ts = self.ts
        self._add(ts.FunctionTask(job_id, None, func, args=args), ts.IntervalRule(seconds=seconds, start=start))

    def add_once(self, job_id: str, when: datetime, func: Callable[..., Any], *args: Any) -> None:
        self._add(self.ts.FunctionTask(job_id, None, func, args=args), self.ts.OnceRule(run_at=when))

    def add_cron(self, job_id: str, expression: str, func: Callable[..., Any]) -> None:
        self._add(self.ts.FunctionTask(job_id, None, func), self.ts.CronRule(cron=expression))

    def add_script(self, job_id: str, when: datetime, path: str) -> None:
        self._add(self.ts.ScriptTask(job_id, None, path, timeout=60), self.ts.OnceRule(run_at=when))

    def add_persistent(self, job_id: str, seconds: float) -> None:
        """A job the store keeps (restored by the next process), by reference."""
        self.scheduler.add_job({"id": job_id, "function": "bench.jobs:noop", "schedule": {"interval": seconds}})

    def _add(self, task: Any, rule: Any) -> None:
        if self.bulk:
            self.pending.append((task, rule))
        else:
            self.scheduler.add_task(task, rule)

    def flush(self) -> None:
        if self.pending:
            self.scheduler.add_tasks(self.pending)
            self.pending = []

    def missed(self) -> int:
        return self.missed_count

    def on_done(self, callback: Callable[[], object]) -> None:
        from task_scheduler import EventType

        self.scheduler.add_listener(lambda event: callback(), EventType.EXECUTED | EventType.ERROR)

    def loaded(self) -> int:
        return len(self.scheduler.get_tasks())  # registered and synced with the store

    def stop(self) -> None:
        self.scheduler.stop(wait=True, timeout=30)
        if self.schema is not None:
            from bench.cluster import execute

            execute(f"DROP SCHEMA IF EXISTS {self.schema} CASCADE")


class APSchedulerSystem:
    """APScheduler 3 BackgroundScheduler with its defaults (misfire_grace_time=1), or
    with the grace turned off (``grace=False``: it otherwise drops queued jobs)."""

    def __init__(self, store: str, directory: Path, workers: int = 10, grace: bool = True) -> None:
        from apscheduler.events import EVENT_JOB_MISSED
        from apscheduler.executors.pool import ThreadPoolExecutor
        from apscheduler.jobstores.memory import MemoryJobStore
        from apscheduler.schedulers.background import BackgroundScheduler
        from apscheduler.triggers.cron import CronTrigger

        self.cron_trigger = CronTrigger  # imported once, as a user's module does

        if store == "memory":
            jobstore: Any = MemoryJobStore()
        else:
            from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore

            jobstore = SQLAlchemyJobStore(url=f"sqlite:///{directory / 'aps.db'}")
        self.scheduler = BackgroundScheduler(
            jobstores={"default": jobstore},
            executors={"default": ThreadPoolExecutor(workers)},
            job_defaults={} if grace else {"misfire_grace_time": None},
            timezone="UTC",
        )
        self.missed_count = 0
        self.scheduler.add_listener(self._on_missed, EVENT_JOB_MISSED)

    def _on_missed(self, event: object) -> None:
        self.missed_count += 1

    def start(self) -> None:
        self.scheduler.start()

    def add_interval(self, job_id: str, seconds: float, start: datetime, func: Callable[..., Any], *args: Any) -> None:
        self.scheduler.add_job(func, "interval", seconds=seconds, start_date=start, args=args, id=job_id)

    def add_once(self, job_id: str, when: datetime, func: Callable[..., Any], *args: Any) -> None:
        self.scheduler.add_job(func, "date", run_date=when, args=args, id=job_id)

    def add_cron(self, job_id: str, expression: str, func: Callable[..., Any]) -> None:
        self.scheduler.add_job(func, self.cron_trigger.from_crontab(expression, timezone="UTC"), id=job_id)

    def add_script(self, job_id: str, when: datetime, path: str) -> None:
        self.scheduler.add_job(run_script, "date", run_date=when, args=(path,), id=job_id)

    def add_persistent(self, job_id: str, seconds: float) -> None:
        from bench.jobs import noop

        self.scheduler.add_job(noop, "interval", seconds=seconds, id=job_id)

    def flush(self) -> None:
        """Jobs were added one by one already (APScheduler 3 has no bulk API)."""

    def missed(self) -> int:
        return self.missed_count

    def on_done(self, callback: Callable[[], object]) -> None:
        from apscheduler.events import EVENT_JOB_ERROR, EVENT_JOB_EXECUTED

        self.scheduler.add_listener(lambda event: callback(), EVENT_JOB_EXECUTED | EVENT_JOB_ERROR)

    def loaded(self) -> int:
        return len(self.scheduler.get_jobs())

    def stop(self) -> None:
        self.scheduler.shutdown(wait=True)


def run_script(path: str) -> None:
    subprocess.run([path], check=False)


def make(
    system: str, directory: Path, workers: int = 10, *, bulk: bool = False, grace: bool = True
) -> TaskSchedulerSystem | APSchedulerSystem:
    family, store = system.split("-")
    if family == "ts":
        return TaskSchedulerSystem(store, directory, workers, bulk=bulk)
    return APSchedulerSystem(store, directory, workers, grace=grace)


def utc_in(seconds: float) -> datetime:
    return datetime.now(UTC) + timedelta(seconds=seconds)
