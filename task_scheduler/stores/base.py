"""The Store contract: what every state backend speaks (the misfire policy every
store applies inside its claim is `task_scheduler.stores.policy`).

The scheduler never owns the truth about *when* a task is due or *whether* an
occurrence already ran: it asks the store to **claim** due occurrences. A claim
advances the task's ``next_run_at`` and inserts RUNNING run rows in one step, so the
same occurrence can never be handed out twice, by this process or (for a shared
store) by another node. Misfire, coalesce, catch-up, max_instances and max_runs are
decided inside the claim by `policy.decide` so that every store applies the same rules.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from datetime import datetime
from enum import Enum
from typing import Any, Protocol

__all__ = [
    "Claim",
    "NodeInfo",
    "ConcurrencyPolicy",
    "Origin",
    "NextFire",
    "Retry",
    "RunRecord",
    "RunState",
    "SharedValues",
    "Store",
    "TaskDefinition",
    "TaskState",
    "new_run_id",
]

# A SCHEDULED row (retry, manual run) that must wait - task paused or at
# max_instances - is looked at again after this many seconds; it is never dropped.
WAIT_SECONDS = 1.0

NextFire = Callable[[str, datetime], datetime | None]
"""``next_fire(task_id, after)``: the pure next-fire callback a claim uses."""


class RunState(Enum):
    """The life of one occurrence's attempt; the last six are final outcomes."""

    SCHEDULED = "scheduled"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    TIMED_OUT = "timed_out"
    MISSED = "missed"
    SKIPPED = "skipped"
    INTERRUPTED = "interrupted"

    @property
    def is_final(self) -> bool:
        return self not in (RunState.SCHEDULED, RunState.RUNNING)


class ConcurrencyPolicy(Enum):
    """What an occurrence does when the task already has ``max_instances`` running
    (names from Kubernetes CronJob)."""

    FORBID = "forbid"  # skip it and record SKIPPED
    ALLOW = "allow"  # run it anyway
    REPLACE = "replace"  # cancel the running one(s), then run it


class Origin(Enum):
    """Where a task's definition comes from, which decides who may change it and
    whether a new process restores it from the store."""

    CONFIG = "config"  # a job of the config file: the file is its truth
    CODE = "code"  # added by the program at every start (add_task, decorators)
    PERSISTENT = "persistent"  # defined by data in the store: restored by every later process


_RUN_ID_PREFIX = os.urandom(8).hex()
_RUN_ID_COUNTER = itertools.count(int.from_bytes(os.urandom(4), "big"))


def new_run_id() -> str:
    """32 hex digits, unique across processes: a random per-process prefix and a
    counter (uuid4 costs a system call per run)."""
    return f"{_RUN_ID_PREFIX}{next(_RUN_ID_COUNTER) & 0xFFFFFFFFFFFFFFFF:016x}"


@dataclass(slots=True)
class RunRecord:
    """One attempt of one occurrence of a task, from claim to outcome."""

    run_id: str
    task_id: str
    scheduled_for: datetime
    state: RunState
    attempt: int = 1
    started_at: datetime | None = None
    finished_at: datetime | None = None
    exit_code: int | None = None
    error: str | None = None
    output: str | None = None
    node: str | None = None
    manual: bool = False
    # A script run's process (its group leader) and that process's start time
    # (seconds since the epoch; a reused pid has another), recorded when it starts,
    # so that a restart can find and stop what a crashed service left running.
    pid: int | None = None
    pid_started: float | None = None
    # Resource use of a script run's process tree: CPU seconds and peak RSS in bytes.
    cpu_user: float | None = None
    cpu_system: float | None = None
    max_rss: int | None = None

    @property
    def duration(self) -> float | None:
        if self.started_at is None or self.finished_at is None:
            return None
        return (self.finished_at - self.started_at).total_seconds()

    @property
    def queue_delay(self) -> float | None:
        """Seconds from the scheduled time until a worker started the run."""
        if self.started_at is None:
            return None
        return (self.started_at - self.scheduled_for).total_seconds()

    def to_dict(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "task_id": self.task_id,
            "scheduled_for": _iso(self.scheduled_for),
            "state": self.state.value,
            "attempt": self.attempt,
            "started_at": _iso(self.started_at),
            "finished_at": _iso(self.finished_at),
            "duration": self.duration,
            "queue_delay": self.queue_delay,
            "exit_code": self.exit_code,
            "error": self.error,
            "output": self.output,
            "node": self.node,
            "manual": self.manual,
            "pid": self.pid,
            "cpu_user": self.cpu_user,
            "cpu_system": self.cpu_system,
            "max_rss": self.max_rss,
        }


class Fingerprinted(Protocol):
    """A schedule rule, as far as a store needs it: its stable text identity."""

    def fingerprint(self) -> str: ...


@dataclass(slots=True)
class TaskDefinition:
    """What the store needs to know about a task to claim its occurrences. Never
    changed once made (not frozen only because a frozen dataclass takes 1.4 us more
    to build, on every ``add_task``)."""

    task_id: str
    # The task's rule, or its fingerprint read back from a store. A changed fingerprint
    # reschedules the task from first_fire; a rule's is made when a store first asks
    # (the memory store only does when a task is defined again).
    rule: Fingerprinted | str
    first_fire: datetime | None
    misfire_grace_time: float | None = 60.0  # None: any lateness is fine
    coalesce: bool = True
    catch_up: bool = False
    max_instances: int = 1
    concurrency_policy: ConcurrencyPolicy = ConcurrencyPolicy.FORBID
    max_runs: int | None = None
    recover: bool = False  # re-run INTERRUPTED runs as their next attempt
    name: str = ""  # for people: the CLI's list and show
    schedule: str = ""  # the rule in words
    origin: Origin = Origin.CODE
    # The job as data (`task_scheduler.jobs.JobSpec.to_dict`), when it can be said as
    # data; a PERSISTENT task is rebuilt from it by every later process.
    spec: dict[str, Any] | None = None
    problem: str | None = None  # why the task cannot run as defined (e.g. its callable is gone)

    @property
    def fingerprint(self) -> str:
        rule = self.rule
        return rule if isinstance(rule, str) else rule.fingerprint()

    def detached(self) -> TaskDefinition:
        """This definition alone, its rule as a fingerprint: without what a subclass
        (the scheduler's `Registered`: the task object, its function) keeps beside it."""
        return TaskDefinition(self.task_id, self.fingerprint, *(getattr(self, name) for name in _DEFINITION_FIELDS[2:]))

    def options(self) -> dict[str, Any]:
        """The claim options as JSON-able data (stores persist them)."""
        return {
            "misfire_grace_time": self.misfire_grace_time,
            "coalesce": self.coalesce,
            "catch_up": self.catch_up,
            "max_instances": self.max_instances,
            "concurrency_policy": self.concurrency_policy.value,
            "max_runs": self.max_runs,
            "recover": self.recover,
            "name": self.name,
            "schedule": self.schedule,
        }

    @classmethod
    def from_options(cls, task_id: str, fingerprint: str, options: dict[str, Any]) -> TaskDefinition:
        """The claim options read back (origin, spec and problem are stored apart)."""
        policy = ConcurrencyPolicy(options.pop("concurrency_policy", "forbid"))
        return cls(task_id, fingerprint, None, concurrency_policy=policy, **options)


_DEFINITION_FIELDS = tuple(f.name for f in fields(TaskDefinition))


@dataclass(slots=True)
class TaskState:
    """The persisted schedule state and counters of one task."""

    task_id: str
    fingerprint: str = ""
    name: str = ""
    schedule: str = ""
    next_run_at: datetime | None = None
    paused: bool = False
    finished: bool = False
    run_count: int = 0  # occurrences that reached a final SUCCEEDED/FAILED/TIMED_OUT
    success_count: int = 0
    failure_count: int = 0
    retry_count: int = 0  # failed attempts that were retried
    missed_count: int = 0
    skipped_count: int = 0
    interrupted_count: int = 0
    total_duration: float = 0.0
    last_run_at: datetime | None = None
    last_state: RunState | None = None
    last_error: str | None = None
    last_duration: float | None = None
    origin: Origin = Origin.CODE
    problem: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "task_id": self.task_id,
            "name": self.name,
            "schedule": self.schedule,
            "origin": self.origin.value,
            "problem": self.problem,
            "next_run_at": _iso(self.next_run_at),
            "paused": self.paused,
            "finished": self.finished,
            "run_count": self.run_count,
            "success_count": self.success_count,
            "failure_count": self.failure_count,
            "retry_count": self.retry_count,
            "missed_count": self.missed_count,
            "skipped_count": self.skipped_count,
            "interrupted_count": self.interrupted_count,
            "average_duration": self.total_duration / self.run_count if self.run_count else None,
            "last_run_at": _iso(self.last_run_at),
            "last_state": self.last_state.value if self.last_state else None,
            "last_error": self.last_error,
            "last_duration": self.last_duration,
        }

    def copy(self) -> TaskState:
        """A detached copy, as a store hands states out (in half the time of
        ``dataclasses.replace``: the memory store copies one per added task)."""
        new = object.__new__(TaskState)
        for name in self.__slots__:
            setattr(new, name, getattr(self, name))
        return new

    def count(self, record: RunRecord, retried: bool) -> None:
        """Fold one final record into the counters."""
        state = record.state
        if state is RunState.MISSED:
            self.missed_count += 1
            return
        if state is RunState.SKIPPED:
            self.skipped_count += 1
            return
        duration = record.duration
        if state is RunState.INTERRUPTED:
            self.interrupted_count += 1
        elif retried:
            self.retry_count += 1
        else:
            self.run_count += 1
            if state is RunState.SUCCEEDED:
                self.success_count += 1
            else:
                self.failure_count += 1
            self.total_duration += duration or 0.0
        self.last_run_at = record.started_at or record.scheduled_for
        self.last_state = state
        self.last_error = record.error if state is not RunState.SUCCEEDED else None
        self.last_duration = duration


@dataclass(frozen=True)
class NodeInfo:
    """A scheduler process using the store, as its heartbeat reports it."""

    node_id: str
    host: str
    pid: int
    started_at: datetime
    heartbeat_at: datetime
    config: str | None = None
    store: str | None = None
    # This node's clock minus the store's (seconds), measured at its last heartbeat;
    # None where the store has no clock of its own (memory, SQLite).
    skew: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "node_id": self.node_id,
            "host": self.host,
            "pid": self.pid,
            "started_at": _iso(self.started_at),
            "heartbeat_at": _iso(self.heartbeat_at),
            "config": self.config,
            "store": self.store,
            "skew": self.skew,
        }


@dataclass(frozen=True)
class Retry:
    """A failed attempt to be run again at ``due_at`` as a timed occurrence."""

    record: RunRecord
    due_at: datetime


@dataclass
class Claim:
    """What one `Store.claim_due` call hands the scheduler."""

    runs: list[RunRecord] = field(default_factory=list)  # RUNNING, to execute now
    recorded: list[RunRecord] = field(default_factory=list)  # MISSED/SKIPPED, already final
    replace: list[str] = field(default_factory=list)  # run_ids to cancel (policy REPLACE)
    next_due: datetime | None = None  # earliest due time still pending
    more: bool = False  # the limit was hit: claim again at once


class SharedValues(Protocol):
    """A key-value store with expiry that tasks and processes share (the
    ``store.shared`` of every `Store`; `task_scheduler.shared` is its face).

    Values are JSON text, given and returned as ``str``; the caller encodes. Times are
    aware UTC datetimes; a value whose ``expires_at`` is at or before ``now`` is gone
    for every read (``get``, ``keys``) whether or not `purge` has removed it yet.
    Thread-safe; each call is one transaction. A store shared by processes (SQLite,
    PostgreSQL) shares the values too, and keeps them across restarts.
    """

    def set(self, key: str, value: str, expires_at: datetime | None) -> None:
        """Insert or replace ``key``; ``expires_at`` None keeps it until deleted."""

    def get(self, key: str, now: datetime) -> str | None:
        """The value of ``key`` unless missing or expired at ``now``."""

    def delete(self, key: str) -> bool:
        """Remove ``key``; whether it existed (expired or not)."""

    def keys(self, now: datetime | None) -> list[str]:
        """Sorted keys alive at ``now``; ``now`` None lists expired ones not purged yet too."""

    def purge(self, now: datetime) -> int:
        """Delete the values expired at ``now``; returns how many went."""

    def clear(self) -> int:
        """Delete every value; returns how many went."""


class Store(Protocol):
    """The narrow contract the scheduler (and the CLI) use for all state.

    Thread-safe; every method is one transaction; times are aware UTC datetimes.
    Unknown task ids raise TaskNotFoundError where a method names one task.

    **Registrations** make the contract cluster-ready: a node (one scheduler process)
    registers the tasks it can run, with the fingerprint of the rule it holds, when
    it syncs them. `claim_due` hands a node only occurrences of tasks it registered
    *with the stored fingerprint*: a task another node runs, or one whose rule was
    changed by a newer node (the last registration of a task's definition wins),
    is never claimed by a node that would run it on the wrong rule. A node's
    registrations end when it leaves, when its heartbeat lapses (`reap`), or when it
    removes the task.
    """

    location: str  # where the state lives, for people ("memory", a file path, a URL)

    @property
    def shared(self) -> SharedValues:
        """The shared key-value store kept beside the schedule state."""

    def sync_tasks(self, definitions: Sequence[TaskDefinition], node: str | None = None) -> Mapping[str, TaskState]:
        """Register or update tasks. A new task, or one whose fingerprint changed, gets
        ``next_run_at = first_fire``; an unchanged one keeps its state (counts, pause,
        next_run_at, finished). A removed task comes back with its old counters.
        With ``node``, that node registers the tasks (see the class doc). A change to
        a PERSISTENT definition advances `revision`. Returns the states of the given tasks
        (as they are when read, for a store that builds them on demand)."""

    def remove_tasks(self, task_ids: Iterable[str], node: str | None = None) -> None:
        """With ``node``: that node no longer runs these tasks; a task left with no
        registration (or a PERSISTENT one) is unscheduled. Without: unschedule them
        for every node. Unscheduled tasks keep their state and history."""

    def unschedule_unregistered(self) -> list[str]:
        """Unschedule every CONFIG or CODE task that no node registers (called when a
        node starts, after its tasks are registered and dead nodes are gone: what no
        process defines any more stops being listed as scheduled). Returns their ids."""

    def claim_due(self, now: datetime, limit: int, node: str, lease_until: datetime, next_fire: NextFire) -> Claim:
        """Take up to ``limit`` due occurrences - tasks whose ``next_run_at <= now`` and
        SCHEDULED rows (retries, manual runs) whose ``due_at <= now`` - of unpaused,
        unfinished tasks that ``node`` registered with the stored fingerprint; apply
        `decide`; advance ``next_run_at``; insert the RUNNING rows (leased to ``node``
        until ``lease_until``) and the final MISSED/SKIPPED rows. A SCHEDULED row that
        must wait is looked at again after WAIT_SECONDS. ``Claim.next_due`` is the
        earliest due time among the node's tasks. Never hands out an occurrence twice."""

    def finish(self, records: Sequence[RunRecord], retries: Sequence[Retry] = ()) -> None:
        """Store final outcomes of RUNNING rows, update counters, insert retries as
        SCHEDULED rows, and mark ONCE/max_runs tasks finished. An outcome for a row
        that is no longer RUNNING (another node already recorded it INTERRUPTED after
        the lease lapsed) is kept as history, never lost, and counted once. An outcome
        for a row already final otherwise, or unknown, is ignored with its retry: the
        same batch sent again after the connection broke during its commit."""

    def record_process(self, run_id: str, pid: int, pid_started: float) -> None:
        """Note the process a RUNNING script run started (see `RunRecord.pid`)."""

    def set_paused(self, task_id: str, paused: bool) -> TaskState:
        """Pause or resume. Resuming recomputes nothing: a next_run_at in the past
        then follows the misfire rules."""

    def request_run(self, task_id: str, due_at: datetime, node: str | None) -> RunRecord:
        """Insert a manual SCHEDULED occurrence due at ``due_at``."""

    def heartbeat(self, node: NodeInfo, run_ids: Sequence[str], lease_until: datetime) -> datetime | None:
        """Record that ``node`` is alive and extend the leases of its ``run_ids``.
        Returns the store's own clock reading when it has one (a database server),
        else None; the scheduler measures its skew against it."""

    def reap(self, now: datetime, node_timeout: float) -> list[RunRecord]:
        """RUNNING rows whose lease expired before ``now`` (their node died) become
        INTERRUPTED; returns them. A task with ``recover`` gets the next attempt of
        the occurrence as a SCHEDULED row due at ``now``. Nodes silent for
        ``node_timeout`` seconds are removed with their registrations, and CONFIG or
        CODE tasks that no node registers any more are unscheduled."""

    def leave(self, node: str, now: datetime, reason: str) -> list[RunRecord]:
        """``node`` is gone: its RUNNING rows become INTERRUPTED (recovered as in
        `reap`), its node row and registrations are deleted (its tasks stay listed
        until a node starts without them); returns the interrupted records."""

    def prune(self, older_than: datetime | None, keep_per_task: int | None) -> int:
        """Delete final history older than ``older_than`` and beyond the newest
        ``keep_per_task`` of each task; returns how many rows went."""

    def task_states(self) -> dict[str, TaskState]:
        """Every scheduled (not removed) task's state."""

    def job_specs(self, origin: Origin | None = None) -> dict[str, dict[str, Any]]:
        """The stored data definitions (`TaskDefinition.spec`) of scheduled tasks, of
        one ``origin`` or all."""

    def revision(self) -> int:
        """A number that changes whenever a PERSISTENT definition is added, changed or
        removed (by any process): cheap to poll."""

    def active_runs(self) -> list[RunRecord]:
        """The SCHEDULED and RUNNING rows."""

    def history(self, task_id: str | None = None, state: RunState | None = None, limit: int = 100) -> list[RunRecord]:
        """Final records, newest first."""

    def run(self, run_id: str) -> RunRecord | None:
        """One run by its id, or by a unique prefix or suffix of at least 6 characters; None when unknown."""

    def nodes(self) -> list[NodeInfo]:
        """The nodes that sent a heartbeat and did not leave."""

    def watch(self, callback: Callable[[], None]) -> None:
        """Call ``callback()`` (from any thread) when another process changed the
        schedule (added, triggered, resumed a task), so the loop wakes at once.
        Stores that cannot tell do nothing; the loop then sees it within
        ``check_interval``."""

    def close(self) -> None:
        """Release connections; idempotent."""


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None
