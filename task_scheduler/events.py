"""Scheduler events and the one dispatcher that calls listeners.

A listener is ``callback(event)``; it runs in the thread that produced the event
(the loop thread or a worker), so it should be quick. A listener that raises is
logged and isolated: the scheduler and the other listeners go on.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from enum import Flag, auto

from task_scheduler.stores.base import RunRecord, RunState

__all__ = ["EventType", "Listener", "SchedulerEvent"]

logger = logging.getLogger(__name__)


class EventType(Flag):
    """Event kinds; combine them into a mask with ``|``."""

    SUBMITTED = auto()  # a run was handed to the worker pool
    EXECUTED = auto()  # a run succeeded
    ERROR = auto()  # a run failed (exception, False, non-zero exit)
    MISSED = auto()  # an occurrence was past misfire_grace_time (or coalesced)
    MAX_INSTANCES = auto()  # an occurrence was skipped: max_instances / max_runs
    TIMEOUT = auto()  # a run exceeded its timeout
    RETRY = auto()  # a failed attempt was scheduled again
    INTERRUPTED = auto()  # a run was cut short by shutdown or a dead process
    ALL = SUBMITTED | EXECUTED | ERROR | MISSED | MAX_INSTANCES | TIMEOUT | RETRY | INTERRUPTED


@dataclass(frozen=True)
class SchedulerEvent:
    type: EventType
    task_id: str
    run: RunRecord
    time: datetime
    retry_at: datetime | None = None


Listener = Callable[[SchedulerEvent], object]

# The event a run record's final state is reported as.
EVENT_FOR_STATE = {
    RunState.SUCCEEDED: EventType.EXECUTED,
    RunState.FAILED: EventType.ERROR,
    RunState.TIMED_OUT: EventType.TIMEOUT,
    RunState.MISSED: EventType.MISSED,
    RunState.SKIPPED: EventType.MAX_INSTANCES,
    RunState.INTERRUPTED: EventType.INTERRUPTED,
}
# The same by the state's value: an Enum member hashes in Python, a str at C speed.
_EVENT_FOR_VALUE = {state._value_: kind for state, kind in EVENT_FOR_STATE.items()}


class EventDispatcher:
    """Holds listeners with their masks and calls them, swallowing their errors."""

    def __init__(self) -> None:
        self._listeners: list[tuple[Listener, EventType]] = []
        self._lock = threading.Lock()
        # The kinds someone listens to, as an int (a Flag's ``&`` and truth cost
        # microseconds, several times per run): no other event is built.
        self.bits = 0

    def add(self, callback: Listener, mask: EventType = EventType.ALL) -> None:
        with self._lock:
            self._listeners = [*self._listeners, (callback, mask)]
            self._set_mask()

    def remove(self, callback: Listener) -> None:
        with self._lock:
            self._listeners = [(cb, mask) for cb, mask in self._listeners if cb is not callback]
            self._set_mask()

    def _set_mask(self) -> None:
        bits = 0
        for _, kinds in self._listeners:
            bits |= kinds.value
        self.bits = bits

    def emit_record(
        self, record: RunRecord, now: datetime, kind: EventType | None = None, retry_at: datetime | None = None
    ) -> None:
        """Emit the event for ``record`` (``kind``, or the one its state means), built
        only when someone listens to that kind."""
        bits = self.bits
        if not bits:
            return
        if kind is None:
            kind = _EVENT_FOR_VALUE.get(record.state._value_)
        if kind is not None and kind._value_ & bits:
            self.emit(SchedulerEvent(kind, record.task_id, record, now, retry_at))

    def emit(self, event: SchedulerEvent) -> None:
        for callback, mask in self._listeners:
            if event.type & mask:
                try:
                    callback(event)
                except Exception:
                    logger.exception("listener %r failed on %s for task %s", callback, event.type.name, event.task_id)
