"""Operations benchmarks against the real service (``python -m task_scheduler run`` in
a subprocess, HTTP API on): ``python -m bench --only ops`` or ``python -m bench.ops``.

- **soak**: 1,000,000 runs of a trivial function job as fast as the service goes
  (accelerated: 200 jobs every 10 ms on the memory store, logging at WARNING), with
  the HTTP server, metrics and notifier attached. The service's RSS is sampled every
  2 s (psutil, from outside) with the run count (``/metrics``, which is scraped as
  often). Growth is the last sample minus the sample at the end of the warm-up (the
  first 200,000 runs, by when every job's history is at its bound).
- **scrape**: 10,000 tasks on the default SQLite store (100 probes every second,
  9,900 idle), 30 s quiet, then 30 s with ``/api/tasks`` and ``/metrics`` each
  scraped once a second. Scrape latency is the client's (request to last byte);
  lateness is each probe run's start minus its scheduled time (the run records),
  compared between the two windows.

Results go to stdout and bench/RESULTS-ops.md. Machine load matters on a shared
host: the closing line reports ``os.getloadavg()`` before and after.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psutil

HERE = Path(__file__).resolve().parent
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _start(directory: Path, config: dict[str, Any]) -> tuple[subprocess.Popen[bytes], str]:
    with socket.socket() as probe:  # a free port (the log that would name port 0's is at WARNING)
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config["http"] = {"enabled": True, "port": port}
    url = f"http://127.0.0.1:{port}"
    path = directory / "service.json"
    path.write_text(json.dumps(config))
    env = {**os.environ, "PYTHONPATH": str(HERE.parent)}
    env.pop("TASK_SCHEDULER_CONFIG", None)
    log = directory / "service.err"
    with log.open("wb") as err:
        process = subprocess.Popen([sys.executable, "-m", "task_scheduler", "run", "--config", str(path)],
                                   cwd=directory, env=env, stdout=subprocess.DEVNULL, stderr=err)  # fmt: skip
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and process.poll() is None:
        try:
            if _get(url + "/readyz")[0] == 200:
                return process, url
        except OSError:
            pass
        time.sleep(0.1)
    process.kill()
    raise RuntimeError(f"the service did not start: {log.read_text()[-2000:]}")


def _get(url: str) -> tuple[int, bytes]:
    with _OPENER.open(url, timeout=120) as response:
        return response.status, response.read()


def _stop(process: subprocess.Popen[bytes]) -> None:
    process.send_signal(signal.SIGTERM)
    process.wait(120)


def _runs_executed(metrics: str) -> int:
    return int(sum(float(v) for v in re.findall(r'^task_scheduler_runs_total\{outcome="succeeded"[^}]*\} (\S+)$',
                                                  metrics, re.M)))  # fmt: skip


def soak(runs: int = 1_000_000, warmup: int = 200_000, jobs: int = 200) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as directory:
        config = {
            "scheduler": {"timezone": "UTC", "log_level": "WARNING", "max_workers": 10},
            "store": {"url": "memory://"},
            "logging": {"log_file": None, "console": False},
            "jobs": [{"id": f"soak{i}", "function": "bench.jobs:noop", "schedule": {"interval": 0.01}}
                     for i in range(jobs)],
        }  # fmt: skip
        process, url = _start(Path(directory), config)
        service = psutil.Process(process.pid)
        samples: list[tuple[float, int, int]] = []  # (seconds, runs, rss)
        started = time.monotonic()
        try:
            while True:
                time.sleep(2.0)
                count = _runs_executed(_get(url + "/metrics")[1].decode())
                samples.append((time.monotonic() - started, count, service.memory_info().rss))
                if count >= runs:
                    break
                if time.monotonic() - started > 1800:
                    raise RuntimeError(f"only {count} runs in 30 minutes")
        finally:
            _stop(process)
    after = [s for s in samples if s[1] >= warmup]
    base = after[0]
    last = samples[-1]
    return {
        "runs": last[1],
        "seconds": round(last[0], 1),
        "runs_per_s": round(last[1] / last[0]),
        "rss_mb_at_warmup": round(base[2] / 2**20, 1),
        "rss_mb_final": round(last[2] / 2**20, 1),
        "rss_mb_max_after_warmup": round(max(s[2] for s in after) / 2**20, 1),
        "growth_mb_after_warmup": round((last[2] - base[2]) / 2**20, 2),
        "samples": [(round(t, 1), n, round(r / 2**20, 1)) for t, n, r in samples],
    }


def scrape(tasks: int = 10_000, probes: int = 100, window: float = 30.0) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as directory:
        first = (datetime.now(UTC) + timedelta(seconds=5)).replace(microsecond=0)
        jobs = [{"id": f"probe{i:03d}", "function": "bench.jobs:noop",
                 "schedule": {"interval": 1, "start": (first + timedelta(seconds=i / probes)).isoformat()}}
                for i in range(probes)]  # fmt: skip
        jobs += [{"id": f"idle{i:05d}", "function": "bench.jobs:noop", "schedule": {"interval": 3600}}
                 for i in range(tasks - probes)]  # fmt: skip
        config = {
            "scheduler": {"timezone": "UTC", "log_level": "WARNING", "max_workers": 10},
            "logging": {"log_file": None, "console": False},
            "jobs": jobs,
        }
        process, url = _start(Path(directory), config)
        try:
            time.sleep(max(0.0, (first - datetime.now(UTC)).total_seconds()) + 5)  # settle
            quiet = (datetime.now(UTC), datetime.now(UTC) + timedelta(seconds=window))
            time.sleep(window)
            latencies: dict[str, list[float]] = {"/api/tasks": [], "/metrics": []}
            sizes: dict[str, int] = {}
            scraped_from = datetime.now(UTC)
            tick = time.monotonic()
            while time.monotonic() - tick < window:
                for path in latencies:
                    began = time.perf_counter()
                    status, body = _get(url + path)
                    latencies[path].append(time.perf_counter() - began)
                    sizes[path] = len(body)
                    assert status == 200
                time.sleep(max(0.0, 1.0 - (time.monotonic() - tick) % 1.0))
            scraped = (scraped_from, datetime.now(UTC))
            time.sleep(2)
        finally:
            _stop(process)
        lateness = _lateness(Path(directory) / "service.json", probes, [quiet, scraped])
    result: dict[str, Any] = {"tasks": tasks, "probes_per_s": probes}
    for path, values in latencies.items():
        values.sort()
        key = "api_tasks" if path == "/api/tasks" else "metrics"
        result[f"{key}_p50_ms"] = round(1000 * statistics.median(values), 1)
        result[f"{key}_p99_ms"] = round(1000 * values[min(len(values) - 1, int(len(values) * 0.99))], 1)
        result[f"{key}_bytes"] = sizes[path]
        result[f"{key}_scrapes"] = len(values)
    for name, values in zip(("quiet", "scraped"), lateness, strict=True):
        values.sort()
        result[f"lateness_{name}_runs"] = len(values)
        result[f"lateness_{name}_p50_ms"] = round(1000 * statistics.median(values), 2)
        result[f"lateness_{name}_p99_ms"] = round(1000 * values[int(len(values) * 0.99)], 2)
        result[f"lateness_{name}_max_ms"] = round(1000 * values[-1], 2)
    return result


def _lateness(config_path: Path, probes: int, windows: list[tuple[datetime, datetime]]) -> list[list[float]]:
    from task_scheduler.config import load_config
    from task_scheduler.stores import open_store

    config = load_config(config_path, build_jobs=False)
    store = open_store(config)
    try:
        records = [r for i in range(probes) for r in store.history(f"probe{i:03d}", limit=1000)]
    finally:
        store.close()
    return [
        [r.queue_delay for r in records if r.queue_delay is not None and start <= r.scheduled_for < end]
        for start, end in windows
    ]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="operations benchmarks (soak, scrape)")
    parser.add_argument("--only", choices=["soak", "scrape"], help="one of the two")
    parser.add_argument("--runs", type=int, default=1_000_000, help="soak: runs (default 1,000,000)")
    parser.add_argument("--no-write", action="store_true", help="do not write bench/RESULTS-ops.md")
    options = parser.parse_args(argv)
    load_before = os.getloadavg()
    started = time.monotonic()
    results: dict[str, Any] = {}
    if options.only in (None, "scrape"):
        results["scrape"] = scrape()
        print(json.dumps({"scrape": results["scrape"]}, indent=1), flush=True)
    if options.only in (None, "soak"):
        results["soak"] = soak(options.runs, warmup=min(200_000, options.runs // 5))
        shown = {k: v for k, v in results["soak"].items() if k != "samples"}
        print(json.dumps({"soak": shown}, indent=1), flush=True)
    load = f"load average {load_before[0]:.2f} before / {os.getloadavg()[0]:.2f} after"
    about = (
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {os.cpu_count()} cores, {load}, {time.monotonic() - started:.0f} s"
    )
    print(about)
    if not options.no_write:
        (HERE / "RESULTS-ops.md").write_text(
            "# Operations benchmark results\n\n"
            f"{about}. Command: `python -m bench --only ops` (see bench/ops.py for the scenarios).\n\n"
            f"```json\n{json.dumps(results, indent=1)}\n```\n"
        )


if __name__ == "__main__":
    main()
