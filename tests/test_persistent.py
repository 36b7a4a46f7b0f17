"""Persistent jobs through the public API: added once, restored by every later process."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from task_scheduler import (
    ConfigError,
    FunctionTask,
    IntervalRule,
    ManualClock,
    RunState,
    SchedulerConfig,
    ScriptTask,
    TaskError,
    TaskScheduler,
)
from task_scheduler.stores.base import Origin
from tests.conftest import write_script

T0 = datetime(2030, 1, 1, tzinfo=UTC)
MODULE = "persisted_jobs_{}"
SOURCE = """
CALLS = []

def record(label="x", context=None):
    CALLS.append((label, context.scheduled_for.isoformat()))
"""


@pytest.fixture
def module(base_dir: Path) -> Iterator[str]:
    """A user module in base_dir (importable through the config's base_dir)."""
    name = MODULE.format(base_dir.name.replace("-", "_"))
    (base_dir / f"{name}.py").write_text(SOURCE)
    yield name
    sys.modules.pop(name, None)


def durable_config(base_dir: Path) -> SchedulerConfig:
    return SchedulerConfig.from_dict(
        {
            "scheduler": {"timezone": "UTC", "base_dir": str(base_dir), "check_interval": 1},
            "store": {"url": "sqlite://data/state.db"},
            "tasks": {"max_retries": 0},
            "logging": {"log_file": None},
        }
    )


def step(scheduler: TaskScheduler, clock: ManualClock, seconds: float) -> None:
    clock.advance(seconds)
    scheduler.run_due()
    assert scheduler.wait_for_runs(30)


def calls(module: str) -> list[tuple[str, str]]:
    return list(sys.modules[module].CALLS)


def test_a_job_added_once_is_restored_by_the_next_process(base_dir: Path, module: str) -> None:
    clock = ManualClock(T0)
    first = TaskScheduler(durable_config(base_dir), clock=clock)
    first.add_job({"id": "report", "type": "function", "function": f"{module}:record", "kwargs": {"label": "r"},
                   "schedule": {"interval": {"seconds": 10}}})  # fmt: skip
    write_script(base_dir, "hello.py", "print('hello')\n")
    first.add_task(ScriptTask("hello", "Hello", "scripts/hello.py"), IntervalRule(seconds=10), persistent=True)
    first.pause_task("hello")
    step(first, clock, 10)
    first.stop()
    assert calls(module) == [("r", "2030-01-01T00:00:10+00:00")]

    second = TaskScheduler(durable_config(base_dir), clock=clock)  # no code adds anything
    assert sorted(task.task_id for task in second.get_tasks()) == ["hello", "report"]
    states = second.store.task_states()
    assert states["hello"].paused and states["report"].origin is Origin.PERSISTENT
    step(second, clock, 10)
    assert calls(module)[-1] == ("r", "2030-01-01T00:00:20+00:00")
    assert second.store.task_states()["report"].run_count == 2  # the counters went on
    second.stop()


def test_changes_through_the_api_update_the_stored_definition(base_dir: Path, module: str) -> None:
    clock = ManualClock(T0)
    scheduler = TaskScheduler(durable_config(base_dir), clock=clock)
    spec = {"id": "report", "function": f"{module}:record", "schedule": {"interval": 10}}
    scheduler.add_job(spec)
    scheduler.reschedule_task("report", IntervalRule(seconds=30))
    assert scheduler.store.job_specs()["report"]["schedule"] == {"interval": {"seconds": 30.0}}
    scheduler.add_job({**spec, "kwargs": {"label": "new"}}, replace_existing=True)  # new params
    assert scheduler.store.job_specs()["report"]["kwargs"] == {"label": "new"}
    step(scheduler, clock, 10)
    scheduler.remove_task("report")
    assert "report" not in scheduler.store.task_states() and scheduler.store.job_specs() == {}
    assert len(scheduler.store.history("report")) == 1  # removing keeps the history
    scheduler.stop()
    again = TaskScheduler(durable_config(base_dir), clock=clock)
    assert again.get_tasks() == []  # and it stays removed
    again.stop()


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda: lambda: None, "it is a lambda"),
        (lambda: _closure(), "it is defined inside another function (a closure)"),
        (lambda: _Thing().method, "it is a bound method"),
    ],
)
def test_what_cannot_be_stored_is_refused_with_the_reason(config: SchedulerConfig, make, reason: str) -> None:  # type: ignore[no-untyped-def]
    scheduler = TaskScheduler(config)
    with pytest.raises(TaskError) as caught:
        scheduler.add_task(FunctionTask("job", "job", make()), IntervalRule(seconds=5), persistent=True)
    assert reason in str(caught.value) and "module-level function" in str(caught.value)
    assert scheduler.get_tasks() == []
    scheduler.add_task(FunctionTask("job", "job", make()), IntervalRule(seconds=5))  # fine when not persistent
    scheduler.stop()


def _closure():  # type: ignore[no-untyped-def]
    def inner() -> None:
        pass

    return inner


class _Thing:
    def method(self) -> None:
        pass


def test_a_bad_spec_names_the_key_and_changes_nothing(config: SchedulerConfig) -> None:
    scheduler = TaskScheduler(config)
    with pytest.raises(ConfigError, match=r"job 'x'\.function: cannot import 'no_such_module:f'"):
        scheduler.add_job({"id": "x", "function": "no_such_module:f", "schedule": {"interval": 5}})
    with pytest.raises(ConfigError, match=r"job 'x'\.schedule: interval: unknown key 'sec'"):
        scheduler.add_job({"id": "x", "function": "os:getpid", "schedule": {"interval": {"sec": 5}}})
    assert scheduler.get_tasks() == [] and scheduler.store.task_states() == {}
    scheduler.stop()


def test_an_unimportable_stored_job_is_reported_not_dropped_and_recovers(base_dir: Path, module: str) -> None:
    clock = ManualClock(T0)
    first = TaskScheduler(durable_config(base_dir), clock=clock)
    first.add_job({"id": "report", "function": f"{module}:record", "schedule": {"interval": 10}})
    first.stop()
    source = base_dir / f"{module}.py"
    source.rename(base_dir / "moved_away.py")
    sys.modules.pop(module, None)

    second = TaskScheduler(durable_config(base_dir), clock=clock)
    state = second.store.task_states()["report"]
    assert state.problem and "cannot import" in state.problem  # reported in list/status
    assert "cannot import" in second.get_task_status("report")["problem"]
    step(second, clock, 10)
    [failed] = second.store.history("report")
    assert failed.state is RunState.FAILED and "cannot import" in (failed.error or "")
    assert second.store.job_specs()["report"]["function"] == f"{module}:record"  # still stored

    (base_dir / "moved_away.py").rename(source)  # the module is back
    step(second, clock, 10)
    assert second.store.history("report")[0].state is RunState.SUCCEEDED
    clock.advance(60)  # the periodic retry re-registers it without the problem
    second.run_due()
    assert second.store.task_states()["report"].problem is None
    second.stop()


def test_a_config_job_cannot_be_replaced_by_a_persistent_one(base_dir: Path) -> None:
    write_script(base_dir, "ok.py", "print('ok')\n")
    path = base_dir / "config.json"
    job = {"id": "ok", "script_path": "scripts/ok.py", "schedule": {"interval": 5}}
    config = {"scheduler": {"timezone": "UTC"}, "store": {"url": "memory://"}, "logging": {"log_file": None}}
    path.write_text(json.dumps({**config, "jobs": [job]}))
    scheduler = TaskScheduler(str(path))
    with pytest.raises(TaskError, match="comes from the config file"):
        scheduler.add_job({"id": "ok", "function": "os:getpid", "schedule": {"interval": 5}}, replace_existing=True)
    scheduler.stop()
