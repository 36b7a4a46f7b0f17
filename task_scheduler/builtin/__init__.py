"""Predefined jobs that config files can name with ``"type": "builtin"``."""

from __future__ import annotations

from task_scheduler.builtin.log_cleanup import LogCleanupTask
from task_scheduler.tasks import BaseTask

__all__ = ["BUILTINS", "LogCleanupTask"]

BUILTINS: dict[str, type[BaseTask]] = {
    "log_cleanup": LogCleanupTask,
}
