"""The faces' add paths beside APScheduler's ``add_job``: jobs added one at a time to a
started scheduler, the way code written for those systems adds them.

Systems: ``decorator`` (``task_scheduler.decorators.interval``/``cron`` with
``scheduler=``), ``compat`` (``task_scheduler.compat.apscheduler.BackgroundScheduler
.add_job``: persistent jobs on SQLite), ``aps`` (APScheduler 3 ``add_job``), each on a
memory store and on SQLite (APScheduler: SQLAlchemyJobStore), with interval and cron
jobs that never fire during the run. Measured: adds per second (median of three
fresh-process runs) and RSS growth per job.
``python -m bench --only faces``.
"""

from __future__ import annotations

import gc
import time
from pathlib import Path
from typing import Any

import psutil

FACES = ("decorator", "compat", "aps")
STORES = ("memory", "sqlite")
KINDS = ("interval", "cron")
JOBS = {"memory": 10_000, "sqlite": 2_000}


def job_body() -> None:
    """What every job would run (importable as ``bench.faces:job_body``, so storable)."""


def add_one_at_a_time(system: str, directory: Path) -> dict[str, Any]:
    """``system`` is ``FACE-STORE-KIND``, e.g. ``compat-sqlite-cron``."""
    face, store, kind = system.split("-")
    jobs = JOBS[store]
    add, stop = _adder(face, store, kind, directory)
    gc.collect()
    process = psutil.Process()
    before = process.memory_info().rss
    started = time.perf_counter()
    for i in range(jobs):
        add(i)
    elapsed = time.perf_counter() - started
    gc.collect()
    grown = process.memory_info().rss - before
    stop()
    return {"jobs": jobs, "seconds": elapsed, "add_per_s": jobs / elapsed, "bytes_per_job": grown / jobs}


def _adder(face: str, store: str, kind: str, directory: Path) -> tuple[Any, Any]:
    if face == "decorator":
        from task_scheduler import SchedulerConfig, TaskScheduler
        from task_scheduler.decorators import cron, interval

        config = SchedulerConfig.from_dict({
            "scheduler": {"base_dir": str(directory), "timezone": "UTC"},
            "store": {"url": "memory://" if store == "memory" else "sqlite://state.db"},
            "logging": {"log_file": None, "console": False},
        })  # fmt: skip
        scheduler = TaskScheduler(config)
        scheduler.start()
        if kind == "interval":
            return (lambda i: interval(3600, name=f"j{i}", scheduler=scheduler)(job_body)), scheduler.stop
        return (lambda i: cron(f"{i % 60} {i % 24} 1 1 *", name=f"j{i}", scheduler=scheduler)(job_body)), scheduler.stop
    if face == "compat":
        from task_scheduler.compat.apscheduler import BackgroundScheduler as Ours

        url = "memory://" if store == "memory" else f"sqlite:///{directory}/jobs.db"
        ours = Ours(jobstores={"default": url}, timezone="UTC")
        ours.start()
        return _aps_adds(ours, kind), ours.shutdown
    from apscheduler.jobstores.memory import MemoryJobStore
    from apscheduler.schedulers.background import BackgroundScheduler

    if store == "memory":
        jobstore: Any = MemoryJobStore()
    else:
        from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore

        jobstore = SQLAlchemyJobStore(url=f"sqlite:///{directory}/aps.db")
    theirs = BackgroundScheduler(jobstores={"default": jobstore}, timezone="UTC")
    theirs.start()
    return _aps_adds(theirs, kind), theirs.shutdown


def _aps_adds(scheduler: Any, kind: str) -> Any:
    """The same add_job calls for APScheduler and our compat face."""
    if kind == "interval":
        return lambda i: scheduler.add_job(job_body, "interval", seconds=3600, id=f"j{i}")
    return lambda i: scheduler.add_job(job_body, "cron", month=1, day=1, hour=i % 24, minute=i % 60, id=f"j{i}")


REPEATS = 3  # the machine is noisy: the median of three fresh-process runs


def rows(measure: Any, fmt: Any) -> list[list[str]]:
    """The table rows, the median of REPEATS runs per (face, store, kind)."""
    raw = {f"{face}-{store}-{kind}": measure("faces", f"{face}-{store}-{kind}", REPEATS)
           for store in STORES for kind in KINDS for face in FACES}  # fmt: skip
    table = []
    for store in STORES:
        for kind in KINDS:
            values = [raw[f"{face}-{store}-{kind}"] for face in FACES]
            aps_rate = values[2]["add_per_s"]
            table.append([f"{store}: {kind} adds/s, one at a time ({JOBS[store]:,} jobs)",
                          *[fmt(v["add_per_s"], 0) for v in values],
                          "decorator, compat >= aps" + ("" if all(v["add_per_s"] >= aps_rate for v in values[:2])
                                                       else " (missed)")])  # fmt: skip
            table.append([f"{store}: {kind} bytes/job", *[fmt(v["bytes_per_job"], 0) for v in values], ""])
    return table
