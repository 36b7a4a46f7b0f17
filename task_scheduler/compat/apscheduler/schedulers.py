"""APScheduler's scheduler classes on one `TaskScheduler` each: `BackgroundScheduler`
(``AsyncIOScheduler`` is the same class), `BlockingScheduler`, and `SchedulerManager`
for independent named instances in one process."""

from __future__ import annotations

import logging
import os
import socket
import threading
import uuid
from collections.abc import Callable, Mapping
from datetime import datetime, tzinfo
from typing import TYPE_CHECKING, Any, TypeVar

from task_scheduler.compat.apscheduler.jobs import (
    CODES,
    EVENT_ALL,
    EVENT_JOB_ERROR,
    TASK_OPTIONS,
    UNSET,
    AsyncIOExecutor,
    ConflictingIdError,
    Job,
    JobExecutionEvent,
    JobFailure,
    JobLookupError,
    MemoryJobStore,
    ThreadPoolExecutor,
    store_url,
)
from task_scheduler.compat.apscheduler.triggers import BaseTrigger, IntervalTrigger, RuleTrigger, trigger_from
from task_scheduler.config import SchedulerConfig, StoreConfig, load_config
from task_scheduler.errors import TaskError, TaskNotFoundError, TaskSchedulerError
from task_scheduler.events import EventType, SchedulerEvent
from task_scheduler.jobs import resolve_reference
from task_scheduler.schedules import ScheduleRule
from task_scheduler.tasks import FunctionTask

if TYPE_CHECKING:
    from task_scheduler.clock import Clock
    from task_scheduler.scheduler import TaskScheduler

__all__ = ["AsyncIOScheduler", "BackgroundScheduler", "BlockingScheduler", "SchedulerManager"]

logger = logging.getLogger(__name__)
F = TypeVar("F", bound=Callable[..., Any])


class BackgroundScheduler:
    """APScheduler 3's BackgroundScheduler calls on one `TaskScheduler`.

    ``jobstores``/``executors``/``job_defaults``/``timezone`` as in APScheduler (see
    the module doc); ``config`` (a config object or file) for everything else, or
    ``task_scheduler`` to wrap an existing scheduler. ``name`` tells instances in one
    process apart (`SchedulerManager`).
    """

    def __init__(
        self,
        gconfig: Mapping[str, Any] | None = None,
        *,
        jobstores: Mapping[str, Any] | None = None,
        executors: Mapping[str, Any] | None = None,
        job_defaults: Mapping[str, Any] | None = None,
        timezone: str | tzinfo | None = None,
        config: SchedulerConfig | str | os.PathLike[str] | None = None,
        task_scheduler: TaskScheduler | None = None,
        clock: Clock | None = None,
        name: str = "default",
    ) -> None:
        if gconfig:
            raise TaskSchedulerError("APScheduler's gconfig dict is not supported: pass the keyword arguments")
        unknown = set(job_defaults or {}) - {"coalesce", "max_instances", "misfire_grace_time"}
        if unknown:
            raise TaskSchedulerError(f"unknown job_defaults: {', '.join(sorted(unknown))}")
        self.name = name
        self.job_defaults = dict(job_defaults or {})
        self.timezone = timezone
        if len(jobstores or {}) > 1:
            raise TaskSchedulerError("one job store per scheduler: use several named schedulers instead")
        store = next(iter((jobstores or {}).values()), MemoryJobStore())
        if task_scheduler is None:
            task_scheduler = self._build(config, store_url(store), executors or {}, clock)
        elif jobstores or executors or config is not None:
            raise TaskSchedulerError("give task_scheduler or jobstores/executors/config, not both")
        self.task_scheduler = task_scheduler
        self.persistent = task_scheduler.store.location != "memory"
        self._triggers: dict[str, tuple[BaseTrigger, ScheduleRule]] = {}  # of the jobs added here
        self._listeners: dict[Callable[..., Any], Callable[[SchedulerEvent], None]] = {}

    def _build(self, config: Any, url: str, executors: Mapping[str, Any], clock: Clock | None) -> TaskScheduler:
        from task_scheduler.scheduler import TaskScheduler

        if isinstance(config, SchedulerConfig):
            settings = config
        elif config is not None:
            settings = load_config(config)
        else:
            settings = SchedulerConfig(store=StoreConfig(url=url))
        if config is None or url != "memory://":
            settings.store.url = url
        for executor in executors.values():
            if isinstance(executor, ThreadPoolExecutor):
                settings.scheduler.max_workers = executor.max_workers
            elif not isinstance(executor, AsyncIOExecutor):
                raise TaskSchedulerError(f"unsupported executor {executor!r}: use ThreadPoolExecutor(max_workers)")
        if self.timezone is not None:
            settings.scheduler.timezone = getattr(self.timezone, "key", str(self.timezone))
        for key in ("coalesce", "misfire_grace_time"):
            if key in self.job_defaults:
                setattr(settings.scheduler, key, self.job_defaults[key])
        node = f"{socket.gethostname()}:{os.getpid()}:{self.name}"
        return TaskScheduler(settings, clock=clock, node_id=node)

    # -- lifecycle ------------------------------------------------------------------
    @property
    def running(self) -> bool:
        return self.task_scheduler.running

    def start(self, paused: bool = False) -> None:
        if paused:
            raise TaskSchedulerError("start(paused=True) is not supported: pause jobs with pause_job")
        self.task_scheduler.start()

    def shutdown(self, wait: bool = True) -> None:
        self.task_scheduler.stop(wait=wait)

    # -- adding ---------------------------------------------------------------------
    def add_job(
        self,
        func: Callable[..., Any] | str,
        trigger: str | BaseTrigger | None = None,
        args: Any = None,
        kwargs: Mapping[str, Any] | None = None,
        id: str | None = None,
        name: str | None = None,
        misfire_grace_time: float | None = UNSET,
        coalesce: bool = UNSET,
        max_instances: int = UNSET,
        next_run_time: datetime | None = UNSET,
        jobstore: str = "default",
        executor: str = "default",
        replace_existing: bool = False,
        **trigger_args: Any,
    ) -> Job:
        """Add a job (see APScheduler's ``add_job``). ``next_run_time=None`` adds it
        paused; a datetime at or before now also runs it once now; a later one is
        the start of an interval trigger's grid."""
        if isinstance(func, str):
            func = resolve_reference(func, self.task_scheduler.config, "func", None)
        if not callable(func):
            raise TaskError(f"func must be a callable or 'module:callable', got {func!r}")
        job_id = id or uuid.uuid4().hex
        if id is None and self.persistent:
            logger.warning("job %s added to a persistent job store without an id: every start adds another copy "
                           "unless you give it one (id=...)", job_id)  # fmt: skip
        chosen = trigger_from(trigger, trigger_args, self.timezone)
        now = self.task_scheduler.clock.now()
        if next_run_time is not UNSET and next_run_time is not None:
            next_run_time = self._aware(next_run_time)
        if next_run_time is not UNSET and next_run_time is not None and next_run_time > now:
            if not isinstance(chosen, IntervalTrigger) or chosen.start_date is not None:
                raise TaskError("a future next_run_time works with an interval trigger only; give a start_date")
            chosen = IntervalTrigger(
                seconds=chosen.interval.total_seconds(), start_date=next_run_time, end_date=chosen.end_date,
                timezone=chosen.timezone, jitter=chosen.jitter,
            )  # fmt: skip
        options = {**self.job_defaults}
        for key, value in (("misfire_grace_time", misfire_grace_time), ("coalesce", coalesce),
                           ("max_instances", max_instances)):  # fmt: skip
            if value is not UNSET:
                options[key] = value
        task = FunctionTask(job_id, name or getattr(func, "__qualname__", None), func, args=args or (),
                            kwargs=kwargs or {}, **options)  # fmt: skip
        rule = chosen.rule(now, self.timezone)
        try:  # a failed add changes nothing
            self.task_scheduler.add_task(task, rule, replace_existing=replace_existing, persistent=self.persistent)
        except TaskError as exc:
            if not replace_existing and self._exists(job_id):
                raise ConflictingIdError(f"Job identifier ({job_id}) conflicts with an existing job") from exc
            raise
        self._triggers[job_id] = (chosen, rule)
        if next_run_time is None:
            self.task_scheduler.pause_task(job_id)
        elif next_run_time is not UNSET and next_run_time <= now:
            self.task_scheduler.run_now(job_id)
        return Job(self, task, chosen)

    def scheduled_job(self, trigger: str | BaseTrigger | None = None, **options: Any) -> Callable[[F], F]:
        """Decorator form of `add_job`; returns the function unchanged."""

        def decorate(func: F) -> F:
            self.add_job(func, trigger, **options)
            return func

        return decorate

    # -- looking up -----------------------------------------------------------------
    def get_jobs(self, jobstore: str | None = None, pending: bool | None = None) -> list[Job]:
        """Every job, by next run time (paused ones last, as APScheduler sorts)."""
        states = self.task_scheduler.store.task_states()
        zone = self.task_scheduler.timezone
        jobs = []
        for task in self.task_scheduler.get_tasks():
            state = states.get(task.task_id)
            paused = bool(state and state.paused)
            nxt = state.next_run_at if state and not paused and not state.finished else None
            jobs.append(Job(self, task, self._trigger_of(task.task_id), nxt.astimezone(zone) if nxt else None, paused))
        far = datetime.max.replace(tzinfo=zone)
        return sorted(jobs, key=lambda job: (job.next_run_time or far, job.id))

    def get_job(self, job_id: str, jobstore: str | None = None) -> Job | None:
        try:
            task = self.task_scheduler.get_task(job_id)
        except TaskNotFoundError:
            return None
        return Job(self, task, self._trigger_of(job_id))

    def print_jobs(self, jobstore: str | None = None) -> None:
        for job in self.get_jobs():
            print(f"    {job.name} (trigger: {job.trigger!r}, next run at: {job.next_run_time})")

    def _exists(self, job_id: str) -> bool:
        try:
            self.task_scheduler.get_task(job_id)
        except TaskNotFoundError:
            return False
        return True

    def _trigger_of(self, job_id: str) -> BaseTrigger | None:
        rule = self._rule_of(job_id)
        known = self._triggers.get(job_id)
        return known[0] if known else None if rule is None else RuleTrigger(rule)

    def _rule_of(self, job_id: str) -> ScheduleRule | None:
        """The rule of a job added here, or of one restored from the store (its spec)."""
        known = self._triggers.get(job_id)
        if known is not None:
            return known[1]
        spec = self.task_scheduler.store.job_specs().get(job_id)
        return None if spec is None else ScheduleRule.from_dict(spec["schedule"])

    def _aware(self, moment: datetime) -> datetime:
        return moment if moment.tzinfo else moment.replace(tzinfo=self.task_scheduler.timezone)

    def _get(self, job_id: str) -> FunctionTask:
        try:
            task = self.task_scheduler.get_task(job_id)
        except TaskNotFoundError:
            raise JobLookupError(job_id) from None
        if not isinstance(task, FunctionTask):
            raise TaskError(f"job {job_id!r} is a {type(task).__name__}, not a function job")
        return task

    # -- changing -------------------------------------------------------------------
    def pause_job(self, job_id: str, jobstore: str | None = None) -> Job:
        self._call(self.task_scheduler.pause_task, job_id)
        return self._job(job_id)

    def resume_job(self, job_id: str, jobstore: str | None = None) -> Job:
        self._call(self.task_scheduler.resume_task, job_id)
        return self._job(job_id)

    def remove_job(self, job_id: str, jobstore: str | None = None) -> None:
        self._call(self.task_scheduler.remove_task, job_id)
        self._triggers.pop(job_id, None)

    def remove_all_jobs(self, jobstore: str | None = None) -> None:
        for task in self.task_scheduler.get_tasks():
            self.remove_job(task.task_id)

    def reschedule_job(
        self, job_id: str, jobstore: str | None = None, trigger: str | BaseTrigger = "date", **trigger_args: Any
    ) -> Job:
        """A new trigger; the next run is computed from it (a stored job's stored
        definition changes with it)."""
        chosen = trigger_from(trigger, trigger_args, self.timezone)
        rule = chosen.rule(self.task_scheduler.clock.now(), self.timezone)
        self._call(self.task_scheduler.reschedule_task, job_id, rule)
        self._triggers[job_id] = (chosen, rule)
        return self._job(job_id)

    def modify_job(self, job_id: str, jobstore: str | None = None, **changes: Any) -> Job:
        """Change ``name``, ``func``, ``args``, ``kwargs``, ``max_instances``,
        ``misfire_grace_time``, ``coalesce``, ``trigger`` or ``next_run_time``
        (None pauses; a datetime resumes, and runs it now if it is not later)."""
        unknown = set(changes) - {"name", "func", "args", "kwargs", "max_instances", "misfire_grace_time", "coalesce",
                                  "trigger", "next_run_time"}  # fmt: skip
        if unknown:
            raise TaskError(f"cannot modify {', '.join(sorted(unknown))} of a job")
        task = self._get(job_id)
        if "trigger" in changes:
            self.reschedule_job(job_id, trigger=changes.pop("trigger"))
        next_run_time = changes.pop("next_run_time", UNSET)
        if changes:
            rule = self._rule_of(job_id)
            if rule is None:
                raise TaskError(f"job {job_id!r} was not added through this scheduler; change it where it was added")
            options = {name: getattr(task, name) for name in TASK_OPTIONS}
            options.update({k: changes[k] for k in ("max_instances", "misfire_grace_time", "coalesce") if k in changes})
            new = FunctionTask(job_id, changes.get("name", task.name), changes.get("func", task.func),
                               args=changes.get("args", task.args), kwargs=changes.get("kwargs", task.kwargs),
                               **options)  # fmt: skip
            persistent = self.task_scheduler.get_task_status(job_id).get("origin") == "persistent"
            self.task_scheduler.add_task(new, rule, replace_existing=True, persistent=persistent)
        if next_run_time is None:
            self.task_scheduler.pause_task(job_id)
        elif next_run_time is not UNSET:
            self.task_scheduler.resume_task(job_id)
            if self._aware(next_run_time) <= self.task_scheduler.clock.now():
                self.task_scheduler.run_now(job_id)
        return self._job(job_id)

    def _job(self, job_id: str) -> Job:
        job = self.get_job(job_id)
        if job is None:
            raise JobLookupError(job_id)
        return job

    def _call(self, method: Callable[..., Any], job_id: str, *args: Any) -> Any:
        try:
            return method(job_id, *args)
        except TaskNotFoundError:
            raise JobLookupError(job_id) from None

    # -- listeners ------------------------------------------------------------------
    def add_listener(self, callback: Callable[[JobExecutionEvent], Any], mask: int = EVENT_ALL) -> None:
        """Call ``callback(event)`` for the job events in ``mask`` (APScheduler codes)."""
        kinds = EventType(0)
        for kind, code in CODES.items():
            if code & mask:
                kinds |= kind

        def translate(event: SchedulerEvent) -> None:
            code = CODES[event.type]
            failed = code == EVENT_JOB_ERROR
            run = event.run
            callback(JobExecutionEvent(code, event.task_id, "default", run.scheduled_for,
                                       retval=None if failed else run.output,
                                       exception=JobFailure(run.error or event.type.name) if failed else None,
                                       traceback=run.error if failed else None))  # fmt: skip

        self._listeners[callback] = translate
        self.task_scheduler.add_listener(translate, kinds)

    def remove_listener(self, callback: Callable[..., Any]) -> None:
        translate = self._listeners.pop(callback, None)
        if translate is not None:
            self.task_scheduler.remove_listener(translate)

    def __enter__(self) -> BackgroundScheduler:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.shutdown()


AsyncIOScheduler = BackgroundScheduler  # jobs run on worker threads either way (see the package doc)


class BlockingScheduler(BackgroundScheduler):
    """`start` runs in the foreground until SIGTERM/SIGINT (`TaskScheduler.run_forever`)."""

    def start(self, paused: bool = False) -> None:
        if paused:
            raise TaskSchedulerError("start(paused=True) is not supported: pause jobs with pause_job")
        self.task_scheduler.run_forever()


# -- named instances ---------------------------------------------------------------------------


class SchedulerManager:
    """Independent named schedulers in one process (a framework guide's
    ``SchedulerManager.get_instance("report")``). Each is a `BackgroundScheduler`
    with its own `TaskScheduler`; its methods are the manager's, and ``.scheduler``
    is the scheduler itself (for ``scheduler.scheduler.add_listener(...)``)."""

    _instances: dict[str, SchedulerManager] = {}
    _lock = threading.Lock()

    def __init__(self, name: str, scheduler: BackgroundScheduler, options: dict[str, Any]) -> None:
        self.name, self.scheduler, self._options = name, scheduler, options

    @classmethod
    def get_instance(cls, name: str = "default", **options: Any) -> SchedulerManager:
        """The instance called ``name``, created with ``options`` (BackgroundScheduler
        keywords) on first use. Asking again with other options is an error."""
        with cls._lock:
            existing = cls._instances.get(name)
            if existing is not None:
                if options and options != existing._options:
                    raise TaskSchedulerError(f"scheduler {name!r} exists already with other options")
                return existing
            instance = cls(name, BackgroundScheduler(name=name, **options), options)
            cls._instances[name] = instance
            return instance

    @classmethod
    def instances(cls) -> dict[str, SchedulerManager]:
        with cls._lock:
            return dict(cls._instances)

    @classmethod
    def shutdown_all(cls, wait: bool = True) -> None:
        """Stop and forget every instance."""
        with cls._lock:
            instances, cls._instances = list(cls._instances.values()), {}
        for instance in instances:
            instance.scheduler.shutdown(wait)

    def __getattr__(self, attribute: str) -> Any:
        return getattr(self.scheduler, attribute)
