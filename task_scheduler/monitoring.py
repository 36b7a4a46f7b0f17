"""Status and statistics for people and dashboards: what `TaskScheduler.get_task_status`
returns, built from the store's counters and the runs in progress."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime, tzinfo
from typing import Any

from task_scheduler.stores.base import RunRecord, TaskState

__all__ = ["process_stats", "task_status", "totals"]


def task_status(
    options: Mapping[str, Any],
    state: TaskState,
    running: list[tuple[RunRecord, datetime | None]],
    now: datetime,
    zone: tzinfo,
) -> dict[str, Any]:
    """One task: its settings (``options``), counters, and ``running`` - its runs in
    progress with their deadlines. Times are ISO 8601 in ``zone``; ``success_rate``
    is a percentage of completed runs."""
    status = "running" if running else "paused" if state.paused else "finished" if state.finished else "scheduled"
    counters = state.to_dict()
    for key in ("task_id", "name", "next_run_at", "last_run_at", "finished"):
        counters.pop(key)
    completed = state.run_count
    return {
        **options,
        **counters,
        "status": status,
        "success_rate": round(100.0 * state.success_count / completed, 2) if completed else None,
        "last_run_time": _local(state.last_run_at, zone),
        "next_run_time": None if state.paused else _local(state.next_run_at, zone),
        "running_instances": len(running),
        "overdue_runs": [record.run_id for record, deadline in running if deadline is not None and now > deadline],
    }


def totals(tasks: Mapping[str, Mapping[str, Any]], running_runs: int) -> dict[str, Any]:
    """The scheduler-wide sums of per-task statuses."""
    statuses = list(tasks.values())
    return {
        "total_tasks": len(statuses),
        "running_tasks": sum(1 for t in statuses if t["running_instances"]),
        "running_runs": running_runs,
        "paused_tasks": sum(1 for t in statuses if t["status"] == "paused"),
        "finished_tasks": sum(1 for t in statuses if t["status"] == "finished"),
        "total_runs": sum(t["run_count"] for t in statuses),
        "successful_runs": sum(t["success_count"] for t in statuses),
        "failed_runs": sum(t["failure_count"] for t in statuses),
        "tasks": dict(tasks),
    }


def process_stats() -> dict[str, Any]:
    """This process's resource use (psutil)."""
    import psutil  # imported when asked for: start-up time matters

    process = psutil.Process()
    with process.oneshot():
        memory = process.memory_info()
        return {
            "pid": process.pid,
            "rss_bytes": memory.rss,
            "threads": process.num_threads(),
            "cpu_percent": process.cpu_percent(interval=None),
            "open_files": len(process.open_files()),
        }


def group_running(
    runs: Iterable[tuple[str, RunRecord, datetime | None]],
) -> dict[str, list[tuple[RunRecord, datetime | None]]]:
    """Runs in progress by task id (one pass, so status of N tasks is O(N + runs))."""
    grouped: dict[str, list[tuple[RunRecord, datetime | None]]] = {}
    for task_id, record, deadline in runs:
        grouped.setdefault(task_id, []).append((record, deadline))
    return grouped


def _local(moment: datetime | None, zone: tzinfo) -> str | None:
    return moment.astimezone(zone).isoformat() if moment else None
