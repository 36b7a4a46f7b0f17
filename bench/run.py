"""Run every scenario for every system, each in a fresh process, and print one table
beside APScheduler (also written to bench/RESULTS.md). ``python -m bench``.

Noisy scenarios (lateness, burst, scripts) are repeated in rounds that run every system
once, and the median is reported. Install the comparison first: ``pip install -e '.[bench]'``.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path
from typing import Any

from bench import faces

HERE = Path(__file__).resolve().parent
REPEATS = {"lateness": 3, "burst": 3, "scripts": 3}
ROUND_KEYS = ("p50_ms", "p99_ms", "max_ms", "host_max_ms", "first_ms", "jobs_per_s", "seconds")


def measure(scenario: str, system: str, repeats: int = 1) -> dict[str, Any]:
    """The median (by the scenario's main figure) of ``repeats`` fresh-process runs."""
    return median([run_once(scenario, system) for _ in range(repeats)])


def run_once(scenario: str, system: str) -> dict[str, Any]:
    output = subprocess.run(
        [sys.executable, "-m", "bench.worker", scenario, system],
        check=True, capture_output=True, text=True, timeout=900, cwd=HERE.parent,
    )  # fmt: skip
    result: dict[str, Any] = json.loads(output.stdout.strip().splitlines()[-1])
    return result


def median(results: list[dict[str, Any]]) -> dict[str, Any]:
    """The median run by its main figure: time taken, or lateness p99."""
    return sorted(results, key=lambda r: r.get("seconds") or r.get("p99_ms") or 0.0)[len(results) // 2]


def fmt(value: Any, digits: int = 2) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return f"{value:,}"


def ratio(ours: float | None, theirs: float | None) -> str:
    return f"{ours / theirs:.2f}x" if ours and theirs else "-"


COLUMNS = ("ts-memory", "aps-memory", "ts-sqlite", "aps-sqlite")
# Which systems each scenario runs on (task_scheduler's bulk adds have no APScheduler
# counterpart; a restart needs a store that outlives the process).
PLAN = {
    "lateness": COLUMNS,
    "lateness_busy": ("ts-memory", "aps-memory"),
    "burst": COLUMNS,
    "scale_interval": COLUMNS,
    "scale_cron": COLUMNS,
    "scale_interval_bulk": ("ts-memory", "ts-sqlite"),
    "scale_cron_bulk": ("ts-memory", "ts-sqlite"),
    "scripts": COLUMNS,
    "persist_add": ("ts-sqlite", "aps-sqlite"),
    "restart": ("ts-sqlite", "aps-sqlite"),
}


def collect(quick: bool) -> tuple[list[list[str]], dict[str, Any]]:
    raw: dict[str, dict[str, Any]] = {}
    for scenario, systems in PLAN.items():
        if scenario == "scripts":
            systems = (*systems, "bare")  # the pool every script row is compared with
        runs: dict[str, list[dict[str, Any]]] = {system: [] for system in systems}
        started = time.monotonic()
        # Each round runs every system once, so a stretch when this shared machine is
        # busy falls on the systems alike instead of on one system's repeats.
        for round_ in range(1 if quick else REPEATS.get(scenario, 1)):
            for system in systems:
                # APScheduler's SQLAlchemy store takes ~40 s per burst run (it inserts
                # ~600 jobs/s); once is enough to keep the whole run near 15 minutes.
                if round_ == 0 or system != "aps-sqlite":
                    runs[system].append(run_once(scenario, system))
        for system, results in runs.items():
            raw[f"{scenario}/{system}"] = median(results)
            if len(results) > 1:  # every round's main figures, for the spread behind the median
                raw[f"{scenario}/{system}"]["rounds"] = [
                    {key: result[key] for key in ROUND_KEYS if key in result} for result in results
                ]
        print(f"  {scenario:20} {time.monotonic() - started:6.1f}s", file=sys.stderr, flush=True)
    return rows_of(raw), raw


def rows_of(raw: dict[str, dict[str, Any]]) -> list[list[str]]:
    """The table: every measure for every system, its aim, and whether it was met."""

    def get(scenario: str, system: str, key: str) -> Any:
        return raw.get(f"{scenario}/{system}", {}).get(key)

    bare = get("scripts", "bare", "seconds")
    runs = get("scripts", "bare", "runs") or 200
    for system in COLUMNS:  # overhead per script run over a bare subprocess.run pool, ms
        seconds = get("scripts", system, "seconds")
        if seconds is not None and bare:
            raw[f"scripts/{system}"]["overhead_ms"] = 1000 * (seconds - bare) / runs

    rows: list[list[str]] = []

    def row(label: str, scenario: str, key: str, digits: int, aim: str = "", met: Any = None) -> None:
        values = {system: get(scenario, system, key) for system in COLUMNS}
        verdict = "" if met is None else ("yes" if _safe(met, values) else "no")
        rows.append([label, *[fmt(values[s], digits) for s in COLUMNS], aim, verdict])

    row("lateness p50 ms", "lateness", "p50_ms", 3, "ts <= aps (memory)", lambda v: v["ts-memory"] <= v["aps-memory"])
    row("lateness p99 ms", "lateness", "p99_ms", 3, "memory: ts <= aps; sqlite: ts < 5",
        lambda v: v["ts-memory"] <= v["aps-memory"] and v["ts-sqlite"] < 5)  # fmt: skip
    row("lateness max ms", "lateness", "max_ms", 1, "memory < 5; sqlite < 20",
        lambda v: v["ts-memory"] < 5 and v["ts-sqlite"] < 20)  # fmt: skip
    row("  an idle process's worst oversleep then, ms", "lateness", "host_max_ms", 1)
    row("lateness fires executed (of 20,000)", "lateness", "executed", 0, "all",
        lambda v: v["ts-memory"] == v["ts-sqlite"] == 20_000)  # fmt: skip
    row("lateness fires missed", "lateness", "missed", 0, "0", lambda v: v["ts-memory"] == v["ts-sqlite"] == 0)
    row("lateness beside a CPU-bound thread, p50 ms", "lateness_busy", "p50_ms", 3, "ts <= aps (memory)",
        lambda v: v["ts-memory"] <= v["aps-memory"])  # fmt: skip
    row("lateness beside a CPU-bound thread, p99 ms", "lateness_busy", "p99_ms", 3, "ts <= aps (memory)",
        lambda v: v["ts-memory"] <= v["aps-memory"])  # fmt: skip
    row("beside a CPU-bound thread: fires executed", "lateness_busy", "executed", 0, "all",
        lambda v: v["ts-memory"] == 20_000)  # fmt: skip
    row("burst: first start after due, ms", "burst", "first_ms", 1, "ts < 5 (memory)", lambda v: v["ts-memory"] < 5)
    row("burst jobs/s (aps: grace off)", "burst", "jobs_per_s", 0, "ts >= 2x aps (memory)",
        lambda v: v["ts-memory"] >= 2 * v["aps-memory"])  # fmt: skip
    row("burst jobs executed (of 20,000)", "burst", "executed", 0, "all, none dropped",
        lambda v: v["ts-memory"] == v["ts-sqlite"] == 20_000)  # fmt: skip
    for kind in ("interval", "cron"):
        row(f"add_task one at a time, {kind} jobs/s", f"scale_{kind}", "add_per_s", 0, "ts >= 2x aps (memory)",
            lambda v: v["ts-memory"] >= 2 * v["aps-memory"])  # fmt: skip
        row(f"bulk add_tasks, {kind} jobs/s", f"scale_{kind}_bulk", "add_per_s", 0)
        row(f"bytes per job, {kind}", f"scale_{kind}", "bytes_per_job", 0, "ts <= aps (memory)",
            lambda v: v["ts-memory"] <= v["aps-memory"])  # fmt: skip
    row("idle CPU % (100,000 / 10,000 cron jobs)", "scale_cron", "idle_cpu_percent", 3, "<= 0.1",
        lambda v: v["ts-memory"] <= 0.1 and v["ts-sqlite"] <= 0.1)  # fmt: skip
    row("scripts: overhead per run over a bare pool, ms", "scripts", "overhead_ms", 3, "ts <= aps and < 0.3",
        lambda v: v["ts-memory"] <= max(v["aps-memory"], 0) and v["ts-memory"] < 0.3)  # fmt: skip
    row("persistent jobs added one at a time, /s", "persist_add", "add_per_s", 0, "ts >= 5x aps",
        lambda v: v["ts-sqlite"] >= 5 * v["aps-sqlite"])  # fmt: skip
    row("restart: 10,000 persistent jobs restored, s", "restart", "seconds", 3, "ts <= 1/2 aps",
        lambda v: v["ts-sqlite"] <= v["aps-sqlite"] / 2)  # fmt: skip
    return rows


def _safe(check: Any, values: dict[str, Any]) -> bool:
    try:
        return bool(check(values))
    except TypeError:  # a figure is missing
        return False


def table(rows: list[list[str]], headers: list[str] | None = None) -> str:
    headers = headers or ["measure", *COLUMNS, "aim", "met"]
    widths = [max(len(r[i]) for r in [headers, *rows]) for i in range(len(headers))]
    lines = ["| " + " | ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)) + " |"]
    lines.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for r in rows:
        lines.append("| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |")
    return "\n".join(lines)


def machine() -> str:
    cpu = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import os

    names = ("task_scheduler", "APScheduler", "SQLAlchemy", "psycopg")
    versions = ", ".join(f"{name} {_version(name)}" for name in names)
    return (
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC; {cpu}, {os.cpu_count()} cores; "
        f"Python {platform.python_version()} on {platform.system()} {platform.release()}; {versions}"
    )


def faces_table() -> str:
    headers = ["measure", "ts decorator", "ts compat add_job", "aps add_job", "target"]
    body = faces.rows(measure, fmt)
    widths = [max(len(r[i]) for r in [headers, *body]) for i in range(len(headers))]
    lines = ["| " + " | ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)) + " |"]
    lines.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    lines += ["| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |" for r in body]
    return "\n".join(lines)


def _version(name: str) -> str:
    from importlib.metadata import PackageNotFoundError

    try:
        return version(name)
    except PackageNotFoundError:
        return "(not installed)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one run per scenario (no medians)")
    parser.add_argument("--no-write", action="store_true", help="do not update bench/RESULTS.md")
    parser.add_argument(
        "--only", choices=["faces", "cluster", "ops", "scripts"],
        help="run one group and print it (RESULTS.md is left alone; ops writes bench/RESULTS-ops.md)",
    )  # fmt: skip
    options = parser.parse_args()
    if options.only == "ops":
        from bench.ops import main as ops

        ops(["--no-write"] if options.no_write else [])
        return
    started = time.monotonic()
    from bench import cluster, scripts_cost

    if options.only == "faces":
        print(faces_table())
        print(f"\n{machine()}; {time.monotonic() - started:.0f} s")
        return
    if options.only == "scripts":
        print(scripts_cost.report())
        print(f"\n{machine()}; {time.monotonic() - started:.0f} s")
        return
    if options.only == "cluster":
        cluster_rows, cluster_raw = cluster.collect()
        print(table(cluster_rows, cluster.HEADERS) if cluster_rows else "cluster scenario skipped")
        print(f"\n{machine()}; {time.monotonic() - started:.0f} s\n{json.dumps(cluster_raw, indent=1, default=str)}")
        return
    rows, raw = collect(options.quick)
    text = table(rows) + "\n\nThe faces' add paths (bench/faces.py):\n\n" + faces_table()
    text += "\n\nWhat each part of a script run costs (bench/scripts_cost.py):\n\n"
    text += scripts_cost.report()
    cluster_rows, raw["cluster"] = cluster.collect()
    if cluster_rows:
        text += "\n\nPostgreSQL cluster (`bench/cluster.py`):\n\n" + table(cluster_rows, cluster.HEADERS)
    print(text)
    about = machine()
    print(f"\n{about}; {time.monotonic() - started:.0f} s")
    if not options.no_write:
        (HERE / "RESULTS.md").write_text(
            "# Benchmark results\n\n"
            f"{about}.\n\nCommand: `python -m bench`. Systems: task_scheduler (`ts-`) and APScheduler 3 "
            "BackgroundScheduler (`aps-`), 10 worker threads (4 for scripts), default settings, jobs added one at "
            "a time to a started scheduler with a listener on (the bulk rows: task_scheduler's `add_tasks`). Scale "
            "rows: 100,000 jobs on the memory stores, 10,000 on the SQLite stores. Scripts: 200 runs of /bin/true "
            "on 4 workers beside a bare 4-thread `subprocess.run` pool.\n\n"
            f"{text}\n\n## Raw\n\n```json\n{json.dumps(raw, indent=1, default=str)}\n```\n"
        )


if __name__ == "__main__":
    main()
