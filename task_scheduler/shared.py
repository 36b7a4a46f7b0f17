"""A shared key-value store with expiry: the message-queue system's "public store".

::

    from task_scheduler.shared import set_public, get_public, delete_public

    set_public("api_key", "secret")                  # kept until deleted
    set_public("session_token", "token123", ttl=60)  # gone 60 s from now
    get_public("session_token")                      # "token123", or None once expired

Tasks use it to share tokens and state. It lives in the scheduler's store
(``store.shared``, `task_scheduler.stores.base.SharedValues`): in the SQLite store
(and any later shared store) the values are persisted, so every process on the same
file sees them and they survive restarts; in the memory store they live as long as
the process. Values are JSON: what goes in comes out as JSON gives it back (a tuple
comes back a list, dict keys come back strings); anything else is refused.

Expiry: a value is gone for every read the moment its TTL has passed. `cleanup`
deletes expired values to reclaim space; `SharedStore.start_cleanup` does that on a
daemon thread every ``cleanup_interval`` seconds (the default store starts it).
The clock is injectable (`task_scheduler.clock.ManualClock` in tests).
"""

from __future__ import annotations

import json
import logging
import threading
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from task_scheduler.clock import Clock, SystemClock
from task_scheduler.errors import TaskSchedulerError

if TYPE_CHECKING:
    from task_scheduler.scheduler import TaskScheduler
    from task_scheduler.stores import Store

__all__ = [
    "SharedStore",
    "cleanup",
    "clear_store",
    "delete_public",
    "get_public",
    "get_shared",
    "get_store_size",
    "list_keys",
    "set_public",
]

logger = logging.getLogger(__name__)


class SharedStore:
    """The shared key-value store of one state store.

    ``source``: a `TaskScheduler` (its store and clock), a `Store`, or None for the
    default scheduler's (`task_scheduler.decorators.get_scheduler`).
    """

    def __init__(
        self,
        source: TaskScheduler | Store | None = None,
        *,
        clock: Clock | None = None,
        cleanup_interval: float = 60.0,
    ) -> None:
        if source is None:
            from task_scheduler.decorators import get_scheduler

            source = get_scheduler()
        scheduler_clock = getattr(source, "clock", None)
        self.store: Store = getattr(source, "store", source)  # type: ignore[arg-type]
        self.clock: Clock = clock or scheduler_clock or SystemClock()
        if cleanup_interval <= 0:
            raise TaskSchedulerError(f"cleanup_interval must be > 0 seconds, got {cleanup_interval!r}")
        self.cleanup_interval = cleanup_interval
        self._stop_cleanup = threading.Event()
        self._cleaner: threading.Thread | None = None

    def set_public(self, key: str, value: Any, ttl: float | None = None) -> None:
        """Store ``value`` (JSON data) under ``key``; with ``ttl`` (seconds > 0) it
        expires that long from now, without it is kept until deleted."""
        _check_key(key)
        try:
            text = json.dumps(value, ensure_ascii=False, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise TaskSchedulerError(f"shared value {key!r} must be JSON data: {exc}") from exc
        expires_at = None
        if ttl is not None:
            if isinstance(ttl, bool) or not isinstance(ttl, (int, float)) or ttl <= 0:
                raise TaskSchedulerError(f"ttl of shared value {key!r} must be seconds > 0 or None, got {ttl!r}")
            expires_at = self.clock.now() + timedelta(seconds=ttl)
        self.store.shared.set(key, text, expires_at)

    def get_public(self, key: str, default: Any = None) -> Any:
        """The value of ``key``, or ``default`` when missing or expired."""
        text = self.store.shared.get(key, self.clock.now())
        return default if text is None else json.loads(text)

    def delete_public(self, key: str) -> bool:
        """Remove ``key``; whether it was there."""
        return self.store.shared.delete(key)

    def list_keys(self) -> list[str]:
        """The keys of the values alive now, sorted."""
        return self.store.shared.keys(self.clock.now())

    def get_store_size(self) -> int:
        """How many values are alive now."""
        return len(self.list_keys())

    def cleanup(self) -> int:
        """Delete the expired values now; returns how many went."""
        return self.store.shared.purge(self.clock.now())

    def clear_store(self) -> int:
        """Delete every value; returns how many went."""
        return self.store.shared.clear()

    # -- background expiry ------------------------------------------------------------
    def start_cleanup(self, interval: float | None = None) -> None:
        """Run `cleanup` every ``interval`` seconds (default ``cleanup_interval``) on a
        daemon thread until `stop_cleanup`. Idempotent."""
        if interval is not None:
            self.cleanup_interval = interval
        if self._cleaner is not None and self._cleaner.is_alive():
            return
        self._stop_cleanup.clear()
        self._cleaner = threading.Thread(target=self._cleanup_loop, name="task-scheduler-shared-cleanup", daemon=True)
        self._cleaner.start()

    def stop_cleanup(self, timeout: float | None = 5.0) -> None:
        self._stop_cleanup.set()
        if self._cleaner is not None:
            self._cleaner.join(timeout)
            self._cleaner = None

    def _cleanup_loop(self) -> None:
        while not self._stop_cleanup.wait(self.cleanup_interval):
            try:
                purged = self.cleanup()
            except TaskSchedulerError as exc:  # a closed store: the scheduler stopped
                logger.info("shared value cleanup stopped: %s", exc)
                return
            except Exception:
                logger.exception("shared value cleanup failed; trying again in %ss", self.cleanup_interval)
                continue
            if purged:
                logger.debug("removed %d expired shared value(s)", purged)


def _check_key(key: str) -> None:
    if not isinstance(key, str) or not key:
        raise TaskSchedulerError(f"a shared value's key must be a non-empty string, got {key!r}")


# -- the default shared store (the default scheduler's), as module functions -----------------

_default: SharedStore | None = None
_default_lock = threading.Lock()


def get_shared() -> SharedStore:
    """The shared store of the default scheduler, with background cleanup running.
    It follows `task_scheduler.decorators.set_default_scheduler`."""
    global _default
    from task_scheduler.decorators import get_scheduler

    scheduler = get_scheduler()
    with _default_lock:
        if _default is None or _default.store is not scheduler.store:
            if _default is not None:
                _default.stop_cleanup(timeout=0)
            _default = SharedStore(scheduler)
            _default.start_cleanup()
        return _default


def set_public(key: str, value: Any, ttl: float | None = None) -> None:
    get_shared().set_public(key, value, ttl)


def get_public(key: str, default: Any = None) -> Any:
    return get_shared().get_public(key, default)


def delete_public(key: str) -> bool:
    return get_shared().delete_public(key)


def list_keys() -> list[str]:
    return get_shared().list_keys()


def get_store_size() -> int:
    return get_shared().get_store_size()


def cleanup() -> int:
    return get_shared().cleanup()


def clear_store() -> int:
    return get_shared().clear_store()
