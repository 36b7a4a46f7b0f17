"""APScheduler's jobs, events, job stores and executors, as they mean here: `Job`
snapshots, APScheduler's event codes and `JobExecutionEvent`, the job store
classes (`MemoryJobStore`, `SQLAlchemyJobStore` by URL) translated to our
``store.url``, and the executors (`ThreadPoolExecutor` sets ``max_workers``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, TypeVar

from task_scheduler.errors import TaskError, TaskNotFoundError, TaskSchedulerError
from task_scheduler.events import EventType

if TYPE_CHECKING:
    from task_scheduler.compat.apscheduler.schedulers import BackgroundScheduler
    from task_scheduler.compat.apscheduler.triggers import BaseTrigger

__all__ = [
    "EVENT_ALL",
    "EVENT_JOB_ERROR",
    "EVENT_JOB_EXECUTED",
    "EVENT_JOB_MAX_INSTANCES",
    "EVENT_JOB_MISSED",
    "EVENT_JOB_SUBMITTED",
    "AsyncIOExecutor",
    "ConflictingIdError",
    "Job",
    "JobExecutionEvent",
    "JobFailure",
    "JobLookupError",
    "MemoryJobStore",
    "SQLAlchemyJobStore",
    "ThreadPoolExecutor",
]

F = TypeVar("F", bound=Callable[..., Any])

# APScheduler's event codes (the same numbers, so ``event.code == EVENT_JOB_ERROR`` holds).
EVENT_JOB_EXECUTED = 2**12
EVENT_JOB_ERROR = 2**13
EVENT_JOB_MISSED = 2**14
EVENT_JOB_SUBMITTED = 2**15
EVENT_JOB_MAX_INSTANCES = 2**16
EVENT_ALL = 2**18 - 1
CODES = {
    EventType.EXECUTED: EVENT_JOB_EXECUTED,
    EventType.ERROR: EVENT_JOB_ERROR,
    EventType.TIMEOUT: EVENT_JOB_ERROR,
    EventType.INTERRUPTED: EVENT_JOB_ERROR,
    EventType.MISSED: EVENT_JOB_MISSED,
    EventType.SUBMITTED: EVENT_JOB_SUBMITTED,
    EventType.MAX_INSTANCES: EVENT_JOB_MAX_INSTANCES,
}


class JobLookupError(TaskNotFoundError):
    """No job with that id."""

    def __str__(self) -> str:
        return f"No job by the id of {self.task_id} was found"


class ConflictingIdError(TaskError):
    """A job with that id exists (pass ``replace_existing=True``)."""


class JobFailure(Exception):  # noqa: N818 - APScheduler calls this field "exception"
    """What `JobExecutionEvent.exception` holds for a failed run: the error text."""


# -- job stores and executors (what they mean here) ---------------------------------------


@dataclass(frozen=True)
class MemoryJobStore:
    """Jobs kept in this process only (our memory store)."""


@dataclass(frozen=True)
class SQLAlchemyJobStore:
    """A database job store by URL, SQLAlchemy's form: ``sqlite:///jobs.db`` (relative),
    ``sqlite:////abs/jobs.db``; task_scheduler's own store serves it (no SQLAlchemy)."""

    url: str = "sqlite:///jobs.sqlite"
    tablename: str | None = None  # accepted and ignored: our schema is our own


@dataclass(frozen=True)
class ThreadPoolExecutor:
    """The worker pool: ``max_workers`` threads (``scheduler.max_workers``)."""

    max_workers: int = 10


@dataclass(frozen=True)
class AsyncIOExecutor:
    """Accepted for coroutine functions: they run on the worker threads, each in its
    own event loop."""


def store_url(store: Any) -> str:
    """Our ``store.url`` for an APScheduler job store (see the module doc)."""
    if isinstance(store, MemoryJobStore) or store in ("memory", "memory://"):
        return "memory://"
    url = store.url if isinstance(store, SQLAlchemyJobStore) else store
    if not isinstance(url, str):
        raise TaskSchedulerError(f"unsupported job store {store!r}: use a URL, SQLAlchemyJobStore or MemoryJobStore")
    if url.startswith("sqlite:///"):
        return "sqlite://" + url[len("sqlite:///") :]  # SQLAlchemy: 3 slashes relative, 4 absolute
    if url.startswith(("postgresql://", "postgres://", "postgresql+")):
        return url
    raise TaskSchedulerError(f"unsupported job store URL {url!r}: use sqlite:///PATH (or postgresql://...)")


# -- jobs and events -----------------------------------------------------------------------


@dataclass(frozen=True)
class JobExecutionEvent:
    """What a listener receives (APScheduler's field names)."""

    code: int
    job_id: str
    jobstore: str
    scheduled_run_time: datetime
    retval: Any = None  # the result's repr
    exception: BaseException | None = None
    traceback: str | None = None


UNSET: Any = object()
# What modify_job carries over from a job's task when it rebuilds it.
TASK_OPTIONS = ("description", "timeout", "max_retries", "retry_delay", "retry_backoff", "max_retry_delay",
                 "max_instances", "concurrency_policy", "misfire_grace_time", "coalesce", "catch_up", "max_runs",
                 "recover", "tags", "enabled")  # fmt: skip


class Job:
    """A snapshot of one job (as APScheduler's ``get_jobs`` returns); its methods act
    on the scheduler by id."""

    def __init__(self, scheduler: BackgroundScheduler, task: Any, trigger: BaseTrigger | None,
                 next_run_time: Any = UNSET, paused: Any = UNSET) -> None:  # fmt: skip
        self._scheduler = scheduler
        self.id: str = task.task_id
        self.name: str = task.name
        self.func: Callable[..., Any] | None = getattr(task, "func", None)
        self.args: tuple[Any, ...] = tuple(getattr(task, "args", ()))
        self.kwargs: dict[str, Any] = dict(getattr(task, "kwargs", {}))
        self.trigger = trigger
        self.executor = "default"
        self.jobstore = "default"
        self.max_instances: int = task.max_instances
        self.misfire_grace_time: float | None = task.misfire_grace_time
        self.coalesce: bool | None = task.coalesce
        self._next_run_time, self._paused = next_run_time, paused

    def _state(self) -> None:
        state = self._scheduler.task_scheduler.store.task_states().get(self.id)
        self._paused = bool(state and state.paused)
        nxt = state.next_run_at if state and not state.paused and not state.finished else None
        self._next_run_time = nxt.astimezone(self._scheduler.task_scheduler.timezone) if nxt else None

    @property
    def next_run_time(self) -> datetime | None:
        """When it fires next, in the scheduler's zone; None while paused or finished."""
        if self._next_run_time is UNSET:
            self._state()
        return self._next_run_time  # type: ignore[no-any-return]

    @property
    def paused(self) -> bool:
        if self._paused is UNSET:
            self._state()
        return bool(self._paused)

    def modify(self, **changes: Any) -> Job:
        return self._scheduler.modify_job(self.id, **changes)

    def reschedule(self, trigger: str | BaseTrigger, **trigger_args: Any) -> Job:
        return self._scheduler.reschedule_job(self.id, trigger=trigger, **trigger_args)

    def pause(self) -> Job:
        return self._scheduler.pause_job(self.id)

    def resume(self) -> Job:
        return self._scheduler.resume_job(self.id)

    def remove(self) -> None:
        self._scheduler.remove_job(self.id)

    def __repr__(self) -> str:
        return f"<Job (id={self.id} name={self.name})>"
