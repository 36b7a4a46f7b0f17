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

import logging
import os
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

from task_scheduler.errors import StoreError, StoreUnavailableError
from task_scheduler.stores.sql import Dialect, SQLStore
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
    # version 4: only final runs in the index by end time (history and pruning ask
    # for them with this very term, sql_queries.FINAL): a run enters it once, when it
    # ends, not at its claim (as NULL) and again at its end. This index was 3 of the
    # ~17 pages each run wrote to the log; now 1.
    """
    DROP INDEX runs_finished;
    CREATE INDEX runs_finished ON runs (finished_at) WHERE state NOT IN ('scheduled', 'running');
    """,
]
SCHEMA_VERSION = len(_MIGRATIONS)
# A log file larger than this, and mostly stale, is cut back: a burst of 20,000 runs
# grows it to ~330 MB, which SQLite would otherwise keep on disk until the service stops.
WAL_SIZE_LIMIT = 64 * 1024 * 1024
# The checkpointer copies beside the writers until they add fewer pages than this
# during one pass; the rest is copied under the store's lock (see _copy_log).
_CALM_FRAMES = 256


def _to_db(moment: datetime | None) -> int | None:
    return None if moment is None else (moment - _EPOCH) // _MICROSECOND


def _from_db(value: int | None) -> datetime | None:
    return None if value is None else _EPOCH + value * _MICROSECOND


# Flags are 0/1; times integer microseconds; one writer at a time, so no row locks.
# SQLite's default limit on variables in one statement is 32,766: IN lists go in chunks.
SQLITE = Dialect(true="1", false="0", to_db=_to_db, from_db=_from_db, chunk=10_000)


class SQLiteStore(SQLStore):
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
        self.dialect = SQLITE
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

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
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

    def close(self) -> None:
        self._closing.set()
        if self._checkpointer is not None:
            self._checkpointer.join()
        with self._lock:
            if not self._closed:
                self._closed = True
                self._db.close()  # the last connection out checkpoints and removes the WAL

    def _checkpoint_loop(self, interval: float, busy_timeout: float) -> None:
        """Copy the WAL into the database every ``interval`` seconds (`_copy_log`),
        skipped while nothing was committed (data_version)."""
        db = sqlite3.connect(self.path, timeout=busy_timeout, isolation_level=None, check_same_thread=False)
        failed, seen = False, None
        recent: deque[int] = deque(maxlen=10)  # the most pages the log held, per pass of the loop
        try:
            page_size = db.execute("PRAGMA page_size").fetchone()[0]
            while not self._closing.wait(interval):
                try:
                    (version,) = db.execute("PRAGMA data_version").fetchone()
                    if version == seen:
                        continue
                    most = self._copy_log(db, page_size * max(recent, default=0), page_size, busy_timeout)
                    if most is None:
                        return
                    recent.append(most)
                    seen, failed = version, False
                except sqlite3.Error as exc:
                    if not failed:  # once per failure streak, not every second
                        logger.warning("checkpointing %s failed: %s", self.path, exc)
                    failed = True
        finally:
            db.close()

    def _copy_log(self, db: sqlite3.Connection, in_use: int, page_size: int, busy_timeout: float) -> int | None:
        """Copy the log beside the writers (PASSIVE never blocks them), again while they
        added much meanwhile, then the rest under the store's lock, between two of this
        process's commits: the log is then copied whole and the next commit starts it
        over. (Without that last pass a log that is never idle never starts over: it
        grew by 80 MB a second at 1,000 runs a second.) The locked pass copies what
        came during the previous one, about 1 MiB under load. A log file left large
        by a burst (twice the most bytes the log held in the last passes, ``in_use``)
        is cut back here, not in a commit of the loop's. Returns the most pages the log
        held in this pass; None once closed."""
        _, frames, _ = db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        most = frames
        for _ in range(3):
            _, now, _ = db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
            added, frames, most = now - frames, now, max(most, now)
            if added <= _CALM_FRAMES:
                break
        with self._lock:
            if self._closed:
                return None
            _, frames, _ = db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
            most = max(most, frames)
            size = _size(Path(f"{self.path}-wal"))
            # Under steady load the file is as large as what one interval writes, and
            # is left alone (cutting it would make the next commits grow it again).
            if size > WAL_SIZE_LIMIT and 2 * max(in_use, most * page_size) < size:
                db.execute("PRAGMA busy_timeout = 0")  # another process reading: next time
                try:
                    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
                finally:
                    db.execute(f"PRAGMA busy_timeout = {int(busy_timeout * 1000)}")
        return int(most)


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def _is_lock_error(exc: sqlite3.OperationalError) -> bool:
    """SQLITE_BUSY or SQLITE_LOCKED (any extended code): another connection holds a lock."""
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None:
        return code & 0xFF in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)
    return "locked" in str(exc) or "busy" in str(exc)
