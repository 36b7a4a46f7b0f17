"""One scenario for one system, in a fresh process: ``python -m bench.worker SCENARIO
SYSTEM [DIRECTORY]``. Prints one JSON object with the measurements."""

from __future__ import annotations

import compileall
import gc
import json
import math
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psutil

from bench.faces import add_one_at_a_time
from bench.systems import make

SAMPLES: list[tuple[float, float]] = []  # (scheduled, lateness) in seconds
FINISHED: list[float] = []
TRUE = "/bin/true"


def record(start: float) -> None:
    """A lateness probe: the scheduled time is start + k whole seconds."""
    now = time.time()
    scheduled = start + math.floor(now - start)
    SAMPLES.append((scheduled, now - scheduled))


def finish() -> None:
    FINISHED.append(time.time())


def noop() -> None:
    """A job body that never runs in the scale scenario."""


def lateness(system: str, directory: Path, jobs: int = 1000, seconds: int = 20, busy: bool = False) -> dict[str, Any]:
    """1,000 interval jobs of 1 s spread over the second, for ``seconds``; ``busy``:
    beside a thread computing in Python all along (a user's CPU-bound job)."""
    target = make(system, directory)
    target.start()
    if busy:
        threading.Thread(target=_compute, args=(time.time() + seconds + 6,), daemon=True).start()
    # The jobs' first fires are this far ahead: every add must be done before them (a
    # job added after its start time first fires one period later, out of the count).
    # One transaction per add on PostgreSQL took over 3 s for the 1,000 on a busy host.
    lead = 8.0 if system in ("aps-sqlite", "ts-postgres") else 3.0
    first = math.ceil(time.time() + lead)
    for i in range(jobs):
        start = first + i / jobs
        target.add_interval(f"j{i}", 1, datetime.fromtimestamp(start, UTC), record, start)
    target.flush()
    host = _host_probe(first, seconds)
    time.sleep(max(0.0, first + seconds + 1.5 - time.time()))
    target.stop()
    host_max_ms = float(host.communicate(timeout=60)[0])
    window = [late for scheduled, late in SAMPLES if first <= scheduled < first + seconds]
    window.sort()
    return {
        "expected": jobs * seconds,
        "executed": len(window),
        "missed": target.missed(),
        "p50_ms": 1000 * statistics.median(window) if window else None,
        "p99_ms": 1000 * window[int(len(window) * 0.99) - 1] if window else None,
        "max_ms": 1000 * window[-1] if window else None,
        "host_max_ms": host_max_ms,
    }


# Another process that only sleeps 1 ms at a time and notes its worst oversleep over
# the measured window: the stalls this machine imposes on any process at that moment
# (the hypervisor, other guests), which no scheduler's code can remove. It does no I/O,
# so a store's own waits on the disk do not show in it.
HOST_PROBE = """
import sys, time
first, seconds = float(sys.argv[1]), float(sys.argv[2])
time.sleep(max(0.0, first - time.time()))
worst = 0.0
while time.time() < first + seconds:
    before = time.perf_counter()
    time.sleep(0.001)
    worst = max(worst, time.perf_counter() - before - 0.001)
print(1000 * worst)
"""


def _host_probe(first: float, seconds: float) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", HOST_PROBE, str(first), str(seconds)], stdout=subprocess.PIPE, text=True
    )


def _compute(until: float) -> None:
    total = 0
    while time.time() < until:
        for i in range(10_000):
            total += i


def burst(system: str, directory: Path, jobs: int = 20_000) -> dict[str, Any]:
    """20,000 one-time jobs due at one instant. APScheduler runs with its misfire
    grace off here: with its default (1 s) it drops most of the burst as missed."""
    target = make(system, directory, grace=False)
    target.start()
    rate = _add_rate(target)
    due = time.time() + 2.0 + 1.3 * jobs / rate
    when = datetime.fromtimestamp(due, UTC)
    for i in range(jobs):
        target.add_once(f"b{i}", when, finish)
    target.flush()
    assert time.time() < due, "adding took longer than planned"
    _wait_for_quiet(target, jobs, due)
    target.stop()
    elapsed = max(FINISHED) - due if FINISHED else None
    return {
        "jobs": jobs,
        "executed": len(FINISHED),
        "missed": target.missed(),
        "seconds": elapsed,
        "jobs_per_s": len(FINISHED) / elapsed if elapsed else None,
        "first_ms": 1000 * (min(FINISHED) - due) if FINISHED else None,
    }


def _wait_for_quiet(target: Any, expected: int, due: float, quiet: float = 3.0) -> None:
    """Until ``expected`` jobs finished or were reported missed, or nothing happened
    for ``quiet`` seconds after ``due``. Reads two counters: no scheduler calls."""
    last_count, last_change = -1, time.time()
    while (count := len(FINISHED) + target.missed()) < expected:
        time.sleep(0.005)
        if count != last_count:
            last_count, last_change = count, time.time()
        elif time.time() > max(due, last_change) + quiet:
            return


def _add_rate(target: Any, probes: int = 300) -> float:
    """Jobs/s this system adds at, measured on throw-away far-future jobs."""
    far = datetime(2100, 1, 1, tzinfo=UTC)
    started = time.perf_counter()
    for i in range(probes):
        target.add_once(f"probe{i}", far, noop)
    target.flush()
    return probes / (time.perf_counter() - started)


def scale(
    system: str, directory: Path, kind: str, jobs: int, idle_seconds: float, bulk: bool = False
) -> dict[str, Any]:
    target = make(system, directory, bulk=bulk)
    target.start()
    gc.collect()
    process = psutil.Process()
    before = process.memory_info().rss
    started = time.perf_counter()
    for i in range(jobs):
        if kind == "cron":
            target.add_cron(f"c{i}", f"{i % 60} {i % 24} 1 1 *", noop)  # never fires during the test
        else:
            target.add_interval(f"i{i}", 3600, datetime.now(UTC) + timedelta(hours=1), noop)
    target.flush()
    elapsed = time.perf_counter() - started
    gc.collect()
    grown = process.memory_info().rss - before
    result: dict[str, Any] = {"jobs": jobs, "add_per_s": jobs / elapsed, "bytes_per_job": grown / jobs}
    if idle_seconds:
        time.sleep(1.0)  # let the loop settle after the adds
        cpu_before, wall_before = process.cpu_times(), time.monotonic()
        time.sleep(idle_seconds)
        cpu_after, wall = process.cpu_times(), time.monotonic() - wall_before
        used = (cpu_after.user + cpu_after.system) - (cpu_before.user + cpu_before.system)
        result["idle_cpu_percent"] = 100.0 * used / wall
    target.stop()
    return result


def scripts(system: str, directory: Path, runs: int = 200) -> dict[str, Any]:
    if system == "bare":
        started = time.perf_counter()
        with ThreadPoolExecutor(4) as pool:
            list(pool.map(lambda _: subprocess.run([TRUE], check=False), range(runs)))
        return {"runs": runs, "seconds": time.perf_counter() - started}
    target = make(system, directory, workers=4)
    done = threading.Event()
    target.on_done(lambda: (finish(), len(FINISHED) >= runs and done.set()))
    target.start()
    due = time.time() + 2.0
    for i in range(runs):
        target.add_script(f"s{i}", datetime.fromtimestamp(due, UTC), TRUE)
    target.flush()
    done.wait(300)
    target.stop()
    return {"runs": runs, "executed": len(FINISHED), "missed": target.missed(), "seconds": max(FINISHED) - due}


def restart_setup(system: str, directory: Path, jobs: int = 10_000) -> dict[str, Any]:
    """Persistent jobs (by reference), as a job store keeps them."""
    target = make(system, directory)
    target.start()
    for i in range(jobs):
        target.add_persistent(f"r{i}", 3600)
    target.stop()
    return {"jobs": jobs}


def restart_load(system: str, directory: Path, jobs: int = 10_000) -> dict[str, Any]:
    """The measured process: running with every stored job restored (no code adds them)."""
    target = make(system, directory)
    target.start()
    print(json.dumps({"loaded": target.loaded()}), flush=True)  # the parent stops its clock here
    target.stop()
    return {}


def restart(system: str, directory: Path, jobs: int = 10_000) -> dict[str, Any]:
    # Both systems start from compiled bytecode, as an installed wheel leaves them:
    # with PYTHONDONTWRITEBYTECODE set (as on this machine) an editable install never
    # writes its .pyc files, and every start would compile task_scheduler's sources
    # (0.26 s of imports instead of 0.10 s), while APScheduler's came compiled from pip.
    import task_scheduler

    compileall.compile_dir(Path(task_scheduler.__file__).parent, quiet=1)
    command = [sys.executable, "-m", "bench.worker"]
    subprocess.run([*command, "restart_setup", system, str(directory)], check=True, capture_output=True)
    started = time.perf_counter()
    process = subprocess.Popen([*command, "restart_load", system, str(directory)], stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None
    line = process.stdout.readline()
    seconds = time.perf_counter() - started
    process.wait(120)
    loaded = json.loads(line)["loaded"]
    assert loaded == jobs, f"{system} loaded {loaded} of {jobs} jobs"
    return {"jobs": jobs, "seconds": seconds}


def persist_add(system: str, directory: Path, jobs: int = 2_000) -> dict[str, Any]:
    """Persistent jobs added one at a time to a running scheduler on SQLite."""
    target = make(system, directory)
    target.start()
    started = time.perf_counter()
    for i in range(jobs):
        target.add_persistent(f"p{i}", 3600)
    elapsed = time.perf_counter() - started
    target.stop()
    return {"jobs": jobs, "add_per_s": jobs / elapsed}


def _scale_jobs(system: str) -> int:
    return 100_000 if "memory" in system else 10_000


SCENARIOS = {
    "lateness": lateness,
    "lateness_busy": lambda system, d: lateness(system, d, busy=True),
    "burst": burst,
    "scale_cron": lambda system, d: scale(system, d, "cron", _scale_jobs(system), 20),
    "scale_interval": lambda system, d: scale(system, d, "interval", _scale_jobs(system), 0),
    "scale_cron_bulk": lambda system, d: scale(system, d, "cron", _scale_jobs(system), 0, bulk=True),
    "scale_interval_bulk": lambda system, d: scale(system, d, "interval", _scale_jobs(system), 0, bulk=True),
    "persist_add": persist_add,
    "scripts": scripts,
    "restart": restart,
    "restart_setup": restart_setup,
    "restart_load": restart_load,
    "faces": add_one_at_a_time,
}


def main() -> None:
    scenario, system = sys.argv[1], sys.argv[2]
    if len(sys.argv) > 3:
        result = SCENARIOS[scenario](system, Path(sys.argv[3]))
    else:
        with tempfile.TemporaryDirectory() as directory:
            result = SCENARIOS[scenario](system, Path(directory))
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
