"""The shared key-value store face: JSON values, TTL with an injected clock,
background expiry, persistence in the SQLite store, the module functions."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from task_scheduler import ManualClock, SchedulerConfig, TaskScheduler, TaskSchedulerError, decorators, shared
from task_scheduler.shared import SharedStore


@pytest.fixture(autouse=True)
def fresh_default() -> Iterator[None]:
    decorators.set_default_scheduler(None)
    yield
    decorators.set_default_scheduler(None)


def test_values_are_json_and_ttl_follows_the_clock(scheduler: TaskScheduler, clock: ManualClock) -> None:
    store = SharedStore(scheduler)  # the scheduler's store and clock
    store.set_public("api_key", "your_api_key")
    store.set_public("session_token", "token123", ttl=60)
    store.set_public("state", {"page": 3, "ids": (1, 2)})
    assert store.get_public("api_key") == "your_api_key"
    assert store.get_public("state") == {"page": 3, "ids": [1, 2]}  # JSON: a tuple comes back a list
    assert store.list_keys() == ["api_key", "session_token", "state"] and store.get_store_size() == 3
    clock.advance(59.9)
    assert store.get_public("session_token") == "token123"
    clock.advance(0.1)
    assert store.get_public("session_token") is None and store.get_public("session_token", "gone") == "gone"
    assert store.list_keys() == ["api_key", "state"]
    assert store.cleanup() == 1 and store.cleanup() == 0
    assert store.delete_public("api_key") is True and store.delete_public("api_key") is False
    assert store.clear_store() == 1 and store.list_keys() == []


def test_bad_values_keys_and_ttls_are_refused(scheduler: TaskScheduler) -> None:
    store = SharedStore(scheduler)
    with pytest.raises(TaskSchedulerError, match="JSON"):
        store.set_public("lock", object())
    with pytest.raises(TaskSchedulerError, match="ttl"):
        store.set_public("k", 1, ttl=0)
    with pytest.raises(TaskSchedulerError, match="key"):
        store.set_public("", 1)


def test_background_expiry_purges_with_an_injected_clock() -> None:
    clock = ManualClock()
    scheduler = TaskScheduler(clock=clock)
    store = SharedStore(scheduler, cleanup_interval=0.01)
    store.set_public("temp", 1, ttl=5)
    store.start_cleanup()
    store.start_cleanup()  # idempotent
    try:
        clock.advance(5)
        deadline = time.monotonic() + 10
        while "temp" in scheduler.store.shared.keys(None) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert scheduler.store.shared.keys(None) == []
    finally:
        store.stop_cleanup()
        scheduler.stop()


def test_sqlite_values_are_shared_across_schedulers_and_restarts(base_dir: Path) -> None:
    config = SchedulerConfig.from_dict(
        {"scheduler": {"base_dir": str(base_dir)}, "store": {"url": "sqlite://state.db"}, "logging": {"log_file": None}}
    )
    first, second = TaskScheduler(config), TaskScheduler(config)
    SharedStore(first).set_public("bilibili_cookie", "SESSDATA=xxx", ttl=3600)
    assert SharedStore(second).get_public("bilibili_cookie") == "SESSDATA=xxx"
    first.stop()
    second.stop()
    third = TaskScheduler(config)
    assert SharedStore(third).list_keys() == ["bilibili_cookie"]
    third.stop()


def test_module_functions_use_the_default_scheduler() -> None:
    scheduler = TaskScheduler()
    decorators.set_default_scheduler(scheduler)
    shared.set_public("task_1_status", "pending")
    assert shared.get_public("task_1_status") == "pending"
    assert scheduler.store.shared.get("task_1_status", scheduler.clock.now()) == '"pending"'
    assert shared.list_keys() == ["task_1_status"] and shared.get_store_size() == 1
    assert shared.delete_public("task_1_status") and shared.cleanup() == 0 and shared.clear_store() == 0
    other = TaskScheduler()
    decorators.set_default_scheduler(other)  # the default shared store follows the default scheduler
    shared.set_public("x", 1)
    assert other.store.shared.keys(None) == ["x"] and scheduler.store.shared.keys(None) == []
    shared.get_shared().stop_cleanup()
    scheduler.stop()
    other.stop()
