"""The scheduler: one loop thread that claims due occurrences from the store and
hands them to a thread pool.

The loop sleeps on an Event until the earliest due time, never longer than
``check_interval``; adding, triggering or finishing a run wakes it early. One step of
the loop is `TaskScheduler.run_due`, which tests call with a fixed ``now``. The wall
clock (``clock.now()``) gives due times; the monotonic clock paces maintenance.
Claimed runs are handed to the `Dispatcher` (dispatch.py), which runs them on the
worker threads.

Where a task comes from (`Origin`): the config file, the program (``add_task``,
decorators: re-added at every start), or the store (``add_job``, ``add_task(...,
persistent=True)``, ``task-scheduler add``: a job defined by data, restored by every
later process and picked up by a running one within ``check_interval``).

Where the design differs from "the scheduler keeps a heap": the heap of due times
lives in the store (the memory store keeps one; a database keeps an index), and the
loop keeps only the earliest due time the last claim reported. Two heaps would have
to agree about pauses, triggers and reschedules made by other processes; one cannot
disagree with itself.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime, timedelta
from typing import Any, TypeVar

from task_scheduler.clock import Clock, SystemClock
from task_scheduler.config import SchedulerConfig, StoreConfig, load_config
from task_scheduler.dispatch import Dispatcher, prepare_process
from task_scheduler.errors import StoreUnavailableError, TaskError, TaskNotFoundError, TaskSchedulerError
from task_scheduler.events import EventDispatcher, EventType, Listener
from task_scheduler.execution import CANCEL_REPLACED, CANCEL_SHUTDOWN, retry_for
from task_scheduler.jobs import JobSpec, spec_of
from task_scheduler.logs import configure_logging
from task_scheduler.maintenance import Maintenance
from task_scheduler.membership import Membership
from task_scheduler.monitoring import log_unrun, scheduler_status
from task_scheduler.persistence import Item, StoredJobs
from task_scheduler.registry import Registered, register
from task_scheduler.schedules import ScheduleRule, resolve_timezone
from task_scheduler.stores import Store, open_store
from task_scheduler.stores.base import Origin, Retry, RunRecord, RunState, TaskDefinition
from task_scheduler.tasks import BaseTask

__all__ = ["TaskScheduler"]

logger = logging.getLogger(__name__)
F = TypeVar("F", bound=Callable[..., Any])


class TaskScheduler:
    """Schedules tasks and runs them on a thread pool.

    ``TaskScheduler("scheduler_config.json")`` reads a config file (and sets up
    logging from it, and registers its jobs); ``TaskScheduler(config_object)`` leaves
    logging to the caller. Both use the configured store, by default SQLite in the
    data directory. ``TaskScheduler()`` with no config keeps its state in memory and
    writes no files.
    ``store`` and ``clock`` are injectable; tests pass a `ManualClock` and call
    `run_due` and `wait_for_runs` instead of starting the loop thread.
    """

    def __init__(
        self,
        config: SchedulerConfig | str | os.PathLike[str] | None = None,
        *,
        store: Store | None = None,
        clock: Clock | None = None,
        node_id: str | None = None,
    ) -> None:
        if isinstance(config, SchedulerConfig):
            self.config = config
        elif config is not None:
            self.config = load_config(config)
            configure_logging(self.config)
        else:
            self.config = SchedulerConfig(store=StoreConfig(url="memory://"))
        settings = self.config.scheduler
        self.clock: Clock = clock or SystemClock()
        self.timezone = resolve_timezone(settings.timezone)
        self.node_id = node_id or settings.node_id or f"{socket.gethostname()}:{os.getpid()}"
        self.lease = timedelta(seconds=self.config.store.lease_seconds)
        self._owns_store = store is None
        self.store: Store = store if store is not None else open_store(self.config, service=True)
        self._entries: dict[str, Registered] = {}
        self._events = EventDispatcher()
        self._lock = threading.RLock()
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._loop_thread: threading.Thread | None = None
        # This node in the store: heartbeats, clock skew, store outages (membership.py).
        self._membership = Membership(
            self.store, self.clock, self.node_id, self.lease, settings.check_interval, self._definitions
        )
        self._dispatcher = Dispatcher(settings.max_workers, self._now, self._wake.set, self._record_process)
        self._started_at: float | None = None
        self._last_step: float | None = None  # on time.monotonic(); see last_step
        self._stopped = False
        # Claims grow from a few runs per worker to _claim_limit while occurrences keep
        # coming: the first runs of a burst start without waiting for a large batch to
        # be claimed, and a long burst is still claimed in large batches.
        self._claim_limit = max(500, settings.max_workers * 50)
        self._first_claim = 2 * settings.max_workers
        self._claim_batch = self._first_claim
        self._maintenance = Maintenance(
            self.store,
            self.config,
            self.node_id,
            self.clock,
            lambda: list(self._dispatcher.active),
            self._events.emit_record,
            self._membership,
        )
        self._maintenance.measure_skew()
        self._recovered = False
        self._wake_at: datetime | None = None  # when the loop wakes next on its own (None: not known)
        self._stored = StoredJobs(self)
        self._add([(task, rule, spec.to_dict(), None) for task, rule, spec in self.config.build_tasks()], Origin.CONFIG)
        self._stored.restore()

    # -- task management ------------------------------------------------------------
    def add_task(
        self, task: BaseTask, rule: ScheduleRule, *, replace_existing: bool = False, persistent: bool = False
    ) -> None:
        """Register ``task`` on ``rule``. Raises TaskError for a duplicate id (unless
        ``replace_existing``), a missing or disallowed script, or a bad rule; nothing
        else changes when it raises.

        ``persistent``: store the task as data so that every later process restores
        it without the code adding it again (see `add_job`). Only tasks that can be
        said as data can be: a module-level function with JSON args, a script, a
        handler task; a lambda, a closure or a bound method is refused with the reason.
        """
        self.add_tasks([(task, rule)], replace_existing=replace_existing, persistent=persistent)

    def add_tasks(
        self,
        pairs: Iterable[tuple[BaseTask, ScheduleRule]],
        *,
        replace_existing: bool = False,
        persistent: bool = False,
    ) -> None:
        """Register many tasks in one store transaction (all or none)."""
        items: list[Item] = [
            (task, rule, spec_of(task, rule).to_dict() if persistent else None, None) for task, rule in pairs
        ]
        self._add(items, Origin.PERSISTENT if persistent else Origin.CODE, replace_existing)

    def add_job(
        self, spec: JobSpec | Mapping[str, Any], *, replace_existing: bool = False, persistent: bool = True
    ) -> BaseTask:
        """Register a job defined by data - the same object a config ``jobs`` entry
        is (`task_scheduler.jobs.JobSpec`): ``{"id": "report", "type": "function",
        "function": "reports:daily", "kwargs": {...}, "schedule": {"cron": "0 2 * * *"}}``.

        By default it is **persistent**: stored in the store as JSON, restored by
        every later process, visible to ``task-scheduler list`` and ``show``, and
        removed for good by `remove_task`. ``replace_existing`` changes a stored job
        (new params, a new schedule). Raises ConfigError naming the key for a bad
        spec (an unknown key, a callable that cannot be imported, a bad schedule).
        Returns the task built from it.
        """
        data = spec.to_dict() if isinstance(spec, JobSpec) else dict(spec)
        where = f"job {data.get('id')!r}"
        job = JobSpec.from_dict(data, where)
        task, rule = job.build(self.config, where)
        self._add([(task, rule, job.to_dict(), None)], Origin.PERSISTENT if persistent else Origin.CODE,
                  replace_existing)  # fmt: skip
        return task

    def _add(self, items: list[Item], origin: Origin, replace_existing: bool = False) -> None:
        self._check_running()
        now = self._now()
        entries = [
            register(task, rule, self.config, self.timezone, now, origin, spec, problem)
            for task, rule, spec, problem in items
        ]
        ids = Counter(entry.task.task_id for entry in entries) if len(entries) != 1 else {entries[0].task.task_id: 1}
        duplicates = {task_id for task_id, count in ids.items() if count > 1}
        with self._lock:
            taken = [] if replace_existing else [task_id for task_id in ids if task_id in self._entries]
            if duplicates or taken:
                raise TaskError(f"task {sorted(duplicates or set(taken))[0]!r} is already registered")
            for task_id in ids:
                old = self._entries.get(task_id)
                if old is not None and old.origin is Origin.CONFIG and origin is not Origin.CONFIG:
                    raise TaskError(
                        f"task {task_id!r} comes from the config file {self.config.source}; change it there"
                    )
            states = self.store.sync_tasks(entries, self.node_id)
            for entry in entries:
                self._entries[entry.task.task_id] = entry
                if not entry.task.enabled and not states[entry.task.task_id].paused:
                    self.store.set_paused(entry.task.task_id, True)
        if len(entries) > 20:
            logger.info("added %d tasks", len(entries))
        else:
            for entry in entries:
                logger.info("added task %s: %s", entry.task_id, entry.schedule)
        # Wake the loop only when a new task is due before it would wake anyway.
        wake_at = self._wake_at
        if wake_at is None or any(e.first_fire and e.first_fire < wake_at for e in entries):
            self._wake.set()

    def scheduled(
        self,
        rule: ScheduleRule | None = None,
        *,
        task_id: str | None = None,
        cron: str | None = None,
        interval: float | None = None,
        once: datetime | None = None,
        **options: Any,
    ) -> Callable[[F], F]:
        """Decorator: schedule a function as a `FunctionTask` and return it unchanged.

        Give a rule, or exactly one of ``cron`` (an expression), ``interval``
        (seconds) or ``once`` (a datetime). ``task_id`` defaults to the function's
        module and qualified name; ``options`` are FunctionTask options
        (``max_retries``, ``timeout``, ``max_instances`` ...). The same function
        decorated again is one task; another function under a taken id is a
        TaskError (`task_scheduler.decorators`)::

            @scheduler.scheduled(cron="*/5 * * * * *", max_retries=3)
            def sync_data() -> None: ...
        """
        from task_scheduler.decorators import qualified_name, scheduled

        return scheduled(rule, cron=cron, interval=interval, once=once, name=task_id, scheduler=self,
                         default_name=qualified_name, **options)  # fmt: skip

    def remove_task(self, task_id: str) -> None:
        """Unschedule a task (a run in progress finishes); its history is kept. A
        persistent job is removed from the store, for every process."""
        self._check_running()
        with self._lock:
            if task_id not in self._entries:
                raise TaskNotFoundError(task_id)
            entry = self._entries.pop(task_id)
            # A persistent job is the store's: removing it removes it for every node.
            self.store.remove_tasks([task_id], None if entry.origin is Origin.PERSISTENT else self.node_id)
        logger.info("removed task %s", task_id)

    def reschedule_task(self, task_id: str, rule: ScheduleRule) -> None:
        """Give a task a new rule; its next fire is computed from the new rule. A
        persistent job's stored definition changes with it."""
        entry = self._get(task_id)
        spec = entry.spec
        if spec is not None:
            spec = {**spec, "schedule": rule.to_dict()}
        self._add([(entry.task, rule, spec, entry.problem)], entry.origin, replace_existing=True)

    def pause_task(self, task_id: str) -> None:
        """Stop firing ``task_id`` (a run in progress finishes); survives restarts."""
        self._check_running()
        self._get(task_id)
        self.store.set_paused(task_id, True)
        logger.info("paused task %s", task_id)

    def resume_task(self, task_id: str) -> None:
        """Fire again; occurrences missed while paused follow the misfire rules."""
        self._check_running()
        self._get(task_id)
        self.store.set_paused(task_id, False)
        logger.info("resumed task %s", task_id)
        self._wake.set()

    def run_now(self, task_id: str) -> str:
        """Queue one extra run of ``task_id`` due now; returns its run id. It obeys
        max_instances by waiting, never by being dropped."""
        self._check_running()
        self._get(task_id)
        record = self.store.request_run(task_id, self._now(), self.node_id)
        self._wake.set()
        return record.run_id

    def get_task(self, task_id: str) -> BaseTask:
        return self._get(task_id).task

    def get_tasks(self) -> list[BaseTask]:
        with self._lock:
            return [entry.task for entry in self._entries.values()]

    def _check_running(self) -> None:
        if self._stopped:
            raise TaskSchedulerError(
                "the scheduler is stopped: it can still report (get_task_status, get_tasks, store.history) "
                "but not change anything; create a new TaskScheduler"
            )

    def _get(self, task_id: str) -> Registered:
        with self._lock:
            entry = self._entries.get(task_id)
        if entry is None:
            raise TaskNotFoundError(task_id)
        return entry

    def add_listener(self, callback: Listener, mask: EventType = EventType.ALL) -> None:
        """Call ``callback(event)`` for events in ``mask``; its exceptions are logged."""
        self._events.add(callback, mask)

    def remove_listener(self, callback: Listener) -> None:
        self._events.remove(callback)

    # -- the loop -------------------------------------------------------------------
    def run_due(self, now: datetime | None = None) -> float:
        """One loop step: collect finished runs, enforce timeouts, claim and submit
        due occurrences. Returns the seconds the loop may sleep before the next step.
        Without ``now``, the time is the clock's corrected by this node's skew against
        the store (membership.py). While the store cannot be reached, runs go on and
        nothing is claimed."""
        fixed = now is not None
        now = now or self._now()
        self._maintenance.notice_clock_jump(now + timedelta(seconds=self._membership.skew))  # the node's own clock
        if not self._recovered and self._membership.available:
            self._recovered = True
            try:
                self._maintenance.recover(now)
            except StoreUnavailableError as exc:
                self._recovered = False
                self._membership.lost(exc, len(self._dispatcher.active))
        self._collect_finished(now)
        self._dispatcher.enforce_timeouts(now)
        self._maintenance.step(now)
        if not fixed:  # read again: the skew may be new, and recovery or a slow store may have taken time
            now = self._now()
        interval = self.config.scheduler.check_interval
        if self._stopping.is_set():
            return interval
        if not (self._recovered and self._membership.ready):  # nothing is claimed before the skew is known
            return min(interval, self._membership.retry_in())
        try:
            self._stored.poll()
            claim = self.store.claim_due(now, self._claim_batch, self.node_id, now + self.lease, self._next_fire)
        except StoreUnavailableError as exc:
            self._membership.lost(exc, len(self._dispatcher.active))
            return min(interval, self._membership.retry_in())
        if claim.recorded:
            log_unrun(claim.recorded)
            for record in claim.recorded:
                self._events.emit_record(record, now)
        self._dispatcher.cancel(claim.replace, CANCEL_REPLACED)
        for record in claim.runs:
            self._submit(record, now)
        self._dispatcher.start_delayed(now)
        if claim.runs:
            # Let the workers take the GIL now: the loop would otherwise keep it until it
            # sleeps, or for a whole switch interval (5 ms) claiming the next batch.
            time.sleep(0)
        if claim.more:
            self._claim_batch = min(self._claim_limit, 4 * self._claim_batch)
            self._wake_at = now
            return 0.0
        self._claim_batch = self._first_claim
        wake_times = [when for when in (claim.next_due, self._dispatcher.next_wake()) if when is not None]
        if wake_times:
            interval = min(interval, max(0.0, (min(wake_times) - now).total_seconds()))
        self._wake_at = now + timedelta(seconds=interval)
        if fixed:
            return interval
        # Counted from now, not from the start of the step: the claim, the hand-off and
        # the workers' turn with the GIL took time, and the next fire must not wait for it.
        return max(0.0, (self._wake_at - self._now()).total_seconds())

    def _now(self) -> datetime:
        """The wall clock corrected by this node's skew against the store."""
        return self._membership.now()

    def _record_process(self, run_id: str, pid: int, pid_started: float) -> None:
        """Note a script's process (for a restart's clean-up); skipped while the store
        cannot be reached: the outage is reported once, by membership.py."""
        try:
            self.store.record_process(run_id, pid, pid_started)
        except StoreUnavailableError:
            logger.debug("process %d of run %s not recorded: the store is unavailable", pid, run_id)

    def _definitions(self) -> list[TaskDefinition]:
        with self._lock:
            return list(self._entries.values())

    def _next_fire(self, task_id: str, after: datetime) -> datetime | None:
        entry = self._entries.get(task_id)
        return entry.rule.next_fire_time(after) if entry else None

    def _submit(self, record: RunRecord, now: datetime) -> None:
        entry = self._entries.get(record.task_id)
        if entry is None:  # removed from this process between claim and submit
            record.state, record.finished_at = RunState.FAILED, now
            record.error = "task is not registered in this process"
            self._membership.write([record], [])
            return
        self._dispatcher.submit(record, entry, now)
        self._events.emit_record(record, now, EventType.SUBMITTED)

    def _collect_finished(self, now: datetime) -> None:
        finished = self._dispatcher.take_finished()
        if not finished:
            return
        records = [record for record, _ in finished]
        retries: list[Retry] = []
        with self._lock:
            for record, active in finished:
                entry = active.entry if active else self._entries.get(record.task_id)
                # Retries decided during shutdown are stored too: the next start runs them.
                retry = retry_for(record, entry.retry, now, entry.recover) if entry else None
                if retry is not None:
                    retries.append(retry)
        self._membership.write(records, retries)  # kept in its outbox while the store is down
        self._dispatcher.collected(len(records))
        for retry in retries:
            record = retry.record
            logger.info(
                "task %s attempt %d failed; retry at %s", record.task_id, record.attempt, retry.due_at.isoformat()
            )
        if self._events.bits:
            retried = {retry.record.run_id: retry.due_at for retry in retries}
            for record in records:
                self._events.emit_record(record, now)
                if record.run_id in retried:
                    self._events.emit_record(record, now, EventType.RETRY, retried[record.run_id])

    def wait_for_runs(self, timeout: float | None = None) -> bool:
        """Block until every launched run has finished and been recorded; False on
        timeout. Meant for tests and scripts that drive `run_due` themselves (the
        loop thread, if started, may collect the outcomes first)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            self._collect_finished(self._now())
            if self._dispatcher.in_flight == 0:
                return True
            if not self._dispatcher.wait(deadline):
                return False

    # -- lifecycle ------------------------------------------------------------------
    @property
    def running(self) -> bool:
        return self._loop_thread is not None and self._loop_thread.is_alive()

    @property
    def uptime(self) -> float | None:
        """Seconds since `start` (None before)."""
        return None if self._started_at is None else round(time.monotonic() - self._started_at, 3)

    @property
    def last_step(self) -> float | None:
        """When the loop thread last finished a step, on ``time.monotonic()`` (None
        before its first). A step that failed (the store unreachable) counts: the loop
        is alive and retrying. Health checks and watchdogs compare it with the clock;
        the loop steps at least every ``check_interval`` while it is not stuck."""
        return self._last_step

    def start(self) -> None:
        """Start the loop thread and return. Idempotent while running."""
        if self.running:
            return
        if self._stopped:
            raise TaskSchedulerError("a stopped scheduler cannot be started again; create a new one")
        self._dispatcher.start()
        prepare_process(self.config.scheduler)
        self._started_at = time.monotonic()
        self.store.watch(self._wake.set)  # another process added, triggered or resumed a task
        self._loop_thread = threading.Thread(target=self._loop, name="task-scheduler-loop", daemon=True)
        self._loop_thread.start()
        logger.info(
            "scheduler started: %d task(s), %d worker(s), node %s",
            len(self._entries),
            self.config.scheduler.max_workers,
            self.node_id,
        )

    # -- persistent jobs (persistence.py keeps them in line with the store) -------
    def _forget_stored(self, kept: set[str]) -> tuple[dict[str, dict[str, Any] | None], set[str]]:
        """Drop the persistent tasks whose ids are not in ``kept`` (another process
        removed them); returns the remaining persistent tasks' specs by id, and the ids
        of this process's other tasks."""
        with self._lock:
            mine = {tid: e.spec for tid, e in self._entries.items() if e.origin is Origin.PERSISTENT}
            others = {tid for tid, e in self._entries.items() if e.origin is not Origin.PERSISTENT}
            for task_id in set(mine) - kept:
                del self._entries[task_id]
                del mine[task_id]
                logger.info("task %s was removed from the store by another process", task_id)
        return mine, others

    def _registered(self) -> list[Registered]:
        with self._lock:
            return list(self._entries.values())

    def _loop(self) -> None:
        while not self._stopping.is_set():
            self._wake.clear()
            try:
                delay = self.run_due()
            except Exception:
                # A broken store or a bug must not end the loop; back off and retry.
                logger.exception("scheduler loop step failed; retrying in %ss", self.config.scheduler.check_interval)
                delay = self.config.scheduler.check_interval
            self._last_step = time.monotonic()
            if delay > 0:
                self._wake.wait(delay)

    def stop(self, wait: bool = True, timeout: float | None = None) -> None:
        """Stop firing; with ``wait``, give running tasks up to ``timeout`` seconds
        (default ``shutdown_timeout``), then cancel what is left: scripts are killed
        with their process group, and runs that did not finish are recorded
        INTERRUPTED. Idempotent."""
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
        self._stopping.set()
        self._wake.set()
        if self._loop_thread is not None:
            self._loop_thread.join()
        limit = self.config.scheduler.shutdown_timeout if timeout is None else timeout
        running = len(self._dispatcher.active)
        if running:
            logger.info("stopping: waiting up to %ss for %d running task(s)", limit if wait else 0, running)
        if not wait or not self.wait_for_runs(limit):
            self._dispatcher.cancel_all(CANCEL_SHUTDOWN)
            self.wait_for_runs(self.config.tasks.kill_grace + 1.0)
        now = self._now()
        self._collect_finished(now)
        try:
            self._membership.outbox.flush(self.store)  # a last try, even if the store was down
            left = self.store.leave(self.node_id, now, "the scheduler stopped before the run finished")
        except StoreUnavailableError as exc:
            left = []
            logger.error(
                "%s: %d outcome(s) could not be written; their runs are recorded INTERRUPTED when their leases end",
                exc,
                len(self._membership.outbox),
            )
        for record in left:
            logger.warning("task %s run %s interrupted by shutdown", record.task_id, record.run_id)
            self._events.emit_record(record, now)
        self._dispatcher.shutdown()
        self._maintenance.join()
        if self._owns_store:
            self.store.close()
        logger.info("scheduler stopped")

    def run_forever(self) -> int:
        """Run in the foreground until SIGTERM or SIGINT; SIGHUP reloads the config
        (`reload_config`). Returns 0 after a graceful stop. Must be called from the
        main thread."""
        from task_scheduler.service import serve_forever

        return serve_forever(self)

    def reload_config(self) -> bool:
        """Re-read the config file: added jobs are scheduled, removed ones dropped,
        changed ones rescheduled, task defaults and logging applied. An invalid file is
        logged and changes nothing. Tasks added through the API are left alone. The
        ``scheduler`` and ``store`` sections (workers, zone, store) apply at the next
        start. Returns whether it applied."""
        from task_scheduler.service import reload_config

        return reload_config(self)

    # -- status ---------------------------------------------------------------------
    def get_task_status(self, task_id: str | None = None) -> dict[str, Any]:
        """One task's status and stats (status, run_count, success_count,
        failure_count, success_rate, last_run_time, next_run_time, last_error,
        average_duration, ...), or with no argument the totals (total_tasks,
        running_tasks, ...) with every task's status under ``tasks``. Times are ISO
        8601 in the scheduler's zone; ``success_rate`` is a percentage."""
        return scheduler_status(self, task_id)

    def __enter__(self) -> TaskScheduler:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop(wait=True)
