"""task_scheduler: a threaded job-runner service with interval, cron and one-time
schedules, durable state, retries, timeouts and a CLI."""

from __future__ import annotations

# The scheduler, its clock and its events
from task_scheduler.clock import ManualClock, SystemClock

# Configuration
from task_scheduler.config import SchedulerConfig, load_config

# Errors
from task_scheduler.errors import (
    ConfigError,
    ScheduleError,
    StoreError,
    StoreUnavailableError,
    TaskError,
    TaskNotFoundError,
    TaskSchedulerError,
)
from task_scheduler.events import EventType, SchedulerEvent
from task_scheduler.scheduler import TaskScheduler

# Scheduling rules
from task_scheduler.schedules import CronRule, IntervalRule, OnceRule, ScheduleRule, ScheduleType

# State: stores and the records they keep
from task_scheduler.stores import MemoryStore, SQLiteStore, Store
from task_scheduler.stores.base import ConcurrencyPolicy, RunRecord, RunState, TaskState

# Tasks
from task_scheduler.tasks import Backoff, BaseTask, FunctionTask, RetryPolicy, ScriptTask, TaskContext

__version__ = "0.1.0"

__all__ = [
    # Scheduling rules
    "CronRule",
    "IntervalRule",
    "OnceRule",
    "ScheduleRule",
    "ScheduleType",
    # Tasks
    "Backoff",
    "BaseTask",
    "FunctionTask",
    "RetryPolicy",
    "ScriptTask",
    "TaskContext",
    # The scheduler, its clock and its events
    "EventType",
    "ManualClock",
    "SchedulerEvent",
    "SystemClock",
    "TaskScheduler",
    # Configuration
    "SchedulerConfig",
    "load_config",
    # State
    "ConcurrencyPolicy",
    "MemoryStore",
    "RunRecord",
    "RunState",
    "SQLiteStore",
    "Store",
    "TaskState",
    # Errors
    "ConfigError",
    "ScheduleError",
    "StoreError",
    "StoreUnavailableError",
    "TaskError",
    "TaskNotFoundError",
    "TaskSchedulerError",
]
