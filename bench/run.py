"""Run every scenario for every system, each in a fresh process, and print one table
beside APScheduler (also written to bench/RESULTS.md). ``python -m bench``.

Noisy scenarios (burst, scripts) are repeated and the median is reported. Install the
comparison first: ``pip install -e '.[bench]'``.
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
from bench.systems import SYSTEMS

HERE = Path(__file__).resolve().parent
REPEATS = {"burst": 3, "scripts": 3}


def measure(scenario: str, system: str, repeats: int = 1) -> dict[str, Any]:
    """The median (by the scenario's main figure) of ``repeats`` fresh-process runs."""
    results = []
    for _ in range(repeats):
        output = subprocess.run(
            [sys.executable, "-m", "bench.worker", scenario, system],
            check=True, capture_output=True, text=True, timeout=900, cwd=HERE.parent,
        )  # fmt: skip
        results.append(json.loads(output.stdout.strip().splitlines()[-1]))
    if len(results) == 1:
        return results[0]
    return sorted(results, key=lambda r: r.get("seconds") or 0.0)[len(results) // 2]


def fmt(value: Any, digits: int = 2) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return f"{value:,}"


def ratio(ours: float | None, theirs: float | None) -> str:
    return f"{ours / theirs:.2f}x" if ours and theirs else "-"


def collect(quick: bool) -> tuple[list[list[str]], dict[str, Any]]:
    raw: dict[str, dict[str, Any]] = {}
    scenarios = ["lateness", "burst", "scale_cron", "scale_interval", "scripts", "restart"]
    for scenario in scenarios:
        for system in SYSTEMS:
            if scenario == "restart" and "memory" in system:
                continue
            # APScheduler's SQLAlchemy store takes ~40 s per burst run (it inserts ~600
            # jobs/s); once is enough to keep the whole suite under 10 minutes.
            repeats = 1 if quick or system == "aps-sqlite" else REPEATS.get(scenario, 1)
            started = time.monotonic()
            raw[f"{scenario}/{system}"] = measure(scenario, system, repeats)
            print(f"  {scenario:15} {system:11} {time.monotonic() - started:6.1f}s", file=sys.stderr, flush=True)
    raw["scripts/bare"] = measure("scripts", "bare", 1 if quick else REPEATS["scripts"])

    def get(scenario: str, system: str, key: str) -> Any:
        return raw.get(f"{scenario}/{system}", {}).get(key)

    rows: list[list[str]] = []

    def row(label: str, scenario: str, key: str, digits: int = 2, target: str = "") -> None:
        values = [get(scenario, system, key) for system in SYSTEMS]
        rows.append([label, *[fmt(v, digits) for v in values], target])

    row("lateness p50 ms", "lateness", "p50_ms", 3)
    row("lateness p99 ms", "lateness", "p99_ms", 3, "ts-memory <= 1/2 aps-memory; ts-sqlite < 5")
    row("lateness max ms", "lateness", "max_ms", 1, "ts-memory < 5")
    row("lateness fires executed (of 20,000)", "lateness", "executed", 0, "all")
    row("lateness fires missed", "lateness", "missed", 0, "0")
    row("burst 20,000 jobs/s", "burst", "jobs_per_s", 0, "memory >= 3x, sqlite >= 10x aps")
    row("burst seconds until all done", "burst", "seconds", 2)
    row("burst jobs executed", "burst", "executed", 0, "20,000")
    row("burst jobs missed", "burst", "missed", 0, "0")
    row("scale cron adds/s", "scale_cron", "add_per_s", 0, ">= 5x aps")
    row("scale cron bytes/job", "scale_cron", "bytes_per_job", 0, "<= 1/2 aps")
    row("scale idle CPU % (cron jobs)", "scale_cron", "idle_cpu_percent", 3, "<= 0.1")
    row("scale interval adds/s", "scale_interval", "add_per_s", 0, ">= 5x aps")
    row("scale interval bytes/job", "scale_interval", "bytes_per_job", 0, "<= 1/2 aps")
    row("scale jobs (memory / sqlite)", "scale_cron", "jobs", 0)
    row("scripts 200 x /bin/true seconds", "scripts", "seconds", 3)
    bare = get("scripts", "bare", "seconds")
    rows.append(
        [
            "scripts vs bare 4-thread subprocess.run",
            *[ratio(get("scripts", s, "seconds"), bare) for s in SYSTEMS],
            "<= 1.05x",
        ]
    )
    row("restart with 10,000 stored jobs, s", "restart", "seconds", 3, "<= 1/2 aps-sqlite")
    return rows, raw


def table(rows: list[list[str]], headers: list[str] | None = None) -> str:
    headers = headers or ["measure", *SYSTEMS, "target"]
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
        "--only", choices=["faces", "cluster", "ops"],
        help="run one group and print it (RESULTS.md is left alone; ops writes bench/RESULTS-ops.md)",
    )  # fmt: skip
    options = parser.parse_args()
    if options.only == "ops":
        from bench.ops import main as ops

        ops(["--no-write"] if options.no_write else [])
        return
    started = time.monotonic()
    from bench import cluster

    if options.only == "faces":
        print(faces_table())
        print(f"\n{machine()}; {time.monotonic() - started:.0f} s")
        return
    if options.only == "cluster":
        cluster_rows, cluster_raw = cluster.collect()
        print(table(cluster_rows, cluster.HEADERS) if cluster_rows else "cluster scenario skipped")
        print(f"\n{machine()}; {time.monotonic() - started:.0f} s\n{json.dumps(cluster_raw, indent=1, default=str)}")
        return
    rows, raw = collect(options.quick)
    text = table(rows) + "\n\nThe faces' add paths (bench/faces.py):\n\n" + faces_table()
    cluster_rows, raw["cluster"] = cluster.collect()
    if cluster_rows:
        text += "\n\nPostgreSQL cluster (`bench/cluster.py`):\n\n" + table(cluster_rows, cluster.HEADERS)
    print(text)
    about = machine()
    print(f"\n{about}; {time.monotonic() - started:.0f} s")
    if not options.no_write:
        (HERE / "RESULTS.md").write_text(
            "# Benchmark results\n\n"
            f"{about}.\n\nCommand: `python -m bench`. Scale rows: 100,000 jobs on the memory stores, 10,000 on "
            "the SQLite stores. Systems: task_scheduler (`ts-`) and APScheduler 3 BackgroundScheduler (`aps-`), "
            "10 worker threads (4 for scripts), default settings.\n\n"
            f"{text}\n\n## Raw\n\n```json\n{json.dumps(raw, indent=1, default=str)}\n```\n"
        )


if __name__ == "__main__":
    main()
