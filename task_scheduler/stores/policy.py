"""The misfire policy every store applies inside its claim: which due occurrences of
a task run, which are recorded MISSED or SKIPPED, and when the task is due next.
Pure functions of a task's definition and state (no I/O), so every store decides
alike and the rules are tested once."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from task_scheduler.stores.base import (
    ConcurrencyPolicy,
    NextFire,
    RunRecord,
    RunState,
    TaskDefinition,
    new_run_id,
)

__all__ = ["Decision", "decide", "exhausted", "record_for", "recovery_of"]

# How many missed occurrences of one task a claim lists one by one; past that the
# rest are summarised in a single MISSED record (a 1-second job down for a day
# would otherwise write 86,400 rows).
MAX_LISTED_OCCURRENCES = 1000


class Scheduled(Protocol):
    """What the policy reads of a task's state (a `TaskState`, or a store's own record)."""

    @property
    def next_run_at(self) -> datetime | None: ...

    @property
    def run_count(self) -> int: ...


@dataclass
class Decision:
    """The outcome of `decide` for one due task."""

    run: datetime | None
    missed: list[tuple[datetime, str]]
    skipped: tuple[datetime, str] | None
    next_run_at: datetime | None
    replace: bool = False


def decide(
    definition: TaskDefinition,
    state: Scheduled,
    now: datetime,
    running: int,
    next_fire: NextFire,
) -> Decision:
    """Apply misfire, coalesce, catch-up, max_runs and max_instances to a due task.

    The occurrences due at or before ``now`` (from ``state.next_run_at``) are listed,
    then the policy decides: one later than ``misfire_grace_time`` is MISSED, one
    within grace runs late; with ``coalesce`` the timely ones collapse into a single
    run (of the latest), the rest recorded MISSED as coalesced; with ``catch_up`` and
    nothing timely, the latest missed occurrence still runs once (systemd's
    ``Persistent=true``). Time spent waiting for a free worker comes after the claim,
    so it is queueing, never a misfire.
    """
    assert state.next_run_at is not None
    if exhausted(definition, state):
        return Decision(None, [], None, None)
    # The common case, decided without lists: one occurrence due, within grace, and
    # room to run it.
    first = state.next_run_at
    if first > now:  # not due (stores only ask for due tasks)
        return Decision(None, [], None, first)
    following = next_fire(definition.task_id, first)
    grace = definition.misfire_grace_time
    if (
        (following is None or following > now)
        and (grace is None or (now - first).total_seconds() <= grace)
        and definition.max_runs is None
        and running < definition.max_instances
    ):
        return Decision(first, [], None, following)
    return _decide_all(definition, state, now, running, next_fire, following)


def _decide_all(
    definition: TaskDefinition,
    state: Scheduled,
    now: datetime,
    running: int,
    next_fire: NextFire,
    following: datetime | None,
) -> Decision:
    """`decide` for every other case: list the due occurrences, then apply the policy."""
    assert state.next_run_at is not None
    due: list[datetime] = []
    due.append(state.next_run_at)
    fire = following
    while fire is not None and fire <= now and len(due) < MAX_LISTED_OCCURRENCES:
        due.append(fire)
        fire = next_fire(definition.task_id, fire)
    overflow = fire is not None and fire <= now
    first_unlisted = fire
    if overflow:
        fire = next_fire(definition.task_id, now)
    grace = definition.misfire_grace_time
    timely = [when for when in due if grace is None or (now - when).total_seconds() <= grace]
    late = [when for when in due if when not in timely]
    missed = [(when, f"missed by {(now - when).total_seconds():.3f}s (misfire_grace_time={grace}s)") for when in late]
    if overflow and first_unlisted is not None:
        missed.append((first_unlisted, f"this and further occurrences missed until {now.isoformat()}"))
    to_run: datetime | None = None
    if timely:
        to_run = timely[-1]
        if definition.coalesce:
            missed += [(when, f"coalesced into the run for {to_run.isoformat()}") for when in timely[:-1]]
        else:
            # Without coalesce every timely occurrence is its own run; the scheduler
            # claims again at once for the next one (next_run_at stays on it).
            to_run = timely[0]
            fire = timely[1] if len(timely) > 1 else fire
    elif definition.catch_up and late:
        to_run = late[-1]
        missed = [item for item in missed if item[0] != to_run]
    if to_run is None:
        return Decision(None, missed, None, fire)
    if definition.max_runs is not None and state.run_count + running >= definition.max_runs:
        return Decision(None, missed, (to_run, f"max_runs={definition.max_runs} reached"), fire)
    if running >= definition.max_instances:
        if definition.concurrency_policy is ConcurrencyPolicy.FORBID:
            return Decision(None, missed, (to_run, f"max_instances={definition.max_instances} already running"), fire)
        if definition.concurrency_policy is ConcurrencyPolicy.REPLACE:
            return Decision(to_run, missed, None, fire, replace=True)
    return Decision(to_run, missed, None, fire)


def exhausted(definition: TaskDefinition, state: Scheduled) -> bool:
    """Whether the task has completed its ``max_runs`` (and is therefore finished)."""
    return definition.max_runs is not None and state.run_count >= definition.max_runs


def recovery_of(record: RunRecord, now: datetime) -> tuple[RunRecord, datetime]:
    """The SCHEDULED next attempt of an interrupted run, due at ``now``."""
    again = RunRecord(
        new_run_id(),
        record.task_id,
        record.scheduled_for,
        RunState.SCHEDULED,
        attempt=record.attempt + 1,
        manual=record.manual,
    )
    return again, now


def record_for(task_id: str, when: datetime, state: RunState, node: str, error: str, now: datetime) -> RunRecord:
    """A final MISSED/SKIPPED record decided at ``now``."""
    return RunRecord(new_run_id(), task_id, when, state, node=node, error=error, finished_at=now)
