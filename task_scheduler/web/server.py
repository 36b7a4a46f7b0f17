"""The HTTP server: the standard library's ThreadingHTTPServer on a daemon thread,
and the routes of the API (`api.py`), metrics (`metrics.py`) and dashboard
(`dashboard.py`).

One thread per connection (HTTP/1.1 keep-alive, so a Prometheus scrape reuses its
connection); each request reads the store through `task_scheduler.monitoring` and
never touches the scheduler's loop, so a slow client or a large scrape costs a
request thread, not firing accuracy. An idle or stalled connection is dropped after
`REQUEST_TIMEOUT` seconds. Path segments are percent-decoded one by one, so a task
id holding ``/`` is addressed as ``%2F``. Requests are logged at DEBUG level, never
with their headers (the token).
"""

from __future__ import annotations

import json
import logging
import socket
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, unquote, urlsplit

from task_scheduler.web import HttpConfig, api, dashboard
from task_scheduler.web.api import ApiError, Reply, WebApp

if TYPE_CHECKING:
    from task_scheduler.scheduler import TaskScheduler

__all__ = ["WebServer"]

logger = logging.getLogger(__name__)

REQUEST_TIMEOUT = 30.0  # seconds a connection may stay idle or stall mid-request
MAX_BODY = 64 * 1024  # POST bodies are ignored, but read (up to this) to keep the connection usable
_SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'",
}

Route = Callable[[WebApp, list[str], dict[str, str]], Reply]


def _routes() -> dict[tuple[str, str], Route]:
    """(method, pattern) -> handler; ``{}`` in a pattern is one path segment."""
    return {
        ("GET", "/healthz"): api.healthz,
        ("GET", "/readyz"): api.readyz,
        ("GET", "/api/status"): api.status,
        ("GET", "/api/tasks"): api.tasks,
        ("GET", "/api/tasks/{}"): api.task,
        ("GET", "/api/runs"): api.runs,
        ("GET", "/api/runs/{}"): api.run,
        ("POST", "/api/tasks/{}/trigger"): api.trigger,
        ("POST", "/api/tasks/{}/pause"): api.pause,
        ("POST", "/api/tasks/{}/resume"): api.resume,
        ("GET", "/metrics"): api.metrics,
        ("GET", "/"): dashboard.index,
        ("GET", "/tasks/{}"): dashboard.task_page,
        ("GET", "/runs/{}"): dashboard.run_page,
        ("GET", "/static/{}"): dashboard.static,
    }


def _match(pattern: str, segments: list[str]) -> list[str] | None:
    parts = pattern.strip("/").split("/") if pattern != "/" else []
    if len(parts) != len(segments):
        return None
    values = []
    for part, segment in zip(parts, segments, strict=True):
        if part == "{}":
            if not segment:
                return None
            values.append(segment)
        elif part != segment:
            return None
    return values


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"
    timeout = REQUEST_TIMEOUT
    server_version = "task_scheduler"
    sys_version = ""

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY:
            self._send(Reply(413, {"error": "request body too large"}))
            self.close_connection = True
            return
        if length:
            self.rfile.read(length)
        self._dispatch("POST")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    def _dispatch(self, method: str) -> None:
        url = urlsplit(self.path)
        segments = [unquote(s) for s in url.path.strip("/").split("/")] if url.path.strip("/") else []
        query = {key: values[-1] for key, values in parse_qs(url.query).items()}
        allowed = []
        reply: Reply | None = None
        try:
            for (route_method, pattern), handler in self.server.routes.items():
                values = _match(pattern, segments)
                if values is None:
                    continue
                if route_method != method:
                    allowed.append(route_method)
                    continue
                if method == "POST":
                    api.authorize(self.server.app.settings, self.headers.get("Authorization"))
                reply = handler(self.server.app, values, query)
                break
            else:
                if allowed:
                    reply = Reply(405, {"error": f"method {method} not allowed here"}, {"Allow": ", ".join(allowed)})
                else:
                    reply = Reply(404, {"error": f"no such page: {url.path}"})
        except ApiError as exc:
            reply = Reply(exc.status, {"error": exc.message}, exc.headers)
        except Exception:
            logger.exception("HTTP %s %s failed", method, url.path)
            reply = Reply(500, {"error": "internal error (see the service log)"})
        self._send(reply)

    def _send(self, reply: Reply) -> None:
        body = reply.body
        if isinstance(body, (dict, list)):
            data = json.dumps(body, default=str).encode()
            content_type = "application/json; charset=utf-8"
        elif isinstance(body, bytes):
            data, content_type = body, reply.content_type or "application/octet-stream"
        else:
            data, content_type = str(body).encode(), reply.content_type or "text/plain; charset=utf-8"
        self.send_response(reply.status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "no-store")
        for name, value in {**_SECURITY_HEADERS, **reply.headers}.items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("%s %s", self.address_string(), format % args)

    def log_error(self, format: str, *args: Any) -> None:
        logger.debug("HTTP error from %s: %s", self.address_string(), format % args)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 64

    def __init__(self, address: tuple[str, int], app: WebApp) -> None:
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        self.app = app
        self.routes = _routes()
        super().__init__(address, _Handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client hanging up mid-answer is routine; anything else is worth a line.
        logger.debug("HTTP connection from %s ended with an error", client_address, exc_info=True)


class WebServer:
    """Serves ``scheduler``'s API, metrics and dashboard on ``settings.host:port``.

    ``start()`` binds (an address in use raises OSError at once, before the service
    reports ready) and serves on a daemon thread; ``stop()`` closes the socket.
    """

    def __init__(self, scheduler: TaskScheduler, settings: HttpConfig) -> None:
        self.app = WebApp(scheduler, settings)
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def address(self) -> tuple[str, int]:
        assert self._server is not None
        host, port = self._server.server_address[:2]
        return str(host), int(port)

    @property
    def url(self) -> str:
        host, port = self.address
        return f"http://{f'[{host}]' if ':' in host else host}:{port}"

    def start(self) -> None:
        settings = self.app.settings
        try:
            self._server = _Server((settings.host, settings.port), self.app)
        except OSError:
            self.app.close()
            raise
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.5}, name="task-scheduler-http", daemon=True
        )
        self._thread.start()
        if settings.token is not None and len(settings.token) < 16:
            logger.warning("http.token is shorter than 16 characters: use a long random one")
        logger.info(
            "HTTP API, metrics and dashboard on %s (changes %s)",
            self.url,
            "need the token" if settings.token else "disabled: no http.token",
        )

    def stop(self) -> None:
        if self._server is None:
            self.app.close()
            return
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(5)
        self._server = None
        self.app.close()
