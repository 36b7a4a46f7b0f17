"""Logging setup: console plus a rotating file, plain text or JSON, with the run's
``task_id`` and ``run_id`` on every record logged while a run executes, and the
values of secret-looking keys masked (see `task_scheduler.redact`).

Plain lines look like
``2024-01-01 12:00:00 - task_scheduler.execution - INFO - execute_attempt:88 - message``.
A log file that cannot be written (directory missing and not creatable, read-only,
disk full) never stops scheduling: the failure is reported once on stderr and the
file handler stays quiet until it can write again.

When stderr is the journal (under systemd, see `task_scheduler.systemd`), console
lines carry no timestamp (the journal adds its own) and start with the syslog
priority (``<3>`` error ... ``<7>`` debug), on every line of a multi-line message.
When stderr is the log file itself (daemon mode: ``task-scheduler run --daemon``),
there is no console handler, so no line is written twice; daemon mode also points
stdout/stderr at the new file after each rotation (`ResilientFileHandler.stdio_follows`).
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import logging.handlers
import os
import sys
from pathlib import Path
from typing import Any

from task_scheduler.config import SchedulerConfig, parse_size
from task_scheduler.redact import redact_text

__all__ = ["configure_logging", "enter_run", "leave_run"]

PLAIN_FORMAT = "%(asctime)s - %(name)s - %(levelname)s - %(funcName)s:%(lineno)d - %(message)s"
JOURNAL_FORMAT = "%(name)s - %(levelname)s - %(funcName)s:%(lineno)d - %(message)s"
_PRIORITY = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3, logging.CRITICAL: 2}
DATE_FORMAT = "%Y-%m-%d %H:%M:%S"
JSON_FIELDS = "%(asctime)s %(name)s %(levelname)s %(funcName)s %(lineno)d %(message)s"

_run: contextvars.ContextVar[tuple[str, str] | None] = contextvars.ContextVar("task_scheduler_run", default=None)
_OWNED = "_task_scheduler_handler"


def enter_run(task_id: str, run_id: str) -> contextvars.Token[tuple[str, str] | None]:
    """Tag every record logged from here on (in this thread) with the run, until
    `leave_run` with the returned token (a plain call: this is the per-run hot path)."""
    return _run.set((task_id, run_id))


def leave_run(token: contextvars.Token[tuple[str, str] | None]) -> None:
    _run.reset(token)


class RunContextFilter(logging.Filter):
    """Adds ``task_id`` and ``run_id`` (None outside a run) to each record."""

    def filter(self, record: logging.LogRecord) -> bool:
        current = _run.get()
        if not hasattr(record, "task_id"):
            record.task_id = current[0] if current else None
        if not hasattr(record, "run_id"):
            record.run_id = current[1] if current else None
        return True


class PlainFormatter(logging.Formatter):
    """The plain line format, with ``[task_id run_id]`` appended inside a run."""

    def __init__(self, fmt: str = PLAIN_FORMAT) -> None:
        super().__init__(fmt, DATE_FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        task_id = getattr(record, "task_id", None)
        if task_id:
            line += f" [task={task_id} run={getattr(record, 'run_id', None)}]"
        return redact_text(line)


class JournalFormatter(logging.Formatter):
    """Lines for the journal: ``<priority>`` on each line, no timestamp of our own."""

    def __init__(self, inner: logging.Formatter) -> None:
        super().__init__()
        self.inner = inner

    def format(self, record: logging.LogRecord) -> str:
        prefix = f"<{_PRIORITY.get(record.levelno, 6 if record.levelno < logging.WARNING else 3)}>"
        return "\n".join(prefix + line for line in self.inner.format(record).split("\n"))


def _json_formatter(fields: str, rename: dict[str, str], datefmt: str) -> logging.Formatter:
    """python-json-logger's formatter, with secret values masked in the output
    (imported only when JSON logs are configured)."""
    from pythonjsonlogger.json import JsonFormatter

    class RedactingJsonFormatter(JsonFormatter):
        def format(self, record: logging.LogRecord) -> str:
            return redact_text(super().format(record))

    return RedactingJsonFormatter(fields, rename_fields=rename, datefmt=datefmt)


class ResilientFileHandler(logging.handlers.RotatingFileHandler):
    """A rotating file handler that reports a write failure once, then stays quiet
    (retrying at most every 30 s) instead of printing a traceback per record."""

    # Daemon mode sets it: stdout/stderr (fds 1 and 2) are the log file and follow it
    # to the new file at each rotation, so stray output never lands in a rotated file.
    stdio_follows = False

    def __init__(self, path: Path, max_bytes: int, backup_count: int) -> None:
        self._failed_since: float | None = None
        path.parent.mkdir(parents=True, exist_ok=True)
        super().__init__(path, maxBytes=max_bytes, backupCount=backup_count, encoding="utf-8", delay=True)

    def emit(self, record: logging.LogRecord) -> None:
        if self._failed_since is not None and record.created - self._failed_since < 30:
            return
        try:
            rolled = self.shouldRollover(record)
            if rolled:
                self.doRollover()
            logging.FileHandler.emit(self, record)
            if self.stream is not None:
                self.stream.flush()
                if rolled and self.stdio_follows:
                    for fd in (1, 2):
                        os.dup2(self.stream.fileno(), fd)
        except Exception as exc:  # noqa: BLE001 - logging must never stop the service
            if self._failed_since is None:
                sys.stderr.write(f"task_scheduler: cannot write log file {self.baseFilename}: {exc}\n")
            self._failed_since = record.created
            self._drop_stream()
        else:
            if self._failed_since is not None:
                sys.stderr.write(f"task_scheduler: log file {self.baseFilename} is writable again\n")
            self._failed_since = None

    def _drop_stream(self) -> None:
        """Forget the broken stream; closing it may fail again (it flushes), quietly."""
        stream, self.stream = self.stream, None
        if stream is not None:
            with contextlib.suppress(OSError):
                stream.close()

    def close(self) -> None:
        with contextlib.suppress(OSError):  # a full disk must not break shutdown either
            super().close()

    def handleError(self, record: logging.LogRecord) -> None:  # noqa: N802 - logging API
        raise  # let emit() above decide


def configure_logging(config: SchedulerConfig) -> Path | None:
    """Install this package's handlers on the root logger (replacing ones installed
    before by this function); returns the log file path, if any."""
    settings = config.logging
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, _OWNED, False):
            root.removeHandler(handler)
            handler.close()
    root.setLevel(config.scheduler.log_level.upper())
    formatter: logging.Formatter = _formatter(settings.format)
    handlers: list[logging.Handler] = []
    log_path = None
    if settings.log_file:
        log_path = config.path(settings.log_dir) / settings.log_file
        try:
            handlers.append(ResilientFileHandler(log_path, parse_size(settings.max_log_size), settings.backup_count))
        except OSError as exc:
            sys.stderr.write(f"task_scheduler: cannot create log directory {log_path.parent}: {exc}\n")
            log_path = None
    console: logging.Handler | None = None
    if settings.console and not (log_path is not None and _stderr_is(log_path)):
        console = logging.StreamHandler(sys.stderr)
        handlers.append(console)
    from task_scheduler.systemd import stderr_is_journal

    journal = console is not None and stderr_is_journal()
    for handler in handlers:
        if handler is console and journal:
            inner = PlainFormatter(JOURNAL_FORMAT) if settings.format == "text" else formatter
            handler.setFormatter(JournalFormatter(inner))
        else:
            handler.setFormatter(formatter)
        handler.addFilter(RunContextFilter())
        setattr(handler, _OWNED, True)
        root.addHandler(handler)
    return log_path


def _stderr_is(path: Path) -> bool:
    """Whether stderr is already writing to ``path`` (daemon mode, or ``2>>file``)."""
    try:
        ours, theirs = os.fstat(2), os.stat(path)
    except OSError:
        return False
    return (ours.st_dev, ours.st_ino) == (theirs.st_dev, theirs.st_ino)


def _formatter(kind: str) -> logging.Formatter:
    if kind == "json":
        fields: dict[str, Any] = {"levelname": "level", "asctime": "time", "name": "logger"}
        return _json_formatter(JSON_FIELDS, fields, "%Y-%m-%dT%H:%M:%S%z")
    return PlainFormatter()
