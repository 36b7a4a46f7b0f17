"""Configuration: dataclasses with defaults for everything, loading, env overrides and
validation whose errors name the file, the key path and the problem.

Loading is all-or-nothing: `load_config` either returns a fully validated config
(jobs included: schedules parsed, scripts found inside ``allowed_script_dirs``) or
raises `ConfigError`; the service never starts half configured.

Files: JSON, TOML (``.toml``, standard library) or YAML (``.yaml``/``.yml``, with
PyYAML: ``pip install 'task_scheduler[yaml]'``); all give the same shape.

Environment overrides: ``TASK_SCHEDULER__SECTION__KEY=value`` (double underscores
between levels, case-insensitive) sets ``section.key``, and deeper names set deeper
keys (``TASK_SCHEDULER__A__B__C`` sets ``a.b.c``); the value is read as JSON when it
parses (``20``, ``true``, ``["a"]``) and as a string otherwise.

Relative paths (``log_dir``, ``data_dir``, ``allowed_script_dirs``, a job's
``script_path`` and ``working_dir``, a SQLite store path) are relative to
``scheduler.base_dir``, which defaults to the directory of the config file.
"""

from __future__ import annotations

import json
import os
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from task_scheduler.errors import ConfigError, TaskSchedulerError
from task_scheduler.jobs import JobSpec
from task_scheduler.notify import NotifyConfig, check_notify
from task_scheduler.redact import redact_text
from task_scheduler.schedules import ScheduleRule, resolve_timezone
from task_scheduler.tasks import Backoff, BaseTask
from task_scheduler.validation import build
from task_scheduler.web import HttpConfig, check_http

__all__ = [
    "HistoryConfig",
    "LoggingConfig",
    "SchedulerConfig",
    "SchedulerSection",
    "StoreConfig",
    "TasksConfig",
    "find_config",
    "load_config",
    "parse_size",
]

ENV_PREFIX = "TASK_SCHEDULER__"
CONFIG_SEARCH_PATH = ("scheduler_config.json", "/etc/task-scheduler/scheduler_config.json")
_LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


@dataclass
class SchedulerSection:
    max_workers: int = 10
    check_interval: float = 1.0  # the loop never sleeps longer than this (seconds)
    timezone: str = "local"  # IANA name, "UTC", or "local" (the system zone)
    misfire_grace_time: float | None = 60.0  # None: run however late
    coalesce: bool = True
    catch_up: bool = False
    shutdown_timeout: float = 30.0
    enable_monitoring: bool = True
    log_level: str = "INFO"
    base_dir: str | None = None  # default: the config file's directory
    data_dir: str = "data"
    node_id: str | None = None  # default: hostname:pid
    python_path: list[str] = field(default_factory=list)  # importable for function/class jobs, besides base_dir
    # At start, move what exists (modules, config, tasks) out of the garbage
    # collector's generations (gc.freeze): full collections then skip it.
    gc_freeze: bool = True
    # At start, lower Python's GIL switch interval to this (seconds; null: leave it):
    # how long a worker computing in Python can keep the loop from firing.
    switch_interval: float | None = 0.001


@dataclass
class StoreConfig:
    url: str | None = None  # None: sqlite://DATA_DIR/state.db; or memory://, sqlite://PATH, postgresql://...
    lease_seconds: float = 30.0  # a run whose node stops renewing this long is INTERRUPTED
    # Seconds the service waits at start for the store: another process's lock on a
    # SQLite file, a PostgreSQL server that does not accept connections yet.
    busy_timeout: float = 60.0
    schema: str = "task_scheduler"  # PostgreSQL: the schema that holds the tables
    clock: str = "database"  # PostgreSQL: due times follow the server's clock ("database") or each node's ("local")


@dataclass
class HistoryConfig:
    max_runs_per_task: int | None = 1000  # final records kept per task; None: all
    max_age_days: float | None = 90.0  # older final records are deleted; None: never


@dataclass
class TasksConfig:
    default_timeout: float | None = 300.0
    max_retries: int = 0
    retry_delay: float = 5.0
    retry_backoff: str = "fixed"  # fixed | exponential
    max_retry_delay: float = 3600.0
    retry_on_timeout: bool = True
    retry_jitter: float = 0.1  # each retry delay is stretched by a random 0-10 %
    allowed_script_dirs: list[str] | None = field(default_factory=lambda: ["scripts"])  # None: any
    output_limit: int = 64 * 1024
    kill_grace: float = 5.0
    # Environment variables whose values are masked in stored script output, besides
    # the names that look secret (password, token, api_key, ...; see redact.py).
    secret_env: list[str] = field(default_factory=list)


@dataclass
class LoggingConfig:
    log_dir: str = "logs"
    log_file: str | None = "scheduler.log"  # None: console only
    max_log_size: str | int = "10MB"
    backup_count: int = 5
    format: str = "text"  # text | json
    console: bool = True


@dataclass
class SchedulerConfig:
    """The whole configuration. ``source`` is the file it came from, if any."""

    scheduler: SchedulerSection = field(default_factory=SchedulerSection)
    store: StoreConfig = field(default_factory=StoreConfig)
    history: HistoryConfig = field(default_factory=HistoryConfig)
    tasks: TasksConfig = field(default_factory=TasksConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    http: HttpConfig = field(default_factory=HttpConfig)  # the HTTP API, metrics, dashboard (web/)
    notify: NotifyConfig = field(default_factory=NotifyConfig)  # default failure notifications (notify.py)
    jobs: list[JobSpec] = field(default_factory=list)
    source: str | None = None

    @property
    def base_dir(self) -> Path:
        if self.scheduler.base_dir:
            base = Path(self.scheduler.base_dir).expanduser()
            if not base.is_absolute() and self.source:
                base = Path(self.source).resolve().parent / base
            return base.resolve()
        return Path(self.source).resolve().parent if self.source else Path.cwd()

    def path(self, value: str | os.PathLike[str]) -> Path:
        """``value`` made absolute against `base_dir`."""
        path = Path(value).expanduser()
        return path if path.is_absolute() else self.base_dir / path

    @property
    def data_dir(self) -> Path:
        return self.path(self.scheduler.data_dir)

    @property
    def allowed_script_dirs(self) -> list[Path] | None:
        dirs = self.tasks.allowed_script_dirs
        return None if dirs is None else [self.path(d) for d in dirs]

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str | None = None) -> SchedulerConfig:
        """Build and validate a config from parsed JSON (no env overrides applied)."""
        config: SchedulerConfig = build(cls, data, "", source)
        config.source = source
        _validate(config)
        return config

    def build_tasks(self) -> list[tuple[BaseTask, ScheduleRule, JobSpec]]:
        """The enabled jobs as (task, rule, spec); imports their code and checks their
        scripts; raises ConfigError naming the job."""
        built = []
        for index, job in enumerate(self.jobs):
            if job.enabled:
                task, rule = job.build(self, f"jobs{JobSpec.item_key(index, {'id': job.id})}", self.source)
                built.append((task, rule, job))
        return built


def find_config(explicit: str | os.PathLike[str] | None = None) -> Path | None:
    """The config file the service and the CLI use: ``explicit``, else
    ``$TASK_SCHEDULER_CONFIG``, else ``./scheduler_config.json``, else
    ``/etc/task-scheduler/scheduler_config.json``; None when none exists.
    ``$TASK_SCHEDULER_ROOT`` moves the system-wide location under another root, as
    ``scripts/install-service.sh --root DIR`` lays an installation out there."""
    if explicit:
        return Path(explicit)
    if os.environ.get("TASK_SCHEDULER_CONFIG"):
        return Path(os.environ["TASK_SCHEDULER_CONFIG"])
    root = os.environ.get("TASK_SCHEDULER_ROOT")
    for candidate in CONFIG_SEARCH_PATH:
        path = Path(candidate)
        if root and path.is_absolute():
            path = Path(root) / path.relative_to("/")
        if path.is_file():
            return path
    return None


def load_config(
    path: str | os.PathLike[str] | None, environ: dict[str, str] | None = None, *, build_jobs: bool = True
) -> SchedulerConfig:
    """Read, override from the environment, validate. ``path`` None gives the defaults.
    ``build_jobs`` also imports the jobs' code and checks their scripts; commands that
    only read the state pass False, so they work without the service's user code."""
    source = str(path) if path is not None else None
    data: dict[str, Any] = {}
    if path is not None:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"cannot read config: {exc.strerror}", source=source) from exc
        data = _parse(text, source or "")
    _apply_env_overrides(data, os.environ if environ is None else environ, source)
    config = SchedulerConfig.from_dict(data, source)
    if build_jobs:
        config.build_tasks()  # proves every job can be built before anything starts
    return config


def _parse(text: str, source: str) -> dict[str, Any]:
    if source.endswith(".toml"):
        import tomllib

        try:
            return tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"invalid TOML: {exc}", source=source) from exc
    if source.endswith((".yaml", ".yml")):
        return _parse_yaml(text, source)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}", source=source) from exc
    if not isinstance(data, dict):
        raise ConfigError("the top level must be a JSON object", source=source)
    return data


def _parse_yaml(text: str, source: str) -> dict[str, Any]:
    try:
        import yaml
    except ImportError as exc:
        raise ConfigError(
            "YAML configs need PyYAML: pip install 'task_scheduler[yaml]' (or use JSON or TOML)", source=source
        ) from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"invalid YAML: {exc}", source=source) from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError("the top level must be a mapping", source=source)
    return data


def _apply_env_overrides(data: dict[str, Any], environ: typing.Mapping[str, str], source: str | None) -> None:
    for name, raw in environ.items():
        if not name.upper().startswith(ENV_PREFIX):
            continue
        keys = [part.lower() for part in name[len(ENV_PREFIX) :].split("__") if part]
        if len(keys) < 2:
            raise ConfigError("expected TASK_SCHEDULER__SECTION__KEY", source=f"environment variable {name}")
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        target = data
        for depth, key in enumerate(keys[:-1]):
            target = target.setdefault(key, {})
            if not isinstance(target, dict):
                raise ConfigError(f"is not an object (set by {name})", source=source, key=".".join(keys[: depth + 1]))
        target[keys[-1]] = value


# -- semantic validation -----------------------------------------------------------


def _validate(config: SchedulerConfig) -> None:
    source = config.source

    def check(ok: bool, key: str, problem: str) -> None:
        if not ok:
            raise ConfigError(problem, source=source, key=key)

    section = config.scheduler
    check(section.max_workers >= 1, "scheduler.max_workers", "must be >= 1")
    check(section.check_interval > 0, "scheduler.check_interval", "must be > 0 seconds")
    check(section.shutdown_timeout >= 0, "scheduler.shutdown_timeout", "must be >= 0 seconds")
    check(
        section.switch_interval is None or 0 < section.switch_interval <= 0.1,
        "scheduler.switch_interval",
        "must be > 0 and <= 0.1 seconds, or null",
    )
    check(
        section.misfire_grace_time is None or section.misfire_grace_time >= 0,
        "scheduler.misfire_grace_time",
        "must be >= 0 seconds or null",
    )
    check(section.log_level.upper() in _LOG_LEVELS, "scheduler.log_level", f"must be one of {', '.join(_LOG_LEVELS)}")
    try:
        resolve_timezone(section.timezone)
    except TaskSchedulerError as exc:
        raise ConfigError(str(exc), source=source, key="scheduler.timezone") from exc
    url = config.store.url
    check(url is None or re.match(r"^(memory://|sqlite://.|postgres(ql)?://)", url) is not None, "store.url",
          f"unsupported store {redact_text(url or '')!r} (use memory://, sqlite://PATH or postgresql://)")  # fmt: skip
    check(re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,62}", config.store.schema) is not None, "store.schema",
          "must be a plain PostgreSQL identifier (letters, digits and _)")  # fmt: skip
    check(config.store.clock in ("database", "local"), "store.clock", "must be 'database' or 'local'")
    check(config.store.lease_seconds >= 1, "store.lease_seconds", "must be >= 1 second")
    check(config.store.busy_timeout > 0, "store.busy_timeout", "must be > 0 seconds")
    history = config.history
    check(history.max_runs_per_task is None or history.max_runs_per_task >= 1, "history.max_runs_per_task",
          "must be >= 1 or null")  # fmt: skip
    check(history.max_age_days is None or history.max_age_days > 0, "history.max_age_days", "must be > 0 or null")
    tasks = config.tasks
    check(tasks.max_retries >= 0, "tasks.max_retries", "must be >= 0")
    check(tasks.retry_delay >= 0, "tasks.retry_delay", "must be >= 0 seconds")
    check(0 <= tasks.retry_jitter <= 1, "tasks.retry_jitter", "must be a fraction between 0 and 1")
    check(tasks.retry_backoff in _enum_values(Backoff), "tasks.retry_backoff", "must be 'fixed' or 'exponential'")
    check(tasks.default_timeout is None or tasks.default_timeout > 0, "tasks.default_timeout", "must be > 0 or null")
    check(tasks.output_limit >= 1024, "tasks.output_limit", "must be at least 1024 bytes")
    logging_config = config.logging
    check(logging_config.format in ("text", "json"), "logging.format", "must be 'text' or 'json'")
    check(logging_config.backup_count >= 0, "logging.backup_count", "must be >= 0")
    try:
        parse_size(logging_config.max_log_size)
    except ValueError as exc:
        raise ConfigError(str(exc), source=source, key="logging.max_log_size") from exc
    check_http(config.http, source)
    check_notify(config.notify, "notify", source)
    seen: set[str] = set()
    for index, job in enumerate(config.jobs):
        key = f"jobs{JobSpec.item_key(index, {'id': job.id})}"
        job.check(key, source)
        check(job.id not in seen, f"{key}.id", f"duplicate job id {job.id!r}")
        seen.add(job.id)


def _enum_values(enum: type[Any]) -> list[str]:
    return [member.value for member in enum]


_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?I?B?)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "B": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}


def parse_size(value: str | int) -> int:
    """Bytes from ``10MB``, ``512KB``, ``1.5G``, ``2048`` (binary units: 1KB = 1024)."""
    if isinstance(value, int) and not isinstance(value, bool):
        if value <= 0:
            raise ValueError(f"size must be positive, got {value}")
        return value
    match = _SIZE.match(str(value))
    if not match:
        raise ValueError(f"not a size: {value!r} (use e.g. '10MB', '512KB' or a number of bytes)")
    number, unit = float(match.group(1)), (match.group(2) or "").upper()
    size = int(number * _UNITS[unit[:1] if unit not in ("", "B") else unit])
    if size <= 0:
        raise ValueError(f"size must be positive, got {value!r}")
    return size
