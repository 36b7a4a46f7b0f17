"""Clocks. The scheduler reads time only through one of these, injected once.

``now()`` is the wall clock (aware UTC) used for due times; ``monotonic()`` measures
durations and waits, immune to wall-clock jumps. `ManualClock` lets tests drive time
without sleeping: the scheduler's loop step ``run_due(now)`` takes its time from it.
"""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Protocol

__all__ = ["Clock", "ManualClock", "SystemClock"]


class Clock(Protocol):
    def now(self) -> datetime:
        """Wall-clock time, aware, in UTC."""

    def monotonic(self) -> float:
        """Seconds on a clock that never jumps."""


class SystemClock:
    """The real clocks."""

    def now(self) -> datetime:
        return datetime.now(UTC)

    def monotonic(self) -> float:
        return time.monotonic()


class ManualClock:
    """A clock that moves only when told to (thread-safe)."""

    def __init__(self, start: datetime | None = None) -> None:
        self._now = start or datetime(2030, 1, 1, tzinfo=UTC)
        if self._now.tzinfo is None:
            raise ValueError("ManualClock needs an aware datetime")
        self._offset = 0.0
        self._lock = threading.Lock()

    def now(self) -> datetime:
        with self._lock:
            return self._now

    def monotonic(self) -> float:
        with self._lock:
            return self._offset

    def advance(self, seconds: float) -> datetime:
        """Let ``seconds`` pass: both clocks move forward together."""
        if seconds < 0:
            raise ValueError("time does not pass backwards; use set() for a wall-clock jump")
        with self._lock:
            self._now += timedelta(seconds=seconds)
            self._offset += seconds
            return self._now

    def set(self, moment: datetime) -> None:
        """Jump the wall clock to ``moment`` (forward or back) while no time passes,
        as an NTP step or a manual clock change does."""
        with self._lock:
            self._now = moment
