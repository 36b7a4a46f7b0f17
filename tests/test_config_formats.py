"""Config files in JSON, TOML and YAML give the same config; environment overrides
nest with double underscores at any depth."""

from __future__ import annotations

import builtins
import json
from pathlib import Path
from typing import Any

import pytest

from task_scheduler import ConfigError, load_config

SHAPE = {
    "scheduler": {"max_workers": 20, "timezone": "Asia/Shanghai", "shutdown_timeout": 60.0},
    "store": {"url": "memory://"},
    "jobs": [{"id": "tick", "type": "builtin", "builtin": "log_cleanup", "schedule": {"cron": "*/5 * * * * *"}}],
}
TOML = """
[scheduler]
max_workers = 20
timezone = "Asia/Shanghai"
shutdown_timeout = 60.0

[store]
url = "memory://"

[[jobs]]
id = "tick"
type = "builtin"
builtin = "log_cleanup"
schedule = { cron = "*/5 * * * * *" }
"""
YAML = """
scheduler:
  max_workers: 20
  timezone: Asia/Shanghai
  shutdown_timeout: 60.0
store:
  url: "memory://"
jobs:
  - id: tick
    type: builtin
    builtin: log_cleanup
    schedule: {cron: "*/5 * * * * *"}
"""


def summary(path: Path, environ: dict[str, str] | None = None) -> tuple[Any, ...]:
    config = load_config(path, environ=environ or {})
    section = config.scheduler
    return section.max_workers, section.timezone, section.shutdown_timeout, config.store.url, config.jobs[0].schedule


@pytest.mark.parametrize("name, text", [("c.json", json.dumps(SHAPE)), ("c.toml", TOML), ("c.yaml", YAML),
                                        ("c.yml", YAML)])  # fmt: skip
def test_every_format_gives_the_same_config(tmp_path: Path, name: str, text: str) -> None:
    path = tmp_path / name
    path.write_text(text)
    assert summary(path) == (20, "Asia/Shanghai", 60.0, "memory://", {"cron": "*/5 * * * * *"})


def test_bad_yaml_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("scheduler: [unclosed\n")
    with pytest.raises(ConfigError, match=r"c\.yaml: invalid YAML"):
        load_config(path, environ={})
    path.write_text("- a list\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(path, environ={})
    path.write_text("")
    assert load_config(path, environ={}).scheduler.max_workers == 10


def test_yaml_without_pyyaml_says_how_to_get_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_import = builtins.__import__

    def no_yaml(name: str, *args: Any, **kwargs: Any) -> Any:
        if name == "yaml":
            raise ImportError("No module named 'yaml'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_yaml)
    path = tmp_path / "c.yaml"
    path.write_text(YAML)
    with pytest.raises(ConfigError, match=r"task_scheduler\[yaml\]"):
        load_config(path, environ={})


def test_environment_overrides_nest_at_any_depth(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(YAML)
    environ = {
        "TASK_SCHEDULER__SCHEDULER__MAX_WORKERS": "5",  # the two-level form
        "TASK_SCHEDULER__STORE__URL": "sqlite://state.db",
        "task_scheduler__scheduler__timezone": "UTC",  # case-insensitive
    }
    assert summary(path, environ)[:4] == (5, "UTC", 60.0, "sqlite://state.db")
    with pytest.raises(ConfigError, match=r"store\.url: is not an object \(set by TASK_SCHEDULER__STORE__URL__PART"):
        load_config(path, environ={"TASK_SCHEDULER__STORE__URL__PART": "x"})
    with pytest.raises(ConfigError, match="scheduler: unknown key 'redis'"):  # a deeper name builds nested objects
        load_config(path, environ={"TASK_SCHEDULER__SCHEDULER__REDIS__HOST": "localhost"})
    with pytest.raises(ConfigError, match="SECTION__KEY"):
        load_config(path, environ={"TASK_SCHEDULER__SCHEDULER": "x"})
