"""The service as an operator runs it: a subprocess, real time, real signals."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT
from tests.integration.helpers import Service, environment, wait_for

pytestmark = pytest.mark.integration


def test_service_runs_jobs_isolates_failures_and_stops_on_sigterm(base_dir: Path) -> None:
    (base_dir / "scripts" / "tick.py").write_text(
        "import os, time\n"
        "open(os.path.join(os.environ['TASK_SCHEDULER_DATA_DIR'], 'ticks'), 'a').write(f'{time.time()}\\n')\n"
        "print('tick done')\n"
    )
    (base_dir / "scripts" / "fail.py").write_text(
        "import sys\nprint('failing on purpose', file=sys.stderr)\nsys.exit(7)\n"
    )
    (base_dir / "data").mkdir()
    config = {
        "scheduler": {"check_interval": 0.5, "timezone": "UTC"},
        "logging": {"format": "text"},
        "tasks": {"max_retries": 0},
        "jobs": [
            {"id": "tick", "script_path": "scripts/tick.py", "schedule": {"interval": {"seconds": 1}}},
            {"id": "fail", "script_path": "scripts/fail.py", "schedule": {"interval": {"seconds": 1}}},
        ],
    }
    service = Service(base_dir, config).start("run")
    ticks = base_dir / "data" / "ticks"
    try:
        assert wait_for(lambda: ticks.exists() and len(ticks.read_text().splitlines()) >= 3), (
            "the 1 s job did not run 3 times"
        )
    finally:
        code, stderr = service.signal(signal.SIGTERM)
    assert code == 0, stderr
    log = (base_dir / "logs" / "scheduler.log").read_text()
    assert re.search(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d - task_scheduler\.\w+ - INFO - \w+:\d+ - ", log, re.M)
    assert "task tick succeeded" in log
    assert re.search(r"task fail failed in [\d.]+s: exit code 7: failing on purpose", log)
    assert "received stop signal; shutting down" in log and "scheduler stopped" in log
    assert log.count("task tick succeeded") >= 3


def test_sigterm_interrupts_a_long_script_within_shutdown_timeout(base_dir: Path) -> None:
    (base_dir / "scripts" / "long.py").write_text("import time\nprint('started', flush=True)\ntime.sleep(600)\n")
    config = {
        "scheduler": {"check_interval": 0.5, "shutdown_timeout": 1},
        "tasks": {"kill_grace": 1},
        "jobs": [
            {
                "id": "long",
                "script_path": "scripts/long.py",
                "schedule": {"once": "2000-01-01T00:00:00+00:00"},
                "misfire_grace_time": 10**9,
            }
        ],
    }
    service = Service(base_dir, config).start()
    log_path = base_dir / "logs" / "scheduler.log"
    try:
        assert wait_for(lambda: log_path.exists() and "starting task long" in log_path.read_text())
    finally:
        code, stderr = service.signal(signal.SIGTERM)
    assert code == 0, stderr
    assert "task long interrupted in" in log_path.read_text()


def test_bad_config_exits_2_with_the_message(base_dir: Path) -> None:
    config = {"jobs": [{"id": "bad", "script_path": "scripts/x.py", "schedule": {"cron": "*/5 * * *"}}]}
    code, stderr = Service(base_dir, config).start().wait()
    assert code == 2
    assert "service.json: jobs[0] (id 'bad').schedule: cron expression '*/5 * * *' has 4 fields" in stderr


def test_shipped_config_starts_from_the_checkout(tmp_path: Path) -> None:
    """The README's run command: the predefined jobs start from a copy of the checkout."""
    checkout = tmp_path / "checkout"
    checkout.mkdir()
    for name in ("scheduler_config.json",):
        (checkout / name).write_text((ROOT / name).read_text())
    (checkout / "scripts").mkdir()
    for script in (ROOT / "scripts").glob("*.py"):
        (checkout / "scripts" / script.name).write_text(script.read_text())
    env = environment(TASK_SCHEDULER__SCHEDULER__CHECK_INTERVAL="0.5")
    process = subprocess.Popen(
        [sys.executable, "-m", "task_scheduler"],
        cwd=checkout,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    log_path = checkout / "logs" / "scheduler.log"
    try:
        assert wait_for(lambda: log_path.exists() and "scheduler started: 4 task(s)" in log_path.read_text())
    finally:
        process.send_signal(signal.SIGINT)
        process.communicate(timeout=60)
    assert process.returncode == 0
