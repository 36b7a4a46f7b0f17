"""Every example in README.md runs: Python blocks as scripts, CLI lines as commands."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import ROOT

README = (ROOT / "README.md").read_text()
PYTHON_BLOCKS = re.findall(r"```python\n(.*?)```", README, re.S)
CLI_LINES = [
    line.strip()
    for block in re.findall(r"```bash\n(.*?)```", README, re.S)
    for line in block.splitlines()
    if line.strip().startswith("task-scheduler ") and " run" not in line
]


@pytest.fixture
def checkout(tmp_path: Path) -> Path:
    """A copy of what a user has after cloning: config and scripts."""
    shutil.copy(ROOT / "scheduler_config.json", tmp_path)
    shutil.copytree(ROOT / "scripts", tmp_path / "scripts")
    shutil.copytree(ROOT / "config", tmp_path / "config")
    return tmp_path


def _env() -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("TASK_SCHEDULER_CONFIG", None)
    return env


def test_readme_has_examples() -> None:
    assert len(PYTHON_BLOCKS) >= 2 and len(CLI_LINES) >= 2


@pytest.mark.parametrize("index", range(len(PYTHON_BLOCKS)))
def test_python_example_runs(index: int, checkout: Path) -> None:
    if "run_forever()" in PYTHON_BLOCKS[index] or "await scheduler.start()" in PYTHON_BLOCKS[index]:
        # A service example: it runs until SIGTERM, then stops gracefully with exit 0.
        service = subprocess.Popen(
            [sys.executable, "-c", PYTHON_BLOCKS[index]], cwd=checkout, env=_env(), stderr=subprocess.PIPE, text=True
        )
        time.sleep(2)
        assert service.poll() is None, service.communicate()[1]
        service.send_signal(signal.SIGTERM)
        _, stderr = service.communicate(timeout=60)
        assert service.returncode == 0, stderr
        return
    result = subprocess.run(
        [sys.executable, "-c", PYTHON_BLOCKS[index]],
        cwd=checkout,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr


def test_quick_start_output_is_what_it_claims(checkout: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-c", PYTHON_BLOCKS[0]], cwd=checkout, env=_env(), capture_output=True, text=True, timeout=120
    )
    status_line, total_line = result.stdout.strip().splitlines()[-2:]
    state, run_count, success_rate, _ = status_line.split()
    assert state in ("scheduled", "running") and int(run_count) >= 2 and float(success_rate) == 100.0
    assert total_line == "6"  # the four predefined jobs and the two added in code


REGISTER = "from task_scheduler import TaskScheduler as T; s = T('scheduler_config.json'); s.run_due(); s.stop()"


def test_cli_examples_run_in_order(checkout: Path) -> None:
    """Against the store a service left behind (its jobs registered, no service alive)."""
    subprocess.run([sys.executable, "-c", REGISTER], cwd=checkout, env=_env(), check=True, timeout=60)
    for line in CLI_LINES:
        arguments = shlex.split(line, comments=True)[1:]
        result = subprocess.run(
            [sys.executable, "-m", "task_scheduler", *arguments],
            cwd=checkout, env=_env(), capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        expected = 1 if arguments[0] == "status" else 0  # status: 1 means "no live service"
        assert result.returncode == expected, (line, result.stderr)
        assert result.stdout.strip(), line
