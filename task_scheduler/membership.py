"""This process as a node of its store: heartbeats and leases, the clock skew against
the store, and what the scheduler does while the store cannot be reached.

- **Heartbeat** every ``lease_seconds / 3`` (on the monotonic clock): it renews the
  leases of this node's runs and measures the node's **skew** - its wall clock minus
  the store's, read at the midpoint of the call - where the store has a clock
  (PostgreSQL with ``store.clock = "database"``; memory and SQLite have none and the
  skew stays 0). A skew over 1 s is logged. The scheduler's ``now`` is
  ``clock.now() - skew``: on every node due times, leases and reaps follow one
  clock, so a node ahead does not fire early and one behind does not fire late.
  Nothing is claimed before the first heartbeat has measured it.
- **Reaping** runs every ``min(lease_seconds / 3, check_interval)``: a dead node's
  runs become INTERRUPTED within ``lease_seconds + check_interval`` of its last
  heartbeat.
- **Outages**: a `StoreUnavailableError` marks the store down. That is logged once;
  the store is then probed with a heartbeat after 0.5 s, doubling up to 15 s. Until
  a probe succeeds the node claims nothing, its running runs go on, and their
  outcomes wait in the `Outbox`, to be written before anything new is claimed.
- **Rejoining**: a node whose heartbeats stopped reaching the store for longer than
  a lease may have been reaped by another node meanwhile (its node row and task
  registrations deleted, tasks nobody else runs unscheduled); its first heartbeat
  after that says so, and the scheduler registers its tasks again (`rejoin`).
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import datetime, timedelta

from task_scheduler.clock import Clock
from task_scheduler.errors import StoreUnavailableError
from task_scheduler.stores.base import NodeInfo, Retry, RunRecord, Store, TaskDefinition

__all__ = ["Membership", "Outbox"]

logger = logging.getLogger(__name__)

SKEW_WARNING = 1.0  # seconds
_FIRST_RETRY, _LAST_RETRY = 0.5, 15.0


class Membership:
    """Heartbeat, skew, reap timing and the store's availability for one node.

    ``definitions()`` lists the tasks this node runs (registered again by `rejoin`);
    `outbox` holds the outcomes the store has not taken yet.
    """

    def __init__(
        self,
        store: Store,
        clock: Clock,
        node_id: str,
        lease: timedelta,
        check_interval: float,
        definitions: Callable[[], Sequence[TaskDefinition]],
    ) -> None:
        self.store = store
        self.clock = clock
        self.node_id = node_id
        self.lease = lease
        self.check_interval = check_interval
        self.outbox = Outbox()
        self._definitions = definitions
        self.skew = 0.0  # seconds: this node's wall clock minus the store's
        self.has_clock = False  # whether the store reported a clock of its own
        self.measured = False  # a heartbeat succeeded (and measured the skew if it could)
        self._next_heartbeat = 0.0  # monotonic
        self._next_reap = 0.0
        self._last_beat: float | None = None
        self._must_rejoin = False  # until the tasks are registered again (see rejoin)
        self._down_since: float | None = None
        self._retry_delay = _FIRST_RETRY
        self._skew_reported = 0.0

    def now(self) -> datetime:
        """The wall clock corrected by the measured skew: the store's time."""
        now = self.clock.now()
        return now - timedelta(seconds=self.skew) if self.skew else now  # asked twice per run

    @property
    def available(self) -> bool:
        return self._down_since is None

    @property
    def ready(self) -> bool:
        """Whether claiming is allowed: the store is up and the skew measured."""
        return self.available and self.measured

    def retry_in(self) -> float:
        """Seconds until the next heartbeat (or probe of a store that is down)."""
        return max(0.0, self._next_heartbeat - self.clock.monotonic())

    def keep_alive(self, node: Callable[[datetime], NodeInfo], run_ids: Sequence[str], now: datetime) -> datetime:
        """Send the heartbeat when it is due (or probe a store that is down); after
        it, register the tasks again if needed and write the waiting outcomes. Returns
        ``now`` moved by the change of the skew it measured."""
        if self.clock.monotonic() < self._next_heartbeat:
            return now
        try:
            change, rejoin = self.heartbeat(node(now), [*run_ids, *self.outbox.run_ids()], now)
            now -= timedelta(seconds=change)
            self._must_rejoin = self._must_rejoin or rejoin
            if self._must_rejoin:
                self.rejoin(self._definitions())
                self._must_rejoin = False
            self.outbox.flush(self.store)  # before anything new is claimed
        except StoreUnavailableError as exc:
            self.lost(exc, len(run_ids))
        return now

    def reap(self, now: datetime) -> list[RunRecord]:
        """Runs of dead nodes recorded INTERRUPTED, when reaping is due."""
        monotonic = self.clock.monotonic()
        if not self.ready or monotonic < self._next_reap:
            return []
        self._next_reap = monotonic + min(self.lease.total_seconds() / 3, self.check_interval)
        try:
            return self.store.reap(now, self.lease.total_seconds())
        except StoreUnavailableError as exc:
            self.lost(exc)
            return []

    def write(self, records: list[RunRecord], retries: list[Retry]) -> None:
        """Hand outcomes to the store, or keep them in the outbox while it is down."""
        self.outbox.add(records, retries)
        if self.available:
            try:
                self.outbox.flush(self.store)
            except StoreUnavailableError as exc:
                self.lost(exc)

    def beat_now(self) -> None:
        self._next_heartbeat = 0.0

    def measure(self, node: NodeInfo) -> NodeInfo:
        """Measure the skew once, when the node is created (its tasks' first fire
        times are computed on the store's clock); returns ``node`` with its start time
        corrected. A store that is down is left to the loop."""
        try:
            change = self._beat(node, (), node.heartbeat_at)
        except StoreUnavailableError as exc:
            logger.warning("%s; the node's clock skew is measured when it is back", exc)
            return node
        self._last_beat = self.clock.monotonic()  # (started much later, the node may have been reaped meanwhile)
        return replace(node, started_at=node.started_at - timedelta(seconds=change))

    def _beat(self, node: NodeInfo, run_ids: Sequence[str], now: datetime) -> float:
        """One heartbeat; returns the change of the skew (seconds)."""
        before = self.clock.now()
        server = self.store.heartbeat(node, run_ids, now + self.lease)
        after = self.clock.now()
        if server is None:
            return 0.0
        skew = (before + (after - before) / 2 - server).total_seconds()
        change, self.skew, self.has_clock = skew - self.skew, skew, True
        self._report_skew()
        return change

    def heartbeat(self, node: NodeInfo, run_ids: Sequence[str], now: datetime) -> tuple[float, bool]:
        """Send a heartbeat. Returns the change of the skew (seconds; the caller's
        ``now`` moves back by it) and whether this node must register its tasks
        again (see the module doc). Raises StoreUnavailableError."""
        monotonic = self.clock.monotonic()
        self._next_heartbeat = monotonic + self.lease.total_seconds() / 3
        change = self._beat(node, run_ids, now)
        rejoin = self._last_beat is not None and monotonic - self._last_beat > self.lease.total_seconds()
        self._last_beat = monotonic
        self.measured = True
        self._back()
        return change, rejoin

    def rejoin(self, definitions: Sequence[TaskDefinition]) -> None:
        """Register this node's tasks again: those whose stored rule is still this
        node's, and those unscheduled meanwhile. A rule another node registered in
        the meantime stays (the last registration wins; this node then does not run
        that task until it is restarted or reloaded with the same rule)."""
        stored = self.store.task_states()
        mine = [d for d in definitions if d.task_id not in stored or stored[d.task_id].fingerprint == d.fingerprint]
        self.store.sync_tasks(mine, self.node_id)
        others = len(definitions) - len(mine)
        logger.warning(
            "this node's heartbeats did not reach the store for over %ss: registered %d task(s) again%s",
            self.lease.total_seconds(),
            len(mine),
            f" ({others} now run by another node's newer definition)" if others else "",
        )

    def lost(self, exc: StoreUnavailableError, running: int | None = None) -> None:
        """The store failed with ``exc``: log it once per outage, schedule a probe.
        ``running``: how many runs this node has going (for the log line)."""
        monotonic = self.clock.monotonic()
        if self._down_since is None:
            self._down_since, self._retry_delay = monotonic, _FIRST_RETRY
            logger.warning(
                "%s; claiming stops, running runs go on (%s), their outcomes are kept until the store is back "
                "(%d waiting); retrying with backoff",
                exc,
                "?" if running is None else running,
                len(self.outbox),
            )
        else:
            self._retry_delay = min(self._retry_delay * 2, _LAST_RETRY)
        self._next_heartbeat = monotonic + self._retry_delay

    def _back(self) -> None:
        if self._down_since is not None:
            logger.warning("the store is available again after %.1fs", self.clock.monotonic() - self._down_since)
            self._down_since = None

    def _report_skew(self) -> None:
        """Log a skew over 1 s, again when it moves by 0.5 s, and its return under 1 s."""
        skew, reported = self.skew, self._skew_reported
        if abs(skew) > SKEW_WARNING and (abs(reported) <= SKEW_WARNING or abs(skew - reported) > 0.5):
            logger.warning(
                "this node's clock is %.3fs %s the store's; due times follow the store's clock (fix the node's NTP)",
                abs(skew),
                "ahead of" if skew > 0 else "behind",
            )
            self._skew_reported = skew
        elif abs(skew) <= SKEW_WARNING < abs(reported):
            logger.info("this node's clock is within %.3fs of the store's again", abs(skew))
            self._skew_reported = skew


class Outbox:
    """Outcomes collected from the workers and not written to the store yet, oldest
    first. Thread-safe: the loop and `TaskScheduler.wait_for_runs` both flush it."""

    def __init__(self) -> None:
        self._batches: deque[tuple[list[RunRecord], list[Retry]]] = deque()
        self._lock = threading.Lock()

    def add(self, records: list[RunRecord], retries: list[Retry]) -> None:
        with self._lock:
            self._batches.append((records, retries))

    def __len__(self) -> int:
        with self._lock:
            return sum(len(records) for records, _ in self._batches)

    def run_ids(self) -> list[str]:
        """The runs whose outcome waits: still RUNNING in the store, their leases renewed."""
        with self._lock:
            return [record.run_id for records, _ in self._batches for record in records]

    def flush(self, store: Store) -> int:
        """Write every waiting batch, oldest first; returns how many outcomes went.
        Raises StoreUnavailableError with the unwritten ones kept."""
        with self._lock:
            if not self._batches:
                return 0
            records = [record for batch, _ in self._batches for record in batch]
            retries = [retry for _, batch in self._batches for retry in batch]
            store.finish(records, retries)  # one transaction, however many batches waited
            self._batches.clear()
            return len(records)
