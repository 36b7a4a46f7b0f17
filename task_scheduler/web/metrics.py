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
import time
from collections import Counter as Tally
from collections.abc import Iterator
from datetime import datetime
from typing import TYPE_CHECKING

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

__all__ = ["ServiceMetrics"]

logger = logging.getLogger(__name__)

DURATION_BUCKETS = (0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300, 900, 3600)
LATENESS_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
TASK_STATES = ("scheduled", "running", "paused", "finished")
_FINAL = (
    EventType.EXECUTED | EventType.ERROR | EventType.TIMEOUT | EventType.MISSED | EventType.MAX_INSTANCES
    | EventType.INTERRUPTED
)  # fmt: skip


class ServiceMetrics:
    """The metrics of one running scheduler; ``render()`` is the /metrics answer."""

    def __init__(self, scheduler: TaskScheduler, tally: monitoring.RunTally) -> None:
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
        registry.register(_LiveCollector(scheduler, tally))
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
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class _LiveCollector(Collector):
    """Gauges computed at scrape time from the store (monitoring) and this process."""

    def __init__(self, scheduler: TaskScheduler, tally: monitoring.RunTally) -> None:
        self.scheduler = scheduler
        self.tally = tally

    def collect(self) -> Iterator[Metric]:
        yield from self._store()
        yield from self._loop()
        yield from _process()

    def _store(self) -> Iterator[Metric]:
        scheduler = self.scheduler
        up = GaugeMetricFamily("task_scheduler_store_up", "1 when the state store could be read for this scrape.")
        try:
            tasks = monitoring.overview(scheduler.store)
            service = monitoring.service_status(scheduler.store, scheduler.config.store.lease_seconds)
        except TaskSchedulerError as exc:
            logger.warning("metrics: cannot read the store: %s", exc)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        states = Tally(task["status"] for task in tasks)
        by_state = GaugeMetricFamily("task_scheduler_tasks", "Scheduled tasks by state.", labels=["state"])
        for state in TASK_STATES:
            by_state.add_metric([state], states.get(state, 0))
        yield by_state
        next_fire = GaugeMetricFamily("task_scheduler_task_next_fire_timestamp_seconds",
                                      "When the task fires next (Unix time); absent when paused or finished.",
                                      labels=["task"])  # fmt: skip
        missed = CounterMetricFamily("task_scheduler_task_missed", "Occurrences missed (the store's count).",
                                     labels=["task"])  # fmt: skip
        skipped = CounterMetricFamily("task_scheduler_task_skipped", "Occurrences skipped (the store's count).",
                                      labels=["task"])  # fmt: skip
        for task in tasks:
            labels = [task["task_id"]]
            if task["next_run_at"] and task["status"] not in ("paused", "finished"):
                next_fire.add_metric(labels, datetime.fromisoformat(task["next_run_at"]).timestamp())
            missed.add_metric(labels, task["missed_count"])
            skipped.add_metric(labels, task["skipped_count"])
        yield from (next_fire, missed, skipped)
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
