"""Running the real service and CLI as an operator does: subprocesses."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any


def environment(**extra: str) -> dict[str, str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **extra}
    env.pop("TASK_SCHEDULER_CONFIG", None)
    return env


def wait_for(predicate: Callable[[], object], timeout: float = 60.0, interval: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return False


class Service:
    """``python -m task_scheduler`` on a config written into ``base_dir``."""

    def __init__(self, base_dir: Path, config: dict[str, Any], name: str = "service.json") -> None:
        self.base_dir = base_dir
        self.config_path = base_dir / name
        self.config_path.write_text(json.dumps(config))
        self.process: subprocess.Popen[str] | None = None

    @property
    def log(self) -> str:
        return _read(self.base_dir / "logs" / "scheduler.log")

    def start(self, *arguments: str) -> Service:
        # Its output goes to files, not pipes: nothing reads a pipe while the service
        # runs, and a service that logged more than a pipe holds (64 KiB; ~15 s of a
        # busy test's log) blocked on its next line, with every thread that logs.
        with self._output("stdout").open("w") as stdout, self._output("stderr").open("w") as stderr:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "task_scheduler", *arguments, "--config", str(self.config_path)],
                cwd=self.base_dir,
                env=environment(),
                stdout=stdout,
                stderr=stderr,
                text=True,
            )
        return self

    def _output(self, stream: str) -> Path:
        return self.base_dir / f"{self.config_path.stem}.{stream}"

    @property
    def stderr(self) -> str:
        return _read(self._output("stderr"))

    def wait(self, timeout: float = 60) -> tuple[int, str]:
        """Wait for the service to exit: its exit code and what it wrote to stderr."""
        assert self.process is not None
        self.process.wait(timeout)
        return self.process.returncode, self.stderr

    def signal(self, signum: int = signal.SIGTERM, timeout: float = 60) -> tuple[int, str]:
        assert self.process is not None
        self.process.send_signal(signum)
        return self.wait(timeout)

    def kill(self) -> None:
        assert self.process is not None
        self.process.kill()
        self.process.wait(30)

    def cli(self, *arguments: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "task_scheduler", *arguments, "--config", str(self.config_path)],
            cwd=self.base_dir,
            env=environment(),
            capture_output=True,
            text=True,
            timeout=120,
        )

    def cli_json(self, *arguments: str) -> Any:
        result = self.cli(*arguments, "--json")
        assert result.returncode == 0, (arguments, result.stderr)
        return json.loads(result.stdout)

    def ensure_stopped(self) -> None:
        """Kill the service if a test left it running, and show what it said (a test
        that failed while waiting for it needs that to be diagnosed)."""
        if self.process is None or self.process.returncode is not None:
            return
        if self.process.poll() is None:
            self.process.kill()
        code, stderr = self.wait(30)
        print(f"service exit code {code}; stderr:\n{stderr[-4000:]}")


def _read(path: Path) -> str:
    """The file's text; empty until the service has written it."""
    return path.read_text() if path.exists() else ""
