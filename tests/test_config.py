"""Config loading: defaults, env overrides, and errors that name file, key and problem."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from task_scheduler import ConfigError, SchedulerConfig, ScriptTask, TaskScheduler, load_config
from task_scheduler.config import parse_size
from tests.conftest import ROOT, write_script


def write(base_dir: Path, data: Any, name: str = "config.json") -> Path:
    path = base_dir / name
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return path


def test_defaults_for_everything() -> None:
    config = SchedulerConfig()
    assert config.scheduler.max_workers == 10 and config.scheduler.check_interval == 1.0
    assert config.tasks.default_timeout == 300 and config.logging.max_log_size == "10MB"
    assert config.jobs == []


def test_shipped_config_is_valid_and_declares_the_predefined_jobs() -> None:
    config = load_config(ROOT / "scheduler_config.json", environ={})
    jobs = {task.task_id: (task, rule) for task, rule, _ in config.build_tasks()}
    assert set(jobs) == {"data_upload", "sensor_data_collection", "heartbeat", "log_cleanup"}
    assert jobs["heartbeat"][1].describe() == "every 30 seconds, first at once"
    assert jobs["sensor_data_collection"][1].describe() == "every 5 minutes, first at once"
    assert isinstance(jobs["data_upload"][0], ScriptTask)
    assert type(jobs["log_cleanup"][0]).__name__ == "LogCleanupTask"


def test_env_overrides(base_dir: Path) -> None:
    path = write(base_dir, {"scheduler": {"max_workers": 3}})
    config = load_config(
        path, environ={"TASK_SCHEDULER__SCHEDULER__MAX_WORKERS": "20", "TASK_SCHEDULER__LOGGING__FORMAT": "json"}
    )
    assert config.scheduler.max_workers == 20 and config.logging.format == "json"
    with pytest.raises(ConfigError, match=r'scheduler\.max_workers: expected an integer, got "many"'):
        load_config(path, environ={"TASK_SCHEDULER__SCHEDULER__MAX_WORKERS": "many"})


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"scheduler": {"max_workers": 10,}}', "invalid JSON at line 1"),
        ({"scheduler": {"max_workers": "ten"}}, 'scheduler.max_workers: expected an integer, got "ten"'),
        ({"scheduler": {"max_wrokers": 5}}, "scheduler: unknown key 'max_wrokers'"),
        ({"schedular": {}}, "unknown key 'schedular'"),
        ({"scheduler": {"max_workers": 0}}, "scheduler.max_workers: must be >= 1"),
        ({"scheduler": {"switch_interval": 0.5}}, "scheduler.switch_interval: must be > 0 and <= 0.1 seconds, or null"),
        ({"scheduler": {"timezone": "Europe/Nowhere"}}, "scheduler.timezone: unknown time zone"),
        ({"logging": {"max_log_size": "ten megs"}}, "logging.max_log_size: not a size"),
        ({"logging": {"format": "xml"}}, "logging.format: must be 'text' or 'json'"),
        (
            {"jobs": [{"id": "a", "schedule": {"cron": "0 25 * * *"}, "script_path": "scripts/ok.py"}]},
            "jobs[0] (id 'a').schedule: cron field 'hour' has invalid value '25'",
        ),
        (
            {"jobs": [{"id": "a", "schedule": {"interval": 5}, "script_path": "scripts/missing.py"}]},
            "jobs[0] (id 'a'): task 'a': script not found",
        ),
        (
            {"jobs": [{"id": "a", "schedule": {"interval": 5}}]},
            "jobs[0] (id 'a').type: cannot tell what runs: set 'type' to one of script, function, class",
        ),
        (
            {"jobs": [{"id": "a", "type": "script", "schedule": {"interval": 5}}]},
            "jobs[0] (id 'a').script_path: is required for a script job",
        ),
        (
            {"jobs": [{"id": "a", "type": "builtin", "builtin": "nope", "schedule": {"interval": 5}}]},
            "jobs[0] (id 'a').builtin: unknown builtin 'nope'",
        ),
        (
            {
                "jobs": [
                    {"id": "a", "schedule": {"interval": 5}, "script_path": "scripts/ok.py"},
                    {"id": "a", "schedule": {"interval": 5}, "script_path": "scripts/ok.py"},
                ]
            },
            "duplicate job id 'a'",
        ),
        ({"jobs": [{"schedule": {"interval": 5}}]}, "jobs[0]: missing required key 'id'"),
        (
            {"jobs": [{"id": "a", "schedule": {"interval": 5}, "script_path": "/etc/passwd"}]},
            "outside allowed_script_dirs",
        ),
    ],
)
def test_bad_config_names_file_key_and_problem(base_dir: Path, content: Any, message: str) -> None:
    write_script(base_dir, "ok.py", "print('ok')\n")
    path = write(base_dir, content)
    with pytest.raises(ConfigError) as caught:
        load_config(path, environ={})
    assert str(caught.value).startswith(str(path))
    assert message in str(caught.value)


def test_toml_config(base_dir: Path) -> None:
    path = write(
        base_dir,
        '[scheduler]\nmax_workers = 2\n\n[[jobs]]\nid = "t"\ntype = "function"\nfunction = "os:getpid"\n'
        'schedule = { cron = "*/5 * * * * *" }\n',
        "config.toml",
    )
    config = load_config(path, environ={})
    assert config.scheduler.max_workers == 2 and config.build_tasks()[0][1].describe() == "cron '*/5 * * * * *'"


def test_relative_paths_resolve_against_base_dir(base_dir: Path) -> None:
    write_script(base_dir, "ok.py", "print('ok')\n")
    path = write(base_dir, {"jobs": [{"id": "ok", "script_path": "scripts/ok.py", "schedule": {"interval": 60}}]})
    config = load_config(path, environ={})
    [(task, _, _)] = config.build_tasks()
    assert isinstance(task, ScriptTask) and task.script_path == (base_dir / "scripts" / "ok.py").resolve()
    assert config.data_dir == base_dir / "data"


def test_scheduler_from_config_file_registers_jobs(base_dir: Path) -> None:
    write_script(base_dir, "ok.py", "print('ok')\n")
    path = write(
        base_dir,
        {
            "logging": {"console": False},
            "jobs": [
                {"id": "ok", "script_path": "scripts/ok.py", "schedule": {"interval": 60}},
                {"id": "off", "enabled": False, "script_path": "scripts/ok.py", "schedule": {"interval": 60}},
            ],
        },
    )
    scheduler = TaskScheduler(path)
    try:
        assert [t.task_id for t in scheduler.get_tasks()] == ["ok"]
    finally:
        scheduler.stop()


@pytest.mark.parametrize(
    ("text", "size"),
    [("10MB", 10 * 1024**2), ("512KB", 512 * 1024), ("1.5G", int(1.5 * 1024**3)), (2048, 2048), ("100", 100)],
)
def test_parse_size(text: Any, size: int) -> None:
    assert parse_size(text) == size


def test_production_template_is_valid_once_installed(tmp_path: Path) -> None:
    """config/production.json, with /opt and /var paths pointed at a temporary install."""
    environ = {
        "TASK_SCHEDULER__SCHEDULER__BASE_DIR": str(ROOT),
        "TASK_SCHEDULER__SCHEDULER__DATA_DIR": str(tmp_path / "data"),
        "TASK_SCHEDULER__TASKS__ALLOWED_SCRIPT_DIRS": json.dumps([str(ROOT / "scripts")]),
        "TASK_SCHEDULER__LOGGING__LOG_DIR": str(tmp_path / "logs"),
    }
    config = load_config(ROOT / "config" / "production.json", environ=environ)
    assert len(config.build_tasks()) == 4 and config.logging.format == "json"
