"""Handing claimed runs to worker threads and collecting their outcomes.

The scheduler's loop claims occurrences from the store; the `Dispatcher` runs them on
``max_workers`` named worker threads that wait on one `queue.SimpleQueue`: handing a
run over is one ``put`` that wakes one waiting thread (no future per run, no
executor bookkeeping on the path between a due time and the start of its run), and
a busy worker takes the next queued run without sleeping. The threads are started
with the scheduler; queued runs are cancelled on stop. A run with jitter waits in a
heap here (not in a worker) until its start time; a function run with a timeout has
a deadline in another heap, and the loop cancels it when the deadline passes
(scripts enforce their own timeout and kill their process group). Finished runs are
collected by the loop in batches: one wake-up per batch, not per run.
"""

from __future__ import annotations

import gc
import heapq
import logging
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from queue import SimpleQueue
from typing import TYPE_CHECKING

from task_scheduler.execution import CANCEL_TIMEOUT, execute_attempt
from task_scheduler.registry import Registered
from task_scheduler.stores.base import RunRecord, RunState
from task_scheduler.tasks import ScriptTask, TaskContext

if TYPE_CHECKING:
    from task_scheduler.config import SchedulerSection

__all__ = ["Active", "Dispatcher", "prepare_process"]

logger = logging.getLogger(__name__)
# What tasks log through ``context.logger``; every record carries task_id and run_id
# (see logs.py), so one logger serves all tasks (a logger per task costs ~1 KB each).
TASK_LOGGER = logging.getLogger("task_scheduler.task")


def prepare_process(settings: SchedulerSection) -> None:
    """At start: take what exists out of the collector's reach and let the loop get the
    GIL back quickly from worker threads (both process-wide; each can be turned off)."""
    if settings.gc_freeze:
        # What exists now (modules, config, registered tasks) lives as long as the
        # process: take it out of the collector's generations, so that a full
        # collection does not scan it (26 ms with 1,000 tasks: the largest firing
        # delay). Collected first, so no garbage cycle is kept.
        gc.collect()
        gc.freeze()
    if settings.switch_interval is not None and settings.switch_interval < sys.getswitchinterval():
        # A thread running Python keeps the GIL this long while the loop waits for it:
        # with Python's 5 ms, a job computing in a worker delays every fire by
        # milliseconds (measured: lateness p50 8.6 ms beside one CPU-bound thread,
        # 1.7 ms with 1 ms). Only lowered, never raised.
        sys.setswitchinterval(settings.switch_interval)


@dataclass(slots=True)
class Active:
    """A claimed run from its submission until its outcome is collected."""

    record: RunRecord
    context: TaskContext
    entry: Registered
    deadline: datetime | None = None  # when the loop cancels it (a function run with a timeout)
    started_at: datetime | None = None  # when a worker began it (set by that worker)


class Dispatcher:
    """Runs claimed occurrences on up to ``max_workers`` threads.

    ``now`` is the scheduler's wall clock; ``wake`` is called when the first run of
    a batch finishes, so the loop collects it; ``on_process`` is called by script
    runs with (run_id, pid, pid_started) as soon as their process exists.
    """

    def __init__(
        self,
        max_workers: int,
        now: Callable[[], datetime],
        wake: Callable[[], None],
        on_process: Callable[[str, int, float], None] | None = None,
    ) -> None:
        self.max_workers = max_workers
        self._now = now
        self._wake = wake
        self._on_process = on_process
        self.active: dict[str, Active] = {}  # run_id -> run, from submission until collected
        self._finished: deque[RunRecord] = deque()  # appended by workers, drained by the loop
        self._signalled = False  # the loop was woken for the finished runs not taken yet
        self._delayed: list[tuple[datetime, str]] = []  # (start_at, run_id): runs waiting for their jitter
        self._deadlines: list[tuple[datetime, str]] = []  # (deadline, run_id) of function runs
        self._queue: SimpleQueue[Active | None] = SimpleQueue()  # launched runs; None stops a worker
        self._workers: list[threading.Thread] = []
        self._in_flight = 0  # launched runs whose outcome is not collected yet
        self._progress = threading.Condition(threading.Lock())
        self._start_lock = threading.Lock()

    def start(self) -> None:
        """Start the worker threads (idempotent; the first run starts them too)."""
        with self._start_lock:
            while len(self._workers) < self.max_workers:
                worker = threading.Thread(target=self._work, name=f"task-worker-{len(self._workers)}", daemon=True)
                worker.start()
                self._workers.append(worker)

    # -- submitting -------------------------------------------------------------------
    def submit(self, record: RunRecord, entry: Registered, now: datetime) -> Active:
        """Take a claimed run; it starts now, or at its jitter offset."""
        context = TaskContext(
            record.task_id, record.run_id, record.scheduled_for, record.attempt, TASK_LOGGER, entry.timeout
        )
        if self._on_process is not None and isinstance(entry.task, ScriptTask):
            context.on_process = self._on_process
        active = Active(record, context, entry)
        self.active[record.run_id] = active
        start_at = now
        if entry.rule.jitter and not record.manual and record.attempt == 1:
            start_at = record.scheduled_for + entry.rule.jitter_offset(record.task_id, record.scheduled_for)
        if start_at > now:  # jitter: the run waits in a heap, not in a worker
            heapq.heappush(self._delayed, (start_at, record.run_id))
        else:
            self._launch(active, now)
        return active

    def start_delayed(self, now: datetime) -> None:
        """Launch the jittered runs whose start time has come."""
        while self._delayed and self._delayed[0][0] <= now:
            _, run_id = heapq.heappop(self._delayed)
            if run_id in self.active:
                self._launch(self.active[run_id], now)

    def _launch(self, active: Active, now: datetime) -> None:
        entry = active.entry
        # Scripts enforce their own timeout (and kill their process group); other
        # tasks get their cancel event set by the loop at the deadline.
        if entry.timeout is not None and not isinstance(entry.task, ScriptTask):
            active.deadline = now + timedelta(seconds=entry.timeout)
            heapq.heappush(self._deadlines, (active.deadline, active.record.run_id))
        with self._progress:
            self._in_flight += 1
        if not self._workers:
            self.start()
        self._queue.put(active)

    def _work(self) -> None:
        """A worker thread: run queued runs, one after another, until told to stop."""
        while True:
            active = self._queue.get()
            if active is None:
                return
            if active.context.cancelled:  # cancelled (replace, stop) before it started
                record = active.record
                record.state, record.finished_at = RunState.INTERRUPTED, self._now()
                record.error = f"interrupted before it started: {active.context.cancel_reason}"
                final = record
            else:
                active.started_at = self._now()
                final = execute_attempt(active.entry.task, active.record, active.context, self._now, active.started_at)
            # No lock per run (ten workers contending for one cost a burst ~15% of its rate):
            # the append is atomic, and only the first run finished since the flag was
            # last reset wakes the loop and `wait`. The flag is reset before each drain
            # and before `wait` looks, so a run appended later finds it clear and wakes
            # them, and one appended earlier is taken by that drain or seen by that look.
            self._finished.append(final)
            if not self._signalled:
                self._signalled = True
                with self._progress:
                    self._progress.notify_all()
                self._wake()
            del active  # an idle worker does not keep its last task alive

    # -- the loop's side --------------------------------------------------------------
    def enforce_timeouts(self, now: datetime) -> None:
        """Cancel function runs past their deadline. A timeout counts from the start
        of the run: the first check is ``timeout`` after launch, and a run that was
        still waiting for a worker then is looked at again when its own time is up."""
        while self._deadlines and self._deadlines[0][0] <= now:
            _, run_id = heapq.heappop(self._deadlines)
            active = self.active.get(run_id)
            if active is None or active.context.cancelled or active.context.timeout is None:
                continue
            started = active.started_at
            due = (started or now) + timedelta(seconds=active.context.timeout)
            if due > now:  # not started yet, or started after it was launched
                active.deadline = due
                heapq.heappush(self._deadlines, (due, run_id))
                continue
            logger.warning(
                "task %s run %s passed its timeout of %ss; cancelling",
                active.record.task_id,
                run_id,
                active.context.timeout,
            )
            active.context.cancel(CANCEL_TIMEOUT)
        # A run that finished in time leaves its entry behind (a heap cannot drop one
        # cheaply). Drop them in one pass once they outnumber the runs in flight, so the
        # heap holds the runs in flight, not every run of the last `timeout` seconds
        # (300 s at 1,000 runs/s was 300,000 entries, 40 MB). Amortized O(1) per run.
        if len(self._deadlines) > 2 * len(self.active) + 64:
            self._deadlines = [entry for entry in self._deadlines if entry[1] in self.active]
            heapq.heapify(self._deadlines)

    def take_finished(self) -> list[tuple[RunRecord, Active | None]]:
        """The runs finished since the last call, with what was submitted for them.
        Their slots stay counted as in flight until `collected`."""
        self._signalled = False  # before draining: a run appended after this wakes the loop again
        records: list[RunRecord] = []
        try:
            while True:  # popleft, not a copy and clear: `wait_for_runs` may drain at the same time
                records.append(self._finished.popleft())
        except IndexError:
            pass
        return [(record, self.active.pop(record.run_id, None)) for record in records]

    def collected(self, count: int) -> None:
        """``count`` finished runs have been recorded."""
        with self._progress:
            self._in_flight -= count
            self._progress.notify_all()

    def wait(self, deadline: float | None) -> bool:
        """Block until a run finishes or none is in flight (True), or until the
        ``deadline`` on time.monotonic() passes (False)."""
        with self._progress:
            while True:
                self._signalled = False  # before looking: a run finishing after this notifies
                if self._finished or not self._in_flight:
                    break
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                self._progress.wait(remaining)
            return True

    @property
    def in_flight(self) -> int:
        return self._in_flight

    @property
    def queued(self) -> int:
        """Launched runs waiting for a free worker."""
        return self._queue.qsize()

    def next_wake(self) -> datetime | None:
        """The earliest jitter start or function deadline, if any."""
        times = [heap[0][0] for heap in (self._delayed, self._deadlines) if heap]
        return min(times) if times else None

    def cancel(self, run_ids: list[str], reason: str) -> None:
        for run_id in run_ids:
            active = self.active.get(run_id)
            if active is not None:
                active.context.cancel(reason)

    def cancel_all(self, reason: str) -> None:
        """Queued runs end INTERRUPTED without starting; running scripts are killed
        with their process group; functions are asked to stop."""
        self.cancel(list(self.active), reason)

    def shutdown(self) -> None:
        """Stop the worker threads once they are done with what they run (idempotent;
        does not wait: a function that ignores its cancel event keeps its thread)."""
        with self._start_lock:
            workers, self._workers = self._workers, []
        for _ in workers:
            self._queue.put(None)
