"""Durable state through real process deaths, and the CLI against a live service."""

from __future__ import annotations

import json
import signal
import sqlite3
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.integration.helpers import Service, wait_for

pytestmark = pytest.mark.integration


def history(service: Service, *arguments: str) -> list[dict[str, object]]:
    return service.cli_json("history", *arguments, "--limit", "1000")  # type: ignore[no-any-return]


def test_kill_9_during_a_run_then_restart(base_dir: Path) -> None:
    (base_dir / "scripts" / "long.py").write_text("import time\nprint('long started', flush=True)\ntime.sleep(5)\n")
    (base_dir / "scripts" / "tick.py").write_text("print('tick')\n")
    config = {
        "scheduler": {"check_interval": 0.5, "timezone": "UTC"},
        "tasks": {"max_retries": 0},
        "jobs": [
            {"id": "long", "script_path": "scripts/long.py", "schedule": {"interval": {"seconds": 2}}},
            {"id": "tick", "script_path": "scripts/tick.py", "schedule": {"interval": {"seconds": 1}}},
            {"id": "held", "script_path": "scripts/tick.py", "schedule": {"interval": {"seconds": 1}}},
        ],
    }
    service = Service(base_dir, config).start()
    try:
        assert wait_for(lambda: "long started" in service.log or "starting task long" in service.log)
        assert service.cli("pause", "held").returncode == 0
        assert wait_for(lambda: any(r["task_id"] == "tick" and r["state"] == "succeeded" for r in history(service)))
        before = service.cli_json("show", "tick")
        service.kill()  # SIGKILL: no cleanup at all

        service.start()
        assert wait_for(lambda: [r for r in history(service, "long") if r["state"] == "interrupted"], timeout=30)
        [interrupted] = [r for r in history(service, "long") if r["state"] == "interrupted"]
        assert "died" in str(interrupted["error"])
        assert wait_for(lambda: [r for r in history(service, "long") if r["state"] == "succeeded"], timeout=40)
        after = service.cli_json("show", "tick")
        assert after["run_count"] >= before["run_count"]
        assert after["success_count"] >= before["success_count"] > 0
        assert service.cli_json("show", "held")["paused"] is True
        code, stderr = service.signal(signal.SIGTERM)
        assert code == 0, stderr
    finally:
        service.ensure_stopped()


def test_cli_against_a_live_service(base_dir: Path) -> None:
    (base_dir / "scripts" / "say.py").write_text("print('said it')\n")
    config = {
        "scheduler": {"check_interval": 0.2, "timezone": "UTC"},
        "tasks": {"max_retries": 0},
        "jobs": [
            {"id": "fast", "type": "function", "function": "os:getpid", "schedule": {"interval": {"seconds": 0.1}}},
            {"id": "say", "script_path": "scripts/say.py", "schedule": {"cron": "0 0 1 1 *"}},
        ],
    }
    service = Service(base_dir, config).start()
    try:
        assert wait_for(lambda: service.cli("status").returncode == 0)
        status = service.cli_json("status")
        assert status["alive"] and status["nodes"][0]["pid"] == service.process.pid  # type: ignore[union-attr]
        listing = {row["task_id"]: row for row in service.cli_json("list")}
        assert set(listing) == {"fast", "say"} and listing["say"]["schedule"] == "cron '0 0 1 1 *' (UTC)"
        text = service.cli("list").stdout
        assert text.splitlines()[0].split() == ["ID", "ORIGIN", "SCHEDULE", "NEXT", "RUN", "LAST", "RESULT"]

        # trigger: the yearly job runs within check_interval, output visible in show
        assert service.cli("trigger", "say").returncode == 0
        assert wait_for(lambda: service.cli_json("show", "say")["run_count"] == 1)
        assert "said it" in service.cli("show", "say").stdout

        # pause takes effect: no new runs while paused, then resume
        assert service.cli("pause", "fast").returncode == 0
        paused_count = service.cli_json("show", "fast")["run_count"]
        time.sleep(1.0)  # let several 100 ms occurrences pass
        assert service.cli_json("show", "fast")["run_count"] <= paused_count + 1  # one may have been in flight
        assert service.cli("resume", "fast").returncode == 0
        assert wait_for(lambda: service.cli_json("show", "fast")["run_count"] > paused_count + 3)

        # 20 concurrent CLI calls while the service fires every 100 ms
        calls = [("list",), ("status",), ("history", "fast"), ("show", "fast"), ("trigger", "say")] * 4
        with ThreadPoolExecutor(20) as pool:
            results = list(pool.map(lambda args: service.cli(*args, "--json"), calls))
        assert [r.returncode for r in results] == [0] * 20, [r.stderr for r in results if r.returncode]
        assert all(json.loads(r.stdout) is not None for r in results)

        # errors: unknown task exits 1 with a message
        missing = service.cli("show", "nope")
        assert missing.returncode == 1 and "no task with id 'nope'" in missing.stderr
        code, stderr = service.signal(signal.SIGTERM)
        assert code == 0, stderr
    finally:
        service.ensure_stopped()

    # The store is consistent: counters match the history, nothing claimed twice.
    db = sqlite3.connect(base_dir / "data" / "state.db")
    assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    for task_id, success, failure, skipped in db.execute(
        "SELECT task_id, success_count, failure_count, skipped_count FROM tasks"
    ):
        counts = dict(
            db.execute("SELECT state, COUNT(*) FROM runs WHERE task_id = ? GROUP BY state", (task_id,)).fetchall()
        )
        assert counts.get("succeeded", 0) == success and counts.get("failed", 0) == failure
        assert counts.get("skipped", 0) == skipped
    duplicates = db.execute(
        "SELECT COUNT(*) FROM (SELECT task_id, scheduled_for, attempt FROM runs WHERE manual = 0 "
        "GROUP BY task_id, scheduled_for, attempt HAVING COUNT(*) > 1)"
    ).fetchone()[0]
    assert duplicates == 0
    assert db.execute("SELECT COUNT(*) FROM runs WHERE state = 'running'").fetchone()[0] == 0
    assert db.execute("SELECT COUNT(*) FROM runs WHERE task_id = 'say' AND manual = 1").fetchone()[0] == 5


ORPHAN_SCRIPT = """
import os, sys, time
from pathlib import Path

ledger = Path(os.environ["TASK_SCHEDULER_DATA_DIR"]) / "ledger.txt"
ledger.parent.mkdir(parents=True, exist_ok=True)
alive = []
if ledger.exists():
    for line in ledger.read_text().split():
        try:
            state = Path(f"/proc/{int(line)}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, ValueError):
            continue
        if state not in ("Z", "X"):  # running, not a zombie waiting to be reaped
            alive.append(line)
with ledger.open("a") as out:
    if alive:
        out.write("overlap\\n")  # another copy of this job is still running
    out.write(f"{os.getpid()}\\n")
print("started", os.getpid(), flush=True)
time.sleep(60)
"""


def _pid_alive(pid: int) -> bool:
    """Running, not a zombie (the test's parent of an orphan may reap it late)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False


def test_nothing_runs_twice_after_kill_9_the_orphan_is_stopped_before_recovery(base_dir: Path) -> None:
    """kill -9 of the service leaves a running script's process group alive (re-
    parented to init); the restart stops it before re-running the recovered run, so
    max_instances=1 holds."""
    (base_dir / "scripts" / "slow.py").write_text(ORPHAN_SCRIPT)
    config = {
        "scheduler": {"check_interval": 0.2, "timezone": "UTC", "shutdown_timeout": 1},
        "tasks": {"max_retries": 0, "kill_grace": 1},
        "jobs": [{"id": "slow", "script_path": "scripts/slow.py", "recover": True, "timeout": 120,
                  "schedule": {"interval": {"hours": 1}, "start": "now"}}],
    }  # fmt: skip
    ledger = base_dir / "data" / "ledger.txt"
    service = Service(base_dir, config).start()
    try:
        assert wait_for(lambda: ledger.exists() and ledger.read_text().split(), timeout=60)
        orphan = int(ledger.read_text().split()[0])
        service.kill()
        assert _pid_alive(orphan)  # kill -9 does not reach the script's own process group

        service.start()
        assert wait_for(lambda: len(ledger.read_text().split()) == 2, timeout=60)  # the recovered run started
        assert "overlap" not in ledger.read_text() and not _pid_alive(orphan)
        assert f"stopping process group {orphan} left running by task slow" in service.log
        [interrupted] = [r for r in history(service, "slow") if r["state"] == "interrupted"]
        assert "died" in str(interrupted["error"]) and interrupted["attempt"] == 1
        code, stderr = service.signal(signal.SIGTERM)
        assert code == 0, stderr
        assert service.log.rstrip().splitlines()[-1].endswith("scheduler stopped")  # the last line says so
    finally:
        service.ensure_stopped()
