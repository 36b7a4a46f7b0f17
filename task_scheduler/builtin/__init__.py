"""Predefined jobs that config files can name with ``"type": "builtin"``."""

from __future__ import annotations

from collections.abc import Callable

from task_scheduler.builtin.log_cleanup import LogCleanupTask
from task_scheduler.tasks import BaseTask

__all__ = ["BUILTINS", "LogCleanupTask"]

# Each is called as cls(task_id, name, config=..., timeout=..., **params, **options).
BUILTINS: dict[str, Callable[..., BaseTask]] = {
    "log_cleanup": LogCleanupTask,
}
