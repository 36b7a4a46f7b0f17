"""The dispatcher's bookkeeping stays the size of the runs in flight."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime

from task_scheduler import FunctionTask, IntervalRule, ManualClock, OnceRule, SchedulerConfig, TaskScheduler


def test_finished_runs_leave_no_timeout_entries_behind(clock: ManualClock) -> None:
    """Every function run with a timeout gets a deadline entry; a run that finishes in
    time must not keep it until the deadline (a soak of 1,000,000 runs grew by 150 MB)."""
    config = SchedulerConfig.from_dict({"store": {"url": "memory://"}, "tasks": {"default_timeout": 300}})
    scheduler = TaskScheduler(config, clock=clock)
    for i in range(20):
        scheduler.add_task(FunctionTask(f"t{i}", func=lambda: None), IntervalRule(seconds=1))
    for _ in range(50):  # 1,000 runs, all finishing long before their 300 s timeout
        clock.advance(1)
        scheduler.run_due()
        assert scheduler.wait_for_runs(10)
    scheduler.run_due()
    deadlines = scheduler._dispatcher._deadlines
    assert len(deadlines) <= 2 * len(scheduler._dispatcher.active) + 64, len(deadlines)
    scheduler.stop()


def test_every_finished_run_is_collected_without_a_lock_per_run(clock: ManualClock) -> None:
    """Workers hand their outcomes over without taking a lock; only the first of a
    batch wakes the collector. Many small batches on 10 workers, collected by
    `wait_for_runs` from this thread: a lost wake-up shows as a wait that times out,
    a lost outcome as a missing count."""
    scheduler = TaskScheduler(SchedulerConfig.from_dict({"store": {"url": "memory://"}}), clock=clock)
    tasks = 50
    for i in range(tasks):
        scheduler.add_task(FunctionTask(f"t{i}", func=lambda: None), IntervalRule(seconds=1))
    rounds = 200
    for _ in range(rounds):
        clock.advance(1)
        while scheduler.run_due() == 0.0:  # claims come in batches
            pass
        assert scheduler.wait_for_runs(10), "a finished run was never reported"
    assert sum(state.run_count for state in scheduler.store.task_states().values()) == tasks * rounds
    scheduler.stop()


def test_outcomes_are_collected_once_when_two_threads_collect() -> None:
    """The loop thread and a caller of `wait_for_runs` drain the finished runs at the
    same time: each outcome is recorded exactly once."""
    scheduler = TaskScheduler(SchedulerConfig.from_dict({"store": {"url": "memory://"}}))
    scheduler.start()
    try:
        for i in range(2_000):
            scheduler.add_task(FunctionTask(f"o{i}", func=lambda: None), OnceRule(run_at=datetime.now(UTC)))
            if i % 100 == 0:
                assert scheduler.wait_for_runs(10)
        # Runs the loop has not claimed yet are not in flight: wait until all 2,000 ran,
        # collecting beside the loop meanwhile.
        deadline = time.monotonic() + 60
        while sum(state.run_count for state in scheduler.store.task_states().values()) < 2_000:
            assert time.monotonic() < deadline, "not every one-time task ran"
            assert scheduler.wait_for_runs(10)
            time.sleep(0.01)
        states = scheduler.store.task_states()
        assert all(state.run_count == 1 for state in states.values()), [s for s in states.values() if s.run_count != 1]
        assert len(states) == 2_000
    finally:
        scheduler.stop()


def test_wait_is_woken_after_a_drain_raced_a_finishing_worker(clock: ManualClock) -> None:
    """A drain can leave the "loop was woken" flag set with nothing left to take (a
    worker finished between the flag's reset and the drain). `wait` must still be
    woken by the next run that finishes."""
    release = threading.Event()
    scheduler = TaskScheduler(SchedulerConfig.from_dict({"store": {"url": "memory://"}}), clock=clock)
    scheduler.add_task(FunctionTask("slow", func=release.wait), IntervalRule(seconds=1))
    clock.advance(1)
    scheduler.run_due()
    dispatcher = scheduler._dispatcher
    assert dispatcher.in_flight == 1
    dispatcher._signalled = True  # the state such a drain leaves
    threading.Timer(0.1, release.set).start()
    began = time.monotonic()
    assert dispatcher.wait(began + 30)
    assert time.monotonic() - began < 10, "the finished run did not wake the waiter (it waited for its deadline)"
    assert scheduler.wait_for_runs(5)
    scheduler.stop()
