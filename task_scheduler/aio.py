"""The asyncio face: `AsyncScheduler`, for async applications and for code written
for async decorator schedulers (chronflow).

::

    from task_scheduler.aio import AsyncScheduler
    from task_scheduler.decorators import cron, interval

    scheduler = AsyncScheduler()

    @interval(30)
    async def sync(): ...

    asyncio.run(scheduler.start())          # runs until stop(), SIGTERM or Ctrl+C

It drives the same threaded core (`TaskScheduler`): there is no second engine. The
blocking calls (start, stop, the status reads) run in the event loop's default
executor, so the application's loop never blocks on them.

- ``await start()`` runs in the foreground: it returns when `stop` is called, on
  SIGTERM (when the loop runs in the main thread), or when the awaiting task is
  cancelled (Ctrl+C under ``asyncio.run``), and the core is stopped gracefully
  first. ``await start(block=False)`` starts and returns at once - or use ``async
  with scheduler:`` - which is what a FastAPI lifespan wants; the pattern
  ``asyncio.create_task(scheduler.start())`` works too.
- Async tasks run on the core's worker threads, each run in its own event loop
  (that is how a timeout cancels them), **not on the application's loop**: objects
  bound to the application's loop (a connection pool, an ``asyncio.Lock``) cannot be
  used from a task; create them in the task or use thread-safe clients.
- ``start(daemon=True)`` (forking a daemon) is refused: run the process under
  systemd or a process manager instead (see the README).

Creating an AsyncScheduler makes its scheduler the default one
(`task_scheduler.decorators.set_default_scheduler`, unless ``default=False``), so
functions decorated at import time without ``scheduler=`` are registered on it.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import signal
import threading
from collections.abc import Callable
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

from task_scheduler.decorators import TaskInfo, TaskStats, set_default_scheduler
from task_scheduler.errors import TaskSchedulerError

if TYPE_CHECKING:
    from task_scheduler.clock import Clock
    from task_scheduler.config import SchedulerConfig
    from task_scheduler.scheduler import TaskScheduler

__all__ = ["AsyncScheduler"]

T = TypeVar("T")


class AsyncScheduler:
    """A `TaskScheduler` with awaitable start, stop and stats.

    ``config``: a config object or file path (None: memory store, no files);
    ``scheduler``: wrap an existing TaskScheduler instead. ``default``: make it the
    default scheduler for the decorators.
    """

    def __init__(
        self,
        config: SchedulerConfig | str | os.PathLike[str] | None = None,
        *,
        scheduler: TaskScheduler | None = None,
        clock: Clock | None = None,
        default: bool = True,
    ) -> None:
        if scheduler is None:
            from task_scheduler.scheduler import TaskScheduler

            scheduler = TaskScheduler(config, clock=clock)
        elif config is not None or clock is not None:
            raise TaskSchedulerError("give a scheduler or a config (and clock), not both")
        self.scheduler = scheduler
        self.stats = TaskStats(scheduler)
        self._stop_requested: asyncio.Event | None = None
        self._stopping: asyncio.Future[None] | None = None
        if default:
            set_default_scheduler(scheduler)

    async def _call(self, func: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(None, functools.partial(func, *args, **kwargs))

    # -- lifecycle --------------------------------------------------------------------
    @property
    def running(self) -> bool:
        return self.scheduler.running

    async def start(self, *, block: bool = True, daemon: bool = False) -> None:
        """Start the core; with ``block`` (the default) wait until `stop`, SIGTERM or
        cancellation, then stop it gracefully (see the module doc)."""
        if daemon:
            raise TaskSchedulerError(
                "daemon mode (forking) is not supported: run the process under systemd or a process manager "
                "(see 'Running under systemd' in the README), and call start() to run in the foreground"
            )
        await self._call(self.scheduler.start)
        if not block:
            return
        self._stop_requested = requested = asyncio.Event()
        loop = asyncio.get_running_loop()
        handled = _add_signal_handler(loop, signal.SIGTERM, requested.set)
        try:
            await requested.wait()
        finally:
            if handled:
                loop.remove_signal_handler(signal.SIGTERM)
            await asyncio.shield(self._stop_core(True, None))

    async def stop(self, wait: bool = True, timeout: float | None = None) -> None:
        """Stop firing and wait up to ``timeout`` (default ``shutdown_timeout``) for
        running tasks (`TaskScheduler.stop`); a blocking `start` returns. Idempotent."""
        if self._stop_requested is not None:
            self._stop_requested.set()
        await self._stop_core(wait, timeout)

    async def _stop_core(self, wait: bool, timeout: float | None) -> None:
        if self._stopping is None:
            loop = asyncio.get_running_loop()
            self._stopping = loop.run_in_executor(None, functools.partial(self.scheduler.stop, wait, timeout))
        await self._stopping

    async def __aenter__(self) -> AsyncScheduler:
        await self.start(block=False)
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        await self.stop()

    # -- stats (store counters: the same numbers as ``task-scheduler list``) ------------
    async def get_stats(self) -> dict[str, Any]:
        """running, total_tasks, queue_size, active_workers, max_workers, backend,
        tasks (`task_scheduler.decorators.TaskStats.get_stats`)."""
        return await self._call(self.stats.get_stats)

    def list_tasks(self) -> list[dict[str, Any]]:
        return self.stats.list_tasks()

    def get_task(self, name: str) -> TaskInfo:
        """A task with its ``metrics`` (TaskNotFoundError when unknown)."""
        return self.stats.get_task(name)

    def get_task_by_status(self, status: str) -> list[TaskInfo]:
        return self.stats.get_task_by_status(status)

    def get_task_by_tag(self, tag: str) -> list[TaskInfo]:
        return self.stats.get_task_by_tag(tag)

    # -- control ----------------------------------------------------------------------
    def pause_task(self, name: str) -> None:
        self.scheduler.pause_task(name)

    def resume_task(self, name: str) -> None:
        self.scheduler.resume_task(name)

    def remove_task(self, name: str) -> None:
        self.scheduler.remove_task(name)

    def run_now(self, name: str) -> str:
        return self.scheduler.run_now(name)


def _add_signal_handler(loop: asyncio.AbstractEventLoop, sig: signal.Signals, callback: Callable[[], None]) -> bool:
    """Install ``callback`` for ``sig`` on ``loop`` where that is possible (the main
    thread of a Unix process); whether it was installed."""
    if threading.current_thread() is not threading.main_thread():
        return False
    with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
        loop.add_signal_handler(sig, callback)
        return True
    return False
