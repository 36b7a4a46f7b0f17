"""A task's run settings, one shared object for all tasks that set the same ones.

Most tasks leave every setting at its default, and many set the same few; fifteen
slots on every task cost 120 B of each of 100,000 tasks. `BaseTask` keeps one
reference to a `TaskSettings` instead, shared through a bounded table, and reads
and writes its settings as attributes (``task.timeout = 30`` still works: it
swaps the task's settings object for the one with that change).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any, Generic, TypeVar, overload

from task_scheduler.stores.base import ConcurrencyPolicy

if TYPE_CHECKING:
    from task_scheduler.tasks import Backoff, BaseTask

__all__ = ["Setting", "TaskSettings", "check_class", "settings_of", "shared_settings"]

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class TaskSettings:
    """A task's settings as given (None: the config's ``tasks`` default decides)."""

    description: str = ""
    timeout: float | None = None
    max_retries: int | None = None
    retry_delay: float | None = None
    retry_backoff: Backoff | None = None
    max_retry_delay: float | None = None
    max_instances: int = 1
    concurrency_policy: ConcurrencyPolicy = ConcurrencyPolicy.FORBID
    misfire_grace_time: float | None = None
    coalesce: bool | None = None
    catch_up: bool | None = None
    max_runs: int | None = None
    recover: bool = False
    tags: tuple[str, ...] = ()
    enabled: bool = True


_FIELDS = tuple(f.name for f in fields(TaskSettings))
_DEFAULT = TaskSettings()
_DEFAULT_VALUES = tuple(getattr(_DEFAULT, name) for name in _FIELDS)
_SHARED: dict[tuple[Any, ...], TaskSettings] = {}  # values -> the one object (bounded)
_WRITES = threading.Lock()  # two threads setting two settings of one task keep both


def settings_of(task: BaseTask) -> TaskSettings:
    """``task``'s settings object (registering reads them all at once)."""
    return task._settings


def shared_settings(*values: Any) -> TaskSettings:
    """The settings with these field values (in field order), shared when seen before."""
    if values == _DEFAULT_VALUES:  # most tasks (a tuple compare: no hashing of enum members)
        return _DEFAULT
    try:
        settings = _SHARED.get(values)
    except TypeError:  # an unhashable value (a list set as tags): this task's own
        return TaskSettings(*values)
    if settings is None:
        settings = TaskSettings(*values)
        if len(_SHARED) < 4096:
            _SHARED[values] = settings
    return settings


def check_class(cls: type) -> None:
    """Refuse a `BaseTask` subclass that defines a setting's name itself (a class
    attribute ``timeout = 30``, a property, a slot): the scheduler reads the settings
    object, so such an attribute would change what the task reports, not what it does."""
    for name in _FIELDS:
        if name in cls.__dict__ and not isinstance(cls.__dict__[name], Setting):
            raise TypeError(
                f"{cls.__qualname__}.{name}: a task setting is not a class attribute; pass it to "
                f"BaseTask.__init__ (super().__init__(task_id, {name}=...)) or set it on the task"
            )


class Setting(Generic[T]):
    """A `BaseTask` attribute kept in its shared `TaskSettings`."""

    __slots__ = ("name",)

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    @overload
    def __get__(self, task: None, owner: type | None = None) -> Setting[T]: ...
    @overload
    def __get__(self, task: BaseTask, owner: type | None = None) -> T: ...
    def __get__(self, task: BaseTask | None, owner: type | None = None) -> Setting[T] | T:
        if task is None:
            return self
        value: T = getattr(task._settings, self.name)
        return value

    def __set__(self, task: BaseTask, value: T) -> None:
        with _WRITES:
            settings = getattr(task, "_settings", _DEFAULT)  # (a subclass may set one before BaseTask.__init__)
            values = (value if name == self.name else getattr(settings, name) for name in _FIELDS)
            task._settings = shared_settings(*values)
