"""Persistent jobs through the real processes: added by the API in one process and
by the CLI in another, run by a service started later; concurrent CLI adds."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.integration.helpers import Service, environment, wait_for

pytestmark = pytest.mark.integration

CONFIG = {
    "scheduler": {"check_interval": 0.2, "timezone": "UTC", "shutdown_timeout": 2},
    "tasks": {"max_retries": 0},
}


def succeeded(service: Service, task_id: str) -> int:
    return sum(1 for r in service.cli_json("history", task_id, "--limit", "1000") if r["state"] == "succeeded")


def test_added_by_api_and_cli_run_by_a_later_service_and_survive_restarts(base_dir: Path) -> None:
    (base_dir / "scripts" / "tick.py").write_text("print('tick')\n")
    (base_dir / "reports.py").write_text("def daily(label):\n    print('report', label)\n")
    service = Service(base_dir, CONFIG)  # writes the config; not started yet
    api = textwrap.dedent(f"""
        from task_scheduler import TaskScheduler
        scheduler = TaskScheduler({str(service.config_path)!r})
        scheduler.add_job({{"id": "from_api", "function": "reports:daily", "kwargs": {{"label": "x"}},
                            "schedule": {{"interval": 0.5}}}})
        scheduler.stop()
    """)
    result = subprocess.run([sys.executable, "-c", api], cwd="/", env=environment(), capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    added = service.cli("add", "from_cli", "--interval", "0.5", "--script", "scripts/tick.py", "--name", "CLI tick")
    assert added.returncode == 0 and "added from_cli" in added.stdout, added.stderr
    listing = {row["task_id"]: row for row in service.cli_json("list")}
    assert {k: v["origin"] for k, v in listing.items()} == {"from_api": "persistent", "from_cli": "persistent"}
    shown = service.cli("show", "from_api").stdout
    assert '"function": "reports:daily"' in shown and '"version": 1' in shown  # the stored definition

    service.start()
    try:
        assert wait_for(lambda: succeeded(service, "from_api") >= 2 and succeeded(service, "from_cli") >= 2)
        assert service.cli("pause", "from_cli").returncode == 0
        code, stderr = service.signal(signal.SIGTERM)
        assert code == 0, stderr
        service.start()  # a restart changes nothing else: no duplicate, the pause kept
        assert wait_for(lambda: succeeded(service, "from_api") >= 4)
        rows = service.cli_json("list")
        assert sorted(row["task_id"] for row in rows) == ["from_api", "from_cli"]
        assert {row["task_id"]: row["paused"] for row in rows} == {"from_api": False, "from_cli": True}
        code, stderr = service.signal(signal.SIGTERM)
        assert code == 0, stderr
    finally:
        service.ensure_stopped()


def test_concurrent_cli_adds_and_a_remove_while_the_service_runs(base_dir: Path) -> None:
    (base_dir / "scripts" / "tick.py").write_text("print('tick')\n")
    service = Service(base_dir, CONFIG).start()
    try:
        assert wait_for(lambda: service.cli("status").returncode == 0)
        names = [f"job{i}" for i in range(10)]
        with ThreadPoolExecutor(10) as pool:
            results = list(pool.map(
                lambda name: service.cli("add", name, "--interval", "0.5", "--script", "scripts/tick.py"), names
            ))  # fmt: skip
        assert [r.returncode for r in results] == [0] * 10, [r.stderr for r in results if r.returncode]
        rows = service.cli_json("list")
        assert sorted(row["task_id"] for row in rows) == names  # all present, once
        assert wait_for(lambda: all(succeeded(service, name) >= 1 for name in names))  # the service picked them up
        again = service.cli("add", "job0", "--interval", "0.5", "--script", "scripts/tick.py")
        assert again.returncode == 1 and "exists already" in again.stderr

        assert service.cli("remove", "job3").returncode == 0
        assert wait_for(lambda: "task job3 was removed from the store by another process" in service.log)
        removed_runs, other_runs = succeeded(service, "job3"), succeeded(service, "job0")
        assert wait_for(lambda: succeeded(service, "job0") >= other_runs + 3)  # time passes for the others
        assert succeeded(service, "job3") <= removed_runs + 1  # one may have been in flight
        assert "job3" not in [row["task_id"] for row in service.cli_json("list")]
        assert service.cli_json("history", "job3", "--limit", "1000")  # its history is kept
        code, stderr = service.signal(signal.SIGTERM)
        assert code == 0, stderr
    finally:
        service.ensure_stopped()
