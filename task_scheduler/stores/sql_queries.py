"""The SQL stores' shared vocabulary: the dialect, the column lists, rows as records,
and the queries that only read (the CLI's and the claim's lookups).

`SQLQueries` is the read half of `task_scheduler.stores.sql.SQLStore`; a backend
supplies `dialect`, `location` and `_read`.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from task_scheduler.stores.base import NodeInfo, Origin, RunRecord, RunState, TaskState

__all__ = [
    "RUN_COLUMNS",
    "TASK_COLUMNS",
    "TASK_COLUMNS_OF_T",
    "REGISTERED",
    "Dialect",
    "SQLQueries",
    "Session",
    "earliest",
]

TASK_COLUMNS = (
    "task_id, fingerprint, name, schedule, next_run_at, paused, finished, run_count, success_count, failure_count, "
    "retry_count, missed_count, skipped_count, interrupted_count, total_duration, last_run_at, last_state, "
    "last_error, last_duration, origin, problem"
)
TASK_COLUMNS_OF_T = ", ".join(f"t.{column.strip()}" for column in TASK_COLUMNS.split(","))  # for joins
RUN_COLUMNS = (
    "run_id, task_id, scheduled_for, state, attempt, started_at, finished_at, exit_code, error, output, node, manual, "
    "pid, pid_started, cpu_user, cpu_system, max_rss"
)
# Final runs, word for word the condition of SQLite's end-time index (runs_finished):
# SQLite reads a partial index only for a query that carries its very term.
FINAL = "state NOT IN ('scheduled', 'running')"
# A task ``node`` may claim: it registered the task with the stored fingerprint. A
# correlated EXISTS, not a join, so that the due-time indexes are walked in order and
# the walk stops at the first due row: with a join SQLite chose to read all of the
# node's registrations and sort them (30 ms per loop step at 10,000 tasks; 0.4 ms so).
REGISTERED = (
    "EXISTS (SELECT 1 FROM registrations g WHERE g.task_id = t.task_id AND g.node_id = ? "
    "AND g.fingerprint = t.fingerprint)"
)


class Session(Protocol):
    """One connection inside a transaction (or in autocommit, for reads)."""

    def execute(self, query: str, params: Sequence[Any] = ..., /) -> Any: ...

    def executemany(self, query: str, params: Iterable[Sequence[Any]], /) -> Any: ...


@dataclass(frozen=True)
class Dialect:
    """What differs between the SQL backends, as data."""

    true: str  # boolean literals: SQLite stores flags as 0/1, PostgreSQL as boolean
    false: str
    to_db: Callable[[datetime | None], Any]  # a time as stored
    from_db: Callable[[Any], datetime | None]
    locks: bool = False  # emit FOR UPDATE clauses (row locks) in the queries that need them
    chunk: int = 10_000  # ids per IN list
    text: Callable[[str | None], str | None] = field(default=lambda value: value)  # text as storable

    def lock(self, order_by: str = "", of: str = "", skip: bool = False) -> str:
        """The clause that locks the selected rows (and its ORDER BY, so that
        waiting lockers take rows in one order); empty where rows are not locked."""
        if not self.locks:
            return ""
        order = f" ORDER BY {order_by}" if order_by else ""
        return f"{order} FOR UPDATE{f' OF {of}' if of else ''}{' SKIP LOCKED' if skip else ''}"

    def marks(self, count: int) -> str:
        return ",".join("?" * count)

    @property
    def live(self) -> str:
        """A task that can fire (the due-time index covers exactly these rows)."""
        return f"paused = {self.false} AND finished = {self.false} AND removed = {self.false}"


class SQLQueries:
    """Reads over the shared schema."""

    dialect: Dialect
    location: str

    def _read(self) -> AbstractContextManager[Session]:
        """A connection for reads that need no write lock."""
        raise NotImplementedError

    # -- queries -----------------------------------------------------------------------
    def task_states(self) -> dict[str, TaskState]:
        with self._read() as db:
            return self._states(db, None)

    def job_specs(self, origin: Origin | None = None) -> dict[str, dict[str, Any]]:
        query = f"SELECT task_id, spec FROM tasks WHERE removed = {self.dialect.false} AND spec IS NOT NULL"
        with self._read() as db:
            if origin is None:
                rows = db.execute(query).fetchall()
            else:
                rows = db.execute(query + " AND origin = ?", (origin.value,)).fetchall()
        return {task_id: json.loads(spec) for task_id, spec in rows}

    def revision(self) -> int:
        with self._read() as db:
            return int(db.execute("SELECT value FROM meta WHERE name = 'revision'").fetchone()[0])

    def active_runs(self) -> list[RunRecord]:
        with self._read() as db:
            # Two selects, each the very term of a partial index: with ``state IN (...)``
            # SQLite scanned the whole table (53 ms at 500,000 runs; 0.1 ms so), on
            # every status call and metrics scrape.
            rows = db.execute(
                f"SELECT {RUN_COLUMNS} FROM runs WHERE state = 'scheduled' UNION ALL "
                f"SELECT {RUN_COLUMNS} FROM runs WHERE state = 'running'"
            ).fetchall()
            return [self._record(row) for row in rows]

    def history(self, task_id: str | None = None, state: RunState | None = None, limit: int = 100) -> list[RunRecord]:
        clauses, values = [FINAL], []
        if task_id is not None:
            clauses.append("task_id = ?")
            values.append(task_id)
        if state is not None:
            clauses.append("state = ?")
            values.append(state.value)
        query = (
            f"SELECT {RUN_COLUMNS} FROM runs WHERE {' AND '.join(clauses)} "
            "ORDER BY finished_at DESC, scheduled_for DESC LIMIT ?"
        )
        with self._read() as db:
            return [self._record(row) for row in db.execute(query, (*values, limit))]

    def run(self, run_id: str) -> RunRecord | None:
        with self._read() as db:
            rows = db.execute(f"SELECT {RUN_COLUMNS} FROM runs WHERE run_id = ?", (run_id,)).fetchall()
            if not rows and len(run_id) >= 6:
                pattern = run_id.replace("\\", "").replace("%", "").replace("_", "")
                rows = db.execute(
                    f"SELECT {RUN_COLUMNS} FROM runs WHERE run_id LIKE ? OR run_id LIKE ? LIMIT 2",
                    (pattern + "%", "%" + pattern),
                ).fetchall()
        return self._record(rows[0]) if len(rows) == 1 else None

    def nodes(self) -> list[NodeInfo]:
        from_db = self.dialect.from_db
        with self._read() as db:
            rows = db.execute(
                "SELECT node_id, host, pid, started_at, heartbeat_at, config, store, skew FROM nodes ORDER BY node_id"
            ).fetchall()
        return [
            NodeInfo(node_id, host, pid, from_db(started), from_db(beat), config, store, skew)  # type: ignore[arg-type]
            for node_id, host, pid, started, beat, config, store, skew in rows
        ]

    # -- internals (in a transaction) --------------------------------------------------
    def _chunks(self, items: list[str]) -> Iterator[list[str]]:
        size = self.dialect.chunk
        for start in range(0, len(items), size):
            yield items[start : start + size]

    def _states(self, db: Session, task_ids: list[str] | None, include_removed: bool = False) -> dict[str, TaskState]:
        """The states of ``task_ids`` (all when None)."""
        d = self.dialect
        live = "" if include_removed else f" AND removed = {d.false}"
        if task_ids is None:
            query = f"SELECT {TASK_COLUMNS} FROM tasks WHERE {d.true}{live}"
            return {row[0]: self._state(row) for row in db.execute(query)}
        states: dict[str, TaskState] = {}
        for chunk in self._chunks(task_ids):
            query = f"SELECT {TASK_COLUMNS} FROM tasks WHERE task_id IN ({d.marks(len(chunk))}){live}"
            states.update((row[0], self._state(row)) for row in db.execute(query, chunk))
        return states

    def _runs(self, db: Session, run_ids: list[str]) -> list[RunRecord]:
        """The rows of ``run_ids``, in that order."""
        found: dict[str, RunRecord] = {}
        for chunk in self._chunks(run_ids):
            query = f"SELECT {RUN_COLUMNS} FROM runs WHERE run_id IN ({self.dialect.marks(len(chunk))})"
            found.update((row[0], self._record(row)) for row in db.execute(query, chunk))
        return [found[run_id] for run_id in run_ids if run_id in found]

    def _run_states(self, db: Session, run_ids: list[str]) -> dict[str, str]:
        """run_id -> state of the rows that exist, locked for update."""
        found: dict[str, str] = {}
        locking = self.dialect.lock("run_id")
        for chunk in self._chunks(sorted(run_ids)):
            query = f"SELECT run_id, state FROM runs WHERE run_id IN ({self.dialect.marks(len(chunk))}){locking}"
            found.update(db.execute(query, chunk).fetchall())
        return found

    def _running_counts(self, db: Session, task_ids: list[str]) -> dict[str, int]:
        counts: dict[str, int] = {}
        for chunk in self._chunks(sorted(set(task_ids))):
            query = (
                f"SELECT task_id, COUNT(*) FROM runs WHERE state = 'running' AND task_id IN "
                f"({self.dialect.marks(len(chunk))}) GROUP BY task_id"
            )
            counts.update(db.execute(query, chunk).fetchall())
        return counts

    def _has_pending(self, db: Session, task_id: str) -> bool:
        query = "SELECT 1 FROM runs WHERE task_id = ? AND state = 'scheduled' LIMIT 1"
        return db.execute(query, (task_id,)).fetchone() is not None

    def _has_active(self, db: Session, task_id: str) -> bool:
        query = "SELECT 1 FROM runs WHERE task_id = ? AND state IN ('scheduled', 'running') LIMIT 1"
        return db.execute(query, (task_id,)).fetchone() is not None

    def _next_due(self, db: Session, node: str) -> datetime | None:
        """The earliest due time among ``node``'s tasks and SCHEDULED runs."""
        return earliest(*self._due_times(db, node))

    def _due_times(self, db: Session, node: str) -> tuple[datetime | None, datetime | None]:
        """The earliest due time among ``node``'s tasks, and among its SCHEDULED runs,
        in one statement (one round trip to a server): each due-time index is walked
        in order and stops at the first row of a task the node registered."""
        row = db.execute(
            f"SELECT (SELECT t.next_run_at FROM tasks t WHERE {REGISTERED} AND {self.dialect.live} "
            "AND t.next_run_at IS NOT NULL ORDER BY t.next_run_at LIMIT 1), "
            f"(SELECT r.due_at FROM runs r JOIN tasks t USING (task_id) WHERE {REGISTERED} "
            "AND r.state = 'scheduled' ORDER BY r.due_at LIMIT 1)",
            (node, node),
        ).fetchone()
        from_db = self.dialect.from_db
        return from_db(row[0]), from_db(row[1])

    def _state(self, row: Sequence[Any]) -> TaskState:
        (
            task_id, fingerprint, name, schedule, next_run_at, paused, finished, run_count, success_count,
            failure_count, retry_count, missed_count, skipped_count, interrupted_count, total_duration, last_run_at,
            last_state, last_error, last_duration, origin, problem,
        ) = row  # fmt: skip
        from_db = self.dialect.from_db
        return TaskState(
            task_id=task_id,
            fingerprint=fingerprint,
            name=name,
            schedule=schedule,
            next_run_at=from_db(next_run_at),
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
            last_run_at=from_db(last_run_at),
            last_state=RunState(last_state) if last_state else None,
            last_error=last_error,
            last_duration=last_duration,
            origin=Origin(origin),
            problem=problem,
        )

    def _record(self, row: Sequence[Any]) -> RunRecord:
        from_db = self.dialect.from_db
        return RunRecord(
            run_id=row[0],
            task_id=row[1],
            scheduled_for=from_db(row[2]),  # type: ignore[arg-type]
            state=RunState(row[3]),
            attempt=row[4],
            started_at=from_db(row[5]),
            finished_at=from_db(row[6]),
            exit_code=row[7],
            error=row[8],
            output=row[9],
            node=row[10],
            manual=bool(row[11]),
            pid=row[12],
            pid_started=row[13],
            cpu_user=row[14],
            cpu_system=row[15],
            max_rss=row[16],
        )


def earliest(*times: datetime | None) -> datetime | None:
    """The earliest of the given times that are set."""
    return min((t for t in times if t is not None), default=None)
