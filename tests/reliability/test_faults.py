"""The fault suite: each case runs the real scheduler, injects a fault, then checks
the ledger (every due occurrence has exactly one outcome) and that a canary job kept
its schedule. Time is an injected clock unless the fault needs real processes."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psutil
import pytest

from task_scheduler import (
    ConcurrencyPolicy,
    CronRule,
    EventType,
    FunctionTask,
    IntervalRule,
    ManualClock,
    OnceRule,
    RunState,
    ScheduleError,
    SchedulerConfig,
    ScheduleRule,
    ScriptTask,
    TaskContext,
    TaskScheduler,
)
from task_scheduler.stores import open_store
from tests.conftest import write_script
from tests.reliability.ledger import assert_ledger, expected_fires

T0 = datetime(2030, 1, 1, tzinfo=UTC)
SECOND = IntervalRule(seconds=1)


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(T0)


@pytest.fixture
def scheduler(config: SchedulerConfig, clock: ManualClock) -> Iterator[TaskScheduler]:
    config.tasks.kill_grace = 0.5
    scheduler = TaskScheduler(config, clock=clock, store=open_store(config))
    canary_calls: list[datetime] = []
    scheduler.add_task(
        FunctionTask("canary", "canary", lambda context: canary_calls.append(context.scheduled_for)), SECOND
    )
    scheduler.canary_calls = canary_calls  # type: ignore[attr-defined]
    yield scheduler
    scheduler.stop(wait=True, timeout=10)


def run_for(scheduler: TaskScheduler, clock: ManualClock, seconds: int, wait: bool = True) -> None:
    for _ in range(seconds):
        clock.advance(1)
        scheduler.run_due()
        if wait:
            assert scheduler.wait_for_runs(60)
        else:
            scheduler.wait_for_runs(0.2)  # quick runs finish; slow ones go on


def finish(scheduler: TaskScheduler, task_id: str, rule: ScheduleRule, first: datetime) -> dict[RunState, int]:
    """Stop, then check the ledger of ``task_id`` and the canary's perfect record."""
    until = scheduler.store.task_states()[task_id].next_run_at or datetime.max.replace(tzinfo=UTC)
    canary_until = scheduler.store.task_states()["canary"].next_run_at
    assert canary_until is not None
    scheduler.stop(wait=True, timeout=10)
    outcomes = assert_ledger(scheduler.store, task_id, expected_fires(rule, first, until))
    canary = assert_ledger(scheduler.store, "canary", expected_fires(SECOND, T0 + timedelta(seconds=1), canary_until))
    assert set(canary) == {RunState.SUCCEEDED}, canary
    return dict(outcomes)


def test_hung_script_times_out_and_others_keep_schedule(
    scheduler: TaskScheduler, clock: ManualClock, base_dir: Path
) -> None:
    write_script(base_dir, "hang.py", "import time\ntime.sleep(1000)\n")
    rule = IntervalRule(seconds=2)
    scheduler.add_task(ScriptTask("hang", "hang", "scripts/hang.py", timeout=0.5, max_retries=0), rule)
    run_for(scheduler, clock, 6)
    outcomes = finish(scheduler, "hang", rule, T0 + timedelta(seconds=2))
    assert outcomes == {RunState.TIMED_OUT: 3}


def test_script_ignoring_sigterm_is_killed(scheduler: TaskScheduler, clock: ManualClock, base_dir: Path) -> None:
    write_script(
        base_dir, "deaf.py", "import signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\ntime.sleep(1000)\n"
    )
    rule = IntervalRule(seconds=3)
    scheduler.add_task(ScriptTask("deaf", "deaf", "scripts/deaf.py", timeout=0.5, kill_grace=0.5, max_retries=0), rule)
    run_for(scheduler, clock, 3)
    [record] = scheduler.store.history("deaf")
    assert record.state is RunState.TIMED_OUT and record.exit_code == -9
    assert finish(scheduler, "deaf", rule, T0 + timedelta(seconds=3)) == {RunState.TIMED_OUT: 1}


def test_script_leaving_a_grandchild_leaves_nothing(
    scheduler: TaskScheduler, clock: ManualClock, base_dir: Path
) -> None:
    pids = base_dir / "pids"
    write_script(base_dir, "spawn.sh", f"#!/bin/sh\nsleep 1000 &\necho $! >> {pids}\n")
    rule = IntervalRule(seconds=1)
    scheduler.add_task(ScriptTask("spawn", "spawn", "scripts/spawn.sh", kill_grace=0.5), rule)
    run_for(scheduler, clock, 3)
    leftovers = [int(pid) for pid in pids.read_text().split()]
    assert len(leftovers) == 3
    time.sleep(1.0)  # the group kill after exit finishes within kill_grace
    alive = [
        pid for pid in leftovers if psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    ]
    assert alive == []
    assert finish(scheduler, "spawn", rule, T0 + timedelta(seconds=1)) == {RunState.SUCCEEDED: 3}


def test_function_raising_is_retried_then_failed(scheduler: TaskScheduler, clock: ManualClock) -> None:
    rule = IntervalRule(seconds=5)
    scheduler.add_task(FunctionTask("raise", "raise", lambda: 1 / 0, max_retries=2, retry_delay=1), rule)
    run_for(scheduler, clock, 13)
    outcomes = finish(scheduler, "raise", rule, T0 + timedelta(seconds=5))
    assert outcomes == {RunState.FAILED: 2}
    attempts = sorted((r.scheduled_for, r.attempt) for r in scheduler.store.history("raise"))
    assert [a for _, a in attempts] == [1, 2, 3, 1, 2, 3]


def test_function_blocking_cooperatively_times_out(scheduler: TaskScheduler, clock: ManualClock) -> None:
    def block(context: TaskContext) -> None:
        context.cancel_event.wait(60)

    rule = IntervalRule(seconds=4)
    scheduler.add_task(FunctionTask("block", "block", block, timeout=2, max_retries=0), rule)
    run_for(scheduler, clock, 8, wait=False)
    run_for(scheduler, clock, 2, wait=False)  # past the deadline of the run that started at +8
    assert scheduler.wait_for_runs(30)
    assert finish(scheduler, "block", rule, T0 + timedelta(seconds=4)) == {RunState.TIMED_OUT: 2}


def test_function_ignoring_cancel_is_overdue_and_holds_its_worker(config: SchedulerConfig, clock: ManualClock) -> None:
    config.scheduler.max_workers = 2
    scheduler = TaskScheduler(config, clock=clock, store=open_store(config))
    release = threading.Event()
    canary: list[datetime] = []
    scheduler.add_task(FunctionTask("canary", "canary", lambda context: canary.append(context.scheduled_for)), SECOND)
    rule = OnceRule(run_at=T0 + timedelta(seconds=1))
    scheduler.add_task(FunctionTask("stubborn", "stubborn", lambda: release.wait(60), timeout=2, max_retries=0), rule)
    run_for(scheduler, clock, 5, wait=False)
    time.sleep(0.5)
    status = scheduler.get_task_status("stubborn")
    assert status["status"] == "running" and len(status["overdue_runs"]) == 1
    assert len(canary) >= 4  # the other worker kept the canary on time
    release.set()
    assert scheduler.wait_for_runs(30)
    [record] = scheduler.store.history("stubborn")
    assert record.state is RunState.TIMED_OUT
    scheduler.stop()


def test_one_gigabyte_of_output_keeps_memory_flat(scheduler: TaskScheduler, clock: ManualClock, base_dir: Path) -> None:
    write_script(
        base_dir,
        "flood.py",
        "import sys\nchunk = b'x' * (1 << 20)\n"
        "for _ in range(1024):\n    sys.stdout.buffer.write(chunk)\nprint('the end')\n",
    )
    rule = OnceRule(run_at=T0 + timedelta(seconds=1))
    scheduler.add_task(ScriptTask("flood", "flood", "scripts/flood.py", timeout=300), rule)
    before = psutil.Process().memory_info().rss
    run_for(scheduler, clock, 1)
    growth = psutil.Process().memory_info().rss - before
    [record] = scheduler.store.history("flood")
    assert record.state is RunState.SUCCEEDED and record.output is not None
    assert len(record.output) <= 64 * 1024 and record.output.endswith("the end\n")
    assert growth < 50 * 1024 * 1024, f"RSS grew by {growth / 1e6:.0f} MB"
    assert finish(scheduler, "flood", rule, T0 + timedelta(seconds=1)) == {RunState.SUCCEEDED: 1}


def test_listener_raising_is_isolated(
    scheduler: TaskScheduler, clock: ManualClock, caplog: pytest.LogCaptureFixture
) -> None:
    seen: list[EventType] = []

    def broken(event: object) -> None:
        raise RuntimeError("listener bug")

    scheduler.add_listener(broken)
    scheduler.add_listener(lambda event: seen.append(event.type), EventType.EXECUTED)
    rule = IntervalRule(seconds=1)
    scheduler.add_task(FunctionTask("job", "job", lambda: None), rule)
    with caplog.at_level(logging.ERROR):
        run_for(scheduler, clock, 3)
    assert seen.count(EventType.EXECUTED) == 6  # job and canary, 3 each
    assert "listener bug" in caplog.text
    assert finish(scheduler, "job", rule, T0 + timedelta(seconds=1)) == {RunState.SUCCEEDED: 3}


def test_clock_jumps_forward_and_back(
    scheduler: TaskScheduler, clock: ManualClock, caplog: pytest.LogCaptureFixture
) -> None:
    rule = IntervalRule(seconds=10)
    calls: list[datetime] = []
    scheduler.add_task(FunctionTask("tick", "tick", lambda context: calls.append(context.scheduled_for)), rule)
    run_for(scheduler, clock, 20)
    with caplog.at_level(logging.WARNING):
        clock.set(clock.now() + timedelta(hours=1))  # forward: everything in between is missed
        scheduler.run_due()
        scheduler.wait_for_runs(30)
        clock.set(clock.now() - timedelta(minutes=30))  # back: nothing may run twice
        for _ in range(40):
            clock.advance(1)
            scheduler.run_due()
            scheduler.wait_for_runs(30)
    assert "wall clock jumped forward by 3600.0s" in caplog.text and "jumped back by 1800.0s" in caplog.text
    assert len(calls) == len(set(calls)) and calls == sorted(calls)
    until = scheduler.store.task_states()["tick"].next_run_at
    assert until is not None
    scheduler.stop()
    outcomes = assert_ledger(scheduler.store, "tick", expected_fires(rule, T0 + timedelta(seconds=10), until))
    assert outcomes[RunState.MISSED] >= 350 and outcomes[RunState.SUCCEEDED] == 3


def test_bad_cron_at_run_time_is_rejected_and_jobs_go_on(scheduler: TaskScheduler, clock: ManualClock) -> None:
    run_for(scheduler, clock, 2)
    with pytest.raises(ScheduleError, match="cron field 'hour' has invalid value '24'"):
        scheduler.add_task(FunctionTask("bad", "bad", print), ScheduleRule.from_dict({"cron": "0 24 * * *"}))
    with pytest.raises(ScheduleError):
        scheduler.add_task(FunctionTask("bad", "bad", print), CronRule(cron="*/0 * * * *"))
    run_for(scheduler, clock, 2)
    assert "bad" not in scheduler.store.task_states() and len(scheduler.canary_calls) == 4  # type: ignore[attr-defined]


def test_replace_policy_kills_the_running_script(scheduler: TaskScheduler, clock: ManualClock, base_dir: Path) -> None:
    write_script(base_dir, "slow.py", "import time\ntime.sleep(1000)\n")
    rule = IntervalRule(seconds=2)
    task = ScriptTask("slow", "slow", "scripts/slow.py", timeout=600, concurrency_policy=ConcurrencyPolicy.REPLACE)
    scheduler.add_task(task, rule)
    run_for(scheduler, clock, 2, wait=False)  # first run starts at +2
    time.sleep(0.3)
    run_for(scheduler, clock, 2, wait=False)  # at +4 it replaces the first
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and not scheduler.store.history("slow"):
        scheduler.run_due()
        time.sleep(0.1)
    [replaced] = scheduler.store.history("slow")
    assert replaced.state is RunState.INTERRUPTED and "replaced" in (replaced.error or "")
    assert scheduler.get_task_status("slow")["running_instances"] == 1
    scheduler.stop(wait=False)
    states = {r.scheduled_for: r.state for r in scheduler.store.history("slow")}
    assert states == {T0 + timedelta(seconds=2): RunState.INTERRUPTED, T0 + timedelta(seconds=4): RunState.INTERRUPTED}


def test_max_runs_start_end_and_jitter(scheduler: TaskScheduler, clock: ManualClock) -> None:
    calls: dict[str, list[datetime]] = {"limited": [], "window": [], "jittered": []}

    def recorder(name: str):  # type: ignore[no-untyped-def]
        return lambda context: calls[name].append(clock.now())

    scheduler.add_task(FunctionTask("limited", "limited", recorder("limited"), max_runs=3), IntervalRule(seconds=1))
    window = IntervalRule(seconds=1, start=T0 + timedelta(seconds=5), end=T0 + timedelta(seconds=8))
    scheduler.add_task(FunctionTask("window", "window", recorder("window")), window)
    jittered = IntervalRule(seconds=10, start=T0, jitter=5)
    scheduler.add_task(FunctionTask("jittered", "jittered", recorder("jittered")), jittered)
    run_for(scheduler, clock, 30)
    assert len(calls["limited"]) == 3 and scheduler.get_task_status("limited")["status"] == "finished"
    assert calls["window"] == [T0 + timedelta(seconds=s) for s in (5, 6, 7, 8)]
    offsets = [(when - T0).total_seconds() % 10 for when in calls["jittered"]]
    assert len(calls["jittered"]) == 3 and all(0 <= o < 5 for o in offsets) and len(set(offsets)) > 1
    assert [
        offsets[i] == jittered.jitter_offset("jittered", T0 + timedelta(seconds=10 * (i + 1))).seconds for i in range(3)
    ]
    states = {task_id: state for task_id, state in scheduler.store.task_states().items()}
    assert states["window"].finished and states["limited"].run_count == 3


def test_many_tasks_every_second_with_few_workers(tmp_path: Path) -> None:
    """1,000 tasks firing every second for 30 s on 4 workers, real time, on the default
    (SQLite) store: no deadlock, every occurrence accounted for."""
    config = SchedulerConfig.from_dict(
        {"scheduler": {"base_dir": str(tmp_path), "max_workers": 4, "check_interval": 0.5},
         "logging": {"log_file": None}}
    )  # fmt: skip
    scheduler = TaskScheduler(config, store=open_store(config))
    started = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=2)
    rule = IntervalRule(seconds=1, start=started)
    scheduler.add_tasks([(FunctionTask(f"t{i:04}", None, lambda: None), rule) for i in range(1000)])
    scheduler.start()
    time.sleep((started - datetime.now(UTC)).total_seconds() + 30)
    scheduler.stop(wait=True, timeout=30)
    states = scheduler.store.task_states()
    totals: dict[RunState, int] = {}
    for task_id in (f"t{i:04}" for i in range(1000)):
        until = states[task_id].next_run_at
        assert until is not None
        for state, count in assert_ledger(scheduler.store, task_id, expected_fires(rule, started, until)).items():
            totals[state] = totals.get(state, 0) + count
    assert sum(totals.values()) >= 27_000  # ~30,000 expected; fewer only if the machine stalls
    print(
        f"\nledger of 1,000 tasks x 30 s on 4 workers (SQLite): {sum(totals.values())} occurrences, "
        + ", ".join(f"{state.value} {count}" for state, count in sorted(totals.items(), key=lambda kv: kv[0].value))
    )


def test_recover_reruns_an_interrupted_run(config: SchedulerConfig, clock: ManualClock, base_dir: Path) -> None:
    """A task with recover=True whose run is cut short by a shutdown runs again, as the
    next attempt of the same occurrence, after the restart."""
    write_script(
        base_dir, "slow.py", "import os, sys, time\nif os.path.exists(sys.argv[1]): sys.exit(0)\ntime.sleep(1000)\n"
    )
    marker = base_dir / "second-time"
    rule = OnceRule(run_at=T0 + timedelta(seconds=1))
    store = open_store(config)
    first = TaskScheduler(config, clock=clock, store=store)
    first.add_task(ScriptTask("slow", "slow", "scripts/slow.py", args=[str(marker)], recover=True), rule)
    run_for(first, clock, 1, wait=False)
    first.stop(wait=True, timeout=0.5)
    [interrupted] = store.history("slow")
    assert interrupted.state is RunState.INTERRUPTED
    if config.store.url == "memory://":
        return  # nothing outlives the process in memory
    marker.write_text("")
    second = TaskScheduler(config, clock=clock, store=open_store(config))
    second.add_task(ScriptTask("slow", "slow", "scripts/slow.py", args=[str(marker)], recover=True), rule)
    run_for(second, clock, 1)
    second.stop()
    again = [r for r in second.store.history("slow") if r.state is RunState.SUCCEEDED]
    assert [(r.attempt, r.scheduled_for) for r in again] == [(2, T0 + timedelta(seconds=1))]
