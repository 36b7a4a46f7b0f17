"""The CLI in-process: validate, next, exit codes, --config before or after."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from task_scheduler.cli import main
from tests.conftest import ROOT


def test_validate_shipped_config(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", "--config", str(ROOT / "scheduler_config.json")]) == 0
    assert "OK, 4 enabled job(s)" in capsys.readouterr().out


def test_config_before_the_subcommand_and_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--config", str(ROOT / "scheduler_config.json"), "validate", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["valid"] is True and "heartbeat" in [job["id"] for job in result["jobs"]]


def test_validate_bad_config_exits_2_with_the_message(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "bad.json"
    path.write_text('{"scheduler": {"check_interval": "soon"}}')
    assert main(["validate", "-c", str(path)]) == 2
    assert f"{path}: scheduler.check_interval: expected a number" in capsys.readouterr().err


def test_config_from_environment_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "c.json"
    path.write_text("{}")
    monkeypatch.setenv("TASK_SCHEDULER_CONFIG", str(path))
    assert main(["validate"]) == 0
    assert "OK, 0 enabled job(s)" in capsys.readouterr().out


def test_no_config_found(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("TASK_SCHEDULER_CONFIG", raising=False)
    monkeypatch.setattr("task_scheduler.config.CONFIG_SEARCH_PATH", ("scheduler_config.json",))
    assert main(["validate"]) == 2
    assert "no config file found" in capsys.readouterr().err


def test_next_previews_fire_times(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["next", "*/15 9-17 * * mon-fri", "-n", "5", "--tz", "Europe/Berlin", "--json"]) == 0
    times = json.loads(capsys.readouterr().out)
    assert len(times) == 5 and all(t[14:16] in ("00", "15", "30", "45") for t in times)
    assert all(t.endswith(("+01:00", "+02:00")) for t in times)


def test_next_with_bad_expression_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["next", "0 25 * * *"]) == 2
    assert "cron field 'hour' has invalid value '25'" in capsys.readouterr().err


def test_usage_error_exits_2() -> None:
    assert main(["next"]) == 2
