"""The ledger check: every due occurrence in a window ends as exactly one outcome."""

from __future__ import annotations

from collections import Counter
from datetime import datetime

from task_scheduler import RunState, ScheduleRule, Store

FINAL = {
    RunState.SUCCEEDED,
    RunState.FAILED,
    RunState.TIMED_OUT,
    RunState.MISSED,
    RunState.SKIPPED,
    RunState.INTERRUPTED,
}


def expected_fires(rule: ScheduleRule, first: datetime, until: datetime) -> list[datetime]:
    """Fire times of ``rule`` from ``first`` while before ``until`` (the next pending one)."""
    fires, fire = [], first
    while fire is not None and fire < until:
        fires.append(fire)
        fire = rule.next_fire_time(fire)  # type: ignore[assignment]
    return fires


def assert_ledger(store: Store, task_id: str, expected: list[datetime]) -> Counter[RunState]:
    """Each expected occurrence has exactly one first-attempt outcome, and nothing else
    was recorded; retries (attempt > 1) only follow failed attempts. Returns the outcome
    counts."""
    records = store.history(task_id, limit=1_000_000)
    assert not [r for r in store.active_runs() if r.task_id == task_id and r.state is RunState.RUNNING]
    first = [r for r in records if not r.manual and r.attempt == 1]
    times = Counter(r.scheduled_for for r in first)
    duplicates = [when for when, count in times.items() if count > 1]
    assert not duplicates, f"{task_id}: occurrences recorded twice: {duplicates[:5]}"
    missing, unexpected = sorted(set(expected) - set(times)), sorted(set(times) - set(expected))
    assert not missing and not unexpected, f"{task_id}: missing {missing[:5]}, unexpected {unexpected[:5]}"
    assert all(r.state in FINAL for r in records)
    failed_first = {r.scheduled_for for r in first if r.state in (RunState.FAILED, RunState.TIMED_OUT)}
    assert all(r.scheduled_for in failed_first for r in records if not r.manual and r.attempt > 1)
    return Counter(r.state for r in first)
