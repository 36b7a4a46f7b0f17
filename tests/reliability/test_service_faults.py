"""Faults injected into the real service process (python -m task_scheduler)."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest

from tests.integration.helpers import Service, wait_for

pytestmark = pytest.mark.integration


def succeeded(service: Service, task_id: str) -> int:
    result = service.cli("show", task_id, "--json")
    return int(json.loads(result.stdout)["success_count"]) if result.returncode == 0 else 0


def test_log_file_on_a_full_disk_is_reported_once_and_jobs_go_on(base_dir: Path) -> None:
    (base_dir / "scripts" / "tick.py").write_text("print('tick')\n")
    (base_dir / "logs").mkdir()
    (base_dir / "logs" / "scheduler.log").symlink_to("/dev/full")  # every write: ENOSPC
    config = {
        "scheduler": {"check_interval": 0.5},
        "logging": {"console": False},
        "jobs": [{"id": "tick", "script_path": "scripts/tick.py", "schedule": {"interval": {"seconds": 0.5}}}],
    }
    service = Service(base_dir, config).start()
    try:
        assert wait_for(lambda: succeeded(service, "tick") >= 4)
        code, stderr = service.signal(signal.SIGTERM)
    finally:
        service.ensure_stopped()
    assert code == 0
    assert stderr.count("cannot write log file") == 1, stderr


def test_corrupt_state_database_fails_start_with_the_way_out(base_dir: Path) -> None:
    (base_dir / "data").mkdir()
    (base_dir / "data" / "state.db").write_bytes(os.urandom(8192))
    service = Service(base_dir, {"jobs": []}).start()
    code, stderr = service.wait()
    assert code == 2
    assert "cannot open the state database" in stderr and "state.db.broken" in stderr
    # the documented way out works
    (base_dir / "data" / "state.db").rename(base_dir / "data" / "state.db.broken")
    assert service.cli("validate").returncode == 0 and service.cli("list").returncode == 0


def test_sighup_reload_applies_changes_and_rejects_a_bad_config(base_dir: Path) -> None:
    for name in ("a", "b", "c"):
        (base_dir / "scripts" / f"{name}.py").write_text(f"print('{name}')\n")
    job = lambda task_id, seconds: {  # noqa: E731
        "id": task_id,
        "script_path": f"scripts/{task_id}.py",
        "schedule": {"interval": {"seconds": seconds}},
    }
    config = {"scheduler": {"check_interval": 0.3}, "jobs": [job("a", 0.5), job("b", 0.5)]}
    service = Service(base_dir, config).start()
    try:
        assert wait_for(lambda: succeeded(service, "a") >= 1 and succeeded(service, "b") >= 1)
        # an invalid config is rejected and the running one stays
        service.config_path.write_text(
            json.dumps({**config, "jobs": [{**job("a", 0.5), "schedule": {"cron": "99 * * * *"}}]})
        )
        service.process.send_signal(signal.SIGHUP)  # type: ignore[union-attr]
        assert wait_for(lambda: "config reload rejected" in service.log)
        assert "cron field 'minute' has invalid value '99'" in service.log
        before = service.log.count("task b succeeded")  # (the CLI refuses the broken file too)
        assert wait_for(lambda: service.log.count("task b succeeded") > before + 1)  # b still runs
        # a valid one: b removed, c added, a rescheduled to a yearly cron
        new = {**config, "jobs": [{**job("a", 0.5), "schedule": {"cron": "0 0 1 1 *"}}, job("c", 0.5)]}
        service.config_path.write_text(json.dumps(new))
        service.process.send_signal(signal.SIGHUP)  # type: ignore[union-attr]
        assert wait_for(lambda: "config reloaded" in service.log)
        assert wait_for(lambda: succeeded(service, "c") >= 2)
        listing = {row["task_id"]: row for row in service.cli_json("list")}
        assert set(listing) == {"a", "c"} and listing["a"]["schedule"].startswith("cron '0 0 1 1 *'")
        assert len(service.cli_json("history", "b")) >= 1  # history of the removed job is kept
        code, stderr = service.signal(signal.SIGTERM)
        assert code == 0, stderr
    finally:
        service.ensure_stopped()


def test_sigterm_during_runs_interrupts_them_and_exits_0(base_dir: Path) -> None:
    (base_dir / "scripts" / "slow.py").write_text("import time\nprint('slow', flush=True)\ntime.sleep(60)\n")
    config = {
        "scheduler": {"check_interval": 0.3, "shutdown_timeout": 1, "max_workers": 4},
        "tasks": {"kill_grace": 1},
        "jobs": [
            {"id": f"slow{i}", "script_path": "scripts/slow.py", "schedule": {"interval": {"seconds": 0.5}}}
            for i in range(3)
        ],
    }
    service = Service(base_dir, config).start()
    try:
        assert wait_for(lambda: service.log.count("starting task slow") >= 3)
        code, stderr = service.signal(signal.SIGTERM)
    finally:
        service.ensure_stopped()
    assert code == 0, stderr
    interrupted = [r for r in service.cli_json("history", "--limit", "100") if r["state"] == "interrupted"]
    assert len(interrupted) == 3
    status = service.cli("status", "--json")
    assert status.returncode == 1 and json.loads(status.stdout)["running_runs"] == 0  # 1: no live service


def test_secrets_never_reach_the_log(base_dir: Path) -> None:
    (base_dir / "scripts" / "leak.py").write_text(
        "import os, sys\nprint('password=' + os.environ['DB_PASSWORD'], file=sys.stderr)\nsys.exit(1)\n"
    )
    config = {
        "scheduler": {"check_interval": 0.3},
        "logging": {"format": "json"},
        "jobs": [
            {
                "id": "leak",
                "script_path": "scripts/leak.py",
                "args": ["--api-key", "k3y-value"],
                "env": {"DB_PASSWORD": "hunter2"},
                "max_retries": 0,
                "schedule": {"interval": {"seconds": 0.5}},
            }
        ],
    }
    service = Service(base_dir, config).start()
    try:
        assert wait_for(lambda: "task leak failed" in service.log)
        code, _ = service.signal(signal.SIGTERM)
    finally:
        service.ensure_stopped()
    assert code == 0
    assert "hunter2" not in service.log and "password=***" in service.log
    bad = Service(base_dir, {"jobs": [{"id": "x", "script_path": "scripts/leak.py", "env": {"API_TOKEN": 12345678},
                                       "schedule": {"interval": 5}}]}, name="bad.json")  # fmt: skip
    result = bad.cli("validate")
    assert result.returncode == 2 and "12345678" not in result.stderr and "API_TOKEN" in result.stderr
