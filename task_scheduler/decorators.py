"""Decorators and stats: the way of the async decorator schedulers (chronflow).

::

    from task_scheduler.decorators import cron, interval, once, scheduled

    @interval(30)                      # every 30 s; also interval(seconds=10, name="my_task")
    async def sync(): ...

    @cron("*/5 * * * * *")             # six fields: seconds first
    def tick(): ...

Each decorator returns the function unchanged and registers it as a `FunctionTask`
(sync or ``async def``) on the **default scheduler** (`get_scheduler`), or on the one
given as ``scheduler=``. The default is the `TaskScheduler` set with
`set_default_scheduler` (a `task_scheduler.aio.AsyncScheduler` sets itself when it is
created), else a memory-store ``TaskScheduler()`` made on first use. Every decorated
function is also remembered as a *declaration*, so a scheduler that becomes the
default later picks up what was declared at import: decorate at module level, create
the scheduler afterwards, start it, and the tasks run.

**Names and duplicates.** A task's id is ``name`` or the function's ``__name__``.
Decorating the same function (same module and qualified name) again under the same
name - a module imported twice, a decorator inside a function called twice, a
reload - is still one task, with the latest decoration's settings. A *different*
function under a taken name raises `TaskError` at decoration time, naming both
functions (silent duplicate registration was the top pitfall of the systems these
decorators come from).

**Stats** come from the store's counters, the same numbers ``task-scheduler list``
and ``show`` print: `TaskStats` (``list_tasks``, ``get_task(name).metrics``,
``get_task_by_status``, ``get_task_by_tag``, ``get_stats``) and module-level
functions of the same names for the default scheduler. Statuses are ours:
``scheduled``, ``running``, ``paused``, ``finished``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, tzinfo
from typing import TYPE_CHECKING, Any, TypeVar

from task_scheduler.errors import TaskError, TaskNotFoundError
from task_scheduler.schedules import CronRule, IntervalRule, OnceRule, ScheduleRule
from task_scheduler.tasks import BaseTask, FunctionTask, RetryPolicy

if TYPE_CHECKING:
    from task_scheduler.scheduler import TaskScheduler

__all__ = [
    "Declaration",
    "TaskInfo",
    "TaskMetrics",
    "TaskStats",
    "cron",
    "declarations",
    "get_scheduler",
    "get_stats",
    "get_task",
    "get_task_by_status",
    "get_task_by_tag",
    "interval",
    "list_tasks",
    "once",
    "scheduled",
    "set_default_scheduler",
]

F = TypeVar("F", bound=Callable[..., Any])

_lock = threading.RLock()
_default: TaskScheduler | None = None
_declared: dict[str, Declaration] = {}  # task id -> the latest declaration under it


# -- declarations -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Declaration:
    """A decorated function: what to run, on which rule, with which task options."""

    task_id: str
    func: Callable[..., Any]
    rule: ScheduleRule
    options: Mapping[str, Any]
    name: str | None = None  # shown name; default: the task id

    @property
    def reference(self) -> str:
        """``module.qualname``: what makes two functions "the same" here."""
        return _reference(self.func)

    def task(self) -> FunctionTask:
        return FunctionTask(self.task_id, self.name, self.func, **self.options)


def declarations() -> list[Declaration]:
    """What was declared with decorators without ``scheduler=`` (sorted by task id)."""
    with _lock:
        return [_declared[task_id] for task_id in sorted(_declared)]


def get_scheduler() -> TaskScheduler:
    """The default scheduler: the one `set_default_scheduler` set, else a
    ``TaskScheduler()`` (memory store, no files) created now with every declaration."""
    global _default
    with _lock:
        if _default is None:
            from task_scheduler.scheduler import TaskScheduler

            _default = TaskScheduler()
            _install(_default)
        return _default


def set_default_scheduler(scheduler: TaskScheduler | None) -> None:
    """Make ``scheduler`` the default: every declaration so far is registered on it
    (TaskError if one clashes with a task it has), later ones go straight to it.
    ``None`` forgets the default (the next `get_scheduler` makes a new one)."""
    global _default
    with _lock:
        if scheduler is not None:
            _install(scheduler)
        _default = scheduler


def forget_declarations() -> None:
    """Forget every declaration (tests; a scheduler keeps the tasks it has)."""
    with _lock:
        _declared.clear()


def _install(scheduler: TaskScheduler) -> None:
    for declaration in declarations():
        _register(scheduler, declaration)


def _register(scheduler: TaskScheduler, declaration: Declaration, task: FunctionTask | None = None) -> None:
    """Add ``declaration`` (as ``task``, when built already) to ``scheduler``,
    replacing its own earlier decoration."""
    task = task or declaration.task()
    try:
        scheduler.add_task(task, declaration.rule)  # the usual case: a new name (a failed add changes nothing)
        return
    except TaskError:
        try:
            existing = scheduler.get_task(declaration.task_id)
        except TaskNotFoundError:
            raise  # the add failed for another reason
    _check_same(declaration.task_id, existing, declaration.func)
    scheduler.add_task(task, declaration.rule, replace_existing=True)


def _check_same(task_id: str, existing: Any, func: Callable[..., Any]) -> None:
    """TaskError unless ``existing`` (a task or a declaration) runs ``func``."""
    current = getattr(existing, "func", None)
    if current is not None and _reference(current) == _reference(func):
        return
    what = _reference(current) if current is not None else f"a {type(existing).__name__}"
    raise TaskError(
        f"task {task_id!r} is already registered for {what}; {_reference(func)} cannot take the same name: "
        f"give it another one (name=...)"
    )


def _reference(func: Callable[..., Any]) -> str:
    return f"{getattr(func, '__module__', '?')}.{getattr(func, '__qualname__', repr(func))}"


# -- the decorators -----------------------------------------------------------------------


def scheduled(
    rule: ScheduleRule | None = None,
    *,
    interval: float | None = None,
    cron: str | None = None,
    once: datetime | str | None = None,
    at: datetime | str | None = None,
    name: str | None = None,
    retry_policy: RetryPolicy | None = None,
    scheduler: TaskScheduler | None = None,
    default_name: Callable[[Callable[..., Any]], str] | None = None,
    **options: Any,
) -> Callable[[F], F]:
    """Schedule the decorated function: give a ``rule``, or exactly one of
    ``interval`` (seconds), ``cron`` (an expression) or ``once``/``at`` (a datetime).

    ``options`` are `FunctionTask` options: ``timeout``, ``max_instances``, ``tags``,
    ``max_runs``, ``misfire_grace_time``, ``description`` ... ``retry_policy``
    (`RetryPolicy`, also in its ``max_attempts``/``strategy``/``wait_min``/``wait_max``
    words) sets ``max_retries``, ``retry_delay``, ``retry_backoff`` and
    ``max_retry_delay``. ``default_name`` makes the task id from the function when
    ``name`` is not given (default: ``func.__name__``)."""
    given = [value for value in (rule, interval, cron, once, at) if value is not None]
    if len(given) != 1:
        raise TaskError("scheduled() needs one of: a rule, cron=, interval=, once= (or at=)")
    if rule is None:
        if cron is not None:
            rule = CronRule(cron=cron)
        elif interval is not None:
            rule = IntervalRule(seconds=interval)
        else:
            rule = OnceRule(run_at=once if once is not None else at)
    if retry_policy is not None:
        if not isinstance(retry_policy, RetryPolicy):
            raise TaskError(f"retry_policy must be a RetryPolicy, got {retry_policy!r}")
        options = {**retry_policy.task_options(), **options}
    chosen_rule = rule

    def decorate(func: F) -> F:
        if not callable(func):
            raise TaskError(f"@scheduled decorates a function, got {func!r}")
        task_id = name or (default_name(func) if default_name else func.__name__)
        shown = func.__name__ if default_name is not None else None
        declaration = Declaration(task_id, func, chosen_rule, dict(options), shown)
        task = declaration.task()  # checks the options now, at decoration time
        if scheduler is not None:
            _register(scheduler, declaration, task)
            return func
        with _lock:
            previous = _declared.get(task_id)
            if previous is not None:
                _check_same(task_id, previous, func)
            target = _default
            if target is not None:
                _register(target, declaration, task)
            _declared[task_id] = declaration
        return func

    return decorate


def interval(
    seconds: float | None = None,
    *,
    minutes: float = 0,
    hours: float = 0,
    days: float = 0,
    weeks: float = 0,
    name: str | None = None,
    start: datetime | str | None = None,
    end: datetime | str | None = None,
    timezone: str | tzinfo | None = None,
    jitter: float = 0,
    **options: Any,
) -> Callable[[F], F]:
    """Every ``seconds`` (and/or minutes, hours, days, weeks) of elapsed time; the
    first run is one period after the task is added, or on the grid of ``start``."""
    rule = IntervalRule(seconds=seconds or 0, minutes=minutes, hours=hours, days=days, weeks=weeks, start=start,
                        end=end, timezone=timezone, jitter=jitter)  # fmt: skip
    return scheduled(rule, name=name, **options)


def cron(
    expression: str,
    *,
    name: str | None = None,
    start: datetime | str | None = None,
    end: datetime | str | None = None,
    timezone: str | tzinfo | None = None,
    jitter: float = 0,
    **options: Any,
) -> Callable[[F], F]:
    """When wall-clock time matches ``expression``: five fields, or six with seconds
    first (``"*/5 * * * * *"``); day of week 0 and 7 are Sunday."""
    return scheduled(CronRule(cron=expression, start=start, end=end, timezone=timezone, jitter=jitter), name=name,
                     **options)  # fmt: skip


def once(
    at: datetime | str | None = None,
    *,
    name: str | None = None,
    timezone: str | tzinfo | None = None,
    **options: Any,
) -> Callable[[F], F]:
    """Once, at ``at`` (naive datetimes are read in the scheduler's zone). A time in
    the past runs at once if within ``misfire_grace_time``, else is recorded missed."""
    if at is None:
        raise TaskError("once() needs at=datetime(...)")
    return scheduled(OnceRule(run_at=at, timezone=timezone), name=name, **options)


# -- stats ------------------------------------------------------------------------------


@dataclass(frozen=True)
class TaskMetrics:
    """A task's counters, from the store (what ``task-scheduler show`` prints).
    ``total_runs`` counts completed occurrences (a retried failure counts once, with
    its final outcome); ``average_execution_time`` is in seconds."""

    total_runs: int
    successful_runs: int
    failed_runs: int
    average_execution_time: float
    missed_runs: int = 0
    skipped_runs: int = 0
    retried_attempts: int = 0

    @property
    def success_rate(self) -> float:
        """Percent of completed runs that succeeded (0.0 before the first run)."""
        return 100.0 * self.successful_runs / self.total_runs if self.total_runs else 0.0


@dataclass(frozen=True)
class TaskInfo:
    """One task as the stats face shows it."""

    name: str
    status: str  # scheduled | running | paused | finished
    tags: tuple[str, ...]
    schedule: str
    next_run_time: str | None  # ISO 8601 in the scheduler's zone
    metrics: TaskMetrics
    task: BaseTask

    def to_dict(self) -> dict[str, Any]:
        """The dict ``list_tasks`` returns for it."""
        metrics = self.metrics
        return {
            "name": self.name,
            "status": self.status,
            "tags": list(self.tags),
            "schedule": self.schedule,
            "next_run_time": self.next_run_time,
            "total_runs": metrics.total_runs,
            "successful_runs": metrics.successful_runs,
            "failed_runs": metrics.failed_runs,
            "success_rate": metrics.success_rate,
            "average_execution_time": metrics.average_execution_time,
        }


class TaskStats:
    """The stats face over one `TaskScheduler` (the default when None is given)."""

    def __init__(self, scheduler: TaskScheduler | None = None) -> None:
        self._scheduler = scheduler

    @property
    def scheduler(self) -> TaskScheduler:
        return self._scheduler or get_scheduler()

    def list_tasks(self) -> list[dict[str, Any]]:
        """Every task as a dict: name, status, tags, schedule, next_run_time,
        total_runs, successful_runs, failed_runs, success_rate (percent),
        average_execution_time."""
        return [info.to_dict() for info in self._infos()]

    def get_task(self, name: str) -> TaskInfo:
        """One task with its ``metrics``; TaskNotFoundError when unknown."""
        scheduler = self.scheduler
        return _info(scheduler.get_task(name), scheduler.get_task_status(name))

    def get_task_by_status(self, status: str) -> list[TaskInfo]:
        return [info for info in self._infos() if info.status == status]

    def get_task_by_tag(self, tag: str) -> list[TaskInfo]:
        return [info for info in self._infos() if tag in info.tags]

    def get_stats(self) -> dict[str, Any]:
        """running, total_tasks, queue_size (runs waiting for a worker),
        active_workers (runs on a worker), max_workers, backend (the store class),
        tasks (as `list_tasks`)."""
        scheduler = self.scheduler
        status = scheduler.get_task_status()
        queued = status.get("queued_runs", 0)
        return {
            "running": scheduler.running,
            "total_tasks": status["total_tasks"],
            "queue_size": queued,
            "active_workers": max(0, status["running_runs"] - queued),
            "max_workers": scheduler.config.scheduler.max_workers,
            "backend": type(scheduler.store).__name__,
            "tasks": [info.to_dict() for info in self._infos(status)],
        }

    def _infos(self, status: dict[str, Any] | None = None) -> list[TaskInfo]:
        scheduler = self.scheduler
        statuses = (status or scheduler.get_task_status())["tasks"]
        tasks = {task.task_id: task for task in scheduler.get_tasks()}
        return [_info(tasks[tid], statuses[tid]) for tid in sorted(statuses) if tid in tasks]


def _info(task: BaseTask, status: Mapping[str, Any]) -> TaskInfo:
    metrics = TaskMetrics(
        total_runs=status["run_count"],
        successful_runs=status["success_count"],
        failed_runs=status["failure_count"],
        average_execution_time=status["average_duration"] or 0.0,
        missed_runs=status["missed_count"],
        skipped_runs=status["skipped_count"],
        retried_attempts=status["retry_count"],
    )
    return TaskInfo(task.task_id, status["status"], tuple(task.tags), status["schedule"], status["next_run_time"],
                    metrics, task)  # fmt: skip


def list_tasks(scheduler: TaskScheduler | None = None) -> list[dict[str, Any]]:
    """`TaskStats.list_tasks` of ``scheduler`` (default: the default scheduler)."""
    return TaskStats(scheduler).list_tasks()


def get_task(name: str, scheduler: TaskScheduler | None = None) -> TaskInfo:
    return TaskStats(scheduler).get_task(name)


def get_task_by_status(status: str, scheduler: TaskScheduler | None = None) -> list[TaskInfo]:
    return TaskStats(scheduler).get_task_by_status(status)


def get_task_by_tag(tag: str, scheduler: TaskScheduler | None = None) -> list[TaskInfo]:
    return TaskStats(scheduler).get_task_by_tag(tag)


def get_stats(scheduler: TaskScheduler | None = None) -> dict[str, Any]:
    return TaskStats(scheduler).get_stats()


def qualified_name(func: Callable[..., Any]) -> str:
    """``module.qualname``: the task id `TaskScheduler.scheduled` gives a function."""
    return f"{func.__module__}.{func.__qualname__}"
