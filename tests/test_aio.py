"""The asyncio face: awaitable start/stop/stats over the threaded core, foreground
and background starts, SIGTERM and cancellation, decorators picked up."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
from collections.abc import Iterator

import pytest

from task_scheduler import TaskScheduler, TaskSchedulerError, decorators
from task_scheduler.aio import AsyncScheduler
from task_scheduler.decorators import interval


@pytest.fixture(autouse=True)
def fresh_declarations() -> Iterator[None]:
    decorators.forget_declarations()
    decorators.set_default_scheduler(None)
    yield
    decorators.forget_declarations()
    decorators.set_default_scheduler(None)


async def until(condition, timeout: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.01)


def test_foreground_start_runs_decorated_tasks_until_stop() -> None:
    calls: list[str] = []

    @interval(0.05)
    async def health_check() -> None:
        calls.append(threading.current_thread().name)

    async def main() -> None:
        scheduler = AsyncScheduler()  # created after the decorator: picks it up
        runner = asyncio.create_task(scheduler.start())
        await until(lambda: len(calls) >= 2)
        assert scheduler.running
        stats = await scheduler.get_stats()
        assert stats["running"] is True and stats["total_tasks"] == 1 and stats["backend"] == "MemoryStore"
        assert scheduler.get_task("health_check").metrics.total_runs >= 1
        await scheduler.stop()
        await asyncio.wait_for(runner, 10)  # the foreground start returns
        assert not scheduler.running

    asyncio.run(main())
    assert all(name.startswith("task-worker") for name in calls)  # the threaded core ran it


def test_background_start_as_in_a_lifespan() -> None:
    async def main() -> None:
        scheduler = AsyncScheduler(default=False)
        seen: list[int] = []
        scheduler.scheduler.scheduled(interval=0.05, task_id="tick")(lambda: seen.append(1))
        async with scheduler:  # start(block=False) ... stop()
            await until(lambda: len(seen) >= 2)
            assert [t["name"] for t in scheduler.list_tasks()] == ["tick"]
            scheduler.pause_task("tick")
            assert [t.name for t in scheduler.get_task_by_status("paused")] == ["tick"]
        assert not scheduler.running
        await scheduler.stop()  # idempotent

    asyncio.run(main())


def test_cancelling_a_foreground_start_stops_the_core() -> None:
    async def main() -> AsyncScheduler:
        scheduler = AsyncScheduler()
        runner = asyncio.create_task(scheduler.start())
        await until(lambda: scheduler.running)
        runner.cancel()
        with pytest.raises(asyncio.CancelledError):
            await runner
        return scheduler

    scheduler = asyncio.run(main())
    assert not scheduler.running
    with pytest.raises(TaskSchedulerError, match="stopped"):
        scheduler.scheduler.start()


@pytest.mark.skipif(threading.current_thread() is not threading.main_thread(), reason="signals need the main thread")
def test_sigterm_stops_a_foreground_start() -> None:
    before = signal.getsignal(signal.SIGTERM)

    async def terminate_once_handled() -> None:
        await until(lambda: signal.getsignal(signal.SIGTERM) != before)  # never before the handler is in
        os.kill(os.getpid(), signal.SIGTERM)

    async def main() -> AsyncScheduler:
        scheduler = AsyncScheduler()
        killer = asyncio.create_task(terminate_once_handled())
        await asyncio.wait_for(scheduler.start(), 10)
        await killer
        return scheduler

    assert not asyncio.run(main()).running
    assert signal.getsignal(signal.SIGTERM) == before  # the handler is removed again


def test_daemon_mode_is_refused_with_the_alternative() -> None:
    async def main() -> None:
        scheduler = AsyncScheduler(default=False)
        with pytest.raises(TaskSchedulerError, match="systemd"):
            await scheduler.start(daemon=True)

    asyncio.run(main())


def test_wrapping_an_existing_scheduler() -> None:
    core = TaskScheduler()
    face = AsyncScheduler(scheduler=core)
    assert face.scheduler is core and decorators.get_scheduler() is core
    with pytest.raises(TaskSchedulerError, match="not both"):
        AsyncScheduler("x.json", scheduler=core)
    core.stop()
