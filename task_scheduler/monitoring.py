"""Status and statistics for people and dashboards.

Two views, one source: `task_status`/`totals` build what
`TaskScheduler.get_task_status` returns inside the service; `overview`,
`service_status`, `task_detail`, `run_detail`, `runs` and `recent_outcomes` read a
store from any process and are what the CLI prints and the HTTP API and dashboard
serve, so they can never disagree. Everything returned is JSON data (times ISO 8601
in UTC). `RunTally` counts a running service's runs from its events (systemd's
STATUS line, metrics).
"""

from __future__ import annotations

import logging
import socket
import threading
from collections import Counter
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime, tzinfo
from typing import TYPE_CHECKING, Any

from task_scheduler.errors import TaskNotFoundError
from task_scheduler.stores.base import NodeInfo, RunRecord, RunState, TaskState

logger = logging.getLogger(__name__)

if TYPE_CHECKING:
    from task_scheduler.registry import Registered
    from task_scheduler.scheduler import TaskScheduler
    from task_scheduler.stores import Store

__all__ = [
    "RunTally",
    "overview",
    "process_stats",
    "recent_outcomes",
    "run_detail",
    "runs",
    "service_status",
    "task_detail",
    "task_status",
    "totals",
]


def scheduler_status(scheduler: TaskScheduler, task_id: str | None = None) -> dict[str, Any]:
    """What `TaskScheduler.get_task_status` returns: one task's status, or the totals
    with every task's status under ``tasks`` (see there)."""
    states = scheduler.store.task_states()
    entries = {e.task.task_id: e for e in scheduler._registered()}
    active = list(scheduler._dispatcher.active.values())
    running = group_running((a.record.task_id, a.record, a.deadline) for a in active)
    now = scheduler.clock.now()

    def status(entry: Registered) -> dict[str, Any]:
        tid = entry.task.task_id
        options = {**entry.task.options(), "timeout": entry.timeout}
        return task_status(options, states[tid], running.get(tid, []), now, scheduler.timezone)

    if task_id is not None:
        entry = entries.get(task_id)
        if entry is None or task_id not in states:
            raise TaskNotFoundError(task_id)
        return status(entry)
    result = totals(
        {tid: status(e) for tid, e in entries.items() if tid in states},
        sum(len(runs) for runs in running.values()),
    )
    result.update(
        queued_runs=scheduler._dispatcher.queued,
        scheduler_running=scheduler.running,
        node_id=scheduler.node_id,
        uptime_seconds=scheduler.uptime,
    )
    if scheduler.config.scheduler.enable_monitoring:
        result["process"] = process_stats()
    return result


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


# -- the store's view, from any process (CLI, HTTP API, dashboard) -----------------------


def overview(store: Store) -> list[dict[str, Any]]:
    """Every scheduled task: its state and counters (`TaskState.to_dict`), whether a
    run is in progress, ``status`` (running, paused, finished, scheduled) and
    ``success_rate`` (percent of completed runs), sorted by task id."""
    states = store.task_states()
    running = {r.task_id for r in store.active_runs() if r.state is RunState.RUNNING}
    return [_task_summary(state, state.task_id in running) for state in sorted(states.values(), key=_by_id)]


def task_detail(store: Store, task_id: str, recent: int = 5) -> dict[str, Any]:
    """One task: its summary, its stored definition (``spec``; None for a task
    defined in code), runs in progress and the ``recent`` last finished runs."""
    state = store.task_states().get(task_id)
    if state is None:
        raise TaskNotFoundError(task_id)
    active = [r for r in store.active_runs() if r.task_id == task_id]
    detail = _task_summary(state, any(r.state is RunState.RUNNING for r in active))
    detail["spec"] = store.job_specs().get(task_id)
    detail["active_runs"] = [r.to_dict() for r in active]
    detail["recent_runs"] = [r.to_dict() for r in store.history(task_id, limit=recent)]
    return detail


def runs(
    store: Store, task_id: str | None = None, state: RunState | None = None, limit: int = 20
) -> list[dict[str, Any]]:
    """Finished runs, newest first; TaskNotFoundError for a task never seen."""
    if task_id and task_id not in store.task_states() and not store.history(task_id, limit=1):
        raise TaskNotFoundError(task_id)
    return [r.to_dict() for r in store.history(task_id, state, max(1, limit))]


def recent_outcomes(store: Store, task_ids: Iterable[str], limit: int = 10) -> dict[str, list[dict[str, Any]]]:
    """The ``limit`` last finished runs of each task, oldest first, in brief (run_id,
    state, scheduled_for, duration): the dashboard's recent durations. One history
    query per task: meant for a page of tasks, not for thousands."""
    return {
        task_id: [
            {key: run[key] for key in ("run_id", "state", "scheduled_for", "duration")}
            for run in reversed([r.to_dict() for r in store.history(task_id, limit=limit)])
        ]
        for task_id in task_ids
    }


def run_detail(store: Store, run_id: str) -> dict[str, Any] | None:
    """One run by its id or a unique part of it (6+ characters), output included."""
    record = store.run(run_id)
    return None if record is None else record.to_dict()


def service_status(store: Store, lease_seconds: float, now: datetime | None = None) -> dict[str, Any]:
    """The nodes using the store (alive when their heartbeat is recent and, on this
    host, their process exists), with their runs in progress and clock skew."""
    now = now or datetime.now(UTC)
    nodes = store.nodes()
    active = store.active_runs()
    running = [r for r in active if r.state is RunState.RUNNING]
    reports = [
        {
            **node.to_dict(),
            "alive": node_alive(node, now, lease_seconds),
            "uptime_seconds": round((now - node.started_at).total_seconds(), 1),
            "running_runs": sum(1 for r in running if r.node == node.node_id),
        }
        for node in nodes
    ]
    return {
        "alive": any(report["alive"] for report in reports),
        "store": store.location,
        "nodes": reports,
        "running_runs": len(running),
        "queued_runs": len(active) - len(running),
    }


def node_alive(node: NodeInfo, now: datetime, lease_seconds: float) -> bool:
    """Heartbeats come every lease/3 seconds; a node silent for a whole lease is gone."""
    if (now - node.heartbeat_at).total_seconds() > lease_seconds:
        return False
    if node.host != socket.gethostname():
        return True
    import psutil

    return bool(psutil.pid_exists(node.pid))


def _task_summary(state: TaskState, running: bool) -> dict[str, Any]:
    completed = state.run_count
    status = "running" if running else "paused" if state.paused else "finished" if state.finished else "scheduled"
    return {
        **state.to_dict(),
        "status": status,
        "running": running,
        "success_rate": round(100.0 * state.success_count / completed, 2) if completed else None,
    }


def _by_id(state: TaskState) -> str:
    return state.task_id


# -- a running service's own counts, from its events ---------------------------------


class RunTally:
    """Counts one scheduler's runs since it started, as a listener
    (``scheduler.add_listener(tally.on_event)``): outcomes by state, and the runs in
    flight (handed to the workers, outcome not yet recorded). Cheap enough for every
    event; read from any thread."""

    def __init__(self) -> None:
        self.outcomes: Counter[str] = Counter()
        self._in_flight: set[str] = set()
        self._lock = threading.Lock()

    def on_event(self, event: Any) -> None:
        from task_scheduler.events import EventType

        record = event.run
        with self._lock:
            if event.type is EventType.SUBMITTED:
                self._in_flight.add(record.run_id)
            elif event.type is not EventType.RETRY and record.state.is_final:
                self._in_flight.discard(record.run_id)
                self.outcomes[record.state.value] += 1

    @property
    def in_flight(self) -> int:
        return len(self._in_flight)

    def summary(self) -> dict[str, int]:
        with self._lock:
            return {"in_flight": len(self._in_flight), **self.outcomes}


def log_unrun(records: list[RunRecord]) -> None:
    """One WARNING per task and outcome for occurrences recorded without running
    (missed, skipped): a 5-second job down for two minutes is one line with the count
    and the range, not 24; the history keeps a row for each."""
    groups: dict[tuple[str, RunState], list[RunRecord]] = {}
    for record in records:
        groups.setdefault((record.task_id, record.state), []).append(record)
    for (task_id, state), group in groups.items():
        first, last = group[0], group[-1]
        if len(group) == 1:
            logger.warning(
                "task %s occurrence %s %s: %s", task_id, first.scheduled_for.isoformat(), state.value, first.error
            )
        else:
            logger.warning(
                "task %s: %d occurrences from %s to %s %s (first: %s)",
                task_id,
                len(group),
                first.scheduled_for.isoformat(),
                last.scheduled_for.isoformat(),
                state.value,
                first.error,
            )
