"""The exception tree: one root, narrow subclasses whose messages name the culprit."""

from __future__ import annotations


class TaskSchedulerError(Exception):
    """Root of every error this package raises on purpose."""


class ScheduleError(TaskSchedulerError, ValueError):
    """A schedule rule is invalid; the message names the field and the value."""


class TaskError(TaskSchedulerError, ValueError):
    """A task definition is invalid or refers to something missing (names the task id)."""


class TaskNotFoundError(TaskSchedulerError, KeyError):
    """No task with the given id is registered."""

    def __init__(self, task_id: str) -> None:
        super().__init__(task_id)
        self.task_id = task_id

    def __str__(self) -> str:
        return f"no task with id {self.task_id!r}"


class ConfigError(TaskSchedulerError, ValueError):
    """The configuration is invalid: names the file, the key path and the problem."""

    def __init__(self, problem: str, *, source: str | None = None, key: str | None = None) -> None:
        self.source = source
        self.key = key
        self.problem = problem
        where = ": ".join(part for part in (source, key) if part)
        super().__init__(f"{where}: {problem}" if where else problem)


class StoreError(TaskSchedulerError):
    """The state store cannot be opened or used."""


class StoreUnavailableError(StoreError):
    """The store cannot be used right now but is not damaged (a lock held too long,
    a database server down): waiting or restarting can fix it."""
