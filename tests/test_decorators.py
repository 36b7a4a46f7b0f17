"""The decorator face: registration on a default or a given scheduler, the duplicate
rule, retry policies in chronflow's words, and stats from the store's counters."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest

from task_scheduler import (
    ManualClock,
    RetryPolicy,
    SchedulerConfig,
    TaskError,
    TaskNotFoundError,
    TaskScheduler,
    decorators,
)
from task_scheduler.decorators import cron, interval, once, scheduled


@pytest.fixture(autouse=True)
def fresh_declarations() -> Iterator[None]:
    decorators.forget_declarations()
    decorators.set_default_scheduler(None)
    yield
    decorators.forget_declarations()
    decorators.set_default_scheduler(None)


def step(scheduler: TaskScheduler, clock: ManualClock, seconds: float) -> None:
    clock.advance(seconds)
    scheduler.run_due()
    assert scheduler.wait_for_runs(10)


def test_declared_before_the_scheduler_exists_and_picked_up(config: SchedulerConfig, clock: ManualClock) -> None:
    calls: list[str] = []

    @interval(30)
    async def every_thirty() -> None:
        calls.append("thirty")

    @cron("*/5 * * * * *")
    def every_five() -> None:
        calls.append("five")

    @once(at=datetime(2030, 1, 1, 0, 0, 12, tzinfo=UTC))
    def new_year() -> None:
        calls.append("once")

    assert every_five() is None and calls == ["five"]  # still a plain function
    calls.clear()
    scheduler = TaskScheduler(config, clock=clock)
    decorators.set_default_scheduler(scheduler)
    assert sorted(t.task_id for t in scheduler.get_tasks()) == ["every_five", "every_thirty", "new_year"]
    for _ in range(30):
        step(scheduler, clock, 1)
    # cron: 0 (it matches the start), 5, ... 30
    assert calls.count("thirty") == 1 and calls.count("once") == 1 and calls.count("five") == 7
    assert decorators.get_task("every_five", scheduler).metrics.total_runs == 7
    scheduler.stop()


def test_declared_after_the_default_exists_goes_straight_to_it() -> None:
    scheduler = decorators.get_scheduler()

    @interval(seconds=10, name="my_task")
    def job() -> None: ...

    assert scheduler.get_task("my_task").name == "my_task"
    assert [d.task_id for d in decorators.declarations()] == ["my_task"]
    scheduler.stop()


def test_same_function_twice_is_one_task_and_another_function_is_an_error() -> None:
    scheduler = decorators.get_scheduler()

    def define() -> object:
        @interval(seconds=10, name="my_task")  # the pitfall: a decorator inside a function called twice
        def my_task() -> None: ...

        return my_task

    define()
    define()
    assert [t.task_id for t in scheduler.get_tasks()] == ["my_task"]

    with pytest.raises(TaskError) as caught:

        @interval(seconds=5, name="my_task")
        def other() -> None: ...

    message = str(caught.value)
    assert "define.<locals>.my_task" in message and "other" in message and "name=" in message
    scheduler.stop()


def test_reloaded_declaration_takes_the_latest_settings(scheduler: TaskScheduler) -> None:
    def job() -> None: ...

    scheduled(interval=10, name="job", scheduler=scheduler)(job)
    scheduled(interval=20, name="job", scheduler=scheduler, timeout=5)(job)
    assert scheduler.get_task_status("job")["schedule"] == "every 20 seconds"
    assert scheduler.get_task("job").timeout == 5

    with pytest.raises(TaskError, match="already registered"):
        scheduled(interval=10, name="job", scheduler=scheduler)(lambda: None)


def test_scheduled_with_chronflow_retry_policy_and_options(scheduler: TaskScheduler, clock: ManualClock) -> None:
    attempts: list[datetime] = []

    @scheduled(
        interval=10,
        retry_policy=RetryPolicy(max_attempts=3, strategy="exponential", wait_min=1.0, wait_max=1.5),
        timeout=30.0,
        max_instances=3,
        tags=["critical", "data-sync"],
        scheduler=scheduler,
    )
    async def important_task() -> None:
        attempts.append(clock.now())
        raise RuntimeError("flaky")

    task = scheduler.get_task("important_task")
    assert (task.max_retries, task.retry_delay, task.max_retry_delay, task.timeout, task.max_instances) == (
        2, 1.0, 1.5, 30.0, 3,
    )  # fmt: skip
    assert scheduler._get("important_task").retry.delay(2) == 1.5  # 2.0 capped by wait_max
    for _ in range(30):
        step(scheduler, clock, 0.5)
    start = datetime(2030, 1, 1, tzinfo=UTC)
    assert attempts == [start + timedelta(seconds=s) for s in (10, 11, 12.5)]
    info = decorators.get_task("important_task", scheduler)
    assert info.tags == ("critical", "data-sync") and info.metrics.failed_runs == 1
    assert info.metrics.retried_attempts == 2 and info.metrics.total_runs == 1
    assert [i.name for i in decorators.get_task_by_tag("critical", scheduler)] == ["important_task"]


def test_retry_policy_words_cannot_be_mixed() -> None:
    with pytest.raises(TaskError, match="max_retries or max_attempts"):
        RetryPolicy(max_retries=2, max_attempts=3)
    with pytest.raises(TaskError, match="fixed' or 'exponential"):
        RetryPolicy(strategy="random")
    assert RetryPolicy(max_attempts=1).max_retries == 0


def test_needs_exactly_one_schedule() -> None:
    with pytest.raises(TaskError, match="needs one of"):
        scheduled(interval=5, cron="* * * * *")
    with pytest.raises(TaskError, match="needs one of"):
        scheduled()
    with pytest.raises(TaskError, match="at="):
        once()


def test_stats_agree_with_the_store(scheduler: TaskScheduler, clock: ManualClock) -> None:
    outcomes = iter([None, RuntimeError("no"), None])

    @interval(1, scheduler=scheduler, tags=["important"])
    def mixed() -> None:
        outcome = next(outcomes)
        if outcome:
            raise outcome

    @interval(60, scheduler=scheduler)
    def idle() -> None: ...

    for _ in range(3):
        clock.advance(1)
        scheduler.run_due()
        scheduler.wait_for_runs(10)
    scheduler.pause_task("idle")
    info = decorators.get_task("mixed", scheduler)
    state = scheduler.store.task_states()["mixed"]
    assert (info.metrics.total_runs, info.metrics.successful_runs, info.metrics.failed_runs) == (
        state.run_count, state.success_count, state.failure_count,
    ) == (3, 2, 1)  # fmt: skip
    assert info.metrics.average_execution_time >= 0 and round(info.metrics.success_rate, 1) == 66.7
    listed = {task["name"]: task for task in decorators.list_tasks(scheduler)}
    assert listed["mixed"]["total_runs"] == 3 and listed["idle"]["status"] == "paused"
    assert listed["idle"]["success_rate"] == 0.0
    assert [i.name for i in decorators.get_task_by_status("paused", scheduler)] == ["idle"]
    stats = decorators.get_stats(scheduler)
    assert stats["total_tasks"] == 2 and stats["max_workers"] == 4 and stats["running"] is False
    assert stats["queue_size"] == 0 and stats["active_workers"] == 0
    assert stats["backend"] in ("MemoryStore", "SQLiteStore", "PostgresStore") and len(stats["tasks"]) == 2
    with pytest.raises(TaskNotFoundError):
        decorators.get_task("nope", scheduler)
