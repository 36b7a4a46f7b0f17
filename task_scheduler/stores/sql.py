"""What the SQL stores share: the whole `Store` contract written once in portable SQL.

`SQLStore` holds the registration, claim, finish and lease logic; a backend
(`sqlite.py`, `postgres.py`) supplies its schema, connections and transactions, and a
`Dialect`: boolean literals, how times are stored, and whether rows are locked.
Queries use ``?`` placeholders; the PostgreSQL session turns them into ``%s``.

Locking (PostgreSQL; SQLite serialises writers with ``BEGIN IMMEDIATE`` and needs
none): a claim locks the due task rows and the SCHEDULED run rows it takes with
``FOR UPDATE SKIP LOCKED`` and never waits, so concurrent claimers split the due
work between them instead of queueing, and an occurrence is handed out once. Every
other writer that may wait takes its locks in one order - the registrations lock (an
advisory lock), node rows, run rows by run_id, task rows by task_id - so two nodes
can never deadlock each other. Counters are read and written back under the task
row's lock, so concurrent outcomes of one task never lose an update.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import lru_cache
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
from task_scheduler.stores.sql_queries import (
    FINAL,
    REGISTERED,
    RUN_COLUMNS,
    TASK_COLUMNS,
    TASK_COLUMNS_OF_T,
    Dialect,
    Session,
    SQLQueries,
    earliest,
)

__all__ = ["Dialect", "SQLStore", "Session"]

_PERSISTENT = Origin.PERSISTENT.value
_LEASE_LAPSED = "its node stopped renewing the lease (the process died?)"


@dataclass
class _ClaimWrites:
    """What one claim writes, collected and written in a few batched statements."""

    final: list[RunRecord] = field(default_factory=list)
    started: list[RunRecord] = field(default_factory=list)
    states: list[TaskState] = field(default_factory=list)


class SQLStore(SQLQueries):
    """The `Store` contract over SQL. Subclasses provide `dialect`, `location`,
    `_transaction`, `_read` and the optional hooks below."""

    # -- what a backend provides -------------------------------------------------------
    def _transaction(self) -> AbstractContextManager[Session]:
        """A write transaction (committed on success, rolled back on error)."""
        raise NotImplementedError

    def _lock_registrations(self, db: Session) -> None:
        """Serialise changes to registrations (and task rows' presence) between nodes."""

    def _notify(self, db: Session) -> None:
        """Tell other processes at commit that the schedule changed (see `watch`)."""

    def _clock(self, db: Session) -> datetime | None:
        """The store's own clock reading, if it has one."""
        return None

    def watch(self, callback: Callable[[], None]) -> None:
        """This store cannot notify other processes; the loop polls within check_interval."""

    # -- registration ------------------------------------------------------------------
    def sync_tasks(self, definitions: Sequence[TaskDefinition], node: str | None = None) -> dict[str, TaskState]:
        d = self.dialect
        for definition in definitions:
            definition.fingerprint  # noqa: B018 - made here (~2 us each), not inside the transaction
        with self._transaction() as db:
            self._lock_registrations(db)
            stored: dict[str, tuple[TaskState, tuple[Any, ...], bool]] = {}
            for chunk in self._chunks([x.task_id for x in definitions]):
                marks = d.marks(len(chunk))
                query = f"SELECT {TASK_COLUMNS}, options, spec, removed FROM tasks WHERE task_id IN ({marks})"
                for row in db.execute(query, chunk):
                    found = self._state(row[:-3])
                    stored[row[0]] = (found, (row[-3], row[-2], found.origin.value, found.problem), bool(row[-1]))
            inserts: list[tuple[Any, ...]] = []
            reschedules: list[tuple[Any, ...]] = []
            updates: list[tuple[Any, ...]] = []
            changed: list[TaskState] = []
            states: dict[str, TaskState] = {}
            revised = revived = False
            for definition in definitions:
                task_id = definition.task_id
                spec = None if definition.spec is None else json.dumps(definition.spec, sort_keys=True)
                described = (json.dumps(definition.options()), spec, definition.origin.value, definition.problem)
                state: TaskState | None = None
                old: tuple[Any, ...] = (None, None, None, None)
                removed = False
                if task_id in stored:
                    state, old, removed = stored[task_id]
                if _PERSISTENT in (definition.origin.value, old[2]) and (
                    state is None or removed or old[1] != spec or state.fingerprint != definition.fingerprint
                ):
                    revised = True
                if state is not None and state.fingerprint == definition.fingerprint:
                    if described != old or removed:  # only what changed is written
                        updates.append((*described, definition.name, definition.schedule, task_id))
                        revived = revived or removed
                    state.name, state.schedule = definition.name, definition.schedule
                    state.origin, state.problem = definition.origin, definition.problem
                    states[task_id] = state
                    continue
                if state is None:
                    state = TaskState(task_id)
                    inserts.append((task_id, definition.fingerprint, *described, definition.name, definition.schedule))
                else:
                    reschedules.append((definition.fingerprint, *described, definition.name, definition.schedule,
                                        task_id))  # fmt: skip
                state.fingerprint, state.name, state.schedule = (
                    definition.fingerprint,
                    definition.name,
                    definition.schedule,
                )
                state.origin, state.problem = definition.origin, definition.problem
                state.next_run_at, state.finished = definition.first_fire, definition.first_fire is None
                states[task_id] = state
                changed.append(state)
            # Rows are written in task_id order (see the module doc on lock order).
            db.executemany(
                "INSERT INTO tasks (task_id, fingerprint, options, spec, origin, problem, name, schedule) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                sorted(inserts),
            )
            db.executemany(
                "UPDATE tasks SET fingerprint = ?, options = ?, spec = ?, origin = ?, problem = ?, name = ?, "
                f"schedule = ?, removed = {d.false} WHERE task_id = ?",
                sorted(reschedules, key=lambda values: values[-1]),
            )
            db.executemany(
                f"UPDATE tasks SET options = ?, spec = ?, origin = ?, problem = ?, name = ?, schedule = ?, "
                f"removed = {d.false} WHERE task_id = ?",
                sorted(updates, key=lambda values: values[-1]),
            )
            self._write_states(db, changed)
            if node is not None:
                db.executemany(
                    "INSERT INTO registrations (task_id, node_id, fingerprint) VALUES (?, ?, ?) "
                    "ON CONFLICT (task_id, node_id) DO UPDATE SET fingerprint = excluded.fingerprint",
                    sorted((x.task_id, node, x.fingerprint) for x in definitions),
                )
            if revised:
                self._revise(db)
            if inserts or reschedules or revived:
                self._notify(db)
            return states

    def remove_tasks(self, task_ids: Iterable[str], node: str | None = None) -> None:
        ids = list(task_ids)
        with self._transaction() as db:
            self._lock_registrations(db)
            if node is None:
                self._unschedule(db, ids)
                return
            db.executemany("DELETE FROM registrations WHERE task_id = ? AND node_id = ?", [(t, node) for t in ids])
            orphans = [
                task_id
                for chunk in self._chunks(ids)
                for (task_id,) in db.execute(
                    f"SELECT task_id FROM tasks t WHERE task_id IN ({self.dialect.marks(len(chunk))}) AND (origin = ? "
                    "OR NOT EXISTS (SELECT 1 FROM registrations g WHERE g.task_id = t.task_id))",
                    (*chunk, _PERSISTENT),
                )
            ]
            self._unschedule(db, orphans)

    def unschedule_unregistered(self) -> list[str]:
        with self._transaction() as db:
            self._lock_registrations(db)
            return self._unschedule_unregistered(db)

    def _unschedule_unregistered(self, db: Session) -> list[str]:
        orphans = [
            task_id
            for (task_id,) in db.execute(
                f"SELECT task_id FROM tasks t WHERE removed = {self.dialect.false} AND origin != ? "
                "AND NOT EXISTS (SELECT 1 FROM registrations g WHERE g.task_id = t.task_id)",
                (_PERSISTENT,),
            )
        ]
        self._unschedule(db, orphans)
        return sorted(orphans)

    def _unschedule(self, db: Session, task_ids: list[str]) -> None:
        if not task_ids:
            return
        d = self.dialect
        persistent = any(
            db.execute(
                f"SELECT 1 FROM tasks WHERE origin = ? AND removed = {d.false} AND task_id IN ({d.marks(len(chunk))})",
                (_PERSISTENT, *chunk),
            ).fetchone()
            for chunk in self._chunks(task_ids)
        )
        db.executemany(f"UPDATE tasks SET removed = {d.true} WHERE task_id = ?", [(t,) for t in sorted(task_ids)])
        db.executemany("DELETE FROM registrations WHERE task_id = ?", [(t,) for t in task_ids])
        if persistent:
            self._revise(db)

    def _revise(self, db: Session) -> None:
        db.execute("UPDATE meta SET value = value + 1 WHERE name = 'revision'")

    # -- claiming ----------------------------------------------------------------------
    def claim_due(self, now: datetime, limit: int, node: str, lease_until: datetime, next_fire: NextFire) -> Claim:
        # Most calls find nothing due: answer those with two indexed reads and no
        # write lock, so an idle service costs next to nothing.
        with self._read() as db:
            task_due, run_due = self._due_times(db, node)
        next_due = earliest(task_due, run_due)
        if next_due is None or next_due > now:
            return Claim(next_due=next_due)
        d = self.dialect
        claim = Claim()
        now_db, lease_db = d.to_db(now), d.to_db(lease_until)
        with self._transaction() as db:
            pending = []
            if run_due is not None and run_due <= now:  # retries and manual runs (another node may take them first)
                pending = db.execute(
                    "SELECT r.run_id, r.task_id, t.paused, t.options FROM runs r JOIN tasks t USING (task_id) "
                    f"WHERE {REGISTERED} AND r.state = 'scheduled' AND r.due_at <= ? AND t.removed = {d.false} "
                    f"ORDER BY r.due_at LIMIT ?{d.lock(of='r, t', skip=True)}",
                    (node, now_db, limit),
                ).fetchall()
            running = self._running_counts(db, [task_id for _, task_id, _, _ in pending])
            waits: list[tuple[Any, ...]] = []
            starts: list[str] = []
            for run_id, task_id, paused, options in pending:
                if paused or running.get(task_id, 0) >= json.loads(options)["max_instances"]:
                    waits.append((d.to_db(now + timedelta(seconds=WAIT_SECONDS)), run_id))
                    continue
                starts.append(run_id)
                running[task_id] = running.get(task_id, 0) + 1
            if waits:
                db.executemany("UPDATE runs SET due_at = ? WHERE run_id = ?", waits)
            if starts:
                db.executemany(
                    "UPDATE runs SET state = 'running', node = ?, lease_until = ? WHERE run_id = ?",
                    [(node, lease_db, run_id) for run_id in starts],
                )
                claim.runs.extend(self._runs(db, starts))
            # The rows as locked (the latest versions): states and definitions in one read.
            due = db.execute(
                f"SELECT {TASK_COLUMNS_OF_T}, t.options FROM tasks t WHERE {REGISTERED} AND {d.live} "
                f"AND next_run_at <= ? ORDER BY next_run_at LIMIT ?{d.lock(of='t', skip=True)}",
                (node, now_db, max(0, limit - len(claim.runs))),
            ).fetchall()
            states = {row[0]: self._state(row[:-1]) for row in due}
            definitions = {row[0]: _definition(row[0], row[1], row[-1]) for row in due}
            running.update(self._running_counts(db, [task_id for task_id in states if task_id not in running]))
            writes = _ClaimWrites()
            for task_id, state in states.items():
                self._claim_task(db, definitions[task_id], state, now, node, running, next_fire, claim, writes)
            self._insert_runs(db, writes.final)
            self._insert_runs(db, writes.started, lease_db)
            self._write_states(db, writes.states)
            claim.more = len(claim.runs) >= limit
            claim.next_due = self._next_due(db, node)
        return claim

    def _claim_task(
        self,
        db: Session,
        definition: TaskDefinition,
        state: TaskState,
        now: datetime,
        node: str,
        running: dict[str, int],
        next_fire: NextFire,
        claim: Claim,
        writes: _ClaimWrites,
    ) -> None:
        task_id = state.task_id
        decision = decide(definition, state, now, running.get(task_id, 0), next_fire)
        final = [record_for(task_id, when, RunState.MISSED, node, reason, now) for when, reason in decision.missed]
        if decision.skipped is not None:
            final.append(record_for(task_id, decision.skipped[0], RunState.SKIPPED, node, decision.skipped[1], now))
        for record in final:
            state.count(record, retried=False)
        writes.final.extend(final)
        claim.recorded.extend(final)
        if decision.run is not None:
            if decision.replace:
                claim.replace += [
                    run_id
                    for (run_id,) in db.execute(
                        "SELECT run_id FROM runs WHERE task_id = ? AND state = 'running'", (task_id,)
                    )
                ]
            record = RunRecord(new_run_id(), task_id, decision.run, RunState.RUNNING, node=node)
            writes.started.append(record)
            running[task_id] = running.get(task_id, 0) + 1
            claim.runs.append(record)
        state.next_run_at = decision.next_run_at
        if state.next_run_at is None and decision.run is None and not running.get(task_id):
            state.finished = not self._has_pending(db, task_id)
        writes.states.append(state)

    # -- outcomes ----------------------------------------------------------------------
    def finish(self, records: Sequence[RunRecord], retries: Sequence[Retry] = ()) -> None:
        """See `Store.finish`. Only a RUNNING row takes an outcome, or an INTERRUPTED one
        (a late outcome, which replaces the interruption); an outcome for a row that is
        already final otherwise was written before (a batch sent again after the
        connection broke during its commit) and is not counted twice."""
        if not records and not retries:
            return
        d = self.dialect
        with self._transaction() as db:
            found = self._run_states(db, [r.run_id for r in records])
            records = [r for r in records if found.get(r.run_id) in ("running", "interrupted")]
            taken = {r.run_id for r in records}
            retries = [retry for retry in retries if retry.record.run_id in taken]
            retried = {retry.record.run_id for retry in retries}
            states, definitions = self._locked_tasks(db, {r.task_id for r in records})
            read = {task_id: (state.next_run_at, state.finished) for task_id, state in states.items()}
            db.executemany(
                "UPDATE runs SET state = ?, started_at = ?, finished_at = ?, exit_code = ?, error = ?, output = ?, "
                "cpu_user = ?, cpu_system = ?, max_rss = ?, lease_until = NULL, due_at = NULL WHERE run_id = ?",
                [
                    (
                        r.state.value, d.to_db(r.started_at), d.to_db(r.finished_at), r.exit_code, d.text(r.error),
                        d.text(r.output), r.cpu_user, r.cpu_system, r.max_rss, r.run_id,
                    )
                    for r in records
                ],
            )  # fmt: skip
            for record in records:
                if record.task_id in states:
                    if found[record.run_id] == "interrupted":  # its INTERRUPTED record is replaced by the outcome
                        states[record.task_id].interrupted_count -= 1
                    states[record.task_id].count(record, record.run_id in retried)
            again = [
                RunRecord(
                    new_run_id(), retry.record.task_id, retry.record.scheduled_for, RunState.SCHEDULED,
                    attempt=retry.record.attempt + 1, manual=retry.record.manual,
                )
                for retry in retries
            ]  # fmt: skip
            for record, retry in zip(again, retries, strict=True):
                self._insert_runs(db, [record], due_at=d.to_db(retry.due_at))
            for state in states.values():
                if exhausted(definitions[state.task_id], state):
                    state.next_run_at = None
                if state.next_run_at is None:
                    state.finished = not self._has_active(db, state.task_id)
            self._write_states(db, list(states.values()), read)

    def record_process(self, run_id: str, pid: int, pid_started: float) -> None:
        with self._transaction() as db:
            db.execute("UPDATE runs SET pid = ?, pid_started = ? WHERE run_id = ?", (pid, pid_started, run_id))

    def set_paused(self, task_id: str, paused: bool) -> TaskState:
        with self._transaction() as db:
            query = f"UPDATE tasks SET paused = ? WHERE task_id = ? AND removed = {self.dialect.false}"
            if db.execute(query, (paused, task_id)).rowcount == 0:
                raise TaskNotFoundError(task_id)
            if not paused:
                self._notify(db)
            return self._states(db, [task_id])[task_id]

    def request_run(self, task_id: str, due_at: datetime, node: str | None) -> RunRecord:
        with self._transaction() as db:
            query = f"SELECT 1 FROM tasks WHERE task_id = ? AND removed = {self.dialect.false}"
            if not db.execute(query, (task_id,)).fetchone():
                raise TaskNotFoundError(task_id)
            record = RunRecord(new_run_id(), task_id, due_at, RunState.SCHEDULED, node=node, manual=True)
            self._insert_runs(db, [record], due_at=self.dialect.to_db(due_at))
            self._notify(db)
            return record

    # -- nodes and leases --------------------------------------------------------------
    def heartbeat(self, node: NodeInfo, run_ids: Sequence[str], lease_until: datetime) -> datetime | None:
        to_db = self.dialect.to_db
        with self._transaction() as db:
            db.execute(
                "INSERT INTO nodes (node_id, host, pid, started_at, heartbeat_at, config, store, skew) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (node_id) DO UPDATE SET "
                "heartbeat_at = excluded.heartbeat_at, skew = excluded.skew",
                (
                    node.node_id, node.host, node.pid, to_db(node.started_at), to_db(node.heartbeat_at), node.config,
                    node.store, node.skew,
                ),
            )  # fmt: skip
            db.executemany(
                "UPDATE runs SET lease_until = ? WHERE run_id = ? AND state = 'running'",
                [(to_db(lease_until), run_id) for run_id in sorted(run_ids)],
            )
            return self._clock(db)

    def reap(self, now: datetime, node_timeout: float) -> list[RunRecord]:
        d = self.dialect
        now_db, quiet_db = d.to_db(now), d.to_db(now - timedelta(seconds=node_timeout))
        # Every node reaps every few seconds; nearly always there is nothing to do,
        # which two indexed reads tell without a write lock.
        with self._read() as db:
            expired = db.execute("SELECT 1 FROM runs WHERE state = 'running' AND lease_until < ? LIMIT 1", (now_db,))
            expired = expired.fetchone()
            silent = db.execute("SELECT 1 FROM nodes WHERE heartbeat_at < ? LIMIT 1", (quiet_db,)).fetchone()
        if not expired and not silent:
            return []
        with self._transaction() as db:
            gone: list[str] = []
            if silent:
                self._lock_registrations(db)
                query = f"SELECT node_id FROM nodes WHERE heartbeat_at < ?{d.lock('node_id')}"
                gone = [node for (node,) in db.execute(query, (quiet_db,))]
            query = f"SELECT run_id FROM runs WHERE state = 'running' AND lease_until < ?{d.lock('run_id', skip=True)}"
            run_ids = [run_id for (run_id,) in db.execute(query, (now_db,))]
            interrupted = self._interrupt(db, run_ids, now, _LEASE_LAPSED)
            if gone:
                db.executemany("DELETE FROM nodes WHERE node_id = ?", [(n,) for n in gone])
                db.executemany("DELETE FROM registrations WHERE node_id = ?", [(n,) for n in gone])
                self._unschedule_unregistered(db)
            return interrupted

    def leave(self, node: str, now: datetime, reason: str) -> list[RunRecord]:
        with self._transaction() as db:
            self._lock_registrations(db)
            db.execute("DELETE FROM nodes WHERE node_id = ?", (node,))
            db.execute("DELETE FROM registrations WHERE node_id = ?", (node,))
            query = f"SELECT run_id FROM runs WHERE state = 'running' AND node = ?{self.dialect.lock('run_id')}"
            run_ids = [r for (r,) in db.execute(query, (node,))]
            return self._interrupt(db, run_ids, now, reason)

    def _interrupt(self, db: Session, run_ids: list[str], now: datetime, reason: str) -> list[RunRecord]:
        if not run_ids:
            return []
        records = self._runs(db, run_ids)
        for record in records:
            record.state, record.finished_at, record.error = RunState.INTERRUPTED, now, reason
        db.executemany(
            "UPDATE runs SET state = 'interrupted', finished_at = ?, error = ?, lease_until = NULL WHERE run_id = ?",
            [(self.dialect.to_db(now), reason, record.run_id) for record in records],
        )
        states, definitions = self._locked_tasks(db, {r.task_id for r in records})
        recovered: list[RunRecord] = []
        for record in records:
            if record.task_id in states:
                states[record.task_id].count(record, retried=False)
                if definitions[record.task_id].recover:
                    recovered.append(recovery_of(record, now)[0])
        self._insert_runs(db, recovered, due_at=self.dialect.to_db(now))
        self._write_states(db, list(states.values()))
        if recovered:
            self._notify(db)
        return records

    def prune(self, older_than: datetime | None, keep_per_task: int | None) -> int:
        """Index-driven deletes in short transactions, so claims are never held up
        for long even with millions of history rows: one range delete by age, then
        per task that has too many records, a range delete below its cut-off."""
        removed = 0
        if older_than is not None:
            with self._transaction() as db:
                query = f"DELETE FROM runs WHERE finished_at < ? AND {FINAL}"
                removed += db.execute(query, (self.dialect.to_db(older_than),)).rowcount
        if keep_per_task is None:
            return removed
        with self._transaction() as db:
            crowded = db.execute(
                "SELECT task_id FROM runs WHERE finished_at IS NOT NULL GROUP BY task_id HAVING COUNT(*) > ?",
                (keep_per_task,),
            ).fetchall()
        for (task_id,) in crowded:
            with self._transaction() as db:
                cutoff = db.execute(
                    "SELECT finished_at, run_id FROM runs WHERE task_id = ? AND finished_at IS NOT NULL "
                    "ORDER BY finished_at DESC, run_id DESC LIMIT 1 OFFSET ?",
                    (task_id, keep_per_task - 1),
                ).fetchone()
                if cutoff is None:  # pruned meanwhile by another node
                    continue
                query = f"DELETE FROM runs WHERE task_id = ? AND (finished_at, run_id) < (?, ?) AND {FINAL}"
                removed += db.execute(query, (task_id, *cutoff)).rowcount
        return removed

    def _locked_tasks(self, db: Session, task_ids: set[str]) -> tuple[dict[str, TaskState], dict[str, TaskDefinition]]:
        """The states and definitions of ``task_ids`` (removed ones too), their rows
        locked for update in task_id order, to be written back."""
        states: dict[str, TaskState] = {}
        definitions: dict[str, TaskDefinition] = {}
        locking = self.dialect.lock("task_id")
        for chunk in self._chunks(sorted(task_ids)):
            marks = self.dialect.marks(len(chunk))
            for row in db.execute(
                f"SELECT {TASK_COLUMNS}, options FROM tasks WHERE task_id IN ({marks}){locking}", chunk
            ):
                states[row[0]] = self._state(row[:-1])
                definitions[row[0]] = _definition(row[0], row[1], row[-1])
        return states, definitions

    def _write_states(
        self, db: Session, states: list[TaskState], read: dict[str, tuple[Any, bool]] | None = None
    ) -> None:
        """Write the states back. ``read``: each task's (next_run_at, finished) as read;
        where both are unchanged only the counters are written, which leaves the task's
        entry in the due-time index alone (SQLite rewrites an index entry whenever an
        UPDATE sets one of its columns: a page more in the log for every outcome)."""
        to_db, text = self.dialect.to_db, self.dialect.text
        counters = (
            "run_count = ?, success_count = ?, failure_count = ?, retry_count = ?, missed_count = ?, "
            "skipped_count = ?, interrupted_count = ?, total_duration = ?, last_run_at = ?, last_state = ?, "
            "last_error = ?, last_duration = ?"
        )
        counted: list[tuple[Any, ...]] = []  # only the counters changed
        rescheduled: list[tuple[Any, ...]] = []
        for s in sorted(states, key=lambda s: s.task_id):
            values = (
                s.run_count, s.success_count, s.failure_count, s.retry_count, s.missed_count, s.skipped_count,
                s.interrupted_count, s.total_duration, to_db(s.last_run_at),
                s.last_state.value if s.last_state else None, text(s.last_error), s.last_duration, s.task_id,
            )  # fmt: skip
            if read is not None and read.get(s.task_id) == (s.next_run_at, s.finished):
                counted.append(values)
            else:
                rescheduled.append((to_db(s.next_run_at), s.finished, *values))
        if counted:
            db.executemany(f"UPDATE tasks SET {counters} WHERE task_id = ?", counted)
        if rescheduled:
            query = f"UPDATE tasks SET next_run_at = ?, finished = ?, {counters} WHERE task_id = ?"
            db.executemany(query, rescheduled)

    def _insert_runs(self, db: Session, records: list[RunRecord], lease_db: Any = None, due_at: Any = None) -> None:
        if not records:
            return
        to_db, text = self.dialect.to_db, self.dialect.text
        db.executemany(
            f"INSERT INTO runs ({RUN_COLUMNS}, due_at, lease_until) VALUES ({self.dialect.marks(19)})",
            [
                (
                    r.run_id, r.task_id, to_db(r.scheduled_for), r.state.value, r.attempt, to_db(r.started_at),
                    to_db(r.finished_at), r.exit_code, text(r.error), text(r.output), r.node, r.manual, r.pid,
                    r.pid_started, r.cpu_user, r.cpu_system, r.max_rss, due_at, lease_db,
                )
                for r in records
            ],
        )  # fmt: skip


@lru_cache(maxsize=4096)
def _definition(task_id: str, fingerprint: str, options: str) -> TaskDefinition:
    """A stored task's claim options, parsed once per version of its row (a claim
    reads them for every due task; definitions are immutable, so they are shared)."""
    return TaskDefinition.from_options(task_id, fingerprint, json.loads(options))
