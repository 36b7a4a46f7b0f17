"""Logging: the plain line format, JSON with run context, rotation, unwritable files."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from task_scheduler import FunctionTask, ManualClock, OnceRule, SchedulerConfig, TaskContext, TaskScheduler
from task_scheduler.logs import configure_logging

PLAIN = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d - [\w.]+ - (INFO|WARNING|ERROR) - \w+:\d+ - .+$")


@pytest.fixture(autouse=True)
def restore_root_logger() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in list(root.handlers):
        if handler not in handlers:
            root.removeHandler(handler)
            handler.close()
    root.setLevel(level)


def run_one_job(base_dir: Path, log_format: str) -> Path:
    config = SchedulerConfig.from_dict(
        {
            "scheduler": {"base_dir": str(base_dir), "timezone": "UTC"},
            "logging": {"format": log_format, "console": False, "max_log_size": "1MB"},
        }
    )
    log_file = configure_logging(config)
    assert log_file == base_dir / "logs" / "scheduler.log"
    clock = ManualClock(datetime(2030, 1, 1, tzinfo=UTC))
    scheduler = TaskScheduler(config, clock=clock)

    def work(context: TaskContext) -> None:
        context.logger.info("inside the job")

    scheduler.add_task(FunctionTask("job", "Job", work), OnceRule(run_at=clock.now()))
    scheduler.run_due()
    scheduler.wait_for_runs(10)
    scheduler.stop()
    return log_file


def test_plain_format(base_dir: Path) -> None:
    lines = run_one_job(base_dir, "text").read_text().splitlines()
    assert lines and all(PLAIN.match(line) for line in lines), lines
    inside = [line for line in lines if "inside the job" in line]
    assert inside and "[task=job run=" in inside[0]


def test_json_format_carries_task_and_run_ids(base_dir: Path) -> None:
    records = [json.loads(line) for line in run_one_job(base_dir, "json").read_text().splitlines()]
    inside = [r for r in records if r["message"] == "inside the job"]
    assert inside and inside[0]["task_id"] == "job" and len(inside[0]["run_id"]) == 32
    assert {"time", "level", "logger", "funcName", "lineno"} <= set(inside[0])
    assert all(r["run_id"] == inside[0]["run_id"] for r in records if r.get("task_id") == "job")


def test_rotation_by_size(base_dir: Path) -> None:
    config = SchedulerConfig.from_dict(
        {
            "scheduler": {"base_dir": str(base_dir)},
            "logging": {"console": False, "max_log_size": 2048, "backup_count": 2},
        }
    )
    log_file = configure_logging(config)
    assert log_file is not None
    for i in range(200):
        logging.getLogger("task_scheduler.test").warning("line %d %s", i, "x" * 40)
    names = sorted(p.name for p in log_file.parent.iterdir())
    assert names == ["scheduler.log", "scheduler.log.1", "scheduler.log.2"]


def test_unwritable_log_file_is_reported_once_and_scheduling_goes_on(
    base_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (base_dir / "logs").mkdir()
    (base_dir / "logs" / "scheduler.log").mkdir()  # a directory where the file should be
    config = SchedulerConfig.from_dict({"scheduler": {"base_dir": str(base_dir)}, "logging": {"console": False}})
    configure_logging(config)
    for i in range(50):
        logging.getLogger("task_scheduler.test").warning("line %d", i)
    errors = capsys.readouterr().err
    assert errors.count("cannot write log file") == 1
