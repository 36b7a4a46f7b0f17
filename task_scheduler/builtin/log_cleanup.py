"""The ``log_cleanup`` builtin: delete old log files."""

from __future__ import annotations

import fnmatch
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from task_scheduler.errors import TaskError
from task_scheduler.tasks import BaseTask, TaskContext

if TYPE_CHECKING:
    from task_scheduler.config import SchedulerConfig


class LogCleanupTask(BaseTask):
    """Deletes files matching ``pattern`` in ``directory`` (default: the configured
    log directory) whose modification time is older than ``max_age_days``.

    Only regular files directly in the directory are considered (no recursion, no
    symlinks followed), so a misconfigured directory cannot take a tree with it. The
    file the service is logging to right now is never deleted.
    """

    def __init__(
        self,
        task_id: str,
        name: str | None = None,
        *,
        config: SchedulerConfig | None = None,
        directory: str | None = None,
        max_age_days: float = 7,
        pattern: str = "*.log*",
        **options: Any,
    ) -> None:
        super().__init__(task_id, name or "Log cleanup", **options)
        if not isinstance(max_age_days, (int, float)) or max_age_days <= 0:
            raise TaskError(f"task {task_id!r}: max_age_days must be a positive number, got {max_age_days!r}")
        self.max_age_days = float(max_age_days)
        self.pattern = pattern
        if directory is not None:
            self.directory = config.path(directory) if config else Path(directory)
        else:
            self.directory = config.path(config.logging.log_dir) if config else Path("logs")
        self.active_log = self.directory / config.logging.log_file if config and config.logging.log_file else None

    def execute(self, context: TaskContext) -> bool:
        if not self.directory.is_dir():
            context.logger.info("log directory %s does not exist; nothing to clean", self.directory)
            return True
        cutoff = time.time() - self.max_age_days * 86400
        removed, failed = [], []
        for path in sorted(self.directory.iterdir()):
            if not fnmatch.fnmatch(path.name, self.pattern) or path == self.active_log:
                continue
            try:
                info = path.lstat()
                if path.is_symlink() or not path.is_file() or info.st_mtime >= cutoff:
                    continue
                path.unlink()
                removed.append(path.name)
            except OSError as exc:
                failed.append(f"{path.name}: {exc.strerror}")
        context.output = f"removed {len(removed)} file(s) older than {self.max_age_days:g} days from {self.directory}"
        if removed:
            context.output += ": " + ", ".join(removed)
        context.logger.info("%s", context.output)
        if failed:
            context.error = "could not remove " + "; ".join(failed)
            return False
        return True
