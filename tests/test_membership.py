"""A node and its store (membership.py), driven by a ManualClock: outages of the store,
the skew against its clock. (Real PostgreSQL outages: tests/integration/test_cluster.py.)"""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from task_scheduler import (
    FunctionTask,
    IntervalRule,
    ManualClock,
    MemoryStore,
    RunState,
    SchedulerConfig,
    StoreUnavailableError,
    TaskScheduler,
)
from task_scheduler.stores.base import NodeInfo

T0 = datetime(2030, 1, 1, tzinfo=UTC)


class Flaky:
    """A store that can go away: while ``down`` every call raises StoreUnavailableError.
    ``calls`` lists the calls that reached it; ``clock`` (when set) is its own clock."""

    def __init__(self, store: Any) -> None:
        self.store = store
        self.down = False
        self.calls: list[str] = []
        self.clock: datetime | None = None

    def heartbeat(self, node: NodeInfo, run_ids: Any, lease_until: datetime) -> datetime | None:
        self._reach("heartbeat")
        self.store.heartbeat(node, run_ids, lease_until)
        return self.clock

    def _reach(self, name: str) -> None:
        if self.down:
            raise StoreUnavailableError("the test store is unavailable")
        self.calls.append(name)

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self.store, name)
        if not callable(attribute) or name in ("watch", "close"):
            return attribute

        def call(*args: Any, **kwargs: Any) -> Any:
            self._reach(name)
            return attribute(*args, **kwargs)

        return call


def make(clock: ManualClock, store: Flaky) -> TaskScheduler:
    config = SchedulerConfig.from_dict(
        {"scheduler": {"timezone": "UTC", "check_interval": 1}, "store": {"lease_seconds": 30}}
    )
    return TaskScheduler(config, store=store, clock=clock)  # type: ignore[arg-type]


def test_while_the_store_is_down_runs_go_on_outcomes_wait_and_nothing_is_claimed(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock, store = ManualClock(T0), Flaky(MemoryStore())
    scheduler = make(clock, store)
    release = threading.Event()
    scheduler.add_task(FunctionTask("slow", "slow", lambda: release.wait(10)), IntervalRule(seconds=10))
    scheduler.add_task(FunctionTask("tick", "tick", lambda: None), IntervalRule(seconds=1))
    clock.advance(10)
    scheduler.run_due()  # both claimed; slow keeps running
    store.down = True
    release.set()
    for _ in range(20):  # 20 s without the store
        clock.advance(1)
        scheduler.run_due()
    assert scheduler.wait_for_runs(5)  # the outcomes were collected, into the outbox
    assert not store.store.history("slow")
    assert caplog.text.count("claiming stops") == 1  # logged once per outage, not every step
    store.down = False
    store.calls.clear()
    clock.advance(16)  # past the longest wait between probes
    scheduler.run_due()
    first = store.calls.index("finish")
    assert store.calls[0] == "heartbeat" and first < store.calls.index("claim_due")  # outcomes first
    finished = [r for r in store.store.history("slow") if r.state is not RunState.MISSED]
    assert [(r.state, r.scheduled_for) for r in finished] == [(RunState.SUCCEEDED, T0 + timedelta(seconds=10))]
    assert "the store is available again after" in caplog.text
    runs = [r for r in store.store.history("tick") if r.state is RunState.SUCCEEDED]
    assert len(runs) == 1  # the seconds without the store were coalesced, not run one by one
    scheduler.stop()


def test_the_skew_is_measured_before_the_first_claim_and_due_times_follow_the_store(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock, store = ManualClock(T0), Flaky(MemoryStore())
    store.clock = T0 - timedelta(seconds=5)  # this node's clock is 5 s ahead of the store's
    calls: list[datetime] = []
    scheduler = make(clock, store)
    rule = IntervalRule(seconds=10, start=T0)
    scheduler.add_task(FunctionTask("tick", "tick", lambda context: calls.append(context.scheduled_for)), rule)
    assert "5.000s ahead of the store's" in caplog.text
    clock.advance(10)  # the node's T0+10 is the store's T0+5: T0 is due, T0+10 not yet
    store.clock = T0 + timedelta(seconds=5)
    scheduler.run_due()
    assert scheduler.wait_for_runs(5) and calls == [T0]
    clock.advance(5)
    scheduler.run_due()
    assert scheduler.wait_for_runs(5) and calls == [T0, T0 + timedelta(seconds=10)]
    [node] = store.store.nodes()
    assert node.skew == 5.0
    scheduler.stop()
