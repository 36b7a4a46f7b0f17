"""The default store: one SQLite file (WAL mode), shared safely by the service and
CLI processes on the same host.

Every method is one transaction; writers take the lock up front (``BEGIN
IMMEDIATE``) and wait up to ``busy_timeout`` for each other, so concurrent CLI calls
never fail a claim and never see half a claim. Times are stored as integer
microseconds since the epoch (exact, indexable). The schema is versioned with
``PRAGMA user_version`` and migrated on open; the file is created mode 0600.

A database that is not a SQLite file (or is corrupt) fails at open with a
`StoreError` that says how to move it aside; the service then starts with an empty
state in a new file.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from task_scheduler.errors import StoreError, StoreUnavailableError, TaskNotFoundError
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
    decide,
    exhausted,
    new_run_id,
    record_for,
    recovery_of,
)
from task_scheduler.stores.sqlite_shared import SQLiteSharedValues

__all__ = ["SQLiteStore"]

logger = logging.getLogger(__name__)

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)

_MIGRATIONS: list[str] = [
    # version 1
    """
    CREATE TABLE tasks (
        task_id TEXT PRIMARY KEY,
        fingerprint TEXT NOT NULL,
        options TEXT NOT NULL,
        next_run_at INTEGER,
        paused INTEGER NOT NULL DEFAULT 0,
        finished INTEGER NOT NULL DEFAULT 0,
        removed INTEGER NOT NULL DEFAULT 0,
        run_count INTEGER NOT NULL DEFAULT 0,
        success_count INTEGER NOT NULL DEFAULT 0,
        failure_count INTEGER NOT NULL DEFAULT 0,
        retry_count INTEGER NOT NULL DEFAULT 0,
        missed_count INTEGER NOT NULL DEFAULT 0,
        skipped_count INTEGER NOT NULL DEFAULT 0,
        interrupted_count INTEGER NOT NULL DEFAULT 0,
        total_duration REAL NOT NULL DEFAULT 0,
        last_run_at INTEGER,
        last_state TEXT,
        last_error TEXT,
        last_duration REAL
    );
    CREATE INDEX tasks_due ON tasks (next_run_at) WHERE paused = 0 AND finished = 0 AND removed = 0;
    CREATE TABLE runs (
        run_id TEXT PRIMARY KEY,
        task_id TEXT NOT NULL,
        scheduled_for INTEGER NOT NULL,
        state TEXT NOT NULL,
        attempt INTEGER NOT NULL DEFAULT 1,
        due_at INTEGER,
        lease_until INTEGER,
        started_at INTEGER,
        finished_at INTEGER,
        exit_code INTEGER,
        error TEXT,
        output TEXT,
        node TEXT,
        manual INTEGER NOT NULL DEFAULT 0
    );
    CREATE INDEX runs_pending ON runs (due_at) WHERE state = 'scheduled';
    CREATE INDEX runs_running ON runs (task_id) WHERE state = 'running';
    CREATE INDEX runs_history ON runs (task_id, finished_at);
    CREATE INDEX runs_finished ON runs (finished_at);
    -- An occurrence is claimed once: the same (task, time, attempt) cannot be inserted twice.
    CREATE UNIQUE INDEX runs_occurrence ON runs (task_id, scheduled_for, attempt) WHERE manual = 0;
    CREATE TABLE nodes (
        node_id TEXT PRIMARY KEY,
        host TEXT NOT NULL,
        pid INTEGER NOT NULL,
        started_at INTEGER NOT NULL,
        heartbeat_at INTEGER NOT NULL,
        config TEXT,
        store TEXT
    );
    """,
    # version 2: name and schedule in columns, so listing states parses no JSON
    """
    ALTER TABLE tasks ADD COLUMN name TEXT NOT NULL DEFAULT '';
    ALTER TABLE tasks ADD COLUMN schedule TEXT NOT NULL DEFAULT '';
    UPDATE tasks SET name = coalesce(json_extract(options, '$.name'), ''),
                     schedule = coalesce(json_extract(options, '$.schedule'), '');
    """,
    # version 3: where a task comes from and its data definition; which node runs
    # which task; a running script's process; resource use; shared values
    """
    ALTER TABLE tasks ADD COLUMN origin TEXT NOT NULL DEFAULT 'code';
    ALTER TABLE tasks ADD COLUMN spec TEXT;
    ALTER TABLE tasks ADD COLUMN problem TEXT;
    ALTER TABLE runs ADD COLUMN pid INTEGER;
    ALTER TABLE runs ADD COLUMN pid_started REAL;
    ALTER TABLE runs ADD COLUMN cpu_user REAL;
    ALTER TABLE runs ADD COLUMN cpu_system REAL;
    ALTER TABLE runs ADD COLUMN max_rss INTEGER;
    ALTER TABLE nodes ADD COLUMN skew REAL;
    CREATE TABLE registrations (
        task_id TEXT NOT NULL,
        node_id TEXT NOT NULL,
        fingerprint TEXT NOT NULL,
        PRIMARY KEY (task_id, node_id)
    ) WITHOUT ROWID;
    CREATE INDEX registrations_node ON registrations (node_id);
    CREATE TABLE shared_values (
        key TEXT PRIMARY KEY,
        value TEXT NOT NULL,
        expires_at INTEGER
    );
    CREATE INDEX shared_values_expiry ON shared_values (expires_at) WHERE expires_at IS NOT NULL;
    CREATE TABLE meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
    INSERT INTO meta (name, value) VALUES ('revision', 0);
    """,
]
SCHEMA_VERSION = len(_MIGRATIONS)
# SQLite's default limit on variables in one statement is 32,766: IN lists go in chunks.
_CHUNK = 10_000

_TASK_COLUMNS = (
    "task_id, fingerprint, name, schedule, next_run_at, paused, finished, run_count, success_count, failure_count, "
    "retry_count, missed_count, skipped_count, interrupted_count, total_duration, last_run_at, last_state, "
    "last_error, last_duration, origin, problem"
)
_RUN_COLUMNS = (
    "run_id, task_id, scheduled_for, state, attempt, started_at, finished_at, exit_code, error, output, node, manual, "
    "pid, pid_started, cpu_user, cpu_system, max_rss"
)
_LIVE = "paused = 0 AND finished = 0 AND removed = 0"
# A task ``node`` may claim: it registered the task with the stored fingerprint.
_REGISTERED = "JOIN registrations g ON g.task_id = t.task_id AND g.node_id = ? AND g.fingerprint = t.fingerprint"
_PERSISTENT = Origin.PERSISTENT.value


def _to_db(moment: datetime | None) -> int | None:
    return None if moment is None else (moment - _EPOCH) // _MICROSECOND


def _from_db(value: int | None) -> datetime | None:
    return None if value is None else _EPOCH + value * _MICROSECOND


class SQLiteStore:
    """The `Store` contract on one SQLite file. ``path`` is created if missing.

    ``checkpoint_interval`` (seconds; the service sets it): WAL checkpoints, the only
    writes that wait for the disk, run on a background thread with its own
    connection instead of inside whichever commit crosses SQLite's threshold, which
    would stall the scheduler's claim by milliseconds. Without it SQLite checkpoints
    automatically, which suits short-lived CLI processes.
    """

    def __init__(
        self, path: str | os.PathLike[str], busy_timeout: float = 10.0, checkpoint_interval: float | None = None
    ) -> None:
        self.path = Path(path)
        self.location = str(self.path)
        self._lock = threading.RLock()
        self._closed = False
        self._busy_timeout = busy_timeout
        self._checkpointer: threading.Thread | None = None
        self._closing = threading.Event()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if not self.path.exists():
                os.close(os.open(self.path, os.O_CREAT | os.O_WRONLY, 0o600))
            self._db = self._open(busy_timeout)
        except sqlite3.DatabaseError as exc:
            raise StoreError(
                f"cannot open the state database {self.path}: {exc}. The file is damaged or not a SQLite "
                f"database: stop the service and move it aside (mv {self.path} {self.path}.broken); the service "
                "then starts with an empty state (schedules come from the config again, history and counters are "
                "lost)."
            ) from exc
        except OSError as exc:
            raise StoreError(f"cannot create the state database {self.path}: {exc.strerror}") from exc
        if checkpoint_interval:
            self._db.execute("PRAGMA wal_autocheckpoint = 0")
            self._checkpointer = threading.Thread(
                target=self._checkpoint_loop, args=(checkpoint_interval, busy_timeout), daemon=True,
                name="task-scheduler-checkpoint",
            )  # fmt: skip
            self._checkpointer.start()
        self.shared = SQLiteSharedValues(self._transaction)

    def _open(self, busy_timeout: float) -> sqlite3.Connection:
        """Connect, switch to WAL and migrate, waiting up to ``busy_timeout`` seconds
        for other processes' locks. SQLite does not always call its busy handler
        (switching a new file to WAL takes an exclusive lock and fails at once while
        another process reads it), so a lock error is retried here, with a log line
        every few seconds; damage is not retried (see `__init__`)."""
        started = time.monotonic()
        deadline, next_report, pause = started + busy_timeout, started + 2.0, 0.01
        while True:
            db = sqlite3.connect(self.path, timeout=busy_timeout, isolation_level=None, check_same_thread=False)
            try:
                db.execute(f"PRAGMA busy_timeout = {int(busy_timeout * 1000)}")
                db.execute("PRAGMA journal_mode = WAL")
                db.execute("PRAGMA synchronous = NORMAL")
                self._migrate(db)
                return db
            except sqlite3.OperationalError as exc:
                db.close()
                now = time.monotonic()
                if not _is_lock_error(exc):
                    raise
                if now >= deadline:
                    raise StoreUnavailableError(
                        f"the state database {self.path} stayed locked by another process for {busy_timeout:g}s "
                        f"({exc}); the file is not damaged. Is another scheduler using it? (fuser {self.path})"
                    ) from exc
                if now >= next_report:
                    logger.warning("waiting for the lock on the state database %s (%s)", self.path, exc)
                    next_report = now + 5.0
                time.sleep(min(pause, deadline - now))
                pause = min(pause * 2, 0.5)
            except BaseException:
                db.close()
                raise

    def _migrate(self, db: sqlite3.Connection) -> None:
        db.execute("BEGIN IMMEDIATE")
        try:
            version = db.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise StoreError(
                    f"{self.path} has schema version {version}, newer than this task_scheduler supports "
                    f"({SCHEMA_VERSION}); upgrade task_scheduler or use another state file"
                )
            for number in range(version, SCHEMA_VERSION):
                for statement in _MIGRATIONS[number].split(";"):
                    if statement.strip():
                        db.execute(statement)
                db.execute(f"PRAGMA user_version = {number + 1}")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    @contextmanager
    def _reading(self) -> Iterator[sqlite3.Connection]:
        """A read transaction: one consistent snapshot, no write lock (WAL readers
        never wait for writers). After `close` reads still answer, from a
        short-lived read-only connection, so a stopped scheduler reports its final
        state; writes after close raise StoreError."""
        with self._lock:
            if not self._closed:
                self._db.execute("BEGIN")
                try:
                    yield self._db
                finally:
                    self._db.execute("COMMIT")
                return
        db = sqlite3.connect(f"{self.path.resolve().as_uri()}?mode=ro", uri=True, timeout=self._busy_timeout)
        try:
            yield db
        finally:
            db.close()

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            if self._closed:
                raise StoreError(f"the state database {self.path} is closed")
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    # -- registration ---------------------------------------------------------------
    def sync_tasks(self, definitions: Sequence[TaskDefinition], node: str | None = None) -> dict[str, TaskState]:
        with self._transaction() as db:
            stored: dict[str, tuple[TaskState, tuple[Any, ...], bool]] = {}
            for chunk in _chunks([d.task_id for d in definitions]):
                marks = ",".join("?" * len(chunk))
                query = f"SELECT {_TASK_COLUMNS}, options, spec, removed FROM tasks WHERE task_id IN ({marks})"
                for row in db.execute(query, chunk):
                    found = _state(row[:-3])
                    stored[row[0]] = (found, (row[-3], row[-2], found.origin.value, found.problem), bool(row[-1]))
            inserts: list[tuple[Any, ...]] = []
            reschedules: list[tuple[Any, ...]] = []
            updates: list[tuple[Any, ...]] = []
            changed: list[TaskState] = []
            states: dict[str, TaskState] = {}
            revised = False
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
            db.executemany(
                "INSERT INTO tasks (task_id, fingerprint, options, spec, origin, problem, name, schedule) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                inserts,
            )
            db.executemany(
                "UPDATE tasks SET fingerprint = ?, options = ?, spec = ?, origin = ?, problem = ?, name = ?, "
                "schedule = ?, removed = 0 WHERE task_id = ?",
                reschedules,
            )
            db.executemany(
                "UPDATE tasks SET options = ?, spec = ?, origin = ?, problem = ?, name = ?, schedule = ?, removed = 0 "
                "WHERE task_id = ?",
                updates,
            )
            self._write_states(db, changed)
            if node is not None:
                db.executemany(
                    "INSERT INTO registrations (task_id, node_id, fingerprint) VALUES (?, ?, ?) "
                    "ON CONFLICT (task_id, node_id) DO UPDATE SET fingerprint = excluded.fingerprint",
                    [(d.task_id, node, d.fingerprint) for d in definitions],
                )
            if revised:
                self._revise(db)
            return states

    def remove_tasks(self, task_ids: Iterable[str], node: str | None = None) -> None:
        ids = list(task_ids)
        with self._transaction() as db:
            if node is None:
                self._unschedule(db, ids)
                return
            db.executemany("DELETE FROM registrations WHERE task_id = ? AND node_id = ?", [(t, node) for t in ids])
            orphans = [
                task_id
                for chunk in _chunks(ids)
                for (task_id,) in db.execute(
                    f"SELECT task_id FROM tasks t WHERE task_id IN ({','.join('?' * len(chunk))}) AND (origin = ? "
                    "OR NOT EXISTS (SELECT 1 FROM registrations g WHERE g.task_id = t.task_id))",
                    (*chunk, _PERSISTENT),
                )
            ]
            self._unschedule(db, orphans)

    def unschedule_unregistered(self) -> list[str]:
        with self._transaction() as db:
            return self._unschedule_unregistered(db)

    def _unschedule_unregistered(self, db: sqlite3.Connection) -> list[str]:
        orphans = [
            task_id
            for (task_id,) in db.execute(
                "SELECT task_id FROM tasks t WHERE removed = 0 AND origin != ? "
                "AND NOT EXISTS (SELECT 1 FROM registrations g WHERE g.task_id = t.task_id)",
                (_PERSISTENT,),
            )
        ]
        self._unschedule(db, orphans)
        return sorted(orphans)

    def _unschedule(self, db: sqlite3.Connection, task_ids: list[str]) -> None:
        if not task_ids:
            return
        persistent = any(
            db.execute(
                f"SELECT 1 FROM tasks WHERE origin = ? AND removed = 0 AND task_id IN ({','.join('?' * len(chunk))})",
                (_PERSISTENT, *chunk),
            ).fetchone()
            for chunk in _chunks(task_ids)
        )
        db.executemany("UPDATE tasks SET removed = 1 WHERE task_id = ?", [(t,) for t in task_ids])
        db.executemany("DELETE FROM registrations WHERE task_id = ?", [(t,) for t in task_ids])
        if persistent:
            self._revise(db)

    def _revise(self, db: sqlite3.Connection) -> None:
        db.execute("UPDATE meta SET value = value + 1 WHERE name = 'revision'")

    # -- claiming -------------------------------------------------------------------
    def claim_due(self, now: datetime, limit: int, node: str, lease_until: datetime, next_fire: NextFire) -> Claim:
        # Most calls find nothing due: answer those with two indexed reads and no
        # write lock, so an idle service costs next to nothing.
        with self._lock:
            if self._closed:
                raise StoreError(f"the state database {self.path} is closed")
            next_due = self._next_due(self._db, node)
        if next_due is None or next_due > now:
            return Claim(next_due=next_due)
        claim = Claim()
        now_db, lease_db = _to_db(now), _to_db(lease_until)
        with self._transaction() as db:
            running = self._running_counts(db)
            pending = db.execute(
                "SELECT r.run_id, r.task_id, t.paused, t.options FROM runs r JOIN tasks t USING (task_id) "
                f"{_REGISTERED} "
                "WHERE r.state = 'scheduled' AND r.due_at <= ? AND t.removed = 0 ORDER BY r.due_at LIMIT ?",
                (node, now_db, limit),
            ).fetchall()
            for run_id, task_id, paused, options in pending:
                if paused or running.get(task_id, 0) >= json.loads(options)["max_instances"]:
                    db.execute(
                        "UPDATE runs SET due_at = ? WHERE run_id = ?",
                        (_to_db(now + timedelta(seconds=WAIT_SECONDS)), run_id),
                    )
                    continue
                db.execute(
                    "UPDATE runs SET state = 'running', node = ?, lease_until = ? WHERE run_id = ?",
                    (node, lease_db, run_id),
                )
                running[task_id] = running.get(task_id, 0) + 1
                claim.runs.append(self._run(db, run_id))
            due = db.execute(
                f"SELECT t.task_id FROM tasks t {_REGISTERED} WHERE {_LIVE} AND next_run_at <= ? "
                "ORDER BY next_run_at LIMIT ?",
                (node, now_db, max(0, limit - len(claim.runs))),
            ).fetchall()
            states = self._states(db, [task_id for (task_id,) in due])
            definitions = self._definitions(db, list(states))
            for task_id, state in states.items():
                self._claim_task(db, definitions[task_id], state, now, node, lease_db, running, next_fire, claim)
            claim.more = len(claim.runs) >= limit
            claim.next_due = self._next_due(db, node)
        return claim

    def _claim_task(
        self,
        db: sqlite3.Connection,
        definition: TaskDefinition,
        state: TaskState,
        now: datetime,
        node: str,
        lease_db: int | None,
        running: dict[str, int],
        next_fire: NextFire,
        claim: Claim,
    ) -> None:
        task_id = state.task_id
        decision = decide(definition, state, now, running.get(task_id, 0), next_fire)
        final = [record_for(task_id, when, RunState.MISSED, node, reason, now) for when, reason in decision.missed]
        if decision.skipped is not None:
            final.append(record_for(task_id, decision.skipped[0], RunState.SKIPPED, node, decision.skipped[1], now))
        for record in final:
            state.count(record, retried=False)
        self._insert_runs(db, final)
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
            self._insert_runs(db, [record], lease_db)
            running[task_id] = running.get(task_id, 0) + 1
            claim.runs.append(record)
        state.next_run_at = decision.next_run_at
        if state.next_run_at is None and decision.run is None and not running.get(task_id):
            state.finished = not self._has_pending(db, task_id)
        self._write_states(db, [state])

    # -- outcomes -------------------------------------------------------------------
    def finish(self, records: Sequence[RunRecord], retries: Sequence[Retry] = ()) -> None:
        if not records and not retries:
            return
        retried = {retry.record.run_id for retry in retries}
        with self._transaction() as db:
            late = self._late_outcomes(db, records)
            db.executemany(
                "UPDATE runs SET state = ?, started_at = ?, finished_at = ?, exit_code = ?, error = ?, output = ?, "
                "cpu_user = ?, cpu_system = ?, max_rss = ?, lease_until = NULL, due_at = NULL WHERE run_id = ?",
                [
                    (
                        r.state.value, _to_db(r.started_at), _to_db(r.finished_at), r.exit_code, r.error, r.output,
                        r.cpu_user, r.cpu_system, r.max_rss, r.run_id,
                    )
                    for r in records
                ],
            )  # fmt: skip
            states = self._states(db, list({r.task_id for r in records}), include_removed=True)
            for record in records:
                if record.task_id in states:
                    if record.run_id in late:  # its INTERRUPTED record is replaced by the real outcome
                        states[record.task_id].interrupted_count -= 1
                    states[record.task_id].count(record, record.run_id in retried)
            again = [
                (
                    RunRecord(
                        new_run_id(), retry.record.task_id, retry.record.scheduled_for, RunState.SCHEDULED,
                        attempt=retry.record.attempt + 1, manual=retry.record.manual,
                    ),
                    retry.due_at,
                )
                for retry in retries
            ]  # fmt: skip
            for record, due_at in again:
                self._insert_runs(db, [record], due_at=_to_db(due_at))
            definitions = self._definitions(db, list(states))
            for state in states.values():
                if exhausted(definitions[state.task_id], state):
                    state.next_run_at = None
                if state.next_run_at is None:
                    state.finished = not self._has_active(db, state.task_id)
            self._write_states(db, list(states.values()))

    def _late_outcomes(self, db: sqlite3.Connection, records: Sequence[RunRecord]) -> set[str]:
        """The run ids among ``records`` already recorded INTERRUPTED (their lease
        lapsed, e.g. while this node could not reach the store)."""
        late: set[str] = set()
        for chunk in _chunks([r.run_id for r in records]):
            query = f"SELECT run_id FROM runs WHERE state = 'interrupted' AND run_id IN ({','.join('?' * len(chunk))})"
            late.update(run_id for (run_id,) in db.execute(query, chunk))
        return late

    def record_process(self, run_id: str, pid: int, pid_started: float) -> None:
        with self._transaction() as db:
            db.execute("UPDATE runs SET pid = ?, pid_started = ? WHERE run_id = ?", (pid, pid_started, run_id))

    def set_paused(self, task_id: str, paused: bool) -> TaskState:
        with self._transaction() as db:
            changed = db.execute("UPDATE tasks SET paused = ? WHERE task_id = ? AND removed = 0", (paused, task_id))
            if changed.rowcount == 0:
                raise TaskNotFoundError(task_id)
            return self._states(db, [task_id])[task_id]

    def request_run(self, task_id: str, due_at: datetime, node: str | None) -> RunRecord:
        with self._transaction() as db:
            if not db.execute("SELECT 1 FROM tasks WHERE task_id = ? AND removed = 0", (task_id,)).fetchone():
                raise TaskNotFoundError(task_id)
            record = RunRecord(new_run_id(), task_id, due_at, RunState.SCHEDULED, node=node, manual=True)
            self._insert_runs(db, [record], due_at=_to_db(due_at))
            return record

    # -- nodes and leases -----------------------------------------------------------
    def heartbeat(self, node: NodeInfo, run_ids: Sequence[str], lease_until: datetime) -> datetime | None:
        with self._transaction() as db:
            db.execute(
                "INSERT INTO nodes (node_id, host, pid, started_at, heartbeat_at, config, store, skew) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (node_id) DO UPDATE SET "
                "heartbeat_at = excluded.heartbeat_at, skew = excluded.skew",
                (
                    node.node_id, node.host, node.pid, _to_db(node.started_at), _to_db(node.heartbeat_at), node.config,
                    node.store, node.skew,
                ),
            )  # fmt: skip
            db.executemany(
                "UPDATE runs SET lease_until = ? WHERE run_id = ? AND state = 'running'",
                [(_to_db(lease_until), run_id) for run_id in run_ids],
            )
        return None

    def reap(self, now: datetime, node_timeout: float) -> list[RunRecord]:
        with self._transaction() as db:
            run_ids = [
                run_id
                for (run_id,) in db.execute(
                    "SELECT run_id FROM runs WHERE state = 'running' AND lease_until < ?", (_to_db(now),)
                )
            ]
            interrupted = self._interrupt(db, run_ids, now, "its node stopped renewing the lease (the process died?)")
            silent = [
                node
                for (node,) in db.execute(
                    "SELECT node_id FROM nodes WHERE heartbeat_at < ?", (_to_db(now - timedelta(seconds=node_timeout)),)
                )
            ]
            if silent:
                db.executemany("DELETE FROM nodes WHERE node_id = ?", [(n,) for n in silent])
                db.executemany("DELETE FROM registrations WHERE node_id = ?", [(n,) for n in silent])
                self._unschedule_unregistered(db)
            return interrupted

    def leave(self, node: str, now: datetime, reason: str) -> list[RunRecord]:
        with self._transaction() as db:
            db.execute("DELETE FROM nodes WHERE node_id = ?", (node,))
            db.execute("DELETE FROM registrations WHERE node_id = ?", (node,))
            run_ids = [
                r for (r,) in db.execute("SELECT run_id FROM runs WHERE state = 'running' AND node = ?", (node,))
            ]
            return self._interrupt(db, run_ids, now, reason)

    def _interrupt(self, db: sqlite3.Connection, run_ids: list[str], now: datetime, reason: str) -> list[RunRecord]:
        records = [self._run(db, run_id) for run_id in run_ids]
        for record in records:
            record.state, record.finished_at, record.error = RunState.INTERRUPTED, now, reason
        db.executemany(
            "UPDATE runs SET state = 'interrupted', finished_at = ?, error = ?, lease_until = NULL WHERE run_id = ?",
            [(_to_db(now), reason, record.run_id) for record in records],
        )
        states = self._states(db, list({r.task_id for r in records}), include_removed=True)
        definitions = self._definitions(db, list(states))
        for record in records:
            if record.task_id in states:
                states[record.task_id].count(record, retried=False)
                if definitions[record.task_id].recover:
                    again, due_at = recovery_of(record, now)
                    self._insert_runs(db, [again], due_at=_to_db(due_at))
        self._write_states(db, list(states.values()))
        return records

    def prune(self, older_than: datetime | None, keep_per_task: int | None) -> int:
        """Index-driven deletes in short transactions, so claims are never held up
        for long even with millions of history rows: one range delete by age, then
        per task that has too many records, a range delete below its cut-off."""
        final = "state NOT IN ('scheduled', 'running')"
        removed = 0
        if older_than is not None:
            with self._transaction() as db:
                query = f"DELETE FROM runs WHERE finished_at < ? AND {final}"
                removed += db.execute(query, (_to_db(older_than),)).rowcount
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
                query = f"DELETE FROM runs WHERE task_id = ? AND (finished_at, run_id) < (?, ?) AND {final}"
                removed += db.execute(query, (task_id, *cutoff)).rowcount
        return removed

    # -- queries --------------------------------------------------------------------
    def task_states(self) -> dict[str, TaskState]:
        with self._reading() as db:
            return self._states(db, None)

    def job_specs(self, origin: Origin | None = None) -> dict[str, dict[str, Any]]:
        query = "SELECT task_id, spec FROM tasks WHERE removed = 0 AND spec IS NOT NULL"
        with self._reading() as db:
            if origin is None:
                rows = db.execute(query).fetchall()
            else:
                rows = db.execute(query + " AND origin = ?", (origin.value,)).fetchall()
        return {task_id: json.loads(spec) for task_id, spec in rows}

    def revision(self) -> int:
        with self._reading() as db:
            return int(db.execute("SELECT value FROM meta WHERE name = 'revision'").fetchone()[0])

    def active_runs(self) -> list[RunRecord]:
        with self._reading() as db:
            rows = db.execute(f"SELECT {_RUN_COLUMNS} FROM runs WHERE state IN ('scheduled', 'running')").fetchall()
            return [_record(row) for row in rows]

    def history(self, task_id: str | None = None, state: RunState | None = None, limit: int = 100) -> list[RunRecord]:
        clauses, values = ["state NOT IN ('scheduled', 'running')"], []
        if task_id is not None:
            clauses.append("task_id = ?")
            values.append(task_id)
        if state is not None:
            clauses.append("state = ?")
            values.append(state.value)
        query = (
            f"SELECT {_RUN_COLUMNS} FROM runs WHERE {' AND '.join(clauses)} "
            "ORDER BY finished_at DESC, scheduled_for DESC LIMIT ?"
        )
        with self._reading() as db:
            return [_record(row) for row in db.execute(query, (*values, limit))]

    def run(self, run_id: str) -> RunRecord | None:
        with self._reading() as db:
            rows = db.execute(f"SELECT {_RUN_COLUMNS} FROM runs WHERE run_id = ?", (run_id,)).fetchall()
            if not rows and len(run_id) >= 6:
                pattern = run_id.replace("\\", "").replace("%", "").replace("_", "")
                rows = db.execute(
                    f"SELECT {_RUN_COLUMNS} FROM runs WHERE run_id LIKE ? OR run_id LIKE ? LIMIT 2",
                    (pattern + "%", "%" + pattern),
                ).fetchall()
        return _record(rows[0]) if len(rows) == 1 else None

    def nodes(self) -> list[NodeInfo]:
        with self._reading() as db:
            rows = db.execute(
                "SELECT node_id, host, pid, started_at, heartbeat_at, config, store, skew FROM nodes"
            ).fetchall()
        return [
            NodeInfo(node_id, host, pid, _from_db(started), _from_db(beat), config, store, skew)  # type: ignore[arg-type]
            for node_id, host, pid, started, beat, config, store, skew in rows
        ]

    def watch(self, callback: Callable[[], None]) -> None:
        """SQLite cannot notify another process; the loop polls within check_interval."""

    def close(self) -> None:
        self._closing.set()
        if self._checkpointer is not None:
            self._checkpointer.join()
        with self._lock:
            if not self._closed:
                self._closed = True
                self._db.close()  # the last connection out checkpoints and removes the WAL

    def _checkpoint_loop(self, interval: float, busy_timeout: float) -> None:
        """Copy the WAL into the database every ``interval`` seconds (PASSIVE: never
        blocks the writers), skipped while nothing was committed (data_version)."""
        db = sqlite3.connect(self.path, timeout=busy_timeout, isolation_level=None, check_same_thread=False)
        failed, seen = False, None
        try:
            while not self._closing.wait(interval):
                try:
                    (version,) = db.execute("PRAGMA data_version").fetchone()
                    if version == seen:
                        continue
                    db.execute("PRAGMA wal_checkpoint(PASSIVE)")
                    seen, failed = version, False
                except sqlite3.Error as exc:
                    if not failed:  # once per failure streak, not every second
                        logger.warning("checkpointing %s failed: %s", self.path, exc)
                    failed = True
        finally:
            db.close()

    # -- internals (in a transaction) -----------------------------------------------
    def _states(
        self, db: sqlite3.Connection, task_ids: list[str] | None, include_removed: bool = False
    ) -> dict[str, TaskState]:
        live = "" if include_removed else " AND removed = 0"
        if task_ids is None:
            query = f"SELECT {_TASK_COLUMNS} FROM tasks WHERE 1{live}"
            return {row[0]: _state(row) for row in db.execute(query)}
        states: dict[str, TaskState] = {}
        for chunk in _chunks(task_ids):
            query = f"SELECT {_TASK_COLUMNS} FROM tasks WHERE task_id IN ({','.join('?' * len(chunk))}){live}"
            states.update((row[0], _state(row)) for row in db.execute(query, chunk))
        return states

    def _definitions(self, db: sqlite3.Connection, task_ids: list[str]) -> dict[str, TaskDefinition]:
        definitions = {}
        for chunk in _chunks(task_ids):
            query = f"SELECT task_id, fingerprint, options FROM tasks WHERE task_id IN ({','.join('?' * len(chunk))})"
            for task_id, fingerprint, options in db.execute(query, chunk):
                definitions[task_id] = TaskDefinition.from_options(task_id, fingerprint, json.loads(options))
        return definitions

    def _write_states(self, db: sqlite3.Connection, states: list[TaskState]) -> None:
        db.executemany(
            "UPDATE tasks SET next_run_at = ?, finished = ?, run_count = ?, success_count = ?, failure_count = ?, "
            "retry_count = ?, missed_count = ?, skipped_count = ?, interrupted_count = ?, total_duration = ?, "
            "last_run_at = ?, last_state = ?, last_error = ?, last_duration = ? WHERE task_id = ?",
            [
                (
                    _to_db(s.next_run_at), s.finished, s.run_count, s.success_count, s.failure_count,
                    s.retry_count, s.missed_count, s.skipped_count, s.interrupted_count, s.total_duration,
                    _to_db(s.last_run_at), s.last_state.value if s.last_state else None, s.last_error,
                    s.last_duration, s.task_id,
                )
                for s in states
            ],
        )  # fmt: skip

    def _insert_runs(
        self, db: sqlite3.Connection, records: list[RunRecord], lease_db: int | None = None, due_at: int | None = None
    ) -> None:
        db.executemany(
            f"INSERT INTO runs ({_RUN_COLUMNS}, due_at, lease_until) VALUES ({','.join('?' * 19)})",
            [
                (
                    r.run_id, r.task_id, _to_db(r.scheduled_for), r.state.value, r.attempt, _to_db(r.started_at),
                    _to_db(r.finished_at), r.exit_code, r.error, r.output, r.node, r.manual, r.pid, r.pid_started,
                    r.cpu_user, r.cpu_system, r.max_rss, due_at, lease_db,
                )
                for r in records
            ],
        )  # fmt: skip

    def _run(self, db: sqlite3.Connection, run_id: str) -> RunRecord:
        return _record(db.execute(f"SELECT {_RUN_COLUMNS} FROM runs WHERE run_id = ?", (run_id,)).fetchone())

    def _running_counts(self, db: sqlite3.Connection) -> dict[str, int]:
        rows = db.execute("SELECT task_id, COUNT(*) FROM runs WHERE state = 'running' GROUP BY task_id")
        return dict(rows.fetchall())

    def _has_pending(self, db: sqlite3.Connection, task_id: str) -> bool:
        query = "SELECT 1 FROM runs WHERE task_id = ? AND state = 'scheduled' LIMIT 1"
        return db.execute(query, (task_id,)).fetchone() is not None

    def _has_active(self, db: sqlite3.Connection, task_id: str) -> bool:
        query = "SELECT 1 FROM runs WHERE task_id = ? AND state IN ('scheduled', 'running') LIMIT 1"
        return db.execute(query, (task_id,)).fetchone() is not None

    def _next_due(self, db: sqlite3.Connection, node: str) -> datetime | None:
        """The earliest due time among ``node``'s tasks: the due-time index is walked
        in order and stops at the first task the node registered."""
        task_row = db.execute(
            f"SELECT t.next_run_at FROM tasks t {_REGISTERED} WHERE {_LIVE} AND t.next_run_at IS NOT NULL "
            "ORDER BY t.next_run_at LIMIT 1",
            (node,),
        ).fetchone()
        run_row = db.execute(
            f"SELECT r.due_at FROM runs r JOIN tasks t USING (task_id) {_REGISTERED} "
            "WHERE r.state = 'scheduled' ORDER BY r.due_at LIMIT 1",
            (node,),
        ).fetchone()
        task_due, run_due = (row[0] if row else None for row in (task_row, run_row))
        candidates = [value for value in (task_due, run_due) if value is not None]
        return _from_db(min(candidates)) if candidates else None


def _is_lock_error(exc: sqlite3.OperationalError) -> bool:
    """SQLITE_BUSY or SQLITE_LOCKED (any extended code): another connection holds a lock."""
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None:
        return code & 0xFF in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)
    return "locked" in str(exc) or "busy" in str(exc)


def _chunks(items: list[str]) -> Iterator[list[str]]:
    for start in range(0, len(items), _CHUNK):
        yield items[start : start + _CHUNK]


def _state(row: tuple[Any, ...]) -> TaskState:
    (
        task_id, fingerprint, name, schedule, next_run_at, paused, finished, run_count, success_count, failure_count,
        retry_count, missed_count, skipped_count, interrupted_count, total_duration, last_run_at, last_state,
        last_error, last_duration, origin, problem,
    ) = row  # fmt: skip
    return TaskState(
        task_id=task_id,
        fingerprint=fingerprint,
        name=name,
        schedule=schedule,
        next_run_at=_from_db(next_run_at),
        paused=bool(paused),
        finished=bool(finished),
        run_count=run_count,
        success_count=success_count,
        failure_count=failure_count,
        retry_count=retry_count,
        missed_count=missed_count,
        skipped_count=skipped_count,
        interrupted_count=interrupted_count,
        total_duration=total_duration,
        last_run_at=_from_db(last_run_at),
        last_state=RunState(last_state) if last_state else None,
        last_error=last_error,
        last_duration=last_duration,
        origin=Origin(origin),
        problem=problem,
    )


def _record(row: tuple[Any, ...]) -> RunRecord:
    run_id, task_id, scheduled_for, state, attempt, started_at, finished_at, exit_code, error, output, node, manual = (
        row[:12]
    )
    return RunRecord(
        run_id=run_id,
        task_id=task_id,
        scheduled_for=_from_db(scheduled_for),  # type: ignore[arg-type]
        state=RunState(state),
        attempt=attempt,
        started_at=_from_db(started_at),
        finished_at=_from_db(finished_at),
        exit_code=exit_code,
        error=error,
        output=output,
        node=node,
        manual=bool(manual),
        pid=row[12],
        pid_started=row[13],
        cpu_user=row[14],
        cpu_system=row[15],
        max_rss=row[16],
    )
