"""The JSON API's handlers (paths in `server.py`; described in docs/openapi.json).

Reads go through `task_scheduler.monitoring`, the functions the CLI prints with
``--json``: ``GET /api/tasks`` is ``task-scheduler list --json`` under ``tasks``,
``GET /api/tasks/{id}`` is ``show ID --json``, ``GET /api/runs`` is ``history
--json`` under ``runs``, ``GET /api/runs/{run_id}`` is ``show RUN --json``,
``GET /api/status`` is ``status --json``. Changes go through the scheduler's public
API (``run_now``, ``pause_task``, ``resume_task``) and need the bearer token.

Errors are JSON objects with an ``error`` message: 400 for a bad parameter, 401
without a token, 403 with a wrong one (or when no token is configured), 404 for an
unknown task or run, 503 when the store cannot be read.
"""

from __future__ import annotations

import hmac
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from task_scheduler import monitoring
from task_scheduler.errors import StoreError, TaskNotFoundError, TaskSchedulerError
from task_scheduler.redact import redact_data
from task_scheduler.schedules import resolve_timezone
from task_scheduler.stores import Store, open_store
from task_scheduler.stores.base import RunState

if TYPE_CHECKING:
    from task_scheduler.scheduler import TaskScheduler
    from task_scheduler.web import HttpConfig
    from task_scheduler.web.metrics import ServiceMetrics

__all__ = ["ApiError", "Reply", "WebApp", "authorize", "read_store"]

HEALTH_STALE_AFTER = 10.0  # seconds without a loop step before /healthz fails (at least)
MAX_LIMIT = 1000
_JSON = "application/json; charset=utf-8"
METRICS_MISSING = (
    "metrics need prometheus_client: pip install 'task_scheduler[metrics]' (or prometheus-client) and restart"
)


@dataclass
class Reply:
    status: int
    body: Any
    headers: dict[str, str] = field(default_factory=dict)
    content_type: str | None = None


class ApiError(Exception):
    def __init__(self, status: int, message: str, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.headers = status, message, dict(headers or {})


class WebApp:
    """What the handlers share: the scheduler, its store, the settings, metrics."""

    def __init__(self, scheduler: TaskScheduler, settings: HttpConfig) -> None:
        self.scheduler = scheduler
        self.settings = settings
        self.store, self._owns_store = _reader_store(scheduler)
        self.zone = resolve_timezone(scheduler.config.scheduler.timezone)
        self.tally = monitoring.RunTally()
        scheduler.add_listener(self.tally.on_event)
        self.metrics: ServiceMetrics | None = None
        try:
            from task_scheduler.web.metrics import ServiceMetrics
        except ImportError:
            self.metrics = None
        else:
            self.metrics = ServiceMetrics(scheduler, self.tally, self.store)

    def close(self) -> None:
        if self._owns_store:
            self.store.close()

    @property
    def stale_after(self) -> float:
        """Seconds without a loop step after which the loop counts as stuck."""
        return max(HEALTH_STALE_AFTER, 3 * self.scheduler.config.scheduler.check_interval)

    def loop_age(self) -> float | None:
        step = self.scheduler.last_step
        return None if step is None else max(0.0, time.monotonic() - step)


def _reader_store(scheduler: TaskScheduler) -> tuple[Store, bool]:
    """The store the HTTP face reads, and whether it is its own. A database gets its
    own connection, as the CLI has: a large read (10,000 tasks for a scrape) then never
    holds the connection the loop claims with (SQLite's WAL lets readers and the writer
    go on together). The memory store is the scheduler's."""
    config = scheduler.config
    if (config.store.url or "").startswith("memory://"):
        return scheduler.store, False
    try:
        reader = open_store(config)
    except TaskSchedulerError:
        return scheduler.store, False
    if reader.location != scheduler.store.location:  # a store given to the scheduler in code
        reader.close()
        return scheduler.store, False
    return reader, True


def authorize(settings: HttpConfig, header: str | None) -> None:
    """Raise ApiError unless ``header`` is ``Bearer <http.token>`` (constant-time)."""
    if settings.token is None:
        raise ApiError(403, "changes are disabled: the service has no http.token configured")
    scheme, _, given = (header or "").partition(" ")
    if scheme.lower() != "bearer" or not given.strip():
        raise ApiError(
            401, "this needs 'Authorization: Bearer <token>'", {"WWW-Authenticate": 'Bearer realm="task_scheduler"'}
        )
    if not hmac.compare_digest(given.strip().encode(), settings.token.encode()):
        raise ApiError(403, "wrong token")


def read_store(function: Any, *args: Any, **kwargs: Any) -> Any:
    """Call a monitoring function; an unreadable store is a 503, an unknown task a 404."""
    try:
        return function(*args, **kwargs)
    except TaskNotFoundError as exc:
        raise ApiError(404, str(exc)) from None
    except StoreError as exc:
        raise ApiError(503, f"the state store cannot be read: {exc}") from None


# -- health ---------------------------------------------------------------------------


def healthz(app: WebApp, _: list[str], __: dict[str, str]) -> Reply:
    """The loop is alive: it has stepped within `WebApp.stale_after` seconds."""
    age = app.loop_age()
    body: dict[str, Any] = {"status": "ok", "loop_age_seconds": age, "stale_after_seconds": app.stale_after}
    if not app.scheduler.running:
        body["status"] = "stopped"
        return Reply(503, body)
    if age is None or age > app.stale_after:
        body["status"] = "starting" if age is None else "stalled"
        return Reply(503, body)
    return Reply(200, body)


def readyz(app: WebApp, _: list[str], __: dict[str, str]) -> Reply:
    """Ready to run jobs: started, first loop step done (recovery), store readable."""
    if not app.scheduler.running:
        return Reply(503, {"status": "stopped"})
    if app.scheduler.last_step is None:
        return Reply(503, {"status": "starting"})
    try:
        app.store.revision()
    except TaskSchedulerError as exc:
        return Reply(503, {"status": "store unavailable", "error": str(exc)})
    return Reply(200, {"status": "ready"})


# -- reads ------------------------------------------------------------------------------


def status(app: WebApp, _: list[str], __: dict[str, str]) -> Reply:
    report = read_store(monitoring.service_status, app.store, app.scheduler.config.store.lease_seconds)
    report["this_node"] = app.scheduler.node_id
    report["loop_age_seconds"] = app.loop_age()
    return Reply(200, report)


def tasks(app: WebApp, _: list[str], __: dict[str, str]) -> Reply:
    return Reply(200, _json_list("tasks", read_store(monitoring.overview, app.store)), content_type=_JSON)


def _json_list(key: str, items: list[dict[str, Any]], chunk: int = 500) -> bytes:
    """``{key: items}`` as JSON, encoded a chunk at a time with the GIL let go in
    between: one json.dumps of 10,000 tasks (5 MB) holds it for tens of milliseconds,
    which the scheduler's loop would wait."""
    parts = []
    for start in range(0, len(items), chunk):
        parts.append(json.dumps(items[start : start + chunk], default=str)[1:-1])
        time.sleep(0)
    return (json.dumps(key).join(("{", ": [")) + ", ".join(parts) + "]}").encode()


def task(app: WebApp, values: list[str], query: dict[str, str]) -> Reply:
    recent = _limit(query, "recent", 5)
    detail = read_store(monitoring.task_detail, app.store, values[0], recent)
    if detail["spec"] is not None:
        detail["spec"] = redact_data(detail["spec"])
    return Reply(200, detail)


def runs(app: WebApp, _: list[str], query: dict[str, str]) -> Reply:
    state = None
    if query.get("state"):
        try:
            state = RunState(query["state"])
        except ValueError:
            finals = ", ".join(s.value for s in RunState if s.is_final)
            raise ApiError(400, f"state must be one of {finals}") from None
    records = read_store(monitoring.runs, app.store, query.get("task") or None, state, _limit(query, "limit", 20))
    return Reply(200, {"runs": records})


def run(app: WebApp, values: list[str], _: dict[str, str]) -> Reply:
    record = read_store(monitoring.run_detail, app.store, values[0])
    if record is None:
        raise ApiError(404, f"no run {values[0]!r} (give its id or a unique part of 6+ characters)")
    return Reply(200, record)


def _limit(query: dict[str, str], name: str, default: int) -> int:
    text = query.get(name)
    if text is None or text == "":
        return default
    try:
        value = int(text)
    except ValueError:
        raise ApiError(400, f"{name} must be an integer") from None
    if not 1 <= value <= MAX_LIMIT:
        raise ApiError(400, f"{name} must be between 1 and {MAX_LIMIT}")
    return value


def metrics(app: WebApp, _: list[str], __: dict[str, str]) -> Reply:
    if app.metrics is None:
        return Reply(501, METRICS_MISSING)
    data, content_type = app.metrics.render()
    return Reply(200, data, content_type=content_type)


# -- changes (the token is checked by the server before these run) ---------------------


def trigger(app: WebApp, values: list[str], _: dict[str, str]) -> Reply:
    run_id = _change(app.scheduler.run_now, values[0])
    return Reply(202, {"task_id": values[0], "run_id": run_id, "message": "queued: it starts within check_interval"})


def pause(app: WebApp, values: list[str], _: dict[str, str]) -> Reply:
    _change(app.scheduler.pause_task, values[0])
    return Reply(200, _summary(app, values[0]))


def resume(app: WebApp, values: list[str], _: dict[str, str]) -> Reply:
    _change(app.scheduler.resume_task, values[0])
    return Reply(200, _summary(app, values[0]))


def _change(method: Any, task_id: str) -> Any:
    try:
        return method(task_id)
    except TaskNotFoundError:
        raise ApiError(404, f"task {task_id!r} is not scheduled by this service") from None
    except StoreError as exc:
        raise ApiError(503, f"the state store cannot be changed: {exc}") from None
    except TaskSchedulerError as exc:  # stopped scheduler
        raise ApiError(409, str(exc)) from None


def _summary(app: WebApp, task_id: str) -> dict[str, Any]:
    detail = read_store(monitoring.task_detail, app.store, task_id, 1)
    return {key: detail[key] for key in ("task_id", "status", "paused", "next_run_at")}
