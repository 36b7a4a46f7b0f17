from __future__ import annotations

import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from task_scheduler import ManualClock, SchedulerConfig, TaskScheduler
from tests.pg import URL as POSTGRES_URL
from tests.pg import pg_schema  # noqa: F401 - a fixture for every test module

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


STORES = ["memory://", "sqlite://data/state.db", POSTGRES_URL]


@pytest.fixture(params=STORES, ids=["memory", "sqlite", "postgres"])
def config(base_dir: Path, request: pytest.FixtureRequest) -> SchedulerConfig:
    """A config on each store: tests using it run once per store. On PostgreSQL each
    test has a schema of its own, and the nodes' clocks are trusted ("local"), so a
    ManualClock drives time there too."""
    store: dict[str, object] = {"url": request.param}
    if request.param == POSTGRES_URL:
        store.update(schema=request.getfixturevalue("pg_schema"), clock="local")
    return SchedulerConfig.from_dict(
        {
            "scheduler": {"timezone": "UTC", "base_dir": str(base_dir), "max_workers": 4},
            "store": store,
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
