"""systemd's notify protocol with a fake NOTIFY_SOCKET: a Unix datagram socket in the
test receives READY=1, WATCHDOG=1 (only while the loop steps), STATUS= and
STOPPING=1; and log lines for the journal."""

from __future__ import annotations

import itertools
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from task_scheduler import FunctionTask, IntervalRule, SchedulerConfig, TaskScheduler
from task_scheduler.systemd import SystemdNotifier, notify
from tests.integration.helpers import environment


class FakeSystemd:
    """The receiving end of $NOTIFY_SOCKET."""

    def __init__(self, abstract: bool = False) -> None:
        self.directory = tempfile.mkdtemp(prefix="ts-notify-")  # AF_UNIX paths are short (108 bytes)
        self.path = f"@ts-notify-{os.getpid()}-{time.monotonic_ns()}" if abstract else f"{self.directory}/notify"
        self.socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.socket.bind("\0" + self.path[1:] if abstract else self.path)
        self.messages: list[tuple[float, str]] = []

    def receive(self, timeout: float) -> str | None:
        self.socket.settimeout(timeout)
        try:
            data = self.socket.recv(4096).decode()
        except TimeoutError:
            return None
        self.messages.append((time.monotonic(), data))
        return data

    def wait_for(self, line: str, timeout: float = 30) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            data = self.receive(max(0.01, deadline - time.monotonic()))
            if data is not None and line in data.splitlines():
                return True
        return False

    def close(self) -> None:
        self.socket.close()
        if not self.path.startswith("@"):
            os.unlink(self.path)
        os.rmdir(self.directory)


@pytest.fixture(params=[False, True], ids=["path", "abstract"])
def systemd(request: pytest.FixtureRequest) -> Iterator[FakeSystemd]:
    fake = FakeSystemd(abstract=request.param)
    yield fake
    fake.close()


def _scheduler() -> TaskScheduler:
    config = SchedulerConfig.from_dict({"scheduler": {"check_interval": 0.05}, "store": {"url": "memory://"}})
    scheduler = TaskScheduler(config)
    scheduler.add_task(FunctionTask("tick", func=lambda: None), IntervalRule(seconds=0.05))
    return scheduler


def test_ready_watchdog_status_and_stopping(systemd: FakeSystemd) -> None:
    environ = {"NOTIFY_SOCKET": systemd.path, "WATCHDOG_USEC": "300000", "WATCHDOG_PID": str(os.getpid())}
    scheduler = _scheduler()
    notifier = SystemdNotifier(scheduler, environ)
    assert environ == {}  # read once and removed: scripts do not inherit them
    assert notifier.watchdog == 0.3
    notifier.start()
    scheduler.start()
    try:
        assert systemd.wait_for("READY=1", timeout=10)
        first = systemd.messages[-1][1]
        assert any(line.startswith("STATUS=1 task(s)") for line in first.splitlines()), first
        for _ in range(3):
            assert systemd.wait_for("WATCHDOG=1", timeout=1.0)  # well within WATCHDOG_USEC each time
    finally:
        scheduler.stop()
    assert systemd.wait_for("STOPPING=1", timeout=5)
    notifier.stop()
    pings = [when for when, data in systemd.messages if data == "WATCHDOG=1"]
    assert all(later - earlier < 0.3 for earlier, later in itertools.pairwise(pings))


def test_a_hung_loop_gets_no_watchdog_pings(systemd: FakeSystemd) -> None:
    scheduler = _scheduler()
    hang, hung = threading.Event(), threading.Event()
    step = scheduler.run_due

    def run_due(now: object = None) -> float:
        if hang.is_set():
            hung.set()
            while hang.is_set():  # a store call that never returns, a deadlock ...
                time.sleep(0.01)
        return step()

    scheduler.run_due = run_due  # type: ignore[method-assign]
    notifier = SystemdNotifier(scheduler, {"NOTIFY_SOCKET": systemd.path, "WATCHDOG_USEC": "200000"})
    notifier.start()
    scheduler.start()
    try:
        assert systemd.wait_for("WATCHDOG=1", timeout=10)
        hang.set()
        assert hung.wait(5)
        time.sleep(0.5)  # what was already on its way (a busy machine may delay it)
        systemd.messages.clear()
        while systemd.receive(0.6) is not None:  # three watchdog intervals of silence
            pass
        assert "WATCHDOG=1" not in [data for _, data in systemd.messages]
        hang.clear()  # the loop steps again: the pings come back
        assert systemd.wait_for("WATCHDOG=1", timeout=5)
    finally:
        hang.clear()
        scheduler.stop()
        notifier.stop()


def test_watchdog_meant_for_another_process_is_ignored(systemd: FakeSystemd) -> None:
    scheduler = _scheduler()
    notifier = SystemdNotifier(scheduler, {"NOTIFY_SOCKET": systemd.path, "WATCHDOG_USEC": "1000", "WATCHDOG_PID": "1"})
    assert notifier.watchdog is None and notifier.enabled
    assert not SystemdNotifier(scheduler, {}).enabled
    scheduler.stop()


def test_notify_without_a_socket_does_nothing() -> None:
    assert notify("READY=1", "") is False
    assert notify("READY=1", "/nonexistent/socket") is False


@pytest.mark.integration
def test_the_service_under_a_fake_systemd_with_its_stderr_in_the_journal(base_dir: Path) -> None:
    """The real service: READY=1 once running, WATCHDOG=1, STOPPING=1 on SIGTERM; the
    notify variables do not reach scripts; stderr lines carry a syslog priority and
    no timestamp of their own when stderr is the journal's stream."""
    fake = FakeSystemd()
    (base_dir / "scripts" / "env.py").write_text(
        "import os\nprint('NOTIFY_SOCKET' in os.environ, 'WATCHDOG_USEC' in os.environ)\n"
    )
    config = base_dir / "service.json"
    config.write_text(
        '{"scheduler": {"check_interval": 0.2}, "logging": {"log_file": null},'
        ' "jobs": [{"id": "env", "script_path": "scripts/env.py", "schedule": {"interval": 0.5}}]}'
    )
    stderr_path = base_dir / "stderr.txt"
    with stderr_path.open("wb") as stderr:
        status = os.fstat(stderr.fileno())
        env = environment(NOTIFY_SOCKET=fake.path, WATCHDOG_USEC="1000000",
                          JOURNAL_STREAM=f"{status.st_dev}:{status.st_ino}")  # fmt: skip
        process = subprocess.Popen([sys.executable, "-m", "task_scheduler", "--config", str(config)],
                                   cwd=base_dir, env=env, stdout=subprocess.DEVNULL, stderr=stderr)  # fmt: skip
    try:
        assert fake.wait_for("READY=1", timeout=60), stderr_path.read_text()
        assert fake.wait_for("WATCHDOG=1", timeout=5)
        assert fake.wait_for("WATCHDOG=1", timeout=5)
        time.sleep(1.0)  # a few runs of the env job
        process.send_signal(signal.SIGTERM)
        assert fake.wait_for("STOPPING=1", timeout=30)
        assert process.wait(60) == 0
    finally:
        if process.poll() is None:
            process.kill()
        fake.close()
    lines = stderr_path.read_text().splitlines()
    assert lines and all(line.startswith("<") for line in lines), lines[:5]
    assert any(line.startswith("<6>task_scheduler.systemd - INFO - ") and "ready" in line for line in lines)
    assert not any(line[3:5] == "20" for line in lines)  # no "2024-..." timestamp after the priority
    command = [sys.executable, "-m", "task_scheduler", "history", "env", "--json", "--config", str(config)]
    history = subprocess.run(command, cwd=base_dir, env=environment(), capture_output=True, text=True)
    assert '"output": "False False\\n"' in history.stdout, history.stdout[:500]
