"""scripts/install-service.sh lays the service out; the CLI then finds its config and
state without --config, as an operator on the host uses it. A temporary directory
stands in for / (``--root``; the CLI follows with ``TASK_SCHEDULER_ROOT``)."""

from __future__ import annotations

import getpass
import json
import signal
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT
from tests.integration.helpers import environment, wait_for

pytestmark = pytest.mark.integration

SCRIPT = ROOT / "scripts" / "install-service.sh"


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _install(root: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(SCRIPT), "--root", str(root), "--user", getpass.getuser(), "--no-user", "--no-systemctl",
         "--exec", f"{sys.executable} -m task_scheduler", "--http-port", "0"],
        capture_output=True, text=True, timeout=120, env=environment(),
    )  # fmt: skip


def test_the_cli_finds_an_installed_service_without_config(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    installed = _install(root)
    assert installed.returncode == 0, installed.stderr
    etc, state = root / "etc" / "task-scheduler", root / "var" / "lib" / "task-scheduler"
    config_path = etc / "scheduler_config.json"
    assert _mode(config_path) == 0o640 and _mode(etc / "environment") == 0o600 and _mode(state) == 0o750
    token_line = (etc / "environment").read_text().splitlines()[-1]
    assert token_line.startswith("TASK_SCHEDULER__HTTP__TOKEN=") and len(token_line) > 60
    unit = (root / "etc" / "systemd" / "system" / "task-scheduler.service").read_text()
    assert f"ExecStart={sys.executable} -m task_scheduler run" in unit and "Type=notify" in unit
    config = json.loads(config_path.read_text())
    assert config["store"]["url"] == f"sqlite://{state}/state.db"

    again = _install(root)  # a second run keeps the config and the token
    assert again.returncode == 0 and "kept the existing" in again.stdout
    assert (etc / "environment").read_text().splitlines()[-1] == token_line

    elsewhere = tmp_path / "elsewhere"  # no ./scheduler_config.json here
    elsewhere.mkdir()
    env = environment(TASK_SCHEDULER_ROOT=str(root))

    def cli(*arguments: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "task_scheduler", *arguments], cwd=elsewhere, env=env,
                              capture_output=True, text=True, timeout=60)  # fmt: skip

    validated = cli("validate")
    assert validated.returncode == 0 and str(config_path) in validated.stdout, validated.stderr
    service = subprocess.Popen([sys.executable, "-m", "task_scheduler", "run"], cwd=elsewhere, env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        listed: list[dict[str, object]] = []

        def registered() -> bool:
            result = cli("list", "--json")
            listed[:] = json.loads(result.stdout) if result.returncode == 0 else []
            return bool(listed)

        assert wait_for(registered, timeout=60), cli("list").stderr
        assert [task["task_id"] for task in listed] == ["log_cleanup"]
        assert cli("status").returncode == 0
    finally:
        service.send_signal(signal.SIGTERM)
        _, stderr = service.communicate(timeout=60)
    assert service.returncode == 0, stderr
    assert _mode(state / "state.db") == 0o600
    assert (root / "var" / "log" / "task-scheduler" / "scheduler.log").exists()
    assert not (elsewhere / "data").exists()  # nothing was written where the CLI ran
