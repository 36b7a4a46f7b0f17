"""A real service with the HTTP API on, shared by the web tests of a module, and a
small HTTP client (urllib, no proxies) to talk to it."""

from __future__ import annotations

import json
import re
import signal
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.integration.helpers import Service, wait_for

TOKEN = "test-token-0123456789abcdef"
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def request(url: str, method: str = "GET", token: str | None = None, timeout: float = 30) -> Answer:
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    data = b"" if method == "POST" else None
    call = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with _OPENER.open(call, timeout=timeout) as response:
            return Answer(response.status, dict(response.headers), response.read())
    except urllib.error.HTTPError as error:
        return Answer(error.code, dict(error.headers), error.read())


@dataclass
class WebService:
    service: Service
    url: str

    def get(self, path: str) -> Answer:
        return request(self.url + path)

    def post(self, path: str, token: str | None = TOKEN) -> Answer:
        return request(self.url + path, "POST", token)


SCRIPTS = {
    "hello.py": "import sys\nprint('hello from the job')\nprint('a warning', file=sys.stderr)\n",
    # 120 MB, above the service's own size, and 0.4 s of CPU, longer than a memory sample.
    "burn.py": "import time\nx = bytearray(120_000_000)\nt = time.process_time()\n"
    "while time.process_time() - t < 0.4:\n    pass\nprint('burnt')\n",
    "broken.py": "import sys\nprint('about to fail')\nsys.exit(3)\n",
}
JOBS = [
    {"id": "hello", "name": "Hello", "script_path": "scripts/hello.py", "schedule": {"interval": 1}},
    {"id": "burn", "script_path": "scripts/burn.py", "schedule": {"interval": 3600}, "catch_up": True},
    {"id": "broken", "script_path": "scripts/broken.py", "schedule": {"interval": 2}, "max_retries": 0},
    {"id": "pausable", "script_path": "scripts/hello.py", "schedule": {"interval": 3600}},
    {"id": "nightly", "builtin": "log_cleanup", "schedule": {"cron": "0 3 * * *"}},
]


def start_web_service(base_dir: Path, http: dict[str, Any] | None = None) -> WebService:
    scripts = base_dir / "scripts"
    scripts.mkdir(exist_ok=True)
    for name, body in SCRIPTS.items():
        (scripts / name).write_text(body)
    config = {
        "scheduler": {"timezone": "UTC", "check_interval": 0.5},
        "http": {"enabled": True, "port": 0, "token": TOKEN, **(http or {})},
        "logging": {"console": False},  # nobody reads the pipe during the test
        "jobs": JOBS,
    }
    service = Service(base_dir, config).start()
    found: list[str] = []

    def listening() -> bool:
        match = re.search(r"HTTP API, metrics and dashboard on (http://\S+)", service.log)
        if match:
            found.append(match.group(1))
        assert service.process is not None and service.process.poll() is None, service.log[-2000:]
        return bool(match)

    assert wait_for(listening, timeout=60), service.log[-2000:]
    web = WebService(service, found[0])
    assert wait_for(lambda: web.get("/readyz").status == 200, timeout=60)
    return web


def stop(web: WebService) -> None:
    code, stderr = web.service.signal(signal.SIGTERM)
    assert code == 0, stderr


@pytest.fixture(scope="module")
def web(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebService]:
    running = start_web_service(tmp_path_factory.mktemp("web"))
    try:
        yield running
    finally:
        process = running.service.process
        if process is not None and process.poll() is None:
            stop(running)
        running.service.ensure_stopped()


def finished_runs(web: WebService, task: str, count: int = 1, timeout: float = 30) -> list[dict[str, Any]]:
    """Wait until ``task`` has ``count`` finished runs; return them (newest first)."""
    found: list[dict[str, Any]] = []

    def enough() -> bool:
        found[:] = web.get(f"/api/runs?task={task}&limit=50").json()["runs"]
        return len(found) >= count

    assert wait_for(enough, timeout=timeout, interval=0.2), found
    return found
