from __future__ import annotations

import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from task_scheduler import ManualClock, SchedulerConfig, TaskScheduler

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(datetime(2030, 1, 1, tzinfo=UTC))


@pytest.fixture
def base_dir(tmp_path: Path) -> Path:
    """A service directory with a scripts/ folder that allowed_script_dirs permits."""
    (tmp_path / "scripts").mkdir()
    return tmp_path


def write_script(base_dir: Path, name: str, body: str) -> Path:
    path = base_dir / "scripts" / name
    path.write_text(body)
    if not name.endswith(".py"):
        path.chmod(0o755)
    return path


STORES = ["memory://", "sqlite://data/state.db"]


@pytest.fixture(params=STORES, ids=["memory", "sqlite"])
def config(base_dir: Path, request: pytest.FixtureRequest) -> SchedulerConfig:
    """A config on each store: tests using it run once per store."""
    return SchedulerConfig.from_dict(
        {
            "scheduler": {"timezone": "UTC", "base_dir": str(base_dir), "max_workers": 4},
            "store": {"url": request.param},
            "tasks": {"retry_jitter": 0},
            "logging": {"log_file": None},
        }
    )


@pytest.fixture
def scheduler(config: SchedulerConfig, clock: ManualClock) -> Iterator[TaskScheduler]:
    scheduler = TaskScheduler(config, clock=clock)
    yield scheduler
    scheduler.stop(wait=True, timeout=5)


PYTHON = sys.executable
