"""A priority work queue and the handler face: the message-queue system's way.

Two parts:

- `WorkQueue`: thread-safe, lower ``priority`` numbers first, first in first out
  among equal priorities. ``push_task(dict, priority=0) -> task_id``,
  ``pop_task(timeout) -> dict | None``, ``task_done()``, ``get_queue_size()``,
  ``is_empty()``, ``join()``. Usable on its own, by any producers and consumers.
- `HandlerScheduler`: handler tasks by type (`task_scheduler.handlers`) on a
  `TaskScheduler`: ``add_scheduler_task(name, task_type, schedule_type=...)``
  stores a persistent ``handler`` job (`task_scheduler.jobs.JobSpec`), so it
  survives restarts; ``list_tasks(enabled_only=True)``, ``pause_task``,
  ``resume_task``, ``delete_task``.

**How a scheduled handler task flows through the queue.** While a `HandlerScheduler`
runs, handler runs of the process are routed through its queue
(`task_scheduler.handlers.route_handlers`): when a handler task fires, its run (on a
scheduler worker thread) pushes ``{"task_id": run_id, "type": task_type, "params":
params, "scheduler_task_id": job_id, ...}`` with the face's ``priority`` and *waits*
for the item to be done. A consumer executes it: the face's own consumer threads
(``workers=N``: they call the handler registered for the type) or the application's
own ``pop_task`` loop, as in the system this comes from. The item's outcome is the
run's: ``task_done()`` records success, ``task_done(task, error=...)`` or an
exception in a face consumer records failure, and a run whose ``timeout`` passes
first is recorded timed out (its item, if still waiting, is dropped from the queue).
So a run's history, retries and counters mean what the handler did, not that an item
was queued. The price: a waiting run holds a scheduler worker, so ``max_workers``
bounds how many scheduled items can be in the queue at once.

``task_done()`` without an argument completes the item the calling thread took last
(a worker's pop, process, task_done loop), else the oldest taken by any thread, like
`queue.Queue.task_done`; pass the popped dict to name it. A consumer that never calls ``task_done`` for an item leaves
its run waiting until the run's timeout.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import os
import threading
import time
import uuid
from collections import OrderedDict, deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from task_scheduler.errors import TaskError, TaskNotFoundError, TaskSchedulerError
from task_scheduler.handlers import call_handler, route_handlers
from task_scheduler.jobs import JobSpec
from task_scheduler.tasks import TaskContext

if TYPE_CHECKING:
    from task_scheduler.config import SchedulerConfig
    from task_scheduler.scheduler import TaskScheduler

__all__ = ["HandlerScheduler", "WorkQueue", "get_handler_scheduler", "get_queue", "pop_task", "push_task"]

logger = logging.getLogger(__name__)


class QueuedTaskError(TaskError):
    """A consumer reported that a queued handler item failed."""


@dataclass(eq=False)
class _Item:
    task: dict[str, Any]
    priority: int
    context: TaskContext | None = None  # of the scheduled run waiting for it
    done: threading.Event = field(default_factory=threading.Event)
    result: Any = None
    error: BaseException | None = None
    cancelled: bool = False  # dropped before a consumer took it
    taken: bool = False


class WorkQueue:
    """A thread-safe priority queue of task dicts (see the module doc)."""

    def __init__(self) -> None:
        self._condition = threading.Condition(threading.Lock())
        self._heap: list[tuple[int, int, _Item]] = []
        self._order = itertools.count()
        self._waiting = 0  # items in the heap that are not cancelled
        self._unfinished = 0  # pushed and not yet done (queue.Queue's meaning)
        self._taken: OrderedDict[int, _Item] = OrderedDict()  # id(task dict) -> item, oldest first
        self._taken_by: dict[int, deque[_Item]] = {}  # thread ident -> items it took, oldest first
        self._consumers: list[threading.Thread] = []
        self._stop_consumers = threading.Event()

    # -- producers ------------------------------------------------------------------
    def push_task(self, task: Mapping[str, Any], priority: int = 0) -> str:
        """Queue a copy of ``task`` (a dict, conventionally ``{"type": ..., "params":
        {...}}``); a ``task_id`` is added when it has none. Returns the task_id."""
        return str(self._push(task, priority).task["task_id"])

    def _push(self, task: Mapping[str, Any], priority: int, context: TaskContext | None = None) -> _Item:
        if not isinstance(task, Mapping):
            raise TaskError(f"push_task takes a dict, got {task!r}")
        if isinstance(priority, bool) or not isinstance(priority, int):
            raise TaskError(f"priority must be an integer (lower runs first), got {priority!r}")
        item = _Item({**task, "task_id": task.get("task_id") or uuid.uuid4().hex}, priority, context)
        with self._condition:
            heapq.heappush(self._heap, (priority, next(self._order), item))
            self._waiting += 1
            self._unfinished += 1
            self._condition.notify()
        return item

    # -- consumers ------------------------------------------------------------------
    def pop_task(self, timeout: float | None = None) -> dict[str, Any] | None:
        """The next task (lowest priority number, oldest first), waiting up to
        ``timeout`` seconds (None: until one comes); None on timeout."""
        item = self._pop(timeout)
        return None if item is None else item.task

    def _pop(self, timeout: float | None, stop: threading.Event | None = None) -> _Item | None:
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._condition:
            while True:
                while self._heap:
                    _, _, item = heapq.heappop(self._heap)
                    if item.cancelled:
                        continue
                    self._waiting -= 1
                    item.taken = True
                    self._taken[id(item.task)] = item
                    self._taken_by.setdefault(threading.get_ident(), deque()).append(item)
                    return item
                remaining = None if deadline is None else deadline - time.monotonic()
                if (remaining is not None and remaining <= 0) or (stop is not None and stop.is_set()):
                    return None
                self._condition.wait(remaining)

    def task_done(self, task: Mapping[str, Any] | None = None, error: BaseException | str | None = None) -> None:
        """Mark a taken task done: ``task`` (the dict `pop_task` returned), else the
        last one the calling thread took, else the oldest taken by any thread.
        ``error`` marks it failed (a scheduled run waiting for it is recorded
        failed with it). ValueError when no taken task is left, like `queue.Queue`."""
        with self._condition:
            if task is not None:
                item = self._taken.get(id(task))
                if item is None:
                    raise ValueError(f"task {task.get('task_id')!r} was not taken from this queue or is done already")
            else:
                mine = self._taken_by.get(threading.get_ident())
                item = mine[-1] if mine else next(iter(self._taken.values()), None)
                if item is None:
                    raise ValueError("task_done() called more times than tasks were taken")
            self._forget(item)
        if error is not None and not isinstance(error, BaseException):
            error = QueuedTaskError(str(error))
        self._complete(item, None, error)

    def _forget(self, item: _Item) -> None:
        """Drop a taken item from the bookkeeping (lock held)."""
        self._taken.pop(id(item.task), None)
        for ident, items in list(self._taken_by.items()):
            if item in items:
                items.remove(item)
                if not items:
                    del self._taken_by[ident]
                break
        self._unfinished -= 1
        self._condition.notify_all()

    def _complete(self, item: _Item, result: Any, error: BaseException | None) -> None:
        item.result, item.error = result, error
        item.done.set()

    def _abandon(self, item: _Item) -> None:
        """The run waiting for ``item`` gave up (timeout, shutdown): an item still
        waiting is dropped; one a consumer holds stays taken until its task_done."""
        with self._condition:
            if not item.taken and not item.cancelled:
                item.cancelled = True
                self._waiting -= 1
                self._unfinished -= 1
                self._condition.notify_all()
        item.done.set()

    # -- inspection -----------------------------------------------------------------
    def get_queue_size(self) -> int:
        """Tasks waiting to be taken."""
        with self._condition:
            return self._waiting

    def is_empty(self) -> bool:
        return self.get_queue_size() == 0

    def join(self, timeout: float | None = None) -> bool:
        """Wait until every pushed task is done; False on timeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._condition:
            while self._unfinished:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                self._condition.wait(remaining)
            return True

    # -- consumer threads that run registered handlers ------------------------------------
    def start_workers(self, count: int) -> None:
        """Start ``count`` daemon consumer threads: each takes tasks and runs the
        handler registered for ``task["type"]`` on ``task["params"]``."""
        if count < 0:
            raise TaskError(f"workers must be >= 0, got {count!r}")
        self._stop_consumers.clear()
        first = len(self._consumers)
        for number in range(first, first + count):
            thread = threading.Thread(target=self._consume, name=f"task-queue-worker-{number}", daemon=True)
            self._consumers.append(thread)
            thread.start()

    def stop_workers(self, timeout: float | None = 10.0) -> None:
        """Stop the consumer threads after the task each is running."""
        self._stop_consumers.set()
        with self._condition:
            self._condition.notify_all()
        for thread in self._consumers:
            thread.join(timeout)
        self._consumers = []

    def _consume(self) -> None:
        while not self._stop_consumers.is_set():
            item = self._pop(0.5, self._stop_consumers)
            if item is None:
                continue
            task = item.task
            error: BaseException | None = None
            try:
                params = task.get("params") or {}
                result = call_handler(str(task.get("type")), dict(params), item.context, direct=True)
            except Exception as exc:  # noqa: BLE001 - the outcome belongs to the item, and so to its run
                logger.warning("queued task %s (%s) failed: %s: %s", task["task_id"], task.get("type"),
                               type(exc).__name__, exc)  # fmt: skip
                result, error = None, exc
            with self._condition:
                if id(task) in self._taken:
                    self._forget(item)
            self._complete(item, result, error)

    # -- the route of scheduled handler runs ----------------------------------------------
    def run_handler(
        self, task_type: str, params: dict[str, Any], context: TaskContext | None, priority: int = 0
    ) -> Any:
        """Queue one handler run and wait for a consumer to finish it (see the module
        doc); returns the handler's result or raises its error."""
        task: dict[str, Any] = {"type": task_type, "params": params}
        if context is not None:
            task.update(task_id=context.run_id, scheduler_task_id=context.task_id, run_id=context.run_id,
                        attempt=context.attempt, scheduled_for=context.scheduled_for.isoformat())  # fmt: skip
        item = self._push(task, priority, context)
        if context is not None:
            context.on_cancel(lambda: self._abandon(item))
        item.done.wait()
        if context is not None and context.cancelled:  # recorded timed out or interrupted, by the reason
            raise TaskError(f"gave up waiting for queued task {item.task['task_id']}: {context.cancel_reason}")
        if item.error is not None:
            raise item.error
        return item.result


# -- the handler face ------------------------------------------------------------------------

_SCHEDULE_TYPES = ("interval", "cron", "once")


class HandlerScheduler:
    """Handler tasks on a `TaskScheduler`, flowing through a `WorkQueue`.

    ``scheduler``: a TaskScheduler, or a config (object or file path) to build one
    from, or None for the default (`task_scheduler.decorators.get_scheduler`). Use a
    config with a SQLite store for tasks that survive restarts. ``queue``: default
    the process queue (`get_queue`). ``workers``: consumer threads that run
    registered handlers (0: the application consumes with ``pop_task``).
    ``priority``: the queue priority of scheduled items.
    """

    def __init__(
        self,
        scheduler: TaskScheduler | SchedulerConfig | str | os.PathLike[str] | None = None,
        *,
        queue: WorkQueue | None = None,
        workers: int = 0,
        priority: int = 0,
    ) -> None:
        from task_scheduler.scheduler import TaskScheduler

        if isinstance(scheduler, TaskScheduler):
            self.scheduler = scheduler
        elif scheduler is not None:
            self.scheduler = TaskScheduler(scheduler)
        else:
            from task_scheduler.decorators import get_scheduler

            self.scheduler = get_scheduler()
        self.queue = queue or get_queue()
        self.workers = workers
        self.priority = priority
        self._routing = False

    def _route(self, task_type: str, params: dict[str, Any], context: TaskContext | None) -> Any:
        return self.queue.run_handler(task_type, params, context, self.priority)

    # -- lifecycle ------------------------------------------------------------------
    def start_workers(self) -> None:
        """Route handler runs through the queue and start the consumer threads,
        without starting the scheduler loop (tests drive ``scheduler.run_due``)."""
        if not self._routing:
            route_handlers(self._route)
            self._routing = True
            self.queue.start_workers(self.workers)

    def start(self) -> None:
        """`start_workers`, then start the scheduler loop."""
        self.start_workers()
        self.scheduler.start()

    def stop(self, wait: bool = True, timeout: float | None = None) -> None:
        """Stop the scheduler (runs waiting for their items are cancelled after
        ``timeout``), then the consumers and the routing."""
        self.scheduler.stop(wait=wait, timeout=timeout)
        if self._routing:
            self.queue.stop_workers()
            route_handlers(None)
            self._routing = False

    # -- tasks ----------------------------------------------------------------------
    def add_scheduler_task(
        self,
        name: str,
        task_type: str,
        schedule_type: str = "interval",
        interval_seconds: float | None = None,
        cron_expression: str | None = None,
        execute_at: datetime | float | str | None = None,
        params: Mapping[str, Any] | None = None,
        max_runs: int | None = None,
        description: str = "",
        *,
        task_id: str | None = None,
        enabled: bool = True,
        replace_existing: bool = False,
        **options: Any,
    ) -> str:
        """Store a handler task and return its id (``task_id``, default ``name``).
        It is a persistent job: every later process on the same store runs it.
        Adding the same definition again (a start-up script run at every start)
        changes nothing; another definition under a taken id is a TaskError unless
        ``replace_existing``. ``execute_at``: a datetime, an ISO string, or Unix
        seconds. ``max_runs`` 0 or None: no limit. ``options``: job options
        (``timeout``, ``max_retries``, ``retry_delay`` ...)."""
        if schedule_type not in _SCHEDULE_TYPES:
            raise TaskError(f"schedule_type must be one of {', '.join(_SCHEDULE_TYPES)}, got {schedule_type!r}")
        schedule: dict[str, Any]
        if schedule_type == "interval":
            _require(interval_seconds, "interval_seconds", schedule_type)
            schedule = {"interval": {"seconds": interval_seconds}}
        elif schedule_type == "cron":
            _require(cron_expression, "cron_expression", schedule_type)
            schedule = {"cron": cron_expression}
        else:
            if execute_at is None:
                raise TaskError("execute_at is required for schedule_type='once'")
            schedule = {"once": _moment(execute_at)}
        job_id = task_id or name
        data = {"id": job_id, "type": "handler", "handler": task_type, "name": name, "description": description,
                "params": dict(params or {}), "schedule": schedule, "max_runs": max_runs or None, "enabled": enabled,
                **options}  # fmt: skip
        spec = JobSpec.from_dict(data, f"task {job_id!r}").to_dict()
        stored = self.scheduler.store.job_specs().get(job_id)
        if stored == spec and _has(self.scheduler, job_id):
            return job_id
        if _has(self.scheduler, job_id) and not replace_existing:
            raise TaskError(
                f"a task with id {job_id!r} exists with another definition; pass replace_existing=True to change it "
                "or task_id=... to add another"
            )
        self.scheduler.add_job(spec, replace_existing=replace_existing or _has(self.scheduler, job_id))
        return job_id

    def list_tasks(self, enabled_only: bool = False) -> list[dict[str, Any]]:
        """The handler tasks: task_id, name, task_type, schedule_type, schedule,
        params, description, enabled (not paused), finished, run_count,
        success_count, failure_count, max_runs, last_run_at and next_run_at (Unix
        seconds, or None), last_error. ``enabled_only``: neither paused nor finished."""
        specs = {tid: spec for tid, spec in self.scheduler.store.job_specs().items() if spec.get("type") == "handler"}
        states = self.scheduler.store.task_states()
        tasks = []
        for task_id in sorted(specs):
            state = states.get(task_id)
            if state is None:
                continue
            spec = specs[task_id]
            schedule = spec["schedule"]
            enabled = not state.paused and not state.finished
            if enabled_only and not enabled:
                continue
            tasks.append({
                "task_id": task_id,
                "name": spec.get("name") or task_id,
                "task_type": spec["handler"],
                "schedule_type": next(kind for kind in _SCHEDULE_TYPES if kind in schedule),
                "schedule": state.schedule,
                "params": spec.get("params", {}),
                "description": spec.get("description", ""),
                "enabled": enabled,
                "paused": state.paused,
                "finished": state.finished,
                "run_count": state.run_count,
                "success_count": state.success_count,
                "failure_count": state.failure_count,
                "max_runs": spec.get("max_runs") or 0,
                "last_run_at": _unix(state.last_run_at),
                "next_run_at": None if state.paused else _unix(state.next_run_at),
                "last_error": state.last_error,
                "problem": state.problem,
            })  # fmt: skip
        return tasks

    def get_task(self, task_id: str) -> dict[str, Any]:
        for task in self.list_tasks():
            if task["task_id"] == task_id:
                return task
        raise TaskNotFoundError(task_id)

    def pause_task(self, task_id: str) -> None:
        self.scheduler.pause_task(task_id)

    def resume_task(self, task_id: str) -> None:
        self.scheduler.resume_task(task_id)

    def delete_task(self, task_id: str) -> None:
        """Remove the task for good (from the store, for every process); history is kept."""
        self.scheduler.remove_task(task_id)

    def run_now(self, task_id: str) -> str:
        return self.scheduler.run_now(task_id)


def _require(value: Any, key: str, schedule_type: str) -> None:
    if value is None:
        raise TaskError(f"{key} is required for schedule_type={schedule_type!r}")


def _moment(value: datetime | float | str) -> str:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return datetime.fromtimestamp(value, UTC).isoformat()
    if isinstance(value, str):
        return value
    raise TaskError(f"execute_at must be a datetime, an ISO 8601 string or Unix seconds, got {value!r}")


def _unix(moment: datetime | None) -> int | None:
    return None if moment is None else int(moment.timestamp())


def _has(scheduler: TaskScheduler, task_id: str) -> bool:
    try:
        scheduler.get_task(task_id)
    except TaskNotFoundError:
        return False
    return True


# -- process defaults, as the system this comes from has them ---------------------------------

_lock = threading.Lock()
_queue: WorkQueue | None = None
_handler_scheduler: HandlerScheduler | None = None


def get_queue() -> WorkQueue:
    """The process's work queue (created on first use)."""
    global _queue
    with _lock:
        if _queue is None:
            _queue = WorkQueue()
        return _queue


def get_handler_scheduler(workers: int = 0) -> HandlerScheduler:
    """The process's `HandlerScheduler` over the default scheduler and `get_queue`,
    started (created on first use; ``workers`` applies then)."""
    global _handler_scheduler
    with _lock:
        if _handler_scheduler is None:
            _handler_scheduler = HandlerScheduler(workers=workers)
    if not _handler_scheduler.scheduler.running:
        try:
            _handler_scheduler.start()
        except TaskSchedulerError:
            _handler_scheduler = None
            raise
    return _handler_scheduler


def push_task(task: Mapping[str, Any], priority: int = 0) -> str:
    """`WorkQueue.push_task` on the process queue."""
    return get_queue().push_task(task, priority)


def pop_task(timeout: float | None = None) -> dict[str, Any] | None:
    """`WorkQueue.pop_task` on the process queue."""
    return get_queue().pop_task(timeout)
