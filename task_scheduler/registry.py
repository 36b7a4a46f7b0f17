"""Registering a task: checking it and resolving its settings against the config.

A task leaves unset (None) what the config's ``tasks`` and ``scheduler`` sections
decide by default; `register` fills that in once, binds the rule to the scheduler's
zone and a script to its directories, and yields what the store must know (a
`TaskDefinition`) next to what the scheduler keeps (the task, rule and policies).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, tzinfo
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from task_scheduler.errors import TaskError
from task_scheduler.schedules import CronRule, IntervalRule, OnceRule, ScheduleRule
from task_scheduler.stores.base import Origin, TaskDefinition
from task_scheduler.task_settings import settings_of
from task_scheduler.tasks import Backoff, BaseTask, RetryPolicy, ScriptTask

if TYPE_CHECKING:
    from task_scheduler.config import SchedulerConfig

__all__ = ["Registered", "register"]


@dataclass(slots=True, kw_only=True)
class Registered(TaskDefinition):
    """A registered task: the definition its store is given, with what the scheduler
    keeps beside it (the task, its zone-bound rule and its effective retry policy and
    timeout). One object per task, not two: it is what ``add_task`` costs."""

    rule: ScheduleRule  # narrows the definition's (a rule, never a stored fingerprint)
    task: BaseTask
    retry: RetryPolicy
    timeout: float | None


_OWN_RULES = (CronRule, IntervalRule, OnceRule)  # fingerprinted when a store asks (they always can)


def register(
    task: BaseTask,
    rule: ScheduleRule,
    config: SchedulerConfig,
    zone: tzinfo,
    now: datetime,
    origin: Origin = Origin.CODE,
    spec: dict[str, Any] | None = None,
    problem: str | None = None,
) -> Registered:
    """Check ``task`` and ``rule`` and resolve their settings; raises TaskError
    (a missing or disallowed script, a wrong type) naming the task. ``spec`` is the
    job as data, when it has one (`task_scheduler.jobs`)."""
    if not isinstance(task, BaseTask):
        raise TaskError(f"expected a BaseTask, got {task!r}")
    if not isinstance(rule, ScheduleRule):
        raise TaskError(f"task {task.task_id!r}: expected a ScheduleRule, got {rule!r}")
    defaults, scheduler, given = config.tasks, config.scheduler, settings_of(task)
    if isinstance(task, ScriptTask):
        task.bind(config.base_dir, config.data_dir, config.allowed_script_dirs, config.tasks.secret_env)
    rule = rule.with_timezone(zone)
    if type(rule) not in _OWN_RULES:
        rule.fingerprint()  # a rule of the user's own that cannot say what it is fails here, not in a status call
    retry = _retry_policy(
        _first(given.max_retries, defaults.max_retries),
        _first(given.retry_delay, defaults.retry_delay),
        given.retry_backoff or defaults.retry_backoff,
        _first(given.max_retry_delay, defaults.max_retry_delay),
        defaults.retry_on_timeout,
        defaults.retry_jitter,
    )
    return Registered(
        task_id=task.task_id,
        rule=rule,
        first_fire=rule.first_fire_time(now),
        misfire_grace_time=_first(given.misfire_grace_time, scheduler.misfire_grace_time),
        coalesce=_first(given.coalesce, scheduler.coalesce),
        catch_up=_first(given.catch_up, scheduler.catch_up),
        max_instances=given.max_instances,
        concurrency_policy=given.concurrency_policy,
        max_runs=given.max_runs,
        recover=given.recover,
        name=task.name,
        schedule=rule.describe(),
        origin=origin,
        spec=spec,
        problem=problem,
        task=task,
        retry=retry,
        timeout=_first(given.timeout, defaults.default_timeout),
    )


@lru_cache(maxsize=256)
def _retry_policy(
    max_retries: int, retry_delay: float, backoff: Backoff | str, max_delay: float, on_timeout: bool, jitter: float
) -> RetryPolicy:
    """Tasks with the same settings share one (immutable) policy."""
    return RetryPolicy(max_retries, retry_delay, Backoff(backoff), max_delay, on_timeout, jitter)


def _first(value: Any, default: Any) -> Any:
    return default if value is None else value
