"""Failure notifications: a webhook receiver on 127.0.0.1 gets the notice; a receiver
that is down (refusing, or accepting and never answering) delays no fire and costs
a logged warning with the URL masked; commands get the notice on stdin."""

from __future__ import annotations

import itertools
import json
import logging
import socket
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from task_scheduler import FunctionTask, IntervalRule, SchedulerConfig, TaskScheduler
from task_scheduler.errors import ConfigError
from task_scheduler.notify import Notifier
from tests.integration.helpers import wait_for


def explode() -> None:
    raise RuntimeError("disk full: token=hunter2")


def fine() -> None:
    pass


class Receiver:
    """A webhook receiver: records each POSTed JSON body (``status`` is what it answers)."""

    def __init__(self, status: int = 200) -> None:
        self.bodies: list[dict[str, Any]] = []
        self.paths: list[str] = []
        self.status = status
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.paths.append(self.path)
                receiver.bodies.append(json.loads(body))
                self.send_response(receiver.status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    running = Receiver()
    yield running
    running.close()


def _service(notify: dict[str, Any], jobs: list[dict[str, Any]], workers: int = 4) -> tuple[TaskScheduler, Notifier]:
    config = SchedulerConfig.from_dict(
        {
            "scheduler": {"check_interval": 0.05, "max_workers": workers},
            "store": {"url": "memory://"},
            "tasks": {"retry_jitter": 0},
            "notify": notify,
        }
    )
    scheduler = TaskScheduler(config)
    for job in jobs:
        scheduler.add_job(job, persistent=False)
    notifier = Notifier.for_scheduler(scheduler)
    notifier.start()
    scheduler.start()
    return scheduler, notifier


def _stop(scheduler: TaskScheduler, notifier: Notifier) -> None:
    scheduler.stop(wait=True, timeout=5)
    notifier.stop(timeout=5)


def test_a_failed_job_is_notified_once_its_retries_are_spent(receiver: Receiver, caplog: Any) -> None:
    caplog.set_level(logging.DEBUG, logger="task_scheduler.notify")
    webhook = f"{receiver.url}/hooks/T00/SECRET-PATH?token=abc123"
    scheduler, notifier = _service(
        {"webhook": webhook, "headers": {"Authorization": "Bearer sekrit-header"}},
        [
            {
                "id": "flaky",
                "function": "tests.test_notify:explode",
                "schedule": {"once": _soon()},
                "max_retries": 1,
                "retry_delay": 0.1,
            },
            {"id": "fine", "function": "tests.test_notify:fine", "schedule": {"interval": 0.1}},
        ],
    )
    try:
        assert wait_for(lambda: receiver.bodies, timeout=15)
        time.sleep(1.0)  # nothing else comes: not the retried attempt, not the successes
    finally:
        _stop(scheduler, notifier)
    assert len(receiver.bodies) == 1, receiver.bodies
    body = receiver.bodies[0]
    assert body["event"] == "failed" and body["task_id"] == "flaky" and body["attempt"] == 2
    assert body["state"] == "failed" and "RuntimeError: disk full" in body["error"]
    assert "hunter2" not in json.dumps(body)  # secret-looking values are masked in the body too
    assert {"run_id", "scheduled_for", "started_at", "finished_at", "duration", "host", "node", "time"} <= set(body)
    assert receiver.paths == ["/hooks/T00/SECRET-PATH?token=abc123"]
    text = caplog.text
    assert f"notified webhook {receiver.url}/***: task flaky failed" in text
    assert "SECRET-PATH" not in text and "abc123" not in text and "sekrit" not in text


def test_retrying_skipped_and_per_job_settings(receiver: Receiver) -> None:
    other = Receiver()
    scheduler, notifier = _service(
        {"webhook": receiver.url, "on": ["failed", "retrying"]},
        [
            {
                "id": "retried",
                "function": "tests.test_notify:explode",
                "schedule": {"once": _soon()},
                "max_retries": 1,
                "retry_delay": 0.1,
            },
            {
                "id": "quiet",
                "function": "tests.test_notify:explode",
                "schedule": {"interval": 0.2},
                "notify": {"on": []},
            },
            {
                "id": "elsewhere",
                "function": "tests.test_notify:explode",
                "schedule": {"once": _soon()},
                "notify": {"webhook": other.url},
            },
        ],
    )
    try:
        assert wait_for(lambda: len(receiver.bodies) >= 2 and other.bodies, timeout=15)
        time.sleep(0.8)
    finally:
        _stop(scheduler, notifier)
        other.close()
    assert sorted((b["task_id"], b["event"], b["attempt"]) for b in receiver.bodies) == [
        ("retried", "failed", 2),
        ("retried", "retrying", 1),
    ]
    assert [(b["task_id"], b["event"]) for b in other.bodies] == [("elsewhere", "failed")]
    assert receiver.bodies[0]["retry_at"] or receiver.bodies[1]["retry_at"]


def _blackhole() -> tuple[socket.socket, str]:
    """Accepts connections and never answers."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(100)
    return listener, f"http://127.0.0.1:{listener.getsockname()[1]}/hook/SECRET"


def _soon() -> str:
    from datetime import UTC, datetime, timedelta

    return (datetime.now(UTC) + timedelta(seconds=0.3)).isoformat()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.mark.parametrize("kind", ["refusing", "silent"])
def test_a_dead_receiver_delays_no_fire(kind: str, caplog: Any) -> None:
    caplog.set_level(logging.WARNING, logger="task_scheduler.notify")
    listener = None
    if kind == "silent":
        listener, url = _blackhole()
    else:
        url = f"http://127.0.0.1:{_free_port()}/hook/SECRET"
    ticks: list[float] = []
    scheduler, notifier = _service(
        {"webhook": url, "timeout": 0.3, "retries": 1, "retry_delay": 0.1, "queue_size": 5},
        [{"id": "failing", "function": "tests.test_notify:explode", "schedule": {"interval": 0.1}}],
    )
    started = time.monotonic()
    scheduler.add_task(FunctionTask("tick", func=lambda: ticks.append(time.monotonic())), IntervalRule(seconds=0.1))
    try:
        time.sleep(2.5)
    finally:
        scheduler.stop(wait=True, timeout=5)
        stop_started = time.monotonic()
        notifier.stop(timeout=2)
        if listener is not None:
            listener.close()
    assert time.monotonic() - stop_started < 3  # pending retries do not hold up the shutdown
    # The 0.1 s job kept its pace while every failure's notice went nowhere.
    assert len(ticks) >= 20, len(ticks)
    gaps = [b - a for a, b in itertools.pairwise(ticks)]
    assert max(gaps) < 0.35, max(gaps)
    lateness = [r.queue_delay or 0.0 for r in scheduler.store.history("tick", limit=100)]
    assert sorted(lateness)[int(len(lateness) * 0.9)] < 0.1, sorted(lateness)[-5:]
    warnings = caplog.text
    assert "could not notify webhook http://127.0.0.1:" in warnings and "/***" in warnings
    assert "SECRET" not in warnings
    assert started  # used


def test_a_command_gets_the_notice_on_stdin(tmp_path: Path) -> None:
    out = tmp_path / "notice.json"
    hook = tmp_path / "hook.py"
    hook.write_text(
        "import json, os, sys\n"
        "notice = json.load(sys.stdin)\n"
        "notice['env'] = [os.environ['TASK_SCHEDULER_NOTIFY_EVENT'], os.environ['TASK_SCHEDULER_TASK_ID']]\n"
        f"open({str(out)!r}, 'w').write(json.dumps(notice))\n"
    )
    scheduler, notifier = _service(
        {"command": [sys.executable, str(hook)], "on": ["missed"]},
        [
            {
                "id": "late",
                "function": "tests.test_notify:fine",
                "schedule": {"once": "2000-01-01T00:00:00Z"},
                "misfire_grace_time": 1,
            }
        ],
    )
    try:
        assert wait_for(out.exists, timeout=15)
    finally:
        _stop(scheduler, notifier)
    notice = json.loads(out.read_text())
    assert notice["event"] == "missed" and notice["task_id"] == "late" and notice["env"] == ["missed", "late"]
    assert "missed by" in notice["error"]


def test_bad_notify_settings_name_their_key() -> None:
    with pytest.raises(ConfigError, match=r"notify\.webhook: must be an http"):
        SchedulerConfig.from_dict({"notify": {"webhook": "ftp://x"}})
    with pytest.raises(ConfigError, match=r"notify\.on\[1\]: must be one of"):
        SchedulerConfig.from_dict({"notify": {"on": ["failed", "exploded"]}})
    with pytest.raises(ConfigError, match=r"jobs\[0\] \(id 'a'\)\.notify\.timeout: must be > 0"):
        SchedulerConfig.from_dict(
            {"jobs": [{"id": "a", "builtin": "log_cleanup", "schedule": {"interval": 5}, "notify": {"timeout": 0}}]}
        )
    with pytest.raises(ConfigError, match=r"notify\.command: must be a non-empty list"):
        SchedulerConfig.from_dict({"notify": {"command": []}})


def test_stop_ends_the_sender_even_with_retries_due() -> None:
    """Retries due at the moment of the stop are dropped, and the thread ends."""
    scheduler, notifier = _service(
        {"command": [sys.executable, "-c", "import sys; sys.exit(1)"], "retries": 1000, "retry_delay": 0},
        [{"id": "failing", "function": "tests.test_notify:explode", "schedule": {"interval": 0.1}}],
    )
    time.sleep(1.5)  # failures notified, each retried at once, again and again
    scheduler.stop(wait=True, timeout=5)
    notifier.stop(timeout=5)
    assert notifier._thread is not None and not notifier._thread.is_alive()
