"""An in-process store: a heap of due times and bounded history. Nothing survives
the process and no other process can see it: use it for tests and for schedules
that are rebuilt at every start (``"store": {"url": "memory://"}``)."""

from __future__ import annotations

import heapq
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any

from task_scheduler.errors import TaskNotFoundError
from task_scheduler.stores.base import (
    WAIT_SECONDS,
    Claim,
    NextFire,
    NodeInfo,
    Origin,
    Retry,
    RunRecord,
    RunState,
    TaskDefinition,
    TaskState,
    new_run_id,
)
from task_scheduler.stores.policy import decide, exhausted, record_for, recovery_of


class MemoryStore:
    """The `Store` contract in memory. ``max_history_per_task`` bounds the history."""

    location = "memory"

    def __init__(self, max_history_per_task: int = 1000) -> None:
        self._lock = threading.Lock()
        self._tasks: dict[str, _Task] = {}
        self._removed: dict[str, _Task] = {}  # unscheduled: their counters stay for late outcomes
        # Lazy-deletion heap of (next_run_at, version, task_id): an entry is live only
        # while its version matches the scheduled task's, so a reschedule never searches
        # the heap.
        self._heap: list[tuple[datetime, int, str]] = []
        self._pending: list[tuple[datetime, str, str]] = []  # (due_at, run_id, task_id) of SCHEDULED rows
        # task_id -> run_id -> SCHEDULED/RUNNING row; only tasks with such rows are keys
        self._active: dict[str, dict[str, RunRecord]] = {}
        self._leases: dict[str, tuple[datetime, RunRecord]] = {}  # run_id -> (lease end, its RUNNING row)
        # Runs recorded INTERRUPTED (lease lapsed) that may still report an outcome.
        self._late: dict[str, None] = {}
        # History as plain tuples: the garbage collector stops tracking tuples of
        # strings, numbers and datetimes, so a large history costs no GC pauses.
        self._history: dict[str, list[tuple[Any, ...]]] = {}  # a list: one-time tasks keep one row
        self._nodes: dict[str, NodeInfo] = {}
        # node -> task_id -> the definition it registered (one dict per node, not one
        # per task; compared by fingerprint unless it is the stored one itself)
        self._registrations: dict[str, dict[str, TaskDefinition]] = {}
        self._revision = 0
        self._max_history = max_history_per_task
        self.shared = MemorySharedValues()

    # -- registration ---------------------------------------------------------------
    def sync_tasks(self, definitions: Sequence[TaskDefinition], node: str | None = None) -> Mapping[str, TaskState]:
        """The states come back as a mapping that builds each one when it is read
        (an ``add_task`` reads none): see `Store.sync_tasks`."""
        with self._lock:
            for definition in definitions:
                task_id = definition.task_id
                task = self._tasks.get(task_id)
                old = task.definition if task is not None else None
                task = task or self._removed.pop(task_id, None)
                if task is None:
                    task = _Task(definition)
                elif task.definition.fingerprint != definition.fingerprint:
                    task.next_run_at = definition.first_fire
                    task.finished = definition.first_fire is None
                if Origin.PERSISTENT in (definition.origin, getattr(old, "origin", None)) and (
                    old is None or (old.spec, old.fingerprint) != (definition.spec, definition.fingerprint)
                ):
                    self._revision += 1
                task.definition = definition
                self._tasks[task_id] = task
                if node is not None:
                    self._registrations.setdefault(node, {})[task_id] = definition
                self._push(task)
        return _States(self, [definition.task_id for definition in definitions])

    def remove_tasks(self, task_ids: Iterable[str], node: str | None = None) -> None:
        with self._lock:
            for task_id in task_ids:
                task = self._tasks.get(task_id)
                if node is not None:
                    self._registrations.get(node, {}).pop(task_id, None)
                    if self._registered(task_id) and (task is None or task.definition.origin is not Origin.PERSISTENT):
                        if task is not None and not any(
                            registered.get(task_id) is task.definition for registered in self._registrations.values()
                        ):  # other nodes run it on: keep this node's rule, not its task object
                            task.definition = task.definition.detached()
                        continue
                self._unschedule(task_id)

    def unschedule_unregistered(self) -> list[str]:
        with self._lock:
            orphans = [
                task_id
                for task_id, task in self._tasks.items()
                if task.definition.origin is not Origin.PERSISTENT and not self._registered(task_id)
            ]
            for task_id in orphans:
                self._unschedule(task_id)
            return sorted(orphans)

    # -- claiming -------------------------------------------------------------------
    def claim_due(self, now: datetime, limit: int, node: str, lease_until: datetime, next_fire: NextFire) -> Claim:
        claim = Claim()
        waiting = []
        with self._lock:
            while self._pending and self._pending[0][0] <= now and len(claim.runs) < limit:
                entry = heapq.heappop(self._pending)
                if not self._claim_pending(entry[1], entry[2], node, lease_until, claim):
                    waiting.append((now + timedelta(seconds=WAIT_SECONDS), entry[1], entry[2]))
            others = []  # due entries of tasks this node may not claim: put back untouched
            while self._heap and self._heap[0][0] <= now and len(claim.runs) < limit:
                due = heapq.heappop(self._heap)
                task = self._tasks.get(due[2])
                if task is None or task.version != due[1]:
                    continue
                if self._registered_as(task, node):
                    self._claim_task(task, now, node, lease_until, next_fire, claim)
                else:
                    others.append(due)
            for entry in waiting:
                heapq.heappush(self._pending, entry)
            claim.more = len(claim.runs) >= limit
            claim.next_due = self._next_due(node)
            for due in others:
                heapq.heappush(self._heap, due)
        return claim

    def _claimable(self, task_id: str, node: str) -> bool:
        task = self._tasks.get(task_id)
        return task is not None and self._registered_as(task, node)

    def _registered_as(self, task: _Task, node: str) -> bool:
        """Whether ``node`` registered the task with its stored fingerprint."""
        definition = task.definition
        registered = self._registrations.get(node, {}).get(definition.task_id)
        return registered is definition or (registered is not None and registered.fingerprint == definition.fingerprint)

    def _registered(self, task_id: str) -> bool:
        """Whether any node has the task registered."""
        return any(task_id in registered for registered in self._registrations.values())

    def _claim_pending(self, run_id: str, task_id: str, node: str, lease_until: datetime, claim: Claim) -> bool:
        """Start one SCHEDULED row; False when it has to wait."""
        rows = self._active.get(task_id, {})
        if run_id not in rows:
            return True  # its task was removed
        task = self._tasks.get(task_id)
        if task is None:
            self._drop_active(task_id, run_id)
            return True
        if not self._claimable(task_id, node):
            return False
        if task.paused or self._running_count(task_id) >= task.definition.max_instances:
            return False
        record = rows[run_id]
        record.state, record.node = RunState.RUNNING, node
        self._leases[run_id] = (lease_until, record)
        claim.runs.append(record)
        return True

    def _claim_task(
        self, task: _Task, now: datetime, node: str, lease_until: datetime, next_fire: NextFire, claim: Claim
    ) -> None:
        if task.paused or task.finished or task.next_run_at is None:
            return
        task_id = task.definition.task_id
        decision = decide(task.definition, task, now, self._running_count(task_id), next_fire)
        task.next_run_at = decision.next_run_at
        final = [record_for(task_id, when, RunState.MISSED, node, reason, now) for when, reason in decision.missed]
        if decision.skipped is not None:
            final.append(record_for(task_id, decision.skipped[0], RunState.SKIPPED, node, decision.skipped[1], now))
        for record in final:
            self._record_final(record)
        claim.recorded.extend(final)
        if decision.run is not None:
            if decision.replace:
                claim.replace += [
                    r.run_id for r in self._active.get(task_id, {}).values() if r.state is RunState.RUNNING
                ]
            record = RunRecord(new_run_id(), task_id, decision.run, RunState.RUNNING, node=node)
            rows = self._active.get(task_id)
            if rows is None:
                rows = self._active[task_id] = {}
            rows[record.run_id] = record
            self._leases[record.run_id] = (lease_until, record)
            claim.runs.append(record)  # shared with the caller, who fills in the outcome
        self._settle(task)

    # -- outcomes -------------------------------------------------------------------
    def finish(self, records: Sequence[RunRecord], retries: Sequence[Retry] = ()) -> None:
        with self._lock:
            retried = {retry.record.run_id for retry in retries}
            taken = set()
            for record in records:
                active = self._drop_active(record.task_id, record.run_id)
                self._leases.pop(record.run_id, None)
                if self._late.pop(record.run_id, 0) is None:
                    self._replace_interrupted(record, retried=record.run_id in retried)
                elif active is not None:
                    self._record_final(record, retried=record.run_id in retried)
                else:
                    continue  # written before (see Store.finish)
                taken.add(record.run_id)
            for retry in (retry for retry in retries if retry.record.run_id in taken):
                previous = retry.record
                again = RunRecord(
                    new_run_id(), previous.task_id, previous.scheduled_for, RunState.SCHEDULED,
                    attempt=previous.attempt + 1, manual=previous.manual,
                )  # fmt: skip
                self._add_pending(again, retry.due_at)
            for task_id in {record.task_id for record in records}:
                task = self._tasks.get(task_id)
                if task is not None:
                    if exhausted(task.definition, task):
                        task.next_run_at = None
                    self._settle(task)

    def record_process(self, run_id: str, pid: int, pid_started: float) -> None:
        with self._lock:
            lease = self._leases.get(run_id)
            if lease is not None:
                lease[1].pid, lease[1].pid_started = pid, pid_started

    def set_paused(self, task_id: str, paused: bool) -> TaskState:
        with self._lock:
            task = self._tasks.get(task_id)
            if task is None:
                raise TaskNotFoundError(task_id)
            task.paused = paused
            self._push(task)
            return task.state()

    def request_run(self, task_id: str, due_at: datetime, node: str | None) -> RunRecord:
        with self._lock:
            if task_id not in self._tasks:
                raise TaskNotFoundError(task_id)
            record = RunRecord(new_run_id(), task_id, due_at, RunState.SCHEDULED, node=node, manual=True)
            self._add_pending(record, due_at)
            return replace(record)

    # -- nodes and leases -----------------------------------------------------------
    def heartbeat(self, node: NodeInfo, run_ids: Sequence[str], lease_until: datetime) -> datetime | None:
        with self._lock:
            self._nodes[node.node_id] = node
            for run_id in run_ids:
                lease = self._leases.get(run_id)
                if lease is not None:
                    self._leases[run_id] = (lease_until, lease[1])
        return None

    def reap(self, now: datetime, node_timeout: float) -> list[RunRecord]:
        with self._lock:
            expired = {run_id for run_id, (until, _) in self._leases.items() if until < now}
            interrupted = []
            if expired:
                interrupted = self._interrupt(lambda r: r.run_id in expired, now, "its node stopped renewing the lease")
            silent = [n for n, info in self._nodes.items() if (now - info.heartbeat_at).total_seconds() > node_timeout]
            for node in silent:
                self._forget_node(node)
            if silent:
                for task_id, task in list(self._tasks.items()):
                    if task.definition.origin is not Origin.PERSISTENT and not self._registered(task_id):
                        self._unschedule(task_id)
            return interrupted

    def leave(self, node: str, now: datetime, reason: str) -> list[RunRecord]:
        with self._lock:
            self._forget_node(node)
            return self._interrupt(lambda r: r.node == node, now, reason)

    def _forget_node(self, node: str) -> None:
        self._nodes.pop(node, None)
        self._registrations.pop(node, None)

    def _interrupt(self, which: Callable[[RunRecord], bool], now: datetime, reason: str) -> list[RunRecord]:
        interrupted = []
        for rows in list(self._active.values()):
            for record in list(rows.values()):
                if record.state is RunState.RUNNING and which(record):
                    self._drop_active(record.task_id, record.run_id)
                    self._leases.pop(record.run_id, None)
                    self._late[record.run_id] = None
                    if len(self._late) > 10_000:  # bounded: the oldest can no longer report
                        del self._late[next(iter(self._late))]
                    final = replace(record, state=RunState.INTERRUPTED, finished_at=now, error=reason)
                    self._record_final(final)
                    interrupted.append(final)
                    task = self._tasks.get(record.task_id)
                    if task is not None and task.definition.recover:
                        self._add_pending(*recovery_of(final, now))
        return interrupted

    def prune(self, older_than: datetime | None, keep_per_task: int | None) -> int:
        with self._lock:
            removed = 0
            for task_id, pool in self._history.items():
                kept = [r for r in pool if older_than is None or (r[6] or r[2]) >= older_than]
                if keep_per_task is not None:
                    kept = kept[-keep_per_task:] if keep_per_task else []
                removed += len(pool) - len(kept)
                self._history[task_id] = kept
            return removed

    # -- queries --------------------------------------------------------------------
    def task_states(self) -> dict[str, TaskState]:
        with self._lock:
            definitions = [task.definition for task in self._tasks.values()]
        for definition in definitions:
            definition.fingerprint  # noqa: B018 - made outside the lock the loop claims under
        with self._lock:
            return {task_id: task.state() for task_id, task in self._tasks.items()}

    def job_specs(self, origin: Origin | None = None) -> dict[str, dict[str, Any]]:
        with self._lock:
            return {
                task_id: task.definition.spec
                for task_id, task in self._tasks.items()
                if task.definition.spec is not None and origin in (None, task.definition.origin)
            }

    def revision(self) -> int:
        return self._revision

    def active_runs(self) -> list[RunRecord]:
        with self._lock:
            return [replace(record) for rows in self._active.values() for record in rows.values()]

    def history(self, task_id: str | None = None, state: RunState | None = None, limit: int = 100) -> list[RunRecord]:
        with self._lock:
            pools = [self._history.get(task_id, [])] if task_id else list(self._history.values())
            records = [_unpack(r) for pool in pools for r in pool if state is None or r[3] == state.value]
        records.sort(key=lambda r: (r.finished_at or r.scheduled_for, r.scheduled_for), reverse=True)
        return records[:limit]

    def run(self, run_id: str) -> RunRecord | None:
        with self._lock:
            candidates = [r for rows in self._active.values() for r in rows.values()]
            candidates += [_unpack(row) for pool in self._history.values() for row in pool]
        return _find_run(candidates, run_id)

    def nodes(self) -> list[NodeInfo]:
        with self._lock:
            return list(self._nodes.values())

    def watch(self, callback: Callable[[], None]) -> None:
        """Only this process changes a memory store: nothing to watch."""

    def close(self) -> None:
        """Nothing to release."""

    def _state_of(self, task_id: str) -> TaskState:
        with self._lock:
            task = self._tasks.get(task_id) or self._removed.get(task_id)
            if task is None:
                raise KeyError(task_id)
            return task.state()

    # -- internals (lock held) ------------------------------------------------------
    def _unschedule(self, task_id: str) -> None:
        """Unschedule a task (its heap entries go stale: it is no longer in _tasks)."""
        for registered in self._registrations.values():
            registered.pop(task_id, None)
        task = self._tasks.pop(task_id, None)
        if task is not None:
            if task.definition.origin is Origin.PERSISTENT:
                self._revision += 1
            task.definition = task.definition.detached()  # the removed task's object is not kept alive
            self._removed[task_id] = task

    def _replace_interrupted(self, record: RunRecord, retried: bool) -> None:
        """A run recorded INTERRUPTED when its lease lapsed reported its real outcome
        after all: the outcome replaces the interruption in history and counters."""
        pool = self._history.get(record.task_id, [])
        for index, row in enumerate(pool):
            if row[0] == record.run_id:
                pool[index] = _pack(record)
                break
        task = self._tasks.get(record.task_id) or self._removed.get(record.task_id)
        if task is not None:
            counters = task.counters()
            counters.interrupted_count -= 1
            counters.count(record, retried)

    def _record_final(self, record: RunRecord, retried: bool = False) -> None:
        pool = self._history.get(record.task_id)
        if pool is None:
            pool = self._history[record.task_id] = []
        pool.append(_pack(record))
        if len(pool) > self._max_history:
            del pool[0]
        task = self._tasks.get(record.task_id) or self._removed.get(record.task_id)
        if task is not None:
            task.counters().count(record, retried)

    def _drop_active(self, task_id: str, run_id: str) -> RunRecord | None:
        rows = self._active.get(task_id)
        record = rows.pop(run_id, None) if rows is not None else None
        if rows is not None and not rows:
            del self._active[task_id]  # one-time tasks would otherwise leave a dict each
        return record

    def _add_pending(self, record: RunRecord, due_at: datetime) -> None:
        self._active.setdefault(record.task_id, {})[record.run_id] = record
        heapq.heappush(self._pending, (due_at, record.run_id, record.task_id))

    def _settle(self, task: _Task) -> None:
        """Mark a task with no next fire and nothing pending finished; re-heap it."""
        if task.next_run_at is None and not self._active.get(task.definition.task_id):
            task.finished = True
        self._push(task)

    def _push(self, task: _Task) -> None:
        task.version += 1
        if task.next_run_at is not None and not task.paused and not task.finished:
            heapq.heappush(self._heap, (task.next_run_at, task.version, task.definition.task_id))

    def _live(self, entry: tuple[datetime, int, str]) -> bool:
        """Whether a heap entry is its task's current due time."""
        task = self._tasks.get(entry[2])
        return task is not None and task.version == entry[1]

    def _next_due(self, node: str) -> datetime | None:
        """The earliest due time among ``node``'s tasks. The heap's top entries of
        tasks it cannot claim (another node's) are looked past, not popped."""
        while self._heap and not self._live(self._heap[0]):
            heapq.heappop(self._heap)
        heap = _in_order(self._heap)
        claimable = (entry[0] for entry in heap if self._live(entry) and self._claimable(entry[2], node))
        task_due = next(claimable, None)
        candidates = [due for due in (task_due, self._pending[0][0] if self._pending else None) if due is not None]
        return min(candidates) if candidates else None

    def _running_count(self, task_id: str) -> int:
        rows = self._active.get(task_id)
        if not rows:
            return 0
        return sum(1 for r in rows.values() if r.state is RunState.RUNNING)


class _Task:
    """One scheduled (or unscheduled) task: its definition, its schedule state and,
    from its first recorded outcome on, its counters. One small object per task
    (a full TaskState is built when one is asked for)."""

    __slots__ = ("_counters", "definition", "finished", "next_run_at", "paused", "version")

    def __init__(self, definition: TaskDefinition) -> None:
        self.definition = definition
        self.next_run_at = definition.first_fire
        self.finished = definition.first_fire is None
        self.paused = False
        self.version = 0
        self._counters: TaskState | None = None

    @property
    def run_count(self) -> int:
        return 0 if self._counters is None else self._counters.run_count

    def counters(self) -> TaskState:
        """The task's counters (created at its first outcome)."""
        if self._counters is None:
            self._counters = TaskState(self.definition.task_id)
        return self._counters

    def state(self) -> TaskState:
        """A detached TaskState of this task."""
        d = self.definition
        state = TaskState(d.task_id) if self._counters is None else self._counters.copy()
        state.fingerprint, state.name, state.schedule, state.origin, state.problem = (
            d.fingerprint, d.name, d.schedule, d.origin, d.problem
        )  # fmt: skip
        state.next_run_at, state.paused, state.finished = self.next_run_at, self.paused, self.finished
        return state


class _States(Mapping[str, TaskState]):
    """`MemoryStore.sync_tasks`'s states: each built (detached, current) when read."""

    def __init__(self, store: MemoryStore, task_ids: list[str]) -> None:
        self._store, self._ids = store, dict.fromkeys(task_ids)

    def __getitem__(self, task_id: str) -> TaskState:
        if task_id not in self._ids:
            raise KeyError(task_id)
        return self._store._state_of(task_id)

    def __iter__(self) -> Iterator[str]:
        return iter(self._ids)

    def __len__(self) -> int:
        return len(self._ids)


class MemorySharedValues:
    """The `SharedValues` contract in a dict: (JSON text, expiry) by key."""

    def __init__(self) -> None:
        self._values: dict[str, tuple[str, datetime | None]] = {}
        self._lock = threading.Lock()

    def set(self, key: str, value: str, expires_at: datetime | None) -> None:
        with self._lock:
            self._values[key] = (value, expires_at)

    def get(self, key: str, now: datetime) -> str | None:
        with self._lock:
            found = self._values.get(key)
        if found is None or (found[1] is not None and found[1] <= now):
            return None
        return found[0]

    def delete(self, key: str) -> bool:
        with self._lock:
            return self._values.pop(key, None) is not None

    def keys(self, now: datetime | None) -> list[str]:
        with self._lock:
            items = list(self._values.items())
        return sorted(k for k, (_, until) in items if now is None or until is None or until > now)

    def purge(self, now: datetime) -> int:
        with self._lock:
            expired = [k for k, (_, until) in self._values.items() if until is not None and until <= now]
            for key in expired:
                del self._values[key]
        return len(expired)

    def clear(self) -> int:
        with self._lock:
            count = len(self._values)
            self._values.clear()
        return count


def _in_order(heap: list[tuple[datetime, int, str]]) -> Iterator[tuple[datetime, int, str]]:
    """A heap's entries in order without changing it (lazily: usually one is enough)."""
    if not heap:
        return
    yield heap[0]
    frontier = [(heap[i], i) for i in (1, 2) if i < len(heap)]
    heapq.heapify(frontier)
    while frontier:
        entry, index = heapq.heappop(frontier)
        yield entry
        for child in (2 * index + 1, 2 * index + 2):
            if child < len(heap):
                heapq.heappush(frontier, (heap[child], child))


def _find_run(records: list[RunRecord], run_id: str) -> RunRecord | None:
    """The one record whose id is ``run_id`` or, for 6+ characters, starts or ends with it."""
    matches = [r for r in records if r.run_id == run_id]
    if not matches and len(run_id) >= 6:
        matches = [r for r in records if r.run_id.startswith(run_id) or r.run_id.endswith(run_id)]
    return matches[0] if len({r.run_id for r in matches}) == 1 else None


# An enum's ``.value`` is a descriptor call; a dict lookup is several times cheaper.
_STATE_VALUE = {state: state.value for state in RunState}
_STATE_OF = {state.value: state for state in RunState}


def _pack(record: RunRecord) -> tuple[Any, ...]:
    return (
        record.run_id, record.task_id, record.scheduled_for, _STATE_VALUE[record.state], record.attempt,
        record.started_at, record.finished_at, record.exit_code, record.error, record.output, record.node,
        record.manual, record.pid, record.pid_started, record.cpu_user, record.cpu_system, record.max_rss,
    )  # fmt: skip


def _unpack(row: tuple[Any, ...]) -> RunRecord:
    return RunRecord(row[0], row[1], row[2], _STATE_OF[row[3]], *row[4:])
