"""The cluster scenario: task_scheduler on PostgreSQL with one and with three node
processes. ``python -m bench --only cluster`` runs just this; ``python -m bench``
runs it after the others.

- **throughput**: 20,000 one-time jobs due at the same instant, registered by every
  node (each a process of its own, 10 worker threads, a trivial function as the
  job): occurrences per second from the due time until the last one finished, read
  from the runs in the database, where each occurrence is also checked to have run
  exactly once.
- **lateness at 1,000 jobs/s**: `bench.worker`'s lateness scenario (1,000 jobs every
  second for 20 s in one process) on the SQLite and on the PostgreSQL store.

The server is ``TASK_SCHEDULER_BENCH_POSTGRES_URL`` (default
``postgresql://postgres@127.0.0.1:5432/test``); each run uses a fresh schema and drops
it. The published reference: Quartz.NET on PostgreSQL fires about 85-98 triggers/s.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

URL = os.environ.get("TASK_SCHEDULER_BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
HERE = Path(__file__).resolve().parent
JOBS = 20_000


def reachable() -> str | None:
    """Why PostgreSQL cannot be used for the benchmark, or None."""
    try:
        import psycopg

        with psycopg.connect(URL, connect_timeout=3):
            return None
    except Exception as exc:  # noqa: BLE001 - any reason is reported, not raised
        return str(exc).strip() or type(exc).__name__


def execute(query: str) -> list[tuple[Any, ...]]:
    import psycopg

    with psycopg.connect(URL, autocommit=True) as connection:
        cursor = connection.execute(query)
        return cursor.fetchall() if cursor.description else []


def noop() -> None:
    """The job: nothing, so that the scheduler and the store are what is measured."""


def node(schema: str, jobs: int, due: float) -> None:
    """One node process: register the jobs, say so, run until SIGTERM."""
    from task_scheduler import FunctionTask, OnceRule, SchedulerConfig, TaskScheduler

    with tempfile.TemporaryDirectory() as directory:
        config = SchedulerConfig.from_dict(
            {
                "scheduler": {"base_dir": directory, "timezone": "UTC", "max_workers": 10, "log_level": "WARNING"},
                "store": {"url": URL, "schema": schema},
                "logging": {"log_file": None, "console": False},
            }
        )
        scheduler = TaskScheduler(config)
        when = datetime.fromtimestamp(due, UTC)
        scheduler.add_tasks([(FunctionTask(f"b{i}", None, noop), OnceRule(run_at=when)) for i in range(jobs)])
        print("ready", flush=True)
        scheduler.run_forever()


def throughput(nodes: int, jobs: int = JOBS) -> dict[str, Any]:
    schema = f"bench_cluster_{os.getpid()}_{nodes}"
    execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
    # Registering 20,000 jobs takes a node a few seconds, one node after the other.
    due = time.time() + 6 + 4 * nodes
    command = [sys.executable, "-m", "bench.cluster", "node", schema, str(jobs), str(due)]
    processes = [subprocess.Popen(command, cwd=HERE.parent, stdout=subprocess.PIPE, text=True) for _ in range(nodes)]
    try:
        for process in processes:
            assert process.stdout is not None and process.stdout.readline().strip() == "ready"
        late = time.time() - due
        assert late < 0, f"registering took {late:.1f}s longer than planned"
        deadline = due + 300
        while time.time() < deadline:
            time.sleep(0.25)
            [(done,)] = execute(f"SELECT count(*) FROM {schema}.runs WHERE state NOT IN ('running', 'scheduled')")
            if done >= jobs:
                break
        [(runs, occurrences, succeeded, first, last)] = execute(
            f"SELECT count(*), count(DISTINCT (task_id, scheduled_for)), count(*) FILTER (WHERE state = 'succeeded'), "
            f"min(started_at), max(finished_at) FROM {schema}.runs WHERE NOT manual"
        )
        shares = [count for (count,) in execute(f"SELECT count(*) FROM {schema}.runs GROUP BY node ORDER BY 1")]
        [(p50, p99)] = execute(
            "SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY lag), percentile_cont(0.99) WITHIN GROUP "
            f"(ORDER BY lag) FROM (SELECT extract(epoch FROM started_at - scheduled_for) AS lag FROM {schema}.runs) l"
        )
    finally:
        for process in processes:
            process.send_signal(signal.SIGTERM)
        for process in processes:
            process.wait(60)
        execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
    seconds = (last - datetime.fromtimestamp(due, UTC)).total_seconds()
    return {
        "nodes": nodes,
        "jobs": jobs,
        "runs": runs,
        "duplicates": runs - occurrences,
        "succeeded": succeeded,
        "seconds": seconds,
        "per_s": succeeded / seconds,
        "per_node": shares,
        "start_delay_p50_ms": 1000 * float(p50),
        "start_delay_p99_ms": 1000 * float(p99),
        "first_start_after_due_ms": 1000 * (first - datetime.fromtimestamp(due, UTC)).total_seconds(),
    }


def lateness(system: str) -> dict[str, Any]:
    output = subprocess.run(
        [sys.executable, "-m", "bench.worker", "lateness", system],
        check=True, capture_output=True, text=True, timeout=300, cwd=HERE.parent,
    )  # fmt: skip
    result: dict[str, Any] = json.loads(output.stdout.strip().splitlines()[-1])
    return result


def collect() -> tuple[list[list[str]], dict[str, Any]]:
    """The cluster table's rows and the raw figures; empty when PostgreSQL is missing."""
    problem = reachable()
    if problem is not None:
        print(f"  cluster: skipped, PostgreSQL not reachable at {URL}: {problem}", file=sys.stderr)
        return [], {"skipped": problem}
    raw: dict[str, Any] = {}
    for nodes in (1, 3):
        started = time.monotonic()
        raw[f"throughput/{nodes}"] = throughput(nodes)
        print(f"  cluster throughput {nodes} node(s) {time.monotonic() - started:6.1f}s", file=sys.stderr, flush=True)
    for system in ("ts-sqlite", "ts-postgres"):
        started = time.monotonic()
        raw[f"lateness/{system}"] = lateness(system)
        print(f"  cluster lateness {system:11} {time.monotonic() - started:6.1f}s", file=sys.stderr, flush=True)
    one, three = raw["throughput/1"], raw["throughput/3"]
    sqlite, postgres = raw["lateness/ts-sqlite"], raw["lateness/ts-postgres"]

    def fmt(value: float | None, digits: int = 0) -> str:
        return "-" if value is None else f"{value:,.{digits}f}"

    rows = [
        ["occurrences/s claimed and run (20,000 due at once)", fmt(one["per_s"]), fmt(three["per_s"]), "-", "-",
         ">= 2,000 with 3 nodes; Quartz.NET on PostgreSQL: 85-98"],
        ["duplicates / not succeeded", f"{one['duplicates']} / {one['jobs'] - one['succeeded']}",
         f"{three['duplicates']} / {three['jobs'] - three['succeeded']}", "-", "-", "0 / 0"],
        ["runs per node", fmt(one["per_node"][0]), " / ".join(fmt(n) for n in three["per_node"]), "-", "-", ""],
        ["lateness p50 ms at 1,000 jobs/s", "-", "-", fmt(sqlite["p50_ms"], 3), fmt(postgres["p50_ms"], 3), ""],
        ["lateness p99 ms at 1,000 jobs/s", "-", "-", fmt(sqlite["p99_ms"], 3), fmt(postgres["p99_ms"], 3), ""],
        ["lateness fires executed (of 20,000) / missed", "-", "-", f"{sqlite['executed']:,} / {sqlite['missed']}",
         f"{postgres['executed']:,} / {postgres['missed']}", "all / 0"],
    ]  # fmt: skip
    return rows, raw


HEADERS = ["cluster measure", "pg 1 node", "pg 3 nodes", "ts-sqlite", "ts-postgres", "target / reference"]


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "node":
        node(sys.argv[2], int(sys.argv[3]), float(sys.argv[4]))
        return
    from bench.run import table

    rows, raw = collect()
    print(table(rows, HEADERS) if rows else "cluster scenario skipped")
    print(json.dumps(raw, indent=1, default=str))


if __name__ == "__main__":
    main()
