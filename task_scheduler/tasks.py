"""Tasks: what runs. `BaseTask` (subclass it), `FunctionTask`, `ScriptTask`.

The legacy contract holds: ``execute()`` returns True for success and False for
failure (setting ``self.last_error``), or raises. Only ``False`` or an exception is
a failure; ``None`` and any other value count as success, so a plain function that
returns nothing succeeds. ``execute`` may take one argument, a `TaskContext`.
"""

from __future__ import annotations

import inspect
import logging
import os
import random
import subprocess
import sys
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import Enum
from functools import lru_cache
from pathlib import Path
from types import MappingProxyType
from typing import Any

from task_scheduler.errors import TaskError
from task_scheduler.processes import GroupKiller, MeasuredPopen, decode, devnull, read_until_exit, report_process
from task_scheduler.redact import is_secret, mask_values, redact_args
from task_scheduler.stores.base import ConcurrencyPolicy
from task_scheduler.task_settings import Setting, TaskSettings, check_class, shared_settings

__all__ = [
    "Backoff",
    "BaseTask",
    "FunctionTask",
    "RetryPolicy",
    "ScriptTask",
    "TaskContext",
]

logger = logging.getLogger(__name__)

DEFAULT_OUTPUT_LIMIT = 64 * 1024
_NO_KWARGS: Mapping[str, Any] = MappingProxyType({})


class Backoff(Enum):
    """How the delay between retries grows."""

    FIXED = "fixed"
    EXPONENTIAL = "exponential"


@dataclass(frozen=True, slots=True, init=False)
class RetryPolicy:
    """Retries of a failed attempt: ``max_retries`` more attempts, the n-th after
    ``retry_delay`` (fixed) or ``retry_delay * 2**(n-1)`` (exponential) seconds,
    capped at ``max_delay``, then stretched by a random ``[0, jitter)`` fraction so
    that many tasks failing together do not retry in lockstep. A retry is a timed
    occurrence, never a sleep in a worker.

    It also takes the words of tenacity-based schedulers (chronflow):
    ``RetryPolicy(max_attempts=5, strategy="exponential", wait_min=1.0, wait_max=60.0)``
    is ``max_retries=4`` (the first attempt counts as one of the ``max_attempts``),
    ``backoff="exponential"``, ``retry_delay=1.0``, ``max_delay=60.0``. Giving both
    words for one setting is an error.
    """

    max_retries: int
    retry_delay: float
    backoff: Backoff
    max_delay: float
    retry_on_timeout: bool
    jitter: float

    def __init__(
        self,
        max_retries: int | None = None,
        retry_delay: float | None = None,
        backoff: Backoff | str | None = None,
        max_delay: float | None = None,
        retry_on_timeout: bool = True,
        jitter: float = 0.0,
        *,
        max_attempts: int | None = None,
        strategy: Backoff | str | None = None,
        wait_min: float | None = None,
        wait_max: float | None = None,
    ) -> None:
        for ours, theirs, name in ((max_retries, max_attempts, "max_retries or max_attempts"),
                                   (backoff, strategy, "backoff or strategy"),
                                   (retry_delay, wait_min, "retry_delay or wait_min"),
                                   (max_delay, wait_max, "max_delay or wait_max")):  # fmt: skip
            if ours is not None and theirs is not None:
                raise TaskError(f"RetryPolicy: give {name}, not both")
        if max_attempts is not None:
            if not isinstance(max_attempts, int) or max_attempts < 1:
                raise TaskError(f"RetryPolicy: max_attempts must be an integer >= 1, got {max_attempts!r}")
            max_retries = max_attempts - 1
        try:
            chosen_backoff = Backoff(strategy or backoff or Backoff.FIXED)
        except ValueError as exc:
            raise TaskError(
                f"RetryPolicy: backoff must be 'fixed' or 'exponential', got {strategy or backoff!r}"
            ) from exc
        values = {
            "max_retries": 0 if max_retries is None else max_retries,
            "retry_delay": _first_given(retry_delay, wait_min, 5.0),
            "backoff": chosen_backoff,
            "max_delay": _first_given(max_delay, wait_max, 3600.0),
            "retry_on_timeout": retry_on_timeout,
            "jitter": jitter,
        }
        for name, value in values.items():
            object.__setattr__(self, name, value)

    def task_options(self) -> dict[str, Any]:
        """The per-task options (`BaseTask` keywords) this policy sets; ``retry_on_timeout``
        and ``jitter`` are service-wide (``tasks.retry_on_timeout``, ``tasks.retry_jitter``)."""
        return {"max_retries": self.max_retries, "retry_delay": self.retry_delay, "retry_backoff": self.backoff,
                "max_retry_delay": self.max_delay}  # fmt: skip

    def delay(self, attempt: int) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1-based)."""
        if self.backoff is Backoff.EXPONENTIAL:
            base = min(self.retry_delay * 2.0 ** (attempt - 1), self.max_delay)
        else:
            base = min(self.retry_delay, self.max_delay)
        return base * (1.0 + random.random() * self.jitter) if self.jitter else base


def _first_given(first: float | None, second: float | None, default: float) -> float:
    return first if first is not None else second if second is not None else default


class TaskContext:
    """One attempt's context, given to ``execute(context)``.

    A function with a timeout should check ``context.cancelled`` (or wait on
    ``context.cancel_event``): Python threads cannot be killed, so a function that
    ignores it runs on, is reported overdue and keeps its worker busy.
    The task fills in ``exit_code``, ``output``, ``error`` and ``timed_out`` for the
    run record, and a script run its resource use (``cpu_user``, ``cpu_system``:
    seconds; ``max_rss``: bytes).
    """

    __slots__ = (
        "_cancel_event",
        "_on_cancel",
        "attempt",
        "cancel_reason",
        "cpu_system",
        "cpu_user",
        "error",
        "exit_code",
        "logger",
        "max_rss",
        "on_process",
        "output",
        "run_id",
        "scheduled_for",
        "task_id",
        "timed_out",
        "timeout",
    )  # fmt: skip
    # Cancelling is rare: one lock for all contexts keeps a context cheap to create.
    _lock = threading.RLock()

    def __init__(
        self,
        task_id: str,
        run_id: str,
        scheduled_for: datetime,
        attempt: int,
        logger: logging.Logger,
        timeout: float | None = None,
    ) -> None:
        self.task_id = task_id
        self.run_id = run_id
        self.scheduled_for = scheduled_for
        self.attempt = attempt
        self.logger = logger
        self.timeout = timeout
        self.cancel_reason: str | None = None
        self.exit_code: int | None = None
        self.output: str | None = None
        self.error: str | None = None
        self.timed_out = False
        self.cpu_user: float | None = None
        self.cpu_system: float | None = None
        self.max_rss: int | None = None
        self._cancel_event: threading.Event | None = None
        self._on_cancel: list[Callable[[], None]] | None = None
        # Called by a script run with (run_id, pid, process start time) once its
        # process exists; the scheduler records it so a restart can find orphans.
        self.on_process: Callable[[str, int, float], None] | None = None

    @property
    def cancel_event(self) -> threading.Event:
        """Set when the attempt should stop; created on first use."""
        if self._cancel_event is None:
            with self._lock:
                if self._cancel_event is None:
                    self._cancel_event = threading.Event()
        return self._cancel_event

    @property
    def cancelled(self) -> bool:
        return self._cancel_event is not None and self._cancel_event.is_set()

    def cancel(self, reason: str) -> None:
        """Ask the attempt to stop (timeout, shutdown, replace); idempotent."""
        with self._lock:
            if self.cancelled:
                return
            self.cancel_reason = reason
            self.cancel_event.set()
            callbacks, self._on_cancel = self._on_cancel or [], None
        for callback in callbacks:
            callback()

    def on_cancel(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` when the attempt is cancelled (at once if it already is)."""
        with self._lock:
            if not self.cancelled:
                self._on_cancel = [*(self._on_cancel or []), callback]
                return
        callback()

    def __repr__(self) -> str:
        return f"<TaskContext {self.task_id} run {self.run_id} attempt {self.attempt}>"


def _parameters(func: Callable[..., Any]) -> Mapping[str, inspect.Parameter]:
    try:
        return inspect.signature(func).parameters
    except (TypeError, ValueError):
        return {}


@lru_cache(maxsize=1024)
def _is_coroutine_function(func: Callable[..., Any]) -> bool:
    return inspect.iscoroutinefunction(func)


@lru_cache(maxsize=1024)
def _takes_context_keyword(func: Callable[..., Any]) -> bool:
    """Whether ``func`` has a ``context`` parameter (cached: signatures are slow)."""
    return "context" in _parameters(func)


def _accepts_argument(method: Callable[..., Any]) -> bool:
    """Whether ``execute`` takes a context (legacy subclasses define ``execute(self)``)."""
    parameters = list(_parameters(method).values())[1:]  # drop self
    return any(p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.VAR_POSITIONAL) for p in parameters)


class BaseTask:
    """A unit of work with its run options. Subclass it and implement `execute`.

    ``timeout``/``max_retries``/``retry_delay``/``retry_backoff``/``max_retry_delay``/
    ``misfire_grace_time``/``coalesce``/``catch_up`` left at None take the scheduler's ``tasks`` defaults.
    ``recover``: a run cut short by a crash or a shutdown (INTERRUPTED) is run again
    as the next attempt of the same occurrence (Quartz's "requests recovery").
    """

    # Slots keep 100,000 tasks small (a subclass without __slots__ still gets a
    # __dict__ for its own attributes); the settings are one shared object.
    __slots__ = ("_settings", "last_error", "name", "task_id")

    description = Setting[str]()
    timeout = Setting[float | None]()
    max_retries = Setting[int | None]()
    retry_delay = Setting[float | None]()
    retry_backoff = Setting[Backoff | None]()
    max_retry_delay = Setting[float | None]()
    max_instances = Setting[int]()
    concurrency_policy = Setting[ConcurrencyPolicy]()
    misfire_grace_time = Setting[float | None]()
    coalesce = Setting[bool | None]()
    catch_up = Setting[bool | None]()
    max_runs = Setting[int | None]()
    recover = Setting[bool]()
    tags = Setting[tuple[str, ...]]()
    enabled = Setting[bool]()

    def __init__(
        self,
        task_id: str,
        name: str | None = None,
        description: str = "",
        *,
        timeout: float | None = None,
        max_retries: int | None = None,
        retry_delay: float | None = None,
        retry_backoff: Backoff | str | None = None,
        max_retry_delay: float | None = None,
        max_instances: int = 1,
        concurrency_policy: ConcurrencyPolicy | str = ConcurrencyPolicy.FORBID,
        misfire_grace_time: float | None = None,
        coalesce: bool | None = None,
        catch_up: bool | None = None,
        max_runs: int | None = None,
        recover: bool = False,
        tags: Sequence[str] = (),
        enabled: bool = True,
    ) -> None:
        if not isinstance(task_id, str) or not task_id.strip():
            raise TaskError(f"task_id must be a non-empty string, got {task_id!r}")
        self.task_id = task_id
        self.name = name or task_id
        self.last_error: str | None = None
        if not isinstance(max_instances, int) or max_instances < 1:
            raise TaskError(f"task {task_id!r}: max_instances must be an integer >= 1, got {max_instances!r}")
        if max_runs is not None and (not isinstance(max_runs, int) or max_runs < 1):
            raise TaskError(f"task {task_id!r}: max_runs must be an integer >= 1, got {max_runs!r}")
        # (an enum call costs microseconds: skip it when given the member itself)
        if type(concurrency_policy) is not ConcurrencyPolicy:
            concurrency_policy = ConcurrencyPolicy(concurrency_policy)
        if retry_backoff is not None and type(retry_backoff) is not Backoff:
            retry_backoff = Backoff(retry_backoff)
        self._settings: TaskSettings = shared_settings(
            description, _positive_or_none(task_id, "timeout", timeout), max_retries, retry_delay, retry_backoff,
            max_retry_delay, max_instances, concurrency_policy, misfire_grace_time, coalesce, catch_up, max_runs,
            recover, tuple(tags), enabled,
        )  # fmt: skip

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls._takes_context = _accepts_argument(cls.execute)
        check_class(cls)

    _takes_context = True

    def execute(self, context: TaskContext) -> bool:
        """Do the work; return False (with ``self.last_error``) or raise to fail."""
        raise NotImplementedError(f"{type(self).__name__}.execute")

    def run(self, context: TaskContext) -> Any:
        """Call `execute` with or without the context, as its signature asks."""
        return self.execute(context) if self._takes_context else self.execute()  # type: ignore[call-arg]

    def options(self) -> dict[str, Any]:
        """The task's settings, for status output."""
        return {
            "task_id": self.task_id,
            "name": self.name,
            "description": self.description,
            "type": type(self).__name__,
            "timeout": self.timeout,
            "max_instances": self.max_instances,
            "tags": list(self.tags),
        }

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.task_id!r}>"


class FunctionTask(BaseTask):
    """Calls ``func(*args, **kwargs)``; ``async def`` functions run in a fresh event
    loop in the worker thread and are really cancelled at their timeout. A sync
    function receives the `TaskContext` as keyword ``context`` if it has that parameter."""

    __slots__ = ("_is_async", "_wants_context", "args", "func", "kwargs")

    def __init__(
        self,
        task_id: str,
        name: str | None = None,
        func: Callable[..., Any] | None = None,
        args: Sequence[Any] = (),
        kwargs: Mapping[str, Any] | None = None,
        description: str = "",
        **options: Any,
    ) -> None:
        super().__init__(task_id, name, description, **options)
        if not callable(func):
            raise TaskError(f"task {task_id!r}: func must be callable, got {func!r}")
        self.func = func
        self.args = tuple(args)
        self.kwargs: Mapping[str, Any] = dict(kwargs) if kwargs else _NO_KWARGS  # shared: most tasks have none
        self._wants_context = _takes_context_keyword(func)
        self._is_async = _is_coroutine_function(func)

    def execute(self, context: TaskContext) -> Any:
        kwargs = {**self.kwargs, "context": context} if self._wants_context else self.kwargs
        if self._is_async:
            import asyncio  # only async tasks need it (17 ms of start-up otherwise)

            return asyncio.run(self._run_async(context, kwargs))
        return self.func(*self.args, **kwargs)

    async def _run_async(self, context: TaskContext, kwargs: Mapping[str, Any]) -> Any:
        import asyncio

        try:
            return await asyncio.wait_for(self.func(*self.args, **kwargs), context.timeout)
        except TimeoutError:
            context.timed_out = True
            raise

    def options(self) -> dict[str, Any]:
        return {**super().options(), "func": getattr(self.func, "__qualname__", repr(self.func))}


class ScriptTask(BaseTask):
    """Runs a script or executable as a subprocess, never through a shell.

    ``*.py`` scripts run with the service's own interpreter; anything else must be
    executable. Relative paths are resolved against the scheduler's base directory.
    The child gets its own process group: on timeout or cancel the whole group gets
    SIGTERM, then SIGKILL after ``kill_grace`` seconds; when the script exits, what it
    left running in its group is killed the same way (nothing leaks). stdout and
    stderr are read continuously and only the last ``output_limit`` bytes of each
    are kept. Exit code 0 is success.

    ``inherit_env``: True passes the service's environment, False only ``PATH``,
    ``HOME``, ``LANG`` and ``TZ``, a list passes the named variables. ``env`` is set
    on top, followed by ``TASK_SCHEDULER_TASK_ID``/``_RUN_ID``/``_BASE_DIR``/``_DATA_DIR``.
    """

    __slots__ = (
        "args", "base_dir", "data_dir", "env", "inherit_env", "kill_grace", "output_limit", "script_path",
        "secret_env", "working_dir",
    )  # fmt: skip

    def __init__(
        self,
        task_id: str,
        name: str | None = None,
        script_path: str | os.PathLike[str] = "",
        args: Sequence[str] = (),
        working_dir: str | os.PathLike[str] | None = None,
        timeout: float | None = 300,
        env: Mapping[str, str] | None = None,
        description: str = "",
        *,
        inherit_env: bool | Sequence[str] = True,
        kill_grace: float = 5.0,
        output_limit: int = DEFAULT_OUTPUT_LIMIT,
        **options: Any,
    ) -> None:
        super().__init__(task_id, name, description, timeout=timeout, **options)
        if not script_path:
            raise TaskError(f"task {task_id!r}: script_path is required")
        self.script_path = Path(script_path)
        self.args = [str(arg) for arg in args]
        self.working_dir = Path(working_dir) if working_dir else None
        self.env = {str(k): str(v) for k, v in (env or {}).items()}
        self.inherit_env = inherit_env
        self.kill_grace = kill_grace
        self.output_limit = output_limit
        self.base_dir = Path.cwd()
        self.data_dir = Path.cwd() / "data"
        self.secret_env: tuple[str, ...] = ()

    def bind(
        self, base_dir: Path, data_dir: Path, allowed_dirs: Sequence[Path] | None, secret_env: Sequence[str] = ()
    ) -> None:
        """Resolve paths against ``base_dir`` and check the script: it must exist and,
        symlinks followed, lie inside one of ``allowed_dirs`` (None allows any).
        ``secret_env``: names of environment variables whose values are masked in the
        stored output, besides the names that look secret (see redact.py)."""
        self.base_dir, self.data_dir, self.secret_env = base_dir, data_dir, tuple(secret_env)
        path = self.script_path if self.script_path.is_absolute() else base_dir / self.script_path
        resolved = path.resolve()
        if not resolved.is_file():
            raise TaskError(f"task {self.task_id!r}: script not found: {path}")
        if allowed_dirs is not None and not any(resolved.is_relative_to(d.resolve()) for d in allowed_dirs):
            allowed = ", ".join(str(d) for d in allowed_dirs) or "(none)"
            raise TaskError(f"task {self.task_id!r}: script {resolved} is outside allowed_script_dirs ({allowed})")
        if resolved.suffix != ".py" and not os.access(resolved, os.X_OK):
            raise TaskError(f"task {self.task_id!r}: script {resolved} is not executable")
        self.script_path = resolved
        if self.working_dir is not None and not self.working_dir.is_absolute():
            self.working_dir = base_dir / self.working_dir

    def command(self) -> list[str]:
        if self.script_path.suffix == ".py":
            return [sys.executable, str(self.script_path), *self.args]
        return [str(self.script_path), *self.args]

    def environment(self, context: TaskContext) -> dict[str, str]:
        if self.inherit_env is True:
            env = dict(os.environ)
        else:
            names = ("PATH", "HOME", "LANG", "TZ") if self.inherit_env is False else self.inherit_env
            env = {name: os.environ[name] for name in names if name in os.environ}
        env.update(self.env)
        env.update(
            TASK_SCHEDULER_TASK_ID=self.task_id,
            TASK_SCHEDULER_RUN_ID=context.run_id,
            TASK_SCHEDULER_BASE_DIR=str(self.base_dir),
            TASK_SCHEDULER_DATA_DIR=str(self.data_dir),
        )
        return env

    def execute(self, context: TaskContext) -> bool:
        env = self.environment(context)
        process = MeasuredPopen(
            self.command(),
            cwd=self.working_dir or self.base_dir,
            env=env,
            stdin=devnull(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,  # its own process group, killed as a whole
        )
        killer = GroupKiller(process, self.kill_grace)
        context.on_cancel(killer.start)
        if context.on_process is not None:
            report_process(context, process.pid)
        stdout, stderr = read_until_exit(process, context.timeout, killer, self.output_limit)
        if killer.started and not context.cancelled:
            context.timed_out = True
        killer.start()  # anything the script left behind in its group goes too
        killer.wait()
        context.exit_code = process.returncode
        resources = process.resources()
        if resources is not None:
            context.cpu_user, context.cpu_system, context.max_rss = resources
        # Secret values the script was given never reach the history, whatever it prints.
        secrets = [value for name, value in env.items() if name in self.secret_env or is_secret(name)]
        out, err = mask_values(decode(stdout), secrets), mask_values(decode(stderr), secrets)
        context.output = "\n".join(part for part in (out, err and f"[stderr]\n{err}") if part) or None
        if context.timed_out:
            context.error = f"timed out after {context.timeout}s; process group killed"
        elif process.returncode != 0:
            tail = err.strip().splitlines()[-1] if err.strip() else ""
            context.error = f"exit code {process.returncode}" + (f": {tail}" if tail else "")
        return process.returncode == 0 and not context.timed_out

    def options(self) -> dict[str, Any]:
        return {**super().options(), "script_path": str(self.script_path), "args": redact_args(self.args)}


def _positive_or_none(task_id: str, name: str, value: float | None) -> float | None:
    if value is None:
        return None
    if not isinstance(value, (int, float)) or isinstance(value, bool) or value <= 0:
        raise TaskError(f"task {task_id!r}: {name} must be a positive number of seconds, got {value!r}")
    return float(value)
