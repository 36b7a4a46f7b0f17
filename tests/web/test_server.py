"""The HTTP face in-process: the ``http`` config rules, no token means no changes,
/metrics without prometheus_client, /healthz of a stalled loop."""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Iterator

import pytest

from task_scheduler import FunctionTask, IntervalRule, SchedulerConfig, TaskScheduler
from task_scheduler.config import load_config
from task_scheduler.errors import ConfigError
from task_scheduler.web.server import WebServer
from tests.web.conftest import request


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.168.1.10", "scheduler.example.com", ""])
def test_a_non_loopback_host_needs_a_token(host: str) -> None:
    with pytest.raises(ConfigError, match=r"^http\.host: .* is not a loopback address: set http\.token"):
        SchedulerConfig.from_dict({"http": {"enabled": True, "host": host}})
    SchedulerConfig.from_dict({"http": {"enabled": True, "host": host, "token": "t" * 32}})
    SchedulerConfig.from_dict({"http": {"enabled": False, "host": host}})  # not served: nothing to protect


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.53", "::1", "localhost"])
def test_loopback_hosts_need_no_token(host: str) -> None:
    assert SchedulerConfig.from_dict({"http": {"enabled": True, "host": host}}).http.token is None


def test_the_token_comes_from_the_environment_and_is_never_shown() -> None:
    config = load_config(None, environ={"TASK_SCHEDULER__HTTP__TOKEN": "from-the-environment-123"})
    assert config.http.token == "from-the-environment-123"
    with pytest.raises(ConfigError) as error:
        load_config(None, environ={"TASK_SCHEDULER__HTTP__TOKEN": "42"})  # a number is not a token
    assert "42" not in str(error.value) and "http.token" in str(error.value)
    with pytest.raises(ConfigError, match=r"http\.port: must be a port number"):
        SchedulerConfig.from_dict({"http": {"port": 70000}})


def _serve(token: str | None, check_interval: float = 0.05) -> tuple[TaskScheduler, WebServer]:
    config = SchedulerConfig.from_dict(
        {
            "scheduler": {"check_interval": check_interval},
            "store": {"url": "memory://"},
            "http": {"enabled": True, "port": 0, "token": token},
        }
    )
    scheduler = TaskScheduler(config)
    scheduler.add_task(FunctionTask("job", func=lambda: None), IntervalRule(seconds=0.1))
    server = WebServer(scheduler, config.http)
    server.start()
    return scheduler, server


@pytest.fixture
def no_token() -> Iterator[tuple[TaskScheduler, WebServer]]:
    scheduler, server = _serve(None)
    scheduler.start()
    yield scheduler, server
    server.stop()
    scheduler.stop()


def test_without_a_token_changes_are_refused(no_token: tuple[TaskScheduler, WebServer]) -> None:
    _, server = no_token
    for token in (None, "anything"):
        answer = request(server.url + "/api/tasks/job/pause", "POST", token)
        assert answer.status == 403 and "no http.token configured" in answer.json()["error"]
    assert request(server.url + "/api/tasks/job").json()["paused"] is False
    assert request(server.url + "/api/tasks").status == 200  # reads stay open


def test_metrics_without_prometheus_client_answer_501(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "prometheus_client", None)  # as if the extra were not installed
    monkeypatch.delitem(sys.modules, "task_scheduler.web.metrics", raising=False)
    scheduler, server = _serve(None)
    try:
        answer = request(server.url + "/metrics")
        assert answer.status == 501 and b"pip install 'task_scheduler[metrics]'" in answer.body
        assert request(server.url + "/api/tasks").status == 200
    finally:
        server.stop()
        scheduler.stop()


def test_healthz_fails_while_the_loop_is_stuck(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("task_scheduler.web.api.HEALTH_STALE_AFTER", 0.3)
    scheduler, server = _serve(None, check_interval=0.05)
    assert request(server.url + "/healthz").json()["status"] == "stopped"  # not started yet
    assert request(server.url + "/readyz").status == 503
    stuck = threading.Event()
    step = scheduler.run_due

    def run_due(now: object = None) -> float:
        while stuck.is_set():
            time.sleep(0.01)
        return step()

    scheduler.run_due = run_due  # type: ignore[method-assign]
    scheduler.start()
    try:
        deadline = time.monotonic() + 10
        while request(server.url + "/readyz").status != 200 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert request(server.url + "/healthz").status == 200
        stuck.set()
        time.sleep(0.6)
        stalled = request(server.url + "/healthz")
        assert stalled.status == 503 and stalled.json()["status"] == "stalled"
        assert stalled.json()["loop_age_seconds"] > 0.3
        stuck.clear()
        time.sleep(0.2)
        assert request(server.url + "/healthz").status == 200
    finally:
        stuck.clear()
        server.stop()
        scheduler.stop()


def test_a_task_id_with_a_slash_is_addressed_percent_encoded(no_token: tuple[TaskScheduler, WebServer]) -> None:
    scheduler, server = no_token
    scheduler.add_task(FunctionTask("reports/daily", func=lambda: None), IntervalRule(seconds=3600))
    assert request(server.url + "/api/tasks/reports%2Fdaily").json()["task_id"] == "reports/daily"
    page = request(server.url + "/")
    assert b'href="/tasks/reports%2Fdaily"' in page.body
    assert request(server.url + "/tasks/reports%2Fdaily").status == 200


def test_html_is_escaped(no_token: tuple[TaskScheduler, WebServer]) -> None:
    scheduler, server = no_token
    scheduler.add_task(FunctionTask("<script>alert(1)</script>", func=lambda: None), IntervalRule(seconds=3600))
    page = request(server.url + "/").body.decode()
    assert "<script>alert(1)</script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "script-src 'self'" in request(server.url + "/").headers["Content-Security-Policy"]


def test_metrics_escape_task_ids(no_token: tuple[TaskScheduler, WebServer]) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    scheduler, server = no_token
    odd = 'say "hi"\\now\nplease'
    scheduler.add_task(FunctionTask(odd, func=lambda: None), IntervalRule(seconds=3600))
    text = request(server.url + "/metrics").body.decode()
    tasks = {
        sample.labels["task"]
        for family in text_string_to_metric_families(text)
        if family.name == "task_scheduler_task_missed"
        for sample in family.samples
    }
    assert tasks == {"job", odd}
