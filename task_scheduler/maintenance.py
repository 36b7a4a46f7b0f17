"""A node's upkeep in the store: what the loop does besides firing.

At the first step (`Maintenance.recover`): runs of dead scheduler processes on this
host are stopped (their leftover script process groups) and recorded INTERRUPTED;
config and code tasks that no node defines any more are unscheduled. Then, each on
its own period of the monotonic clock so it costs nothing on most steps
(`Maintenance.step`): the heartbeat renews this node's leases (every lease/3) and
measures its clock skew, dead nodes' runs are reaped (see membership.py for both,
and for store outages); old history is pruned (every 10 minutes, on a background
thread: a large prune is many short transactions and the loop keeps claiming
between them); wall-clock jumps are noticed and logged.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime, timedelta

from task_scheduler.clock import Clock
from task_scheduler.config import SchedulerConfig
from task_scheduler.errors import TaskSchedulerError
from task_scheduler.membership import Membership
from task_scheduler.processes import stop_process_group
from task_scheduler.stores import Store
from task_scheduler.stores.base import NodeInfo, RunRecord, RunState

__all__ = ["Maintenance"]

logger = logging.getLogger(__name__)

PRUNE_EVERY = 600.0  # seconds


class Maintenance:
    """Heartbeat, reaping, pruning and start-up recovery for one node.

    ``running_ids()`` lists the run ids this node is running (their leases are
    renewed); ``emit(record, now)`` reports runs it recorded INTERRUPTED;
    ``membership`` sends the heartbeats and knows whether the store is reachable.
    """

    def __init__(
        self,
        store: Store,
        config: SchedulerConfig,
        node_id: str,
        clock: Clock,
        running_ids: Callable[[], list[str]],
        emit: Callable[[RunRecord, datetime], None],
        membership: Membership,
    ) -> None:
        self.store = store
        self.config = config
        self.node_id = node_id
        self.clock = clock
        self.lease = timedelta(seconds=config.store.lease_seconds)
        self.host = socket.gethostname()
        self._running_ids = running_ids
        self._emit = emit
        self.membership = membership
        self._node: NodeInfo | None = None
        self._next_prune = 0.0
        self._pruner: threading.Thread | None = None
        self._last_step: tuple[datetime, float] | None = None
        self._stopping = False

    def recover(self, now: datetime) -> None:
        """The first step: reconcile the store with this process. Runs of dead
        processes on this host are recorded INTERRUPTED at once (other hosts' when
        their lease expires), after their leftover process groups are stopped; then
        config and code tasks that no node defines any more are unscheduled, their
        history kept (tasks other live nodes run stay)."""
        import psutil  # imported when needed: start-up time matters

        dead = [
            node
            for node in self.store.nodes()
            if node.host == self.host and node.node_id != self.node_id and not psutil.pid_exists(node.pid)
        ]
        if dead:
            self._stop_leftovers({node.node_id for node in dead})
        for node in dead:
            for record in self.store.leave(node.node_id, now, f"the process running it (pid {node.pid}) died"):
                logger.warning("task %s run %s was interrupted: %s", record.task_id, record.run_id, record.error)
                self._emit(record, now)
        stale = self.store.unschedule_unregistered()
        if stale:
            logger.info("unscheduled %d stored task(s) no longer registered: %s", len(stale), ", ".join(stale))
        self.membership.beat_now()

    def measure_skew(self) -> None:
        """Measure this node's clock skew against the store before it registers its
        first tasks (their first fire times follow the store's clock)."""
        self._node = self.membership.measure(self._node_info(self.clock.now()))

    def _stop_leftovers(self, dead_nodes: set[str]) -> None:
        """Stop the process groups that scripts of dead processes on this host left
        running (kill -9 of the service does not reach them; systemd's KillMode does),
        before their runs are recorded INTERRUPTED and perhaps recovered: a recovered
        run must never run beside its orphan. A pid is only trusted together with the
        start time recorded for it, so a reused pid is left alone."""
        import psutil

        for record in self.store.active_runs():
            if record.node not in dead_nodes or record.pid is None or record.state is not RunState.RUNNING:
                continue
            try:
                started = psutil.Process(record.pid).create_time()
            except psutil.Error:
                continue  # gone already
            # The recorded time is the wall clock when the script started; the kernel's
            # counts from a boot time with one-second resolution: 2 s tells a reused pid.
            if record.pid_started is None or abs(started - record.pid_started) > 2.0:
                continue  # the pid now belongs to another process
            logger.warning(
                "stopping process group %d left running by task %s run %s of a dead scheduler process",
                record.pid,
                record.task_id,
                record.run_id,
            )
            stop_process_group(record.pid, self.config.tasks.kill_grace)

    def step(self, now: datetime) -> None:
        """Renew leases and reap, prune; each when its period has passed."""
        monotonic = self.clock.monotonic()
        now = self.membership.keep_alive(self._node_info, self._running_ids(), now)
        for record in self.membership.reap(now):
            logger.warning("task %s run %s interrupted: %s", record.task_id, record.run_id, record.error)
            self._emit(record, now)
        if monotonic >= self._next_prune and not (self._pruner and self._pruner.is_alive()):
            self._next_prune = monotonic + PRUNE_EVERY
            history = self.config.history
            older_than = now - timedelta(days=history.max_age_days) if history.max_age_days else None
            self._pruner = threading.Thread(
                target=self._prune,
                args=(older_than, history.max_runs_per_task),
                name="task-scheduler-prune",
                daemon=True,
            )
            self._pruner.start()

    def join(self, timeout: float = 30) -> None:
        """Wait for a prune in progress (before the store closes); one that outlives
        the wait ends quietly when the store closes under it."""
        self._stopping = True
        if self._pruner is not None:
            self._pruner.join(timeout=timeout)

    def notice_clock_jump(self, now: datetime) -> None:
        """Log when the wall clock moved differently from the monotonic clock between
        two steps (NTP step, manual change, suspend). Due times follow the wall clock:
        after a forward jump the skipped occurrences follow the misfire rules; after a
        backward jump nothing runs twice and jobs wait until the clock reaches their
        next due time again."""
        monotonic = self.clock.monotonic()
        if self._last_step is not None:
            last_wall, last_monotonic = self._last_step
            jump = (now - last_wall).total_seconds() - (monotonic - last_monotonic)
            if abs(jump) > max(1.0, self.config.scheduler.check_interval):
                direction = "forward" if jump > 0 else "back"
                logger.warning("the wall clock jumped %s by %.1fs; due times follow it", direction, abs(jump))
        self._last_step = (now, monotonic)

    def _prune(self, older_than: datetime | None, keep_per_task: int | None) -> None:
        try:
            pruned = self.store.prune(older_than, keep_per_task)
        except TaskSchedulerError as exc:  # the store was closed by stop(), or is broken
            (logger.debug if self._stopping else logger.warning)("pruning the history failed: %s", exc)
            return
        if pruned:
            logger.info("pruned %d old run record(s) from the history", pruned)

    def _node_info(self, now: datetime) -> NodeInfo:
        if self._node is None:
            self._node = NodeInfo(
                self.node_id, self.host, os.getpid(), now, now, self.config.source, self.store.location
            )
        skew = self.membership.skew if self.membership.has_clock else None
        self._node = replace(self._node, heartbeat_at=now, skew=skew)
        return self._node
