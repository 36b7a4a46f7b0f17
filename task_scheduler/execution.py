"""Running one attempt of a task, and deciding what follows a failure.

`execute_attempt` runs in a worker thread and turns whatever the task does (return
True/False/None/garbage, raise, time out, get cancelled) into a final `RunRecord`;
it never raises. `retry_for` decides whether a failed attempt is retried and when:
the retry is handed back to the store as a timed occurrence, never slept on.
"""

from __future__ import annotations

import logging
import traceback
from collections.abc import Callable
from datetime import datetime, timedelta

from task_scheduler.logs import enter_run, leave_run
from task_scheduler.stores.base import Retry, RunRecord, RunState
from task_scheduler.tasks import BaseTask, RetryPolicy, TaskContext

__all__ = ["CANCEL_SHUTDOWN", "CANCEL_TIMEOUT", "execute_attempt", "retry_for"]

logger = logging.getLogger(__name__)

CANCEL_TIMEOUT = "timeout"
CANCEL_SHUTDOWN = "shutdown"
CANCEL_REPLACED = "replaced by a newer run"
_RESULT_LIMIT = 4096


def execute_attempt(
    task: BaseTask,
    record: RunRecord,
    context: TaskContext,
    now: Callable[[], datetime],
    started: datetime | None = None,
) -> RunRecord:
    """Run ``task`` once for ``record`` (starting now, or at ``started`` when the
    caller just read the clock); return the record with its final outcome."""
    started = started or now()
    result: object = None
    error: str | None = None
    token = enter_run(task.task_id, record.run_id)
    try:
        logger.info("starting task %s (%s), attempt %d", task.task_id, task.name, record.attempt)
        try:
            task.last_error = None
            result = task.run(context)
        except BaseException as exc:  # noqa: BLE001 - nothing a task does may escape
            error = f"{type(exc).__name__}: {exc}"
            if not context.timed_out and not context.cancelled:
                logger.error("task %s raised %s\n%s", task.task_id, error, _short_traceback(exc))
        finished = now()
        state = _outcome(result, error, context)
        if state is RunState.FAILED and error is None:
            error = context.error or task.last_error or "returned False"
        elif state is RunState.TIMED_OUT:
            error = context.error or f"timed out after {context.timeout}s"
        elif state is RunState.INTERRUPTED:
            error = f"interrupted: {context.cancel_reason}"
        output = context.output
        if output is None and result is not None and result is not True and result is not False:
            output = repr(result)[:_RESULT_LIMIT]
        # The record belongs to this attempt from claim to finish: fill it in place.
        record.state, record.started_at, record.finished_at = state, started, finished
        record.exit_code, record.output = context.exit_code, output
        record.cpu_user, record.cpu_system, record.max_rss = context.cpu_user, context.cpu_system, context.max_rss
        record.error = error if state is not RunState.SUCCEEDED else None
        if state is RunState.SUCCEEDED:
            logger.info("task %s succeeded in %.3fs", task.task_id, (finished - started).total_seconds())
        else:
            logger.warning("task %s %s in %.3fs: %s", task.task_id, state.value, record.duration or 0.0, record.error)
    finally:
        leave_run(token)
    return record


def _outcome(result: object, error: str | None, context: TaskContext) -> RunState:
    if (context.cancelled and context.cancel_reason == CANCEL_TIMEOUT) or context.timed_out:
        return RunState.TIMED_OUT
    if context.cancelled:
        return RunState.INTERRUPTED
    if error is not None or result is False:
        return RunState.FAILED
    return RunState.SUCCEEDED


def retry_for(record: RunRecord, policy: RetryPolicy, now: datetime, recover: bool = False) -> Retry | None:
    """A `Retry` when the failed ``record`` has attempts left under ``policy``, or at
    once when it was interrupted and its task asks for ``recover``."""
    if record.state is RunState.INTERRUPTED:
        return Retry(record, now) if recover else None
    retryable = record.state is RunState.FAILED or (record.state is RunState.TIMED_OUT and policy.retry_on_timeout)
    if not retryable or record.attempt > policy.max_retries:
        return None
    return Retry(record, now + timedelta(seconds=policy.delay(record.attempt)))


def _short_traceback(exc: BaseException) -> str:
    return "".join(traceback.format_exception(exc, limit=-6)).rstrip()
