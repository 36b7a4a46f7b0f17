"""Restart semantics on the SQLite store: a new TaskScheduler on the same file, time
driven by an injected clock. (The kill -9 case with real processes is in
tests/integration/test_durability.py.)"""

from __future__ import annotations

import os
import socket
import subprocess
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

from task_scheduler import (
    FunctionTask,
    IntervalRule,
    ManualClock,
    OnceRule,
    RunState,
    SchedulerConfig,
    TaskContext,
    TaskScheduler,
)
from task_scheduler.stores.base import NodeInfo

T0 = datetime(2030, 1, 1, tzinfo=UTC)


def make_config(base_dir: Path, **scheduler: object) -> SchedulerConfig:
    return SchedulerConfig.from_dict(
        {
            "scheduler": {"timezone": "UTC", "base_dir": str(base_dir), **scheduler},
            "store": {"lease_seconds": 30},
            "logging": {"log_file": None},
        }
    )


class Service:
    """One 'process lifetime': a scheduler on the shared state file."""

    def __init__(self, base_dir: Path, clock: ManualClock, calls: list[tuple[str, datetime]], **scheduler: object):
        self.clock = clock
        self.calls = calls
        self.scheduler = TaskScheduler(make_config(base_dir, **scheduler), clock=clock)

    def job(self, task_id: str, rule: object, **options: object) -> None:
        calls = self.calls

        def work(context: TaskContext) -> None:
            calls.append((task_id, context.scheduled_for))

        self.scheduler.add_task(FunctionTask(task_id, task_id, work, **options), rule)  # type: ignore[arg-type]

    def step(self, seconds: float = 0) -> None:
        self.clock.advance(seconds)
        self.scheduler.run_due()
        assert self.scheduler.wait_for_runs(10)

    def stop(self) -> None:
        self.scheduler.stop(wait=True, timeout=5)


def lifetime(
    base_dir: Path,
    clock: ManualClock,
    calls: list[tuple[str, datetime]],
    setup: Callable[[Service], None],
    **scheduler: object,
) -> Service:
    service = Service(base_dir, clock, calls, **scheduler)
    setup(service)
    return service


def test_pauses_counts_and_finished_once_jobs_survive_a_restart(base_dir: Path) -> None:
    clock, calls = ManualClock(T0), []

    def setup(service: Service) -> None:
        service.job("tick", IntervalRule(seconds=10))
        service.job("idle", IntervalRule(seconds=10))
        service.job("once", OnceRule(run_at=T0 + timedelta(seconds=5)))

    first = lifetime(base_dir, clock, calls, setup)
    first.step(0)
    first.scheduler.pause_task("idle")
    for _ in range(3):
        first.step(10)
    first.stop()
    assert sorted({c[0] for c in calls}) == ["once", "tick"] and len(calls) == 4

    second = lifetime(base_dir, clock, calls, setup)
    second.step(10)
    status = second.scheduler.get_task_status()["tasks"]
    assert status["idle"]["paused"] is True and status["idle"]["run_count"] == 0
    assert status["tick"]["run_count"] == 4  # 3 before the restart, 1 after
    assert status["once"]["status"] == "finished" and status["once"]["run_count"] == 1
    assert [c for c in calls if c[0] == "once"] == [("once", T0 + timedelta(seconds=5))]
    second.stop()


def test_downtime_without_catch_up_records_missed_and_runs_nothing_late(base_dir: Path) -> None:
    clock, calls = ManualClock(T0), []
    setup = lambda s: s.job("tick", IntervalRule(seconds=60))  # noqa: E731
    first = lifetime(base_dir, clock, calls, setup, misfire_grace_time=10)
    first.step(0)
    first.step(60)
    first.stop()
    clock.advance(330)  # down for five intervals and a half
    second = lifetime(base_dir, clock, calls, setup, misfire_grace_time=10)
    second.step(0)
    assert calls == [("tick", T0 + timedelta(seconds=60))]
    missed = second.scheduler.store.history("tick", state=RunState.MISSED)
    assert sorted(m.scheduled_for for m in missed) == [T0 + timedelta(seconds=s) for s in (120, 180, 240, 300, 360)]
    assert second.scheduler.get_task_status("tick")["next_run_time"] == (T0 + timedelta(seconds=420)).isoformat()
    second.stop()


def test_downtime_with_catch_up_runs_exactly_once(base_dir: Path) -> None:
    clock, calls = ManualClock(T0), []
    setup = lambda s: s.job("tick", IntervalRule(seconds=60))  # noqa: E731
    first = lifetime(base_dir, clock, calls, setup, misfire_grace_time=10, catch_up=True)
    first.step(60)
    first.stop()
    clock.advance(330)
    second = lifetime(base_dir, clock, calls, setup, misfire_grace_time=10, catch_up=True)
    second.step(0)
    second.step(1)
    assert calls == [("tick", T0 + timedelta(seconds=60)), ("tick", T0 + timedelta(seconds=360))]
    assert len(second.scheduler.store.history("tick", state=RunState.MISSED)) == 4
    second.stop()


def test_removed_job_is_unscheduled_with_history_kept_and_changed_job_rescheduled(base_dir: Path) -> None:
    clock, calls = ManualClock(T0), []

    def before(service: Service) -> None:
        service.job("gone", IntervalRule(seconds=10))
        service.job("changed", IntervalRule(seconds=10))

    first = lifetime(base_dir, clock, calls, before)
    first.step(10)
    first.stop()

    def after(service: Service) -> None:
        service.job("changed", IntervalRule(seconds=100))

    second = lifetime(base_dir, clock, calls, after)
    second.step(0)
    assert "gone" not in second.scheduler.store.task_states()
    assert len(second.scheduler.store.history("gone")) == 1
    status = second.scheduler.get_task_status("changed")
    assert status["next_run_time"] == (T0 + timedelta(seconds=110)).isoformat() and status["run_count"] == 1
    calls.clear()
    second.step(100)
    assert calls == [("changed", T0 + timedelta(seconds=110))]
    second.stop()


def test_runs_of_a_dead_local_process_are_interrupted_at_start(base_dir: Path) -> None:
    clock, calls = ManualClock(T0), []
    setup = lambda s: s.job("tick", IntervalRule(seconds=10))  # noqa: E731
    first = lifetime(base_dir, clock, calls, setup)
    first.scheduler.run_due()
    store = first.scheduler.store
    dead = subprocess.Popen(["true"])
    dead.wait()  # a pid that no longer exists
    node = NodeInfo(f"{socket.gethostname()}:{dead.pid}", socket.gethostname(), dead.pid, T0, T0)
    store.heartbeat(node, [], T0)
    store.sync_tasks([first.scheduler._entries["tick"]], node.node_id)  # that process ran "tick" too
    store.claim_due(
        T0 + timedelta(seconds=10), 10, node.node_id, T0 + timedelta(hours=1), lambda t, a: a + timedelta(seconds=10)
    )
    first.stop()

    second = lifetime(base_dir, clock, calls, setup)
    second.step(0)
    [interrupted] = second.scheduler.store.history("tick", state=RunState.INTERRUPTED)
    assert f"pid {dead.pid}" in (interrupted.error or "") and interrupted.scheduled_for == T0 + timedelta(seconds=10)
    second.step(20)
    assert calls == [("tick", T0 + timedelta(seconds=20))]  # the next occurrence runs
    second.stop()


def test_runs_of_a_silent_remote_node_are_interrupted_when_the_lease_expires(base_dir: Path) -> None:
    clock, calls = ManualClock(T0), []
    setup = lambda s: s.job("tick", IntervalRule(seconds=10))  # noqa: E731
    service = lifetime(base_dir, clock, calls, setup)
    service.scheduler.run_due()
    node = NodeInfo("other-host:1", "other-host", os.getpid(), T0, T0)
    service.scheduler.store.heartbeat(node, [], T0)
    service.scheduler.store.sync_tasks([service.scheduler._entries["tick"]], node.node_id)
    service.scheduler.store.claim_due(
        T0 + timedelta(seconds=10), 10, node.node_id, T0 + timedelta(seconds=40), lambda t, a: a + timedelta(seconds=10)
    )
    service.step(35)
    assert service.scheduler.store.history("tick", state=RunState.INTERRUPTED) == []
    service.step(10)  # the lease ran out at T0+40 and our heartbeat (every lease/3) reaps it
    [interrupted] = service.scheduler.store.history("tick", state=RunState.INTERRUPTED)
    assert "lease" in (interrupted.error or "")
    service.stop()
