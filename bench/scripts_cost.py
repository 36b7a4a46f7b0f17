"""What each part of a supervised script run costs: ``python -m bench.scripts_cost``.

Runs /bin/true 1,000 times on 4 threads for each step below, adding one part of
task_scheduler's supervision at a time. The steps run in rounds, one run of each step
per round, and the median of the rounds is printed. For each step it prints the wall
time and this process's CPU per run, both beside the bare pool. On this 2-core machine
the runs keep both cores busy, so wall time is about total CPU / 2. The children's CPU
(fork, exec, exit: ~0.85 ms a run) is the same for every step, so a step's extra CPU in
this process shows at about half its size in the wall time.
"""

from __future__ import annotations

import logging
import os
import resource
import statistics
import subprocess
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime

from bench.run import table
from bench.worker import TRUE
from task_scheduler import ScriptTask
from task_scheduler.processes import GroupKiller, MeasuredPopen, devnull, read_until_exit
from task_scheduler.tasks import DEFAULT_OUTPUT_LIMIT, TaskContext

RUNS = 1000
ROUNDS = 5
_TASK = ScriptTask("cost", None, TRUE, timeout=60)
_LOGGER = logging.getLogger("bench.scripts_cost")


def bare() -> None:
    subprocess.run([TRUE], check=False)


def session() -> None:
    subprocess.run([TRUE], check=False, stdin=devnull(), start_new_session=True)


def _environment() -> dict[str, str]:
    return {**os.environ, "TASK_SCHEDULER_TASK_ID": "cost", "TASK_SCHEDULER_RUN_ID": "r"}


def environment() -> None:
    subprocess.run([TRUE], check=False, stdin=devnull(), start_new_session=True, env=_environment())


def pipes() -> None:
    env = _environment()
    subprocess.run([TRUE], check=False, stdin=devnull(), start_new_session=True, env=env, capture_output=True)


def supervised() -> None:
    process = MeasuredPopen(
        [TRUE], stdin=devnull(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
        env=_environment(),
    )  # fmt: skip
    killer = GroupKiller(process, 5.0)
    read_until_exit(process, 60.0, killer, DEFAULT_OUTPUT_LIMIT)
    killer.start()
    killer.wait()
    process.resources()


def task() -> None:
    _TASK.execute(TaskContext("cost", "r", datetime.now(UTC), 1, _LOGGER, 60.0))


STEPS: list[tuple[str, Callable[[], None]]] = [
    ("bare `subprocess.run` (what APScheduler's job runs)", bare),
    ("+ its own session (a process group to kill)", session),
    ("+ an explicit environment (a copy of os.environ + 2 variables)", environment),
    ("+ stdout and stderr through pipes, read to the end", pipes),
    ("processes.py: wait4 (CPU, peak RSS), pidfd, bounded tails, group kill", supervised),
    ("ScriptTask.execute: its variables, secret masking, the outcome", task),
]


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _once(step: Callable[[], None]) -> tuple[float, float]:
    """(wall ms, this process's CPU ms) per run."""
    cpu, started = _cpu(), time.perf_counter()
    with ThreadPoolExecutor(4) as pool:
        for future in [pool.submit(step) for _ in range(RUNS)]:
            future.result()
    return 1000 * (time.perf_counter() - started) / RUNS, 1000 * (_cpu() - cpu) / RUNS


def collect() -> list[list[str]]:
    results: dict[str, list[tuple[float, float]]] = {label: [] for label, _ in STEPS}
    for _ in range(ROUNDS):
        for label, step in STEPS:
            results[label].append(_once(step))
    medians = {
        label: (statistics.median(wall for wall, _ in runs), statistics.median(cpu for _, cpu in runs))
        for label, runs in results.items()
    }
    base_wall, base_cpu = medians[STEPS[0][0]]
    return [
        [label, f"{wall:.3f}", f"{wall - base_wall:+.3f}", f"{cpu:.3f}", f"{cpu - base_cpu:+.3f}"]
        for label, (wall, cpu) in medians.items()
    ]


HEADERS = ["step (each adds to the one above)", "wall ms/run", "over bare", "CPU ms/run", "over bare"]


def report() -> str:
    """The table: each step's wall time and CPU per run, beside the bare pool's."""
    return table(collect(), HEADERS)


def main() -> None:
    print(report())


if __name__ == "__main__":
    main()
