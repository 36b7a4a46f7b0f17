"""Prometheus metrics for ``GET /metrics`` (prometheus_client: the ``metrics`` extra).

Two sources, one registry per service:

- **events** (a listener, so counting costs the loop a few microseconds per run):
  ``task_scheduler_runs_total{task,outcome}``, ``task_scheduler_run_duration_seconds
  {task}`` (histogram), ``task_scheduler_run_lateness_seconds`` (histogram, scheduled
  time -> start, first attempts of scheduled runs only: retries and manual runs are
  not late; a task's own jitter counts), ``task_scheduler_run_cpu_seconds_total
  {task,mode}`` and ``task_scheduler_run_max_rss_bytes{task}`` (script runs: the last
  run's peak). Counted since the process started, as Prometheus counters are.
- **the store at scrape time**, through `task_scheduler.monitoring` (what ``list``
  and ``status`` print): ``task_scheduler_tasks{state}``,
  ``task_scheduler_task_next_fire_timestamp_seconds{task}`` (tasks that will fire),
  ``task_scheduler_task_missed_total{task}`` / ``..._skipped_total{task}`` (the
  store's counts, kept across restarts), ``task_scheduler_runs_running``,
  ``task_scheduler_runs_queued`` (retries and manual runs waiting), and
  ``task_scheduler_store_up`` (0 when the store could not be read: the store's
  families are then left out of that scrape);
- **this process**: ``task_scheduler_runs_waiting_for_worker`` (claimed runs beyond
  ``max_workers``), ``task_scheduler_loop_last_step_age_seconds``,
  ``task_scheduler_info{version,node}`` and the standard ``process_*`` families
  (resident/virtual memory, CPU seconds, open fds, threads, start time; psutil).

Labels are bounded: task ids and fixed sets (outcome, state, mode), never run ids.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter as Tally
from collections.abc import Iterator
from datetime import datetime
from typing import TYPE_CHECKING, Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from task_scheduler import monitoring
from task_scheduler.errors import TaskSchedulerError
from task_scheduler.events import EventType, SchedulerEvent

if TYPE_CHECKING:
    from task_scheduler.scheduler import TaskScheduler
    from task_scheduler.stores import Store

__all__ = ["ServiceMetrics"]

logger = logging.getLogger(__name__)

# Few buckets: the duration histogram is per task (about 11 series per task that ran).
DURATION_BUCKETS = (0.1, 0.5, 1, 5, 30, 120, 600, 3600)
LATENESS_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
TASK_STATES = ("scheduled", "running", "paused", "finished")
YIELD_EVERY = 500  # tasks between letting go of the GIL while writing per-task families
_FINAL = (
    EventType.EXECUTED | EventType.ERROR | EventType.TIMEOUT | EventType.MISSED | EventType.MAX_INSTANCES
    | EventType.INTERRUPTED
)  # fmt: skip


class ServiceMetrics:
    """The metrics of one running scheduler; ``render()`` is the /metrics answer."""

    def __init__(self, scheduler: TaskScheduler, tally: monitoring.RunTally, store: Store | None = None) -> None:
        from task_scheduler import __version__

        self.scheduler = scheduler
        # No ``*_created`` series: they double the per-task series and nobody alerts on
        # them. (A process-wide switch of prometheus_client; the service owns its process.)
        disable_created_metrics()  # type: ignore[no-untyped-call]
        self.registry = CollectorRegistry(auto_describe=False)
        registry = self.registry
        self.runs = Counter("task_scheduler_runs", "Finished runs by task and outcome.", ["task", "outcome"],
                            registry=registry)  # fmt: skip
        self.duration = Histogram("task_scheduler_run_duration_seconds", "Run duration (start to end).", ["task"],
                                  buckets=DURATION_BUCKETS, registry=registry)  # fmt: skip
        self.lateness = Histogram("task_scheduler_run_lateness_seconds",
                                  "Scheduled time to start, first attempts of scheduled runs.",
                                  buckets=LATENESS_BUCKETS, registry=registry)  # fmt: skip
        self.cpu = Counter("task_scheduler_run_cpu_seconds", "CPU seconds used by script runs.", ["task", "mode"],
                           registry=registry)  # fmt: skip
        self.rss = Gauge("task_scheduler_run_max_rss_bytes", "Peak resident memory of the last script run.",
                         ["task"], registry=registry)  # fmt: skip
        info = Gauge("task_scheduler_info", "The running service.", ["version", "node"], registry=registry)
        info.labels(__version__, scheduler.node_id).set(1)
        self._live = _LiveCollector(scheduler, tally, store or scheduler.store)
        self._render_lock = threading.Lock()
        registry.register(self._live)
        scheduler.add_listener(self.on_event, _FINAL)

    def on_event(self, event: SchedulerEvent) -> None:
        record = event.run
        task = record.task_id
        self.runs.labels(task, record.state.value).inc()
        if record.started_at is None:
            return
        if record.finished_at is not None:
            self.duration.labels(task).observe((record.finished_at - record.started_at).total_seconds())
        if record.attempt == 1 and not record.manual:
            self.lateness.observe(max(0.0, (record.started_at - record.scheduled_for).total_seconds()))
        if record.cpu_user is not None:
            self.cpu.labels(task, "user").inc(record.cpu_user)
            self.cpu.labels(task, "system").inc(record.cpu_system or 0.0)
        if record.max_rss is not None:
            self.rss.labels(task).set(record.max_rss)

    def render(self) -> tuple[bytes, str]:
        """The exposition text. The store is read once per scrape (serialized: two
        scrapes at once would read it twice for nothing)."""
        with self._render_lock:
            self._live.snapshot = self._live.read_store()
            try:
                text = generate_latest(self.registry)
                if self._live.snapshot is not None:
                    text += _per_task(self._live.snapshot[0])
            finally:
                self._live.snapshot = None
        return text, CONTENT_TYPE_LATEST


class _LiveCollector(Collector):
    """Gauges computed at scrape time from the store (monitoring) and this process.
    The per-task families are written by `_per_task`, not here."""

    def __init__(self, scheduler: TaskScheduler, tally: monitoring.RunTally, store: Store) -> None:
        self.scheduler = scheduler
        self.tally = tally
        self.store = store
        self.snapshot: tuple[list[dict[str, Any]], dict[str, Any]] | None = None

    def read_store(self) -> tuple[list[dict[str, Any]], dict[str, Any]] | None:
        try:
            tasks = monitoring.overview(self.store)
            service = monitoring.service_status(self.store, self.scheduler.config.store.lease_seconds)
        except TaskSchedulerError as exc:
            logger.warning("metrics: cannot read the store: %s", exc)
            return None
        return tasks, service

    def collect(self) -> Iterator[Metric]:
        yield from self._store()
        yield from self._loop()
        yield from _process()

    def _store(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("task_scheduler_store_up", "1 when the state store could be read for this scrape.")
        up.add_metric([], 0 if self.snapshot is None else 1)
        yield up
        if self.snapshot is None:
            return
        tasks, service = self.snapshot
        states = Tally(task["status"] for task in tasks)
        by_state = GaugeMetricFamily("task_scheduler_tasks", "Scheduled tasks by state.", labels=["state"])
        for state in TASK_STATES:
            by_state.add_metric([state], states.get(state, 0))
        yield by_state
        running = GaugeMetricFamily("task_scheduler_runs_running", "Runs in progress (all nodes of the store).")
        running.add_metric([], service["running_runs"])
        queued = GaugeMetricFamily("task_scheduler_runs_queued", "Retries and manual runs waiting to start.")
        queued.add_metric([], service["queued_runs"])
        yield from (running, queued)

    def _loop(self) -> Iterator[Metric]:
        waiting = GaugeMetricFamily("task_scheduler_runs_waiting_for_worker",
                                    "Runs this process claimed that wait for a free worker.")  # fmt: skip
        waiting.add_metric([], max(0, self.tally.in_flight - self.scheduler.config.scheduler.max_workers))
        yield waiting
        step = self.scheduler.last_step
        if step is not None:
            age = GaugeMetricFamily("task_scheduler_loop_last_step_age_seconds",
                                    "Seconds since the scheduler loop last finished a step.")  # fmt: skip
            age.add_metric([], max(0.0, time.monotonic() - step))
            yield age


_PER_TASK = (
    ("task_scheduler_task_next_fire_timestamp_seconds", "gauge",
     "When the task fires next (Unix time); absent when paused or finished."),
    ("task_scheduler_task_missed_total", "counter", "Occurrences missed (the store's count)."),
    ("task_scheduler_task_skipped_total", "counter", "Occurrences skipped (the store's count)."),
)  # fmt: skip


def _per_task(tasks: list[dict[str, Any]]) -> bytes:
    """The per-task families from the store, in the exposition format, written here
    rather than by prometheus_client: at 10,000 tasks its generic formatting took
    150 ms of CPU per scrape, holding the GIL the scheduler's loop needs. The GIL is
    let go every `YIELD_EVERY` tasks for the same reason."""
    next_fire: list[str] = []
    missed: list[str] = []
    skipped: list[str] = []
    for index, task in enumerate(tasks):
        label = '{task="' + _escape(task["task_id"]) + '"}'
        if task["next_run_at"] and task["status"] not in ("paused", "finished"):
            next_fire.append(f"{label} {datetime.fromisoformat(task['next_run_at']).timestamp()!r}")
        missed.append(f"{label} {float(task['missed_count'])!r}")
        skipped.append(f"{label} {float(task['skipped_count'])!r}")
        if index % YIELD_EVERY == YIELD_EVERY - 1:
            time.sleep(0)
    lines: list[str] = []
    for (name, kind, text), samples in zip(_PER_TASK, (next_fire, missed, skipped), strict=True):
        lines += [f"# HELP {name} {text}", f"# TYPE {name} {kind}", *(name + sample for sample in samples)]
    return ("\n".join(lines) + "\n").encode()


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _process() -> Iterator[Metric]:
    import psutil

    process = psutil.Process()
    with process.oneshot():
        memory = process.memory_info()
        cpu = process.cpu_times()
        values = [
            ("process_resident_memory_bytes", "Resident memory size in bytes.", memory.rss),
            ("process_virtual_memory_bytes", "Virtual memory size in bytes.", memory.vms),
            ("process_start_time_seconds", "Start time of the process since the epoch, seconds.",
             process.create_time()),
            ("process_open_fds", "Open file descriptors.", process.num_fds()),
            ("process_threads", "Threads of the process.", process.num_threads()),
        ]  # fmt: skip
    for name, text, value in values:
        gauge = GaugeMetricFamily(name, text)
        gauge.add_metric([], value)
        yield gauge
    total = CounterMetricFamily("process_cpu_seconds", "Total user and system CPU time, seconds.")
    total.add_metric([], cpu.user + cpu.system)
    yield total
