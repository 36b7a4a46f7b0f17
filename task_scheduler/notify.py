"""Failure notifications: a webhook (JSON POST) or a command, per task or as a default.

Settings: the config's ``notify`` section is the default for every task; a job's own
``notify`` object (in the config's ``jobs`` or a persistent job) overrides the keys
it gives, so ``{"notify": {"on": []}}`` silences one job and ``{"notify":
{"webhook": "https://..."}}`` sends one job's notices elsewhere::

    "notify": {"on": ["failed", "timed_out", "missed", "interrupted"],
               "webhook": "https://hooks.example.com/T000/B000/XXXX",
               "command": ["/usr/local/bin/page-oncall", "--team", "ops"],
               "timeout": 5, "retries": 3}

What is notified (``on``): ``failed``, ``timed_out``, ``missed``, ``skipped``,
``interrupted`` - when it is the run's final outcome. A failed or timed-out attempt
that will be retried is not (the job has not failed yet) unless ``on`` holds
``retrying``. To tell the two apart a notice is held `HOLD_SECONDS` before it is
sent (the scheduler reports the retry right after the failure).

Delivery never blocks scheduling: the listener only appends the event to a bounded
queue (`queue_size`; when it is full new notices are dropped and counted, with one
warning a minute). One sender thread delivers them: each attempt has its own
``timeout``; a failed attempt (connection refused, timeout, a non-2xx answer, a
non-zero exit) is retried ``retries`` times after ``retry_delay``, doubled each time,
while other notices go ahead. A receiver that stays down costs one logged warning
per notice. The webhook URL is masked in every log line (`redact.mask_url`:
scheme, host and port only, since a webhook's secret is often its path).

The body (JSON; the command gets it on stdin, plus ``TASK_SCHEDULER_NOTIFY_EVENT``,
``TASK_SCHEDULER_TASK_ID`` and ``TASK_SCHEDULER_RUN_ID`` in its environment; it runs
without a shell)::

    {"event": "failed", "task_id": "backup", "run_id": "...", "state": "failed",
     "attempt": 1, "scheduled_for": "...", "started_at": "...", "finished_at": "...",
     "duration": 1.2, "exit_code": 2, "error": "exit code 2: ...", "output_tail": "...",
     "node": "host:123", "host": "host", "time": "..."}
"""

from __future__ import annotations

import heapq
import itertools
import json
import logging
import os
import socket
import subprocess
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from task_scheduler.events import EventType, SchedulerEvent
from task_scheduler.redact import mask_url, redact_text
from task_scheduler.validation import build, check

if TYPE_CHECKING:
    from task_scheduler.scheduler import TaskScheduler

__all__ = ["NOTIFY_ON", "NotifyConfig", "Notifier", "check_notify", "job_notify"]

logger = logging.getLogger(__name__)

NOTIFY_ON = ("failed", "timed_out", "missed", "skipped", "interrupted", "retrying")
HOLD_SECONDS = 0.5  # a failure waits this long for a RETRY event of the same run
OUTPUT_TAIL = 2000  # characters of the run's output in the body
SPECS_TTL = 10.0  # seconds the per-job settings read from the store are reused
_KIND = {
    EventType.ERROR: "failed",
    EventType.TIMEOUT: "timed_out",
    EventType.MISSED: "missed",
    EventType.MAX_INSTANCES: "skipped",
    EventType.INTERRUPTED: "interrupted",
}
_MASK = EventType.ERROR | EventType.TIMEOUT | EventType.MISSED | EventType.MAX_INSTANCES | EventType.INTERRUPTED


@dataclass
class NotifyConfig:
    """The ``notify`` config section (also the shape of a job's ``notify``)."""

    on: list[str] = field(default_factory=lambda: ["failed", "timed_out", "missed", "interrupted"])
    webhook: str | None = None  # http(s) URL: a JSON POST
    command: list[str] | None = None  # argv (no shell); the JSON body on stdin
    headers: dict[str, str] = field(default_factory=dict)  # extra webhook headers (Authorization ...)
    timeout: float = 5.0  # seconds per attempt
    retries: int = 3  # further attempts after a failed one
    retry_delay: float = 1.0  # seconds before the first retry, doubled each time
    queue_size: int = 1000  # notices waiting at most; more are dropped (and counted)

    @property
    def active(self) -> bool:
        return bool(self.on) and (self.webhook is not None or bool(self.command))


def check_notify(settings: NotifyConfig, key: str, source: str | None) -> None:
    """Value checks of a ``notify`` object; raises ConfigError naming the key."""
    for index, kind in enumerate(settings.on):
        check(kind in NOTIFY_ON, f"must be one of {', '.join(NOTIFY_ON)}", source=source, key=f"{key}.on[{index}]")
    if settings.webhook is not None:
        check(settings.webhook.startswith(("http://", "https://")), "must be an http:// or https:// URL",
              source=source, key=f"{key}.webhook")  # fmt: skip
    if settings.command is not None:
        check(bool(settings.command) and bool(settings.command[0]), "must be a non-empty list (program, args...)",
              source=source, key=f"{key}.command")  # fmt: skip
    check(settings.timeout > 0, "must be > 0 seconds", source=source, key=f"{key}.timeout")
    check(settings.retries >= 0, "must be >= 0", source=source, key=f"{key}.retries")
    check(settings.retry_delay >= 0, "must be >= 0 seconds", source=source, key=f"{key}.retry_delay")
    check(settings.queue_size >= 1, "must be >= 1", source=source, key=f"{key}.queue_size")


def job_notify(data: Mapping[str, Any], key: str, source: str | None = None) -> None:
    """Check a job's ``notify`` object (only the keys it gives; ConfigError naming them)."""
    settings: NotifyConfig = build(NotifyConfig, dict(data), key, source)
    check_notify(settings, key, source)


def merged(default: NotifyConfig, override: Mapping[str, Any] | None) -> NotifyConfig:
    """The default with a job's given keys on top."""
    if not override:
        return default
    names = {f.name for f in fields(NotifyConfig)}
    return replace(default, **{k: v for k, v in override.items() if k in names})


@dataclass(order=True)
class _Delivery:
    due: float
    sequence: int
    target: str = field(compare=False)  # "webhook" or "command"
    body: dict[str, Any] = field(compare=False)
    settings: NotifyConfig = field(compare=False)
    attempt: int = field(default=1, compare=False)


class Notifier:
    """Sends failure notices for a scheduler's runs (see the module doc).

    ``attach`` adds its listener; ``start``/``stop`` run the sender thread.
    ``settings()`` gives the default (re-read at each notice, so a config reload
    applies); ``job_settings()`` gives each task's ``notify`` override by task id
    (read from the store's job definitions, reused for `SPECS_TTL` seconds).
    """

    def __init__(
        self,
        settings: Callable[[], NotifyConfig],
        job_settings: Callable[[], Mapping[str, Mapping[str, Any] | None]] = dict,
        base_dir: Path | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._settings = settings
        self._job_settings = job_settings
        self._base_dir = base_dir
        self._clock = clock
        self._incoming: deque[tuple[float, str, SchedulerEvent]] = deque()
        self._retried: dict[str, tuple[float, datetime | None]] = {}  # run_id -> (seen at, retry at)
        self._deliveries: list[_Delivery] = []
        self._sequence = itertools.count()
        self._condition = threading.Condition()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._jobs_cache: tuple[float, Mapping[str, Mapping[str, Any] | None]] | None = None
        self._dropped = 0
        self._dropped_warned_at = float("-inf")
        self._jobs_warned_at = float("-inf")
        self.sent = 0  # deliveries that succeeded (for tests and status)
        self.failed = 0  # deliveries given up after all retries
        self.host = socket.gethostname()

    @classmethod
    def for_scheduler(cls, scheduler: TaskScheduler) -> Notifier:
        """A notifier reading its settings from ``scheduler``'s config and store."""

        def job_settings() -> dict[str, Mapping[str, Any] | None]:
            return {task_id: spec.get("notify") for task_id, spec in scheduler.store.job_specs().items()}

        notifier = cls(lambda: scheduler.config.notify, job_settings, scheduler.config.base_dir)
        notifier.attach(scheduler)
        return notifier

    def attach(self, scheduler: TaskScheduler) -> None:
        scheduler.add_listener(self.on_event, _MASK | EventType.RETRY)

    # -- the listener (loop or worker thread: quick) -------------------------------
    def on_event(self, event: SchedulerEvent) -> None:
        now = self._clock()
        with self._condition:
            if event.type is EventType.RETRY:
                self._retried[event.run.run_id] = (now, event.retry_at)
                return
            kind = _KIND.get(event.type)
            if kind is None:
                return
            if len(self._incoming) + len(self._deliveries) >= self._settings().queue_size:
                self._dropped += 1
            else:
                self._incoming.append((now, kind, event))
                self._condition.notify()
        self._warn_dropped(now)

    def _warn_dropped(self, now: float) -> None:
        if self._dropped and now - self._dropped_warned_at >= 60:
            self._dropped_warned_at = now
            count, self._dropped = self._dropped, 0
            logger.warning("notification queue full: %d notice(s) dropped", count)

    # -- the sender thread -------------------------------------------------------------
    def start(self) -> None:
        if self._thread is None:
            self._refresh_jobs()  # while the store is open: shutdown notices need them too
            self._thread = threading.Thread(target=self._run, name="task-scheduler-notify", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Deliver what is due within ``timeout`` seconds, then stop (pending retries
        are dropped with a warning)."""
        with self._condition:
            self._stopping = True
            self._condition.notify()
        if self._thread is not None:
            self._thread.join(timeout)
        left = len(self._incoming) + len(self._deliveries)
        if left:
            logger.warning("stopping with %d notification(s) not delivered", left)

    def _run(self) -> None:
        while True:
            with self._condition:
                if self._stopping:
                    # Held notices go out now (first attempts only); retries waiting for later do not.
                    if not self._incoming:
                        return
                    ready = self._take_ready(self._clock(), force=True)
                else:
                    wait = self._next_wait()
                    if wait is None or wait > 0:
                        self._condition.wait(wait)
                        continue
                    ready = self._take_ready(self._clock(), force=False)
            for item in ready:
                self._handle(item)

    def _next_wait(self) -> float | None:
        now = self._clock()
        times = [d.due for d in self._deliveries[:1]]
        if self._incoming:
            times.append(self._incoming[0][0] + HOLD_SECONDS)
        return max(0.0, min(times) - now) if times else None

    def _take_ready(self, now: float, force: bool) -> list[tuple[str, SchedulerEvent] | _Delivery]:
        ready: list[tuple[str, SchedulerEvent] | _Delivery] = []
        while self._incoming and (force or self._incoming[0][0] + HOLD_SECONDS <= now):
            _, kind, event = self._incoming.popleft()
            retried = self._retried.pop(event.run.run_id, None)
            if retried is not None:
                kind, event = "retrying", replace(event, retry_at=retried[1])
            ready.append((kind, event))
        # RETRY marks whose failure was not queued (dropped, or not notified) must not pile up.
        stale = [run_id for run_id, (seen, _) in self._retried.items() if now - seen > 60]
        for run_id in stale:
            del self._retried[run_id]
        if not force:
            while self._deliveries and self._deliveries[0].due <= now:
                ready.append(heapq.heappop(self._deliveries))
        return ready

    def _handle(self, item: tuple[str, SchedulerEvent] | _Delivery) -> None:
        try:
            if isinstance(item, _Delivery):
                self._attempt(item)
            else:
                self._queue_deliveries(*item)
        except Exception:
            logger.exception("notification failed unexpectedly")

    def _queue_deliveries(self, kind: str, event: SchedulerEvent) -> None:
        settings = merged(self._settings(), self._job_override(event.task_id))
        if kind not in settings.on or not settings.active:
            return
        body = self.body(kind, event)
        now = self._clock()
        targets = [name for name, given in (("webhook", settings.webhook), ("command", settings.command)) if given]
        for target in targets:
            self._attempt(_Delivery(now, next(self._sequence), target, body, settings))

    def _job_override(self, task_id: str) -> Mapping[str, Any] | None:
        if self._jobs_cache is None or self._clock() - self._jobs_cache[0] > SPECS_TTL:
            self._refresh_jobs()
        return self._jobs_cache[1].get(task_id) if self._jobs_cache else None

    def _refresh_jobs(self) -> None:
        """Re-read the jobs' overrides; when the store cannot be read (down, or closed
        at shutdown while the last notices go out) the last known ones stay in use."""
        now = self._clock()
        try:
            self._jobs_cache = (now, self._job_settings())
        except Exception as exc:  # noqa: BLE001 - any store failure: keep what we know
            self._jobs_cache = (now, self._jobs_cache[1] if self._jobs_cache else {})
            if now - self._jobs_warned_at >= 60:
                self._jobs_warned_at = now
                logger.warning("cannot read the jobs' notify settings (%s); using the last known ones", exc)

    def body(self, kind: str, event: SchedulerEvent) -> dict[str, Any]:
        run = event.run.to_dict()
        output = run.pop("output") or ""
        return {
            "event": kind,
            "task_id": event.task_id,
            "run_id": run["run_id"],
            "state": run["state"],
            "attempt": run["attempt"],
            "scheduled_for": run["scheduled_for"],
            "started_at": run["started_at"],
            "finished_at": run["finished_at"],
            "duration": run["duration"],
            "exit_code": run["exit_code"],
            "error": redact_text(run["error"] or "") or None,
            "output_tail": redact_text(output[-OUTPUT_TAIL:]) or None,
            "retry_at": event.retry_at.isoformat() if event.retry_at else None,
            "node": run["node"],
            "host": self.host,
            "time": datetime.now(UTC).isoformat(),
        }

    def _attempt(self, delivery: _Delivery) -> None:
        settings = delivery.settings
        try:
            if delivery.target == "webhook":
                assert settings.webhook is not None
                self._post(settings.webhook, settings.headers, delivery.body, settings.timeout)
            else:
                assert settings.command is not None
                self._command(settings.command, delivery.body, settings.timeout)
        except Exception as exc:  # noqa: BLE001 - any failure is one failed attempt
            where = self._describe(delivery)
            reason = redact_text(str(exc))
            if delivery.attempt <= settings.retries:
                delay = settings.retry_delay * 2 ** (delivery.attempt - 1)
                logger.debug("notification to %s failed (%s); retry in %.1fs", where, reason, delay)
                with self._condition:
                    delivery.attempt += 1
                    delivery.due = self._clock() + delay
                    heapq.heappush(self._deliveries, delivery)
                return
            self.failed += 1
            logger.warning(
                "could not notify %s of task %s %s after %d attempt(s): %s",
                where, delivery.body["task_id"], delivery.body["event"], delivery.attempt, reason,
            )  # fmt: skip
            return
        self.sent += 1
        body = delivery.body
        logger.info("notified %s: task %s %s", self._describe(delivery), body["task_id"], body["event"])

    def _describe(self, delivery: _Delivery) -> str:
        if delivery.target == "webhook":
            return f"webhook {mask_url(delivery.settings.webhook or '')}"
        return f"command {(delivery.settings.command or [''])[0]}"

    def _post(self, url: str, headers: Mapping[str, str], body: dict[str, Any], timeout: float) -> None:
        import urllib.error  # imported when needed: urllib.request costs ~60 ms at start-up
        import urllib.request

        from task_scheduler import __version__

        request = urllib.request.Request(
            url,
            data=json.dumps(body).encode(),
            method="POST",
            headers={"Content-Type": "application/json", "User-Agent": f"task_scheduler/{__version__}", **headers},
        )
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                response.read(65536)
        except urllib.error.HTTPError as exc:
            raise RuntimeError(f"HTTP {exc.code} {exc.reason}") from None
        except urllib.error.URLError as exc:
            # The reason may quote the URL; say only why.
            raise RuntimeError(str(getattr(exc, "reason", exc))) from None

    def _command(self, argv: list[str], body: dict[str, Any], timeout: float) -> None:
        program = Path(argv[0])
        if self._base_dir is not None and "/" in argv[0] and not program.is_absolute():
            program = self._base_dir / program
        env = {
            **os.environ,
            "TASK_SCHEDULER_NOTIFY_EVENT": body["event"],
            "TASK_SCHEDULER_TASK_ID": body["task_id"],
            "TASK_SCHEDULER_RUN_ID": body["run_id"],
        }
        try:
            result = subprocess.run(
                [str(program) if "/" in argv[0] else argv[0], *argv[1:]],
                input=json.dumps(body).encode(), capture_output=True, timeout=timeout, env=env, check=False,
                cwd=self._base_dir,
            )  # fmt: skip
        except subprocess.TimeoutExpired:
            raise RuntimeError(f"timed out after {timeout}s") from None
        if result.returncode != 0:
            tail = result.stderr.decode(errors="replace").strip().splitlines()[-1:] or [""]
            raise RuntimeError(f"exit code {result.returncode}" + (f": {tail[0][:200]}" if tail[0] else ""))
