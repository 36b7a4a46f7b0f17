"""The work queue (priorities, FIFO, many threads) and the handler face: scheduled
handler tasks flowing through the queue with their outcome recorded, persistence."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from task_scheduler import ManualClock, RunState, SchedulerConfig, TaskError, TaskScheduler, decorators
from task_scheduler.handlers import register_handler, unregister_handler
from task_scheduler.workqueue import HandlerScheduler, WorkQueue


@pytest.fixture(autouse=True)
def clean_handlers() -> Iterator[None]:
    yield
    for task_type in ("download_audio", "convert_format", "explode"):
        unregister_handler(task_type)
    decorators.set_default_scheduler(None)


# -- the queue on its own -----------------------------------------------------------------


def test_lower_priority_numbers_first_and_fifo_among_equals() -> None:
    queue = WorkQueue()
    ids = [queue.push_task({"type": "t", "n": n}, priority=p) for n, p in enumerate([5, 0, 5, -1, 0])]
    assert len(set(ids)) == 5 and queue.get_queue_size() == 5 and not queue.is_empty()
    order = [queue.pop_task(0)["n"] for _ in range(5)]  # type: ignore[index]
    assert order == [3, 1, 4, 0, 2]
    assert queue.pop_task(timeout=0.01) is None and queue.is_empty()
    assert queue.push_task({"task_id": "my-custom-id", "type": "t"}) == "my-custom-id"


def test_task_done_and_join() -> None:
    queue = WorkQueue()
    queue.push_task({"type": "a"})
    assert queue.join(timeout=0.01) is False
    task = queue.pop_task(0)
    assert task is not None and queue.join(timeout=0.01) is False
    queue.task_done()
    assert queue.join(timeout=0.01) is True
    with pytest.raises(ValueError, match="more times"):
        queue.task_done()
    with pytest.raises(ValueError, match="not taken"):
        queue.task_done(task)
    with pytest.raises(TaskError):
        queue.push_task({"type": "a"}, priority="high")  # type: ignore[arg-type]


def test_eight_producers_eight_consumers_nothing_lost_or_doubled() -> None:
    queue = WorkQueue()
    per_producer = 2000
    taken: list[tuple[int, int]] = []
    lock = threading.Lock()
    done_producing = threading.Event()

    def produce(producer: int) -> None:
        for n in range(per_producer):
            queue.push_task({"type": "t", "key": (producer, n)}, priority=n % 3)

    def consume() -> None:
        mine = []
        while True:
            task = queue.pop_task(timeout=0.05)
            if task is None:
                if done_producing.is_set() and queue.is_empty():
                    break
                continue
            mine.append(tuple(task["key"]))
            queue.task_done()
        with lock:
            taken.extend(mine)

    consumers = [threading.Thread(target=consume) for _ in range(8)]
    producers = [threading.Thread(target=produce, args=(p,)) for p in range(8)]
    for thread in consumers + producers:
        thread.start()
    for thread in producers:
        thread.join()
    done_producing.set()
    for thread in consumers:
        thread.join(60)
    assert len(taken) == 8 * per_producer
    assert Counter(taken) == Counter((p, n) for p in range(8) for n in range(per_producer))
    assert queue.join(timeout=1) and queue.get_queue_size() == 0


def test_priorities_hold_under_eight_concurrent_consumers() -> None:
    """Pushed by 8 threads, popped by 8 threads: the global pop order (recorded
    under a lock held across each pop) is by priority, and FIFO per producer within
    a priority."""
    queue = WorkQueue()

    def produce(producer: int) -> None:
        for n in range(500):
            queue.push_task({"p": producer, "n": n}, priority=(n * 7 + producer) % 4)

    producers = [threading.Thread(target=produce, args=(p,)) for p in range(8)]
    for thread in producers:
        thread.start()
    for thread in producers:
        thread.join()
    order: list[dict[str, Any]] = []
    lock = threading.Lock()

    def consume() -> None:
        while True:
            with lock:
                task = queue.pop_task(timeout=0)
                if task is None:
                    return
                order.append(task)

    consumers = [threading.Thread(target=consume) for _ in range(8)]
    for thread in consumers:
        thread.start()
    for thread in consumers:
        thread.join()
    priorities = [(t["n"] * 7 + t["p"]) % 4 for t in order]
    assert len(order) == 4000 and priorities == sorted(priorities)
    for producer in range(8):
        for priority in range(4):
            ns = [t["n"] for t in order if t["p"] == producer and (t["n"] * 7 + producer) % 4 == priority]
            assert ns == sorted(ns)


# -- handler tasks through the queue ---------------------------------------------------------


def step(scheduler: TaskScheduler, clock: ManualClock, seconds: float, wait: float = 10) -> None:
    clock.advance(seconds)
    scheduler.run_due()
    assert scheduler.wait_for_runs(wait)


def test_scheduled_handler_runs_on_a_queue_consumer_and_its_outcome_is_recorded(
    scheduler: TaskScheduler, clock: ManualClock
) -> None:
    threads: list[str] = []

    @register_handler("download_audio")
    def download(params: dict[str, Any]) -> str:
        threads.append(threading.current_thread().name)
        return f"saved {params['url']}"

    register_handler("explode", lambda params: 1 / 0)
    faces = HandlerScheduler(scheduler, queue=WorkQueue(), workers=2)
    faces.start_workers()
    try:
        task_id = faces.add_scheduler_task(
            name="定期下载", task_type="download_audio", schedule_type="interval", interval_seconds=30,
            params={"url": "https://example.com/song.mp3"}, max_runs=2, description="every 30 s, twice",
        )  # fmt: skip
        faces.add_scheduler_task("boom", "explode", interval_seconds=30, max_retries=0)
        for _ in range(3):
            step(scheduler, clock, 30)
        assert threads and all(name.startswith("task-queue-worker") for name in threads)
        [listed] = [t for t in faces.list_tasks() if t["task_id"] == task_id]
        assert (listed["run_count"], listed["finished"], listed["enabled"], listed["max_runs"]) == (2, True, False, 2)
        assert listed["name"] == "定期下载" and listed["task_type"] == "download_audio"
        assert [t["task_id"] for t in faces.list_tasks(enabled_only=True)] == ["boom"]
        [last] = scheduler.store.history(task_id, limit=1)
        assert last.state is RunState.SUCCEEDED and last.output == "'saved https://example.com/song.mp3'"
        [failed, *_] = scheduler.store.history("boom")
        assert failed.state is RunState.FAILED and "ZeroDivisionError" in (failed.error or "")
    finally:
        faces.stop()


def test_the_applications_own_workers_pop_and_report(scheduler: TaskScheduler, clock: ManualClock) -> None:
    queue = WorkQueue()
    faces = HandlerScheduler(scheduler, queue=queue)  # workers=0: the application consumes
    faces.start_workers()
    handlers = {"convert_format": lambda params: None}
    seen: list[dict[str, Any]] = []

    def worker() -> None:
        while True:
            task = queue.pop_task(timeout=5)
            if task is None or task.get("type") == "stop":
                return
            seen.append(task)
            if task["params"].get("fail"):
                queue.task_done(task, error="disk full")
            elif task["params"].get("forget"):
                continue  # never reports: its run times out
            else:
                handlers[task["type"]](task["params"])
                queue.task_done()

    thread = threading.Thread(target=worker)
    thread.start()
    try:
        faces.add_scheduler_task("ok", "convert_format", interval_seconds=10, params={"input": "a.mp3"})
        faces.add_scheduler_task("bad", "convert_format", interval_seconds=10, params={"fail": True},
                                 max_retries=0)  # fmt: skip
        faces.add_scheduler_task("lost", "convert_format", interval_seconds=10, params={"forget": True},
                                 timeout=2, max_retries=0)  # fmt: skip
        clock.advance(10)
        scheduler.run_due()
        deadline = time.monotonic() + 10
        while len(seen) < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
        step(scheduler, clock, 2.5)  # past the lost run's timeout: the loop cancels it
        states = {tid: scheduler.store.history(tid, limit=1)[0] for tid in ("ok", "bad", "lost")}
        assert states["ok"].state is RunState.SUCCEEDED
        assert states["bad"].state is RunState.FAILED and "disk full" in (states["bad"].error or "")
        assert states["lost"].state is RunState.TIMED_OUT
        assert {t["scheduler_task_id"] for t in seen} == {"ok", "bad", "lost"} and seen[0]["run_id"]
    finally:
        queue.push_task({"type": "stop"}, priority=-1)
        thread.join(10)
        faces.stop()


def test_add_scheduler_task_is_idempotent_and_refuses_a_changed_definition(scheduler: TaskScheduler) -> None:
    faces = HandlerScheduler(scheduler, queue=WorkQueue())
    first = faces.add_scheduler_task("nightly", "convert_format", "cron", cron_expression="0 2 * * *")
    again = faces.add_scheduler_task("nightly", "convert_format", "cron", cron_expression="0 2 * * *")
    assert first == again == "nightly" and len(faces.list_tasks()) == 1
    with pytest.raises(TaskError, match="another definition"):
        faces.add_scheduler_task("nightly", "convert_format", "cron", cron_expression="0 3 * * *")
    faces.add_scheduler_task("nightly", "convert_format", "cron", cron_expression="0 3 * * *", replace_existing=True)
    assert faces.get_task("nightly")["schedule"] == "cron '0 3 * * *' (UTC)"
    faces.pause_task("nightly")
    assert faces.get_task("nightly")["paused"] and faces.list_tasks(enabled_only=True) == []
    faces.resume_task("nightly")
    faces.delete_task("nightly")
    assert faces.list_tasks() == []
    with pytest.raises(TaskError, match="interval_seconds"):
        faces.add_scheduler_task("x", "t", "interval")
    with pytest.raises(TaskError, match="schedule_type"):
        faces.add_scheduler_task("x", "t", "weekly")
    once = faces.add_scheduler_task("later", "t", "once", execute_at=1_900_000_000)
    assert faces.get_task(once)["next_run_at"] == 1_900_000_000


def test_handler_tasks_survive_a_restart_and_an_unregistered_handler_is_reported(base_dir: Path) -> None:
    config = SchedulerConfig.from_dict(
        {"scheduler": {"base_dir": str(base_dir), "timezone": "UTC"}, "store": {"url": "sqlite://state.db"},
         "logging": {"log_file": None}, "tasks": {"retry_jitter": 0}}
    )  # fmt: skip
    clock = ManualClock()
    first = HandlerScheduler(TaskScheduler(config, clock=clock), queue=WorkQueue())
    first.add_scheduler_task("download", "download_audio", interval_seconds=60, params={"url": "u"}, max_runs=3,
                             max_retries=0)  # fmt: skip
    first.stop()

    calls: list[dict[str, Any]] = []
    register_handler("download_audio", calls.append)
    second = HandlerScheduler(TaskScheduler(config, clock=clock), queue=WorkQueue(), workers=1)
    second.start_workers()
    try:
        assert [t["task_id"] for t in second.list_tasks()] == ["download"]  # restored from the store
        step(second.scheduler, clock, 60)
        assert calls == [{"url": "u"}]
        unregister_handler("download_audio")
        step(second.scheduler, clock, 60)
        [failed, ok] = second.scheduler.store.history("download")
        assert ok.state is RunState.SUCCEEDED and failed.state is RunState.FAILED
        assert "no handler is registered for task type 'download_audio'" in (failed.error or "")
        assert second.get_task("download")["enabled"]  # reported, not dropped
    finally:
        second.stop()
