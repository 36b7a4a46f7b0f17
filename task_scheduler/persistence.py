"""The scheduler's side of persistent jobs: restoring them, and following changes
that other processes make to them.

A persistent job is a `task_scheduler.jobs.JobSpec` kept in the store as JSON
(`TaskScheduler.add_job`, ``add_task(..., persistent=True)``, ``task-scheduler add``).
At start every stored job is built and registered without any code adding it again;
then, every ``check_interval``, the store's `revision` tells whether another process
(the CLI, another node) added, changed or removed one, and the scheduler follows.
A job whose code cannot be loaded (its module is gone, its script moved) is
registered as an `UnresolvedTask`: reported (log, ``list``, status), its runs fail
with the reason, and it is tried again every `RETRY_UNRESOLVED` check intervals
(at most every 30 s) until it loads or is removed. It is never dropped.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from task_scheduler.errors import ConfigError, TaskNotFoundError, TaskSchedulerError
from task_scheduler.jobs import JobSpec, UnresolvedTask
from task_scheduler.schedules import ScheduleRule
from task_scheduler.stores.base import Origin
from task_scheduler.tasks import BaseTask

if TYPE_CHECKING:
    from task_scheduler.scheduler import TaskScheduler

__all__ = ["RETRY_UNRESOLVED", "StoredJobs", "Item"]

logger = logging.getLogger(__name__)

# Jobs that could not be loaded are tried again every this many check_intervals.
RETRY_UNRESOLVED = 10
# One task to register: the task, its rule, its spec (as data), why it cannot run.
Item = tuple[BaseTask, ScheduleRule, dict[str, Any] | None, str | None]


class StoredJobs:
    """Keeps one scheduler's persistent jobs in line with its store."""

    def __init__(self, scheduler: TaskScheduler) -> None:
        self._scheduler = scheduler
        self._revision = scheduler.store.revision()
        self._next_check = 0.0  # on the scheduler's monotonic clock
        self._next_retry = 0.0
        self._unresolved: dict[str, Item] = {}  # tried again until they load (or go)

    def poll(self) -> None:
        """Called every loop step; does something every check_interval at most."""
        scheduler = self._scheduler
        monotonic = scheduler.clock.monotonic()
        if monotonic < self._next_check:
            return
        interval = scheduler.config.scheduler.check_interval
        self._next_check = monotonic + interval
        revision = scheduler.store.revision()
        if revision != self._revision:
            self._revision = revision
            self.restore()
        elif monotonic >= self._next_retry:
            self._next_retry = monotonic + min(30.0, RETRY_UNRESOLVED * interval)
            self._retry_unresolved()

    def restore(self) -> None:
        """Build and register the stored jobs this process does not have (or has in
        another version); drop the ones the store no longer has."""
        scheduler = self._scheduler
        specs = scheduler.store.job_specs(Origin.PERSISTENT)
        mine, others = scheduler._forget_stored(set(specs))
        items: list[Item] = []
        for task_id, spec in sorted(specs.items()):
            if task_id in others or mine.get(task_id) == spec:
                continue
            try:
                items.append(self._build(spec))
            except TaskSchedulerError as exc:
                logger.error("stored job %s cannot be scheduled: %s", task_id, exc)
        if items:
            scheduler._add(items, Origin.PERSISTENT, replace_existing=True)

    def _build(self, data: dict[str, Any]) -> Item:
        """A stored spec as a task; one whose code cannot be loaded as an UnresolvedTask."""
        config = self._scheduler.config
        spec = JobSpec.from_stored(data)
        try:
            task, rule = spec.build(config, f"stored job {data.get('id')!r}")
            return task, rule, data, None
        except ConfigError as exc:
            logger.error("%s: its runs fail until this is fixed or the job is removed", exc)
            item = (UnresolvedTask(spec, str(exc), config), ScheduleRule.from_dict(spec.schedule), data, str(exc))
            self._unresolved[item[0].task_id] = item
            return item

    def _retry_unresolved(self) -> None:
        items: list[Item] = []
        for task_id, (task, rule, data, _) in list(self._unresolved.items()):
            try:
                registered = self._scheduler.get_task(task_id)
            except TaskNotFoundError:
                registered = None
            if registered is not task:  # removed or replaced since
                del self._unresolved[task_id]
                continue
            assert isinstance(task, UnresolvedTask)
            resolved = task.resolve()
            if resolved is not None:
                logger.info("stored job %s can be loaded again", task_id)
                items.append((resolved, rule, data, None))
        if items:
            self._scheduler._add(items, Origin.PERSISTENT, replace_existing=True)
            for item in items:
                del self._unresolved[item[0].task_id]
