"""A job defined by data: one shape wherever it comes from.

A config file's ``jobs`` entry, a persistent job added through the API or the CLI
(``task-scheduler add``, ``--from-json``), and a handler task are the same thing: a
`JobSpec`. This module validates one (errors name the key: ``jobs[2] (id 'x').
function: cannot import 'mytasks:hello' ...``), turns it into a task and its rule
(`JobSpec.build`), and turns a task made in code back into one where that is
possible (`spec_of`). A stored spec is JSON with a ``version`` field (`to_dict`), so
a later release can migrate it; nothing is ever pickled.

Job types (``type``; when it is left out it is inferred from the one field that
names what runs, and ``validate`` says so):

- ``script``: ``script_path`` (inside ``allowed_script_dirs``), ``args``,
  ``working_dir``, ``env``, ``inherit_env``;
- ``function``: ``function`` (``"package.module:callable"``), ``args``, ``kwargs``;
- ``class``: ``class`` (``"package.module:BaseTaskSubclass"``), constructed as
  ``cls(id, name, **params, **options)`` where options are the job options given;
- ``builtin``: ``builtin`` (see `task_scheduler.builtin`) and ``params``;
- ``handler``: ``handler`` (a task type registered with
  `task_scheduler.handlers.register_handler`), called as ``handler(params)``.

User modules are imported with the config's ``base_dir`` and its
``scheduler.python_path`` entries on ``sys.path`` (appended: installed packages and
the standard library win a name clash), so ``task-scheduler``, ``python -m
task_scheduler`` and the systemd unit resolve them alike, from any directory.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import json
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from task_scheduler.errors import ConfigError, TaskError, TaskSchedulerError
from task_scheduler.notify import job_notify
from task_scheduler.schedules import ScheduleRule
from task_scheduler.tasks import BaseTask, FunctionTask, ScriptTask, TaskContext
from task_scheduler.validation import build as build_dataclass
from task_scheduler.validation import check

if TYPE_CHECKING:
    from task_scheduler.config import SchedulerConfig
    from task_scheduler.stores import Store
    from task_scheduler.stores.base import TaskState

__all__ = [
    "JOB_TYPES",
    "SPEC_VERSION",
    "HandlerTask",
    "JobSpec",
    "UnresolvedTask",
    "load_specs",
    "resolve_reference",
    "spec_of",
    "store_jobs",
    "unstore_job",
]

SPEC_VERSION = 1
# Each type and the field that names what runs (used to infer a missing type).
JOB_TYPES = {"script": "script_path", "function": "function", "class": "class_ref", "builtin": "builtin",
             "handler": "handler"}  # fmt: skip
# Fields that only mean something for some types: a job of another type that sets one is an error.
_ONLY_FOR = {
    "script_path": ("script",), "working_dir": ("script",), "env": ("script",), "inherit_env": ("script",),
    "function": ("function",), "kwargs": ("function",), "args": ("script", "function"),
    "class_ref": ("class",), "builtin": ("builtin",), "handler": ("handler",),
    "params": ("class", "builtin", "handler"),
}  # fmt: skip
_OPTIONS = ("timeout", "max_retries", "retry_delay", "retry_backoff", "max_retry_delay", "max_instances",
            "concurrency_policy", "misfire_grace_time", "coalesce", "catch_up", "max_runs", "recover",
            "tags")  # fmt: skip


@dataclass
class JobSpec:
    """One job as data (the keys of a config ``jobs`` entry; see the module doc)."""

    id: str
    schedule: dict[str, Any]
    type: str | None = None  # inferred from script_path / function / class / builtin / handler when left out
    name: str | None = None
    description: str = ""
    enabled: bool = True
    script_path: str | None = None
    args: list[Any] = field(default_factory=list)
    working_dir: str | None = None
    env: dict[str, str] = field(default_factory=dict)
    inherit_env: bool | list[str] = True
    function: str | None = None  # "package.module:callable"
    kwargs: dict[str, Any] = field(default_factory=dict)
    class_ref: str | None = field(default=None, metadata={"key": "class"})  # "package.module:Class"
    builtin: str | None = None
    handler: str | None = None
    params: dict[str, Any] = field(default_factory=dict)
    timeout: float | None = None
    max_retries: int | None = None
    retry_delay: float | None = None
    retry_backoff: str | None = None
    max_retry_delay: float | None = None
    max_instances: int = 1
    concurrency_policy: str = "forbid"
    misfire_grace_time: float | None = None
    coalesce: bool | None = None
    catch_up: bool | None = None
    max_runs: int | None = None
    recover: bool = False
    tags: list[str] = field(default_factory=list)
    notify: dict[str, Any] | None = None  # failure notifications: overrides the config's notify section
    version: int = SPEC_VERSION

    @staticmethod
    def item_key(index: int, data: Any) -> str:
        """How errors name a job in a list: ``[2] (id 'backup')``."""
        job_id = data.get("id") if isinstance(data, dict) else None
        return f"[{index}]" + (f" (id {job_id!r})" if isinstance(job_id, str) else "")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str = "job", source: str | None = None) -> JobSpec:
        """Parse and check a spec; ``where`` names it in errors (``jobs[2] (id 'x')``)."""
        data = dict(data)
        version = data.get("version", SPEC_VERSION)
        check(isinstance(version, int) and version <= SPEC_VERSION,
              f"job definition version {version!r} is newer than this task_scheduler understands "
              f"({SPEC_VERSION}); upgrade task_scheduler", source=source, key=f"{where}.version")  # fmt: skip
        spec: JobSpec = build_dataclass(cls, data, where, source)
        spec.check(where, source)
        return spec

    @classmethod
    def from_stored(cls, data: Mapping[str, Any]) -> JobSpec:
        """A spec the store holds: it was checked when it was stored and written by
        `to_dict`, so it is read without checking it again (restoring 10,000 jobs is
        a start-up cost). Anything unexpected falls back to the full check."""
        fields = {_FIELD_NAMES.get(key, key): value for key, value in data.items()}
        if fields.get("version") == SPEC_VERSION and fields.keys() <= _STORED_FIELDS:
            try:
                return cls(**fields)
            except TypeError:
                pass
        return cls.from_dict(data, f"stored job {data.get('id')!r}")

    @property
    def kind(self) -> str:
        """The job type, given or inferred."""
        if self.type is not None:
            return self.type
        given = [kind for kind, name in JOB_TYPES.items() if getattr(self, name)]
        return given[0] if len(given) == 1 else ""

    def check(self, where: str = "job", source: str | None = None) -> None:
        """The checks that need no import: id, type, fields that fit the type,
        option values. Raises ConfigError naming the key."""
        check(bool(self.id.strip()), "must not be empty", source=source, key=f"{where}.id")
        check(self.type is None or self.type in JOB_TYPES, f"must be one of {', '.join(JOB_TYPES)}",
              source=source, key=f"{where}.type")  # fmt: skip
        kind = self.kind
        check(bool(kind), f"cannot tell what runs: set 'type' to one of {', '.join(JOB_TYPES)} and its field "
              "(script_path, function, class, builtin or handler)", source=source, key=f"{where}.type")  # fmt: skip
        needed = JOB_TYPES[kind]
        check(bool(getattr(self, needed)), f"is required for a {kind} job", source=source,
              key=f"{where}.{_public(needed)}")  # fmt: skip
        defaults = _defaults()
        for name, kinds in _ONLY_FOR.items():
            if kind not in kinds and getattr(self, name) != defaults[name]:
                check(False, f"does not apply to a {kind} job", source=source, key=f"{where}.{_public(name)}")
        if kind == "script":
            check(all(isinstance(a, (str, int, float)) for a in self.args), "script arguments must be strings",
                  source=source, key=f"{where}.args")  # fmt: skip
        for name in ("args", "kwargs", "params"):
            try:
                json.dumps(getattr(self, name))
            except (TypeError, ValueError) as exc:
                check(False, f"must be JSON data: {exc}", source=source, key=f"{where}.{name}")
        check(self.retry_backoff in (None, "fixed", "exponential"), "must be fixed or exponential",
              source=source, key=f"{where}.retry_backoff")  # fmt: skip
        check(self.concurrency_policy in ("forbid", "allow", "replace"), "must be forbid, allow or replace",
              source=source, key=f"{where}.concurrency_policy")  # fmt: skip
        try:
            ScheduleRule.from_dict(self.schedule)
        except TaskSchedulerError as exc:
            raise ConfigError(str(exc), source=source, key=f"{where}.schedule") from exc
        if self.notify is not None:
            job_notify(self.notify, f"{where}.notify", source)

    def to_dict(self) -> dict[str, Any]:
        """The spec as JSON data: what differs from the defaults, the type, the version."""
        data: dict[str, Any] = {"version": SPEC_VERSION, "id": self.id, "type": self.kind, "schedule": self.schedule}
        for name, default in _defaults().items():
            value = getattr(self, name)
            if name not in ("id", "type", "schedule", "version") and value != default:
                data[_public(name)] = value
        return data

    def options(self) -> dict[str, Any]:
        """The task options this job sets (left-out ones take the config's defaults)."""
        options = {name: getattr(self, name) for name in _OPTIONS}
        options["tags"] = list(self.tags)
        return options

    # -- data -> task ---------------------------------------------------------------
    def build(
        self, config: SchedulerConfig, where: str = "job", source: str | None = None
    ) -> tuple[BaseTask, ScheduleRule]:
        """The task and rule this job describes. Imports user code (function, class)
        and checks the script; raises ConfigError naming the key."""
        rule = ScheduleRule.from_dict(self.schedule)
        options = {**self.options(), "description": self.description, "enabled": self.enabled}
        kind = self.kind
        try:
            if kind == "script":
                task: BaseTask = ScriptTask(
                    self.id, self.name, self.script_path or "", args=[str(a) for a in self.args],
                    working_dir=self.working_dir, env=self.env, inherit_env=self.inherit_env,
                    kill_grace=config.tasks.kill_grace, output_limit=config.tasks.output_limit,
                    **{**options, "timeout": _first(self.timeout, config.tasks.default_timeout)},
                )  # fmt: skip
                assert isinstance(task, ScriptTask)
                task.bind(config.base_dir, config.data_dir, config.allowed_script_dirs, config.tasks.secret_env)
            elif kind == "function":
                func = resolve_reference(self.function or "", config, f"{where}.function", source)
                task = FunctionTask(self.id, self.name, func, args=self.args, kwargs=self.kwargs, **options)
            elif kind == "class":
                task = self._build_class(config, options, where, source)
            elif kind == "builtin":
                task = self._build_builtin(config, options, where, source)
            else:
                task = HandlerTask(self.id, self.name, handler=self.handler or "", params=self.params, **options)
        except ConfigError:
            raise
        except TaskSchedulerError as exc:
            raise ConfigError(str(exc), source=source, key=where) from exc
        return task, rule

    def _build_class(
        self, config: SchedulerConfig, options: dict[str, Any], where: str, source: str | None
    ) -> BaseTask:
        cls = resolve_reference(self.class_ref or "", config, f"{where}.class", source)
        check(isinstance(cls, type) and issubclass(cls, BaseTask), f"{self.class_ref!r} is not a BaseTask subclass",
              source=source, key=f"{where}.class")  # fmt: skip
        given = {name: value for name, value in options.items() if value != _DEFAULT_OPTIONS.get(name)}
        try:
            task = cls(self.id, self.name, **self.params, **given)
        except TypeError as exc:
            raise ConfigError(f"bad params for {self.class_ref}: {exc}", source=source, key=f"{where}.params") from exc
        return task  # type: ignore[no-any-return]

    def _build_builtin(
        self, config: SchedulerConfig, options: dict[str, Any], where: str, source: str | None
    ) -> BaseTask:
        from task_scheduler.builtin import BUILTINS

        name = self.builtin or ""
        check(name in BUILTINS, f"unknown builtin {name!r} (known: {', '.join(sorted(BUILTINS))})", source=source,
              key=f"{where}.builtin")  # fmt: skip
        options["timeout"] = _first(self.timeout, config.tasks.default_timeout)
        try:
            return BUILTINS[name](self.id, self.name, config=config, **self.params, **options)
        except TypeError as exc:
            raise ConfigError(f"bad params for builtin {name!r}: {exc}", source=source, key=f"{where}.params") from exc


_FIELD_NAMES = {"class": "class_ref"}  # JSON key -> field, where they differ
_STORED_FIELDS = frozenset(f.name for f in dataclasses.fields(JobSpec))
_DEFAULT_OPTIONS: dict[str, Any] = {
    **{name: None for name in _OPTIONS}, "max_instances": 1, "concurrency_policy": "forbid", "recover": False,
    "tags": [], "description": "", "enabled": True,
}  # fmt: skip


def resolve_reference(reference: str, config: SchedulerConfig | None, key: str, source: str | None) -> Any:
    """Import ``"package.module:attribute"`` (dots after the colon walk attributes),
    with the config's ``base_dir`` and ``python_path`` importable."""
    module_name, colon, attribute = reference.partition(":")
    if not colon or not module_name or not attribute:
        raise ConfigError(f"expected 'package.module:callable', got {reference!r}", source=source, key=key)
    if config is not None:
        _importable(config.source, config.scheduler.base_dir, tuple(config.scheduler.python_path), config)
    try:
        target: Any = importlib.import_module(module_name)
        for part in attribute.split("."):
            target = getattr(target, part)
    except Exception as exc:
        raise ConfigError(f"cannot import {reference!r}: {type(exc).__name__}: {exc}", source=source, key=key) from exc
    return target


_IMPORT_PATHS_ADDED: set[tuple[Any, ...]] = set()


def _importable(
    source: str | None, base_dir: str | None, python_path: tuple[str, ...], config: SchedulerConfig
) -> None:
    """Put the config's base_dir and python_path on sys.path, once per config."""
    key = (source, base_dir, python_path)
    if key in _IMPORT_PATHS_ADDED:
        return
    for path in (config.base_dir, *(config.path(p) for p in python_path)):
        if str(path) not in sys.path:
            sys.path.append(str(path))
    _IMPORT_PATHS_ADDED.add(key)


# -- task -> data -------------------------------------------------------------------


def spec_of(task: BaseTask, rule: ScheduleRule) -> JobSpec:
    """The spec of a task made in code, for storing it; raises TaskError saying why a
    task cannot be stored (a lambda, a closure, a bound method, an object of a
    BaseTask subclass) and what to do instead."""
    options = {name: getattr(task, name) for name in _OPTIONS}
    options["retry_backoff"] = task.retry_backoff.value if task.retry_backoff else None
    options["concurrency_policy"] = task.concurrency_policy.value
    options["tags"] = list(task.tags)
    common = {"id": task.task_id, "schedule": rule.to_dict(), "name": task.name if task.name != task.task_id else None,
              "description": task.description, "enabled": task.enabled, **options}  # fmt: skip
    if type(task) is ScriptTask:
        return JobSpec(type="script", script_path=str(task.script_path), args=list(task.args),
                       working_dir=None if task.working_dir is None else str(task.working_dir), env=dict(task.env),
                       inherit_env=task.inherit_env if isinstance(task.inherit_env, bool) else list(task.inherit_env),
                       **common)  # fmt: skip
    if type(task) is HandlerTask:
        return JobSpec(type="handler", handler=task.handler, params=dict(task.params), **common)
    if type(task) is FunctionTask:
        spec = JobSpec(type="function", function=function_reference(task.task_id, task.func), args=list(task.args),
                       kwargs=dict(task.kwargs), **common)  # fmt: skip
        try:
            json.dumps([spec.args, spec.kwargs])
        except (TypeError, ValueError) as exc:
            raise TaskError(
                f"task {task.task_id!r} cannot be persistent: its args/kwargs are not JSON data ({exc})"
            ) from exc
        return spec
    raise TaskError(
        f"task {task.task_id!r} cannot be persistent: a {type(task).__name__} object cannot be stored as data. Add "
        f"it by reference instead: scheduler.add_job({{'id': {task.task_id!r}, 'type': 'class', 'class': "
        f"'{type(task).__module__}:{type(task).__qualname__}', 'params': {{...}}, 'schedule': {{...}}}})"
    )


def function_reference(task_id: str, func: Callable[..., Any]) -> str:
    """``"module:qualname"`` of a module-level function that imports back to itself."""
    qualname = getattr(func, "__qualname__", "")
    module = getattr(func, "__module__", None)
    why = None
    if inspect.ismethod(func):
        why = "it is a bound method (the object it is bound to cannot be stored)"
    elif qualname == "<lambda>" or "<lambda>" in qualname:
        why = "it is a lambda"
    elif "<locals>" in qualname:
        why = "it is defined inside another function (a closure)"
    elif not module or module == "__main__":
        why = "it is defined in the script being run (__main__), which another process cannot import"
    if why is None:
        reference = f"{module}:{qualname}"
        try:
            if resolve_reference(reference, None, "function", None) is func:
                return reference
        except ConfigError:
            pass
        why = f"{reference} does not import back to it"
    raise TaskError(
        f"task {task_id!r} cannot be persistent: {why}. A persistent job is stored as data and rebuilt by later "
        "processes: use a module-level function (importable as 'package.module:function') with JSON args."
    )


# -- tasks that only data can make ----------------------------------------------------


class HandlerTask(BaseTask):
    """Runs the handler registered for a task type (``register_handler(type, fn)``)
    as ``fn(params)``, or ``fn(params, context=context)`` if it takes a context. The
    handler is looked up at each run, so a process registers its handlers at import
    and restored jobs find them."""

    __slots__ = ("handler", "params")

    def __init__(self, task_id: str, name: str | None = None, *, handler: str, params: Mapping[str, Any] | None = None,
                 **options: Any) -> None:  # fmt: skip
        super().__init__(task_id, name, **options)
        if not handler:
            raise TaskError(f"task {task_id!r}: handler (a task type) is required")
        self.handler = handler
        self.params = dict(params or {})

    def execute(self, context: TaskContext) -> Any:
        from task_scheduler.handlers import call_handler

        return call_handler(self.handler, self.params, context)

    def options(self) -> dict[str, Any]:
        return {**super().options(), "handler": self.handler}


class UnresolvedTask(BaseTask):
    """A stored job whose code cannot be loaded in this process (its module is gone,
    its script moved). It stays scheduled and each occurrence tries again: while the
    job cannot be built the run FAILS with the reason; once it can, it runs."""

    __slots__ = ("_config", "_resolved", "problem", "spec")

    def __init__(self, spec: JobSpec, problem: str, config: SchedulerConfig) -> None:
        super().__init__(spec.id, spec.name, spec.description, **{**spec.options(), "timeout": spec.timeout})
        self.spec, self.problem, self._config = spec, problem, config
        self._resolved: BaseTask | None = None

    def resolve(self) -> BaseTask | None:
        """The real task, if it can be built now."""
        if self._resolved is None:
            importlib.invalidate_caches()  # a module put back since the last try is found
            try:
                self._resolved, _ = self.spec.build(self._config, where=f"job {self.spec.id!r}")
            except TaskSchedulerError as exc:
                self.problem = str(exc)
        return self._resolved

    def execute(self, context: TaskContext) -> Any:
        task = self.resolve()
        if task is None:
            raise TaskError(f"cannot run: {self.problem}")
        return task.run(context)

    def options(self) -> dict[str, Any]:
        return {**super().options(), "problem": self.problem}


@lru_cache(maxsize=1)
def _defaults() -> dict[str, Any]:
    """Each JobSpec field's default value (read-only: shared between callers)."""
    values: dict[str, Any] = {}
    for f in dataclasses.fields(JobSpec):
        if f.default is not dataclasses.MISSING:
            values[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            values[f.name] = f.default_factory()
        else:
            values[f.name] = None
    return values


def _public(name: str) -> str:
    return "class" if name == "class_ref" else name


def _first(value: Any, default: Any) -> Any:
    return default if value is None else value


def load_specs(path: Path) -> list[dict[str, Any]]:
    """Job specs from a JSON file holding one spec or a list of them (``add --from-json``)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read: {exc.strerror}", source=str(path)) from exc
    except json.JSONDecodeError as exc:
        raise ConfigError(f"invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}", source=str(path)) from exc
    items = data if isinstance(data, list) else [data]
    check(all(isinstance(item, dict) for item in items), "expected a job object or a list of them",
          source=str(path), key="jobs")  # fmt: skip
    return items


# -- persistent jobs written by another process than the scheduler's (the CLI) --------


def store_jobs(
    store: Store,
    config: SchedulerConfig,
    items: list[dict[str, Any]],
    *,
    replace: bool = False,
    source: str | None = None,
) -> Mapping[str, TaskState]:
    """Add persistent jobs to ``store`` (``replace``: change existing ones), as
    ``task-scheduler add`` does; a running scheduler picks them up within its
    ``check_interval``. Every job is built first (its code imported, its script
    checked), so nothing is stored unless all are valid. A config or code task of the
    same id is refused: its definition lives elsewhere."""
    from datetime import UTC, datetime

    from task_scheduler.registry import register
    from task_scheduler.schedules import resolve_timezone
    from task_scheduler.stores.base import Origin

    zone, now = resolve_timezone(config.scheduler.timezone), datetime.now(UTC)
    existing = store.task_states()
    definitions = []
    for index, data in enumerate(items):
        where = f"jobs{JobSpec.item_key(index, data)}" if source else f"job {data.get('id')!r}"
        spec = JobSpec.from_dict(data, where, source)
        state = existing.get(spec.id)
        if state is not None and state.origin is not Origin.PERSISTENT:
            raise TaskError(f"task {spec.id!r} is defined by {state.origin.value}; change it there")
        if state is not None and not replace:
            raise TaskError(f"persistent job {spec.id!r} exists already (replace it with --replace)")
        task, rule = spec.build(config, where, source)
        definitions.append(register(task, rule, config, zone, now, Origin.PERSISTENT, spec.to_dict()))
    ids = [d.task_id for d in definitions]
    if len(set(ids)) != len(ids):
        raise TaskError(f"job id {next(i for i in ids if ids.count(i) > 1)!r} is given twice")
    return store.sync_tasks(definitions)


def unstore_job(store: Store, task_id: str) -> None:
    """Remove a persistent job from ``store`` (its history is kept); a running
    scheduler drops it within its ``check_interval``."""
    from task_scheduler.errors import TaskNotFoundError
    from task_scheduler.stores.base import Origin

    state = store.task_states().get(task_id)
    if state is None:
        raise TaskNotFoundError(task_id)
    if state.origin is not Origin.PERSISTENT:
        raise TaskError(f"task {task_id!r} is defined by {state.origin.value}, not stored as a job: remove it there")
    store.remove_tasks([task_id])
