"""task_scheduler: a threaded job-runner service with interval, cron and one-time
schedules, durable state, retries, timeouts and a CLI."""

from __future__ import annotations

# The scheduler, its clock and its events
from task_scheduler.clock import ManualClock, SystemClock

# Configuration
from task_scheduler.config import SchedulerConfig, load_config

# Faces for users of other schedulers (the asyncio face is task_scheduler.aio, the
# APScheduler one task_scheduler.compat.apscheduler: imported on demand)
from task_scheduler.decorators import (
    TaskInfo,
    TaskMetrics,
    TaskStats,
    cron,
    get_scheduler,
    interval,
    once,
    scheduled,
    set_default_scheduler,
)

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
from task_scheduler.handlers import register_handler
from task_scheduler.scheduler import TaskScheduler

# Scheduling rules
from task_scheduler.schedules import CronRule, IntervalRule, OnceRule, ScheduleRule, ScheduleType
from task_scheduler.shared import SharedStore

# State: stores and the records they keep
from task_scheduler.stores import MemoryStore, SQLiteStore, Store
from task_scheduler.stores.base import ConcurrencyPolicy, RunRecord, RunState, TaskState

# Tasks
from task_scheduler.tasks import Backoff, BaseTask, FunctionTask, RetryPolicy, ScriptTask, TaskContext
from task_scheduler.workqueue import HandlerScheduler, WorkQueue

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
    # Faces: decorators and stats (decorators.py), handlers and the work queue
    # (handlers.py, workqueue.py), shared values (shared.py)
    "HandlerScheduler",
    "SharedStore",
    "TaskInfo",
    "TaskMetrics",
    "TaskStats",
    "WorkQueue",
    "cron",
    "get_scheduler",
    "interval",
    "once",
    "register_handler",
    "scheduled",
    "set_default_scheduler",
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
