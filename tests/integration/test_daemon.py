"""Daemon mode for hosts without systemd, through the CLI: ``run --daemon`` detaches
properly (pidfile, no terminal, stdio on the log file), ``stop`` stops it."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from tests.integration.helpers import environment, wait_for

pytestmark = pytest.mark.integration

JOBS_MODULE = """
import sys
def chatty():
    print("stray print from a job")
    print("stray stderr from a job", file=sys.stderr)
"""


def _cli(base_dir: Path, *arguments: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "task_scheduler", *arguments, "--config", str(base_dir / "service.json")],
        cwd=base_dir, env=environment(), capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip


def _write_config(base_dir: Path, **sections: Any) -> None:
    (base_dir / "daemon_jobs.py").write_text(JOBS_MODULE)
    config = {
        "scheduler": {"check_interval": 0.2},
        "jobs": [{"id": "chatty", "function": "daemon_jobs:chatty", "schedule": {"interval": 0.3}}],
        **sections,
    }
    (base_dir / "service.json").write_text(json.dumps(config))


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@pytest.fixture
def daemon_dir(base_dir: Path) -> Iterator[Path]:
    yield base_dir
    pidfile = base_dir / "run" / "ts.pid"
    if pidfile.exists():  # a failed test must not leave a daemon behind
        pid = int(pidfile.read_text())
        if _alive(pid):
            psutil.Process(pid).kill()


def test_run_daemon_detaches_and_stop_stops_it(daemon_dir: Path) -> None:
    _write_config(daemon_dir, logging={"max_log_size": "4KB", "backup_count": 2})
    pidfile = daemon_dir / "run" / "ts.pid"
    started = _cli(daemon_dir, "run", "--daemon", "--pidfile", str(pidfile))
    assert started.returncode == 0, started.stderr
    pid = int(pidfile.read_text())
    assert f"started in the background, pid {pid}" in started.stdout
    assert _alive(pid)
    log = daemon_dir / "logs" / "scheduler.log"
    # Detached: its own session but not its leader (it can never get a terminal back), no terminal.
    assert os.getsid(pid) != pid and os.getsid(pid) != os.getsid(0)
    assert psutil.Process(pid).terminal() is None
    assert os.readlink(f"/proc/{pid}/fd/0") == "/dev/null"
    assert os.readlink(f"/proc/{pid}/fd/1") == os.readlink(f"/proc/{pid}/fd/2") == str(log)
    assert Path(os.readlink(f"/proc/{pid}/cwd")) == daemon_dir.resolve()

    again = _cli(daemon_dir, "run", "--daemon", "--pidfile", str(pidfile))
    assert again.returncode == 1 and f"already running (pid {pid}" in again.stderr
    assert int(pidfile.read_text()) == pid
    assert _cli(daemon_dir, "status").returncode == 0

    # stdout/stderr of the process go to the log file, and follow it across rotation.
    rotated = daemon_dir / "logs" / "scheduler.log.1"
    assert wait_for(rotated.exists, timeout=30)
    assert wait_for(lambda: "stray print from a job" in log.read_text(), timeout=30)
    assert os.readlink(f"/proc/{pid}/fd/1") == str(log)
    text = log.read_text() + rotated.read_text()
    assert "stray stderr from a job" in text
    lines = [line for line in text.splitlines() if "starting task chatty" in line]
    assert len(lines) == len(set(lines)), "a log line was written twice (console and file)"

    stopped = _cli(daemon_dir, "stop", "--pidfile", str(pidfile))
    assert stopped.returncode == 0 and f"stopped (pid {pid})" in stopped.stdout, stopped.stderr
    assert not _alive(pid) and not pidfile.exists()
    assert "scheduler stopped" in log.read_text()
    assert _cli(daemon_dir, "stop", "--pidfile", str(pidfile)).stdout.startswith("task-scheduler: not running")


def test_default_pidfile_and_a_start_up_failure_reported_in_the_foreground(daemon_dir: Path) -> None:
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    _write_config(daemon_dir, http={"enabled": True, "port": taken.getsockname()[1]})
    try:
        failed = _cli(daemon_dir, "run", "--daemon")
    finally:
        taken.close()
    assert failed.returncode == 1
    assert "the service stopped during start-up" in failed.stderr and "cannot serve HTTP" in failed.stderr
    assert not (daemon_dir / "data" / "task-scheduler.pid").exists()

    _write_config(daemon_dir)
    assert _cli(daemon_dir, "run", "--daemon").returncode == 0
    pid = int((daemon_dir / "data" / "task-scheduler.pid").read_text())
    stopped = _cli(daemon_dir, "stop")
    assert stopped.returncode == 0 and not _alive(pid)


def test_a_config_error_fails_before_detaching(daemon_dir: Path) -> None:
    (daemon_dir / "service.json").write_text('{"scheduler": {"max_workers": 0}}')
    result = _cli(daemon_dir, "run", "--daemon")
    assert result.returncode == 2 and "scheduler.max_workers: must be >= 1" in result.stderr
    _write_config(daemon_dir, logging={"log_file": None})
    result = _cli(daemon_dir, "run", "--daemon")
    assert result.returncode == 2 and "logging.log_file" in result.stderr
