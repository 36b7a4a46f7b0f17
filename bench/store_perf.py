"""Store costs: runs/s of a trivial job on the memory and SQLite stores, and start-up
time with 10,000 tasks in a SQLite store. Run: ``python bench/store_perf.py``."""

from __future__ import annotations

import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from task_scheduler import FunctionTask, OnceRule, SchedulerConfig, TaskScheduler

RUNS = 5000
TASKS_AT_START = 10_000


def config(base_dir: Path, url: str) -> SchedulerConfig:
    return SchedulerConfig.from_dict(
        {
            "scheduler": {"base_dir": str(base_dir), "timezone": "UTC", "max_workers": 10},
            "store": {"url": url},
            "logging": {"log_file": None, "console": False},
        }
    )


def throughput(url: str) -> tuple[float, float]:
    """(executed runs/s, recorded runs/s) for RUNS one-time jobs due at one instant."""
    with tempfile.TemporaryDirectory() as directory:
        scheduler = TaskScheduler(config(Path(directory), url))
        done, lock, count = threading.Event(), threading.Lock(), [0]

        def work() -> None:
            with lock:
                count[0] += 1
                if count[0] == RUNS:
                    done.set()

        due = datetime.now(UTC) + timedelta(seconds=1)
        scheduler.add_tasks([(FunctionTask(f"t{i}", None, work), OnceRule(run_at=due)) for i in range(RUNS)])
        scheduler.start()
        done.wait(300)
        executed = (datetime.now(UTC) - due).total_seconds()
        while scheduler.get_task_status()["total_runs"] < RUNS:
            time.sleep(0.01)
        recorded = (datetime.now(UTC) - due).total_seconds()
        scheduler.stop()
        return RUNS / executed, RUNS / recorded


STARTUP = """
import sys, time
started = time.monotonic()
from task_scheduler import FunctionTask, IntervalRule, SchedulerConfig, TaskScheduler
config = SchedulerConfig.from_dict({"scheduler": {"base_dir": sys.argv[1], "timezone": "UTC"},
    "logging": {"log_file": None, "console": False}})
scheduler = TaskScheduler(config)
scheduler.add_tasks([(FunctionTask(f"t{i}", None, print), IntervalRule(hours=1)) for i in range(int(sys.argv[2]))])
scheduler.start()
scheduler.run_due()
print(len(scheduler.store.task_states()), time.monotonic() - started)
scheduler.stop()
"""


def startup(count: int) -> tuple[float, float]:
    """(seconds from process start to running with ``count`` tasks loaded, of which in-process)."""
    with tempfile.TemporaryDirectory() as directory:
        subprocess.run([sys.executable, "-c", STARTUP, directory, str(count)], check=True, capture_output=True)
        started = time.monotonic()
        result = subprocess.run(
            [sys.executable, "-c", STARTUP, directory, str(count)], check=True, capture_output=True, text=True
        )
        total = time.monotonic() - started
        loaded, inside = result.stdout.split()
        assert int(loaded) == count
        return total, float(inside)


def main() -> None:
    print(f"{'measure':48} {'value':>12}")
    for name, url in (("memory", "memory://"), ("sqlite", "sqlite://data/state.db")):
        executed, recorded = throughput(url)
        print(f"{name + f' store: {RUNS} trivial runs, executed/s':48} {executed:12.0f}")
        print(f"{name + ' store: recorded (history + counters)/s':48} {recorded:12.0f}")
    total, inside = startup(TASKS_AT_START)
    print(f"{f'sqlite restart with {TASKS_AT_START} stored tasks: s':48} {total:12.2f}")
    print(f"{'  of which in the process (imports excluded): s':48} {inside:12.2f}")


if __name__ == "__main__":
    main()
