"""The cluster store: one PostgreSQL database shared by every node and by the CLI.

``"store": {"url": "postgresql://user@host:5432/db", "schema": "task_scheduler"}``.
The password comes from the URL or from libpq's usual places (``PGPASSWORD``,
``~/.pgpass``); `location` shows the URL with any password masked, and nothing here
logs the URL otherwise. Needs ``pip install 'task_scheduler[postgres]'`` (psycopg 3).

- **Schema**: the SQLite store's tables (tasks, runs, nodes, registrations,
  shared_values, meta) in a PostgreSQL schema of their own (``store.schema``), plus
  ``schema_version`` (a row per applied migration). Opening creates or migrates it
  inside a transaction holding an advisory lock, so nodes starting at once on an
  empty database end with one schema and no errors. PostgreSQL's migrations are
  numbered on their own (version 1 is the SQLite store's version 3).
- **Times** are ``timestamptz``: microseconds like Python's datetime, readable in
  psql, and comparable with the server's clock. Flags are ``boolean``.
- **Claims** lock what they take with ``FOR UPDATE SKIP LOCKED`` (see
  `task_scheduler.stores.sql`): concurrent nodes split the due occurrences between
  them and never get the same one; the unique index on (task, scheduled_for,
  attempt) backs that up.
- **One clock**: with ``store.clock = "database"`` (the default) `heartbeat` returns
  the server's ``clock_timestamp()``, against which the scheduler measures its skew
  and corrects its due-time comparisons; ``"local"`` trusts each node's clock (tests
  that drive time by hand use it).
- **Wake-ups**: adding or changing a task, a manual run, a resume and a recovered
  run NOTIFY the channel ``task_scheduler:<schema>``; `watch` LISTENs on a
  connection of its own and reconnects with backoff.
- **Errors**: a lost connection, a server down or refusing connections, a deadlock
  or a pool with no connection within 5 s raise `StoreUnavailableError` ("try
  again"); the scheduler keeps its runs going and buffers their outcomes meanwhile.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import math
import os
import re
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from typing import Any

import psycopg
from psycopg import sql
from psycopg_pool import ConnectionPool

from task_scheduler.errors import StoreError, StoreUnavailableError
from task_scheduler.redact import redact_text
from task_scheduler.stores.sql import Dialect, Session, SQLStore
from task_scheduler.stores.sqlite_shared import SQLiteSharedValues

__all__ = ["PostgresStore"]

logger = logging.getLogger(__name__)

_MIGRATIONS: list[str] = [
    # version 1: the SQLite store's schema version 3
    """
    CREATE TABLE tasks (
        task_id text PRIMARY KEY,
        fingerprint text NOT NULL,
        options text NOT NULL,
        next_run_at timestamptz,
        paused boolean NOT NULL DEFAULT false,
        finished boolean NOT NULL DEFAULT false,
        removed boolean NOT NULL DEFAULT false,
        run_count bigint NOT NULL DEFAULT 0,
        success_count bigint NOT NULL DEFAULT 0,
        failure_count bigint NOT NULL DEFAULT 0,
        retry_count bigint NOT NULL DEFAULT 0,
        missed_count bigint NOT NULL DEFAULT 0,
        skipped_count bigint NOT NULL DEFAULT 0,
        interrupted_count bigint NOT NULL DEFAULT 0,
        total_duration double precision NOT NULL DEFAULT 0,
        last_run_at timestamptz,
        last_state text,
        last_error text,
        last_duration double precision,
        name text NOT NULL DEFAULT '',
        schedule text NOT NULL DEFAULT '',
        origin text NOT NULL DEFAULT 'code',
        spec text,
        problem text
    );
    CREATE INDEX tasks_due ON tasks (next_run_at) WHERE NOT paused AND NOT finished AND NOT removed;
    CREATE TABLE runs (
        run_id text PRIMARY KEY,
        task_id text NOT NULL,
        scheduled_for timestamptz NOT NULL,
        state text NOT NULL,
        attempt integer NOT NULL DEFAULT 1,
        due_at timestamptz,
        lease_until timestamptz,
        started_at timestamptz,
        finished_at timestamptz,
        exit_code integer,
        error text,
        output text,
        node text,
        manual boolean NOT NULL DEFAULT false,
        pid integer,
        pid_started double precision,
        cpu_user double precision,
        cpu_system double precision,
        max_rss bigint
    );
    CREATE INDEX runs_pending ON runs (due_at) WHERE state = 'scheduled';
    CREATE INDEX runs_running ON runs (task_id) WHERE state = 'running';
    CREATE INDEX runs_leases ON runs (lease_until) WHERE state = 'running';
    CREATE INDEX runs_history ON runs (task_id, finished_at);
    CREATE INDEX runs_finished ON runs (finished_at);
    -- An occurrence is claimed once: the same (task, time, attempt) cannot be inserted twice.
    CREATE UNIQUE INDEX runs_occurrence ON runs (task_id, scheduled_for, attempt) WHERE NOT manual;
    CREATE TABLE nodes (
        node_id text PRIMARY KEY,
        host text NOT NULL,
        pid integer NOT NULL,
        started_at timestamptz NOT NULL,
        heartbeat_at timestamptz NOT NULL,
        config text,
        store text,
        skew double precision
    );
    CREATE TABLE registrations (
        task_id text NOT NULL,
        node_id text NOT NULL,
        fingerprint text NOT NULL,
        PRIMARY KEY (task_id, node_id)
    );
    CREATE INDEX registrations_node ON registrations (node_id);
    CREATE TABLE shared_values (
        key text PRIMARY KEY,
        value text NOT NULL,
        expires_at timestamptz
    );
    CREATE INDEX shared_values_expiry ON shared_values (expires_at) WHERE expires_at IS NOT NULL;
    CREATE TABLE meta (name text PRIMARY KEY, value bigint NOT NULL);
    INSERT INTO meta (name, value) VALUES ('revision', 0);
    """,
]
SCHEMA_VERSION = len(_MIGRATIONS)
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")
# How long a store call waits for a free pooled connection (or a new one) before it
# reports the store unavailable: the scheduler loop must not hang on a dead server.
_POOL_WAIT = 5.0


def _same(value: Any) -> Any:
    return value


def _storable(text: str | None) -> str | None:
    """Text PostgreSQL accepts: no NUL characters (scripts do print them), valid UTF-8."""
    if text is None or (text.isascii() and "\x00" not in text):
        return text
    text = text.replace("\x00", "\ufffd")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = text.encode("utf-8", "replace").decode("utf-8")
    return text


# Booleans and timestamptz, rows locked; PostgreSQL takes up to 65,535 parameters.
POSTGRES = Dialect(true="TRUE", false="FALSE", to_db=_same, from_db=_same, locks=True, chunk=5_000, text=_storable)


@functools.lru_cache(maxsize=512)
def _placeholders(query: str) -> str:
    return query.replace("?", "%s")  # the shared SQL has no other "?" and no "%"


class _Session:
    """A psycopg connection speaking the shared SQL (``?`` placeholders)."""

    __slots__ = ("_connection",)

    def __init__(self, connection: psycopg.Connection[Any]) -> None:
        self._connection = connection

    def execute(self, query: str, params: Sequence[Any] = (), /) -> psycopg.Cursor[Any]:
        return self._connection.execute(_placeholders(query), params)

    def executemany(self, query: str, params: Iterable[Sequence[Any]], /) -> None:
        rows = list(params)
        if rows:  # psycopg pipelines the statements: one round trip, not one per row
            with self._connection.cursor() as cursor:
                cursor.executemany(_placeholders(query), rows)


class _PoolNoise(logging.Filter):
    """psycopg's pool logs a warning for every failed attempt to reconnect and every
    connection it drops after the server went away; the scheduler reports an outage
    itself, once (membership.py). So the pool's warnings from this store's threads
    (named task-scheduler...) are dropped; its errors are kept."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.ERROR or not (record.threadName or "").startswith("task-scheduler")


_POOL_NOISE = _PoolNoise()


def _lock_key(name: str) -> int:
    """A stable 64-bit advisory lock key for ``name``."""
    return int.from_bytes(hashlib.blake2b(name.encode(), digest_size=8).digest(), "big", signed=True)


class PostgresStore(SQLStore):
    """The `Store` contract on PostgreSQL, for several nodes at once.

    ``schema``: the PostgreSQL schema holding the tables (created if missing; tests
    use a fresh one each). ``pool_size``: the most connections this process opens
    (the service uses ``min(max_workers + 2, 16)``). ``clock``: ``"database"`` or
    ``"local"`` (see the module doc). ``wait``: seconds to keep trying while the
    server does not accept connections at open, before `StoreUnavailableError`.
    """

    def __init__(
        self,
        url: str,
        *,
        schema: str = "task_scheduler",
        pool_size: int = 4,
        clock: str = "database",
        wait: float = 10.0,
    ) -> None:
        if not _IDENTIFIER.fullmatch(schema):
            raise StoreError(f"store.schema {schema!r} is not a plain PostgreSQL identifier (letters, digits, _)")
        if clock not in ("database", "local"):
            raise StoreError(f"store.clock must be 'database' or 'local', not {clock!r}")
        self.url = url
        self.schema = schema
        self.location = f"{redact_text(url)} (schema {schema})"
        self.dialect = POSTGRES
        self._database_clock = clock == "database"
        self._channel = f"task_scheduler:{schema}"[:63]
        self._registrations_key = _lock_key(f"task_scheduler:{schema}:registrations")
        self._closed = False
        self._closing = threading.Event()
        self._listener: threading.Thread | None = None
        self._connect_options: dict[str, Any] = {"connect_timeout": max(2, min(10, math.ceil(wait)))}
        if "application_name" not in url and "PGAPPNAME" not in os.environ:
            # So that pg_stat_activity tells which node holds which connection.
            self._connect_options["application_name"] = f"task-scheduler {socket.gethostname()}:{os.getpid()}"
        self._migrate(wait)
        logging.getLogger("psycopg.pool").addFilter(_POOL_NOISE)  # (once: a filter is added only once)
        self._pool: ConnectionPool[psycopg.Connection[Any]] = ConnectionPool(
            url,
            min_size=1,
            max_size=max(1, pool_size),
            kwargs={**self._connect_options, "autocommit": True},
            configure=self._configure,
            timeout=_POOL_WAIT,
            name=f"task-scheduler:{schema}",
            open=False,
        )
        # The shared key-value store: the SQLite store's SQL, with times as timestamptz.
        self.shared = SQLiteSharedValues(self._transaction, to_db=_same)
        try:
            self._pool.open(wait=True, timeout=max(2.0, wait))
        except psycopg.OperationalError as exc:
            self._pool.close()
            problem = redact_text(str(exc)).strip()
            raise StoreUnavailableError(f"cannot connect to the PostgreSQL store {self.location}: {problem}") from exc

    def _configure(self, connection: psycopg.Connection[Any]) -> None:
        """Every new connection: our schema first in the search path, times in UTC."""
        connection.execute(
            "SELECT set_config('search_path', %s, false), set_config('TimeZone', 'UTC', false)",
            (sql.Identifier(self.schema).as_string(connection),),
        )

    def _migrate(self, wait: float) -> None:
        """Create or migrate the schema, waiting up to ``wait`` seconds for the server."""
        deadline = time.monotonic() + wait
        next_report, pause = time.monotonic() + 2.0, 0.2
        while True:
            try:
                with psycopg.connect(self.url, autocommit=True, **self._connect_options) as connection:
                    self._configure(connection)
                    with connection.transaction():
                        self._apply_migrations(connection)
                return
            except psycopg.OperationalError as exc:
                now = time.monotonic()
                if now >= deadline:
                    raise StoreUnavailableError(
                        f"cannot connect to the PostgreSQL store {self.location}: {redact_text(str(exc)).strip()}"
                    ) from exc
                if now >= next_report:
                    logger.warning("waiting for the PostgreSQL store %s: %s", self.location, str(exc).strip())
                    next_report = now + 5.0
                time.sleep(min(pause, max(0.0, deadline - now)))
                pause = min(pause * 2, 2.0)
            except psycopg.Error as exc:
                raise StoreError(f"cannot set up the schema of the PostgreSQL store {self.location}: {exc}") from exc

    def _apply_migrations(self, connection: psycopg.Connection[Any]) -> None:
        # One node migrates at a time; the others wait here, then find it done.
        connection.execute("SELECT pg_advisory_xact_lock(%s)", (_lock_key(f"task_scheduler:{self.schema}:migrate"),))
        exists = connection.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", (self.schema,)).fetchone()
        if not exists:  # (CREATE SCHEMA IF NOT EXISTS would need the CREATE right even when it exists)
            connection.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(self.schema)))
        connection.execute(
            "CREATE TABLE IF NOT EXISTS schema_version "
            "(version integer PRIMARY KEY, migrated_at timestamptz NOT NULL DEFAULT now())"
        )
        row = connection.execute("SELECT coalesce(max(version), 0) FROM schema_version").fetchone()
        version = int(row[0]) if row else 0
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"the PostgreSQL store {self.location} has schema version {version}, newer than this "
                f"task_scheduler supports ({SCHEMA_VERSION}); upgrade task_scheduler on this node"
            )
        for number in range(version, SCHEMA_VERSION):
            connection.execute(_MIGRATIONS[number])
            connection.execute("INSERT INTO schema_version (version) VALUES (%s)", (number + 1,))
            logger.info("PostgreSQL store %s: schema migrated to version %d", self.location, number + 1)

    # -- connections -------------------------------------------------------------------
    @contextmanager
    def _connection(self) -> Iterator[psycopg.Connection[Any]]:
        if self._closed:
            raise StoreError(f"the PostgreSQL store {self.location} is closed")
        try:
            with self._pool.connection() as connection:
                yield connection
        except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
            raise self._unavailable(exc) from exc

    @contextmanager
    def _transaction(self) -> Iterator[Session]:
        with self._connection() as connection, connection.transaction():
            yield _Session(connection)

    @contextmanager
    def _read(self) -> Iterator[Session]:
        """A pooled connection in autocommit; after `close`, a connection of its own,
        so that a stopped scheduler still reports its final state (writes after close
        raise StoreError)."""
        if not self._closed:
            with self._connection() as connection:
                yield _Session(connection)
            return
        try:
            with psycopg.connect(self.url, autocommit=True, **self._connect_options) as connection:
                self._configure(connection)
                yield _Session(connection)
        except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
            raise self._unavailable(exc) from exc

    def _unavailable(self, exc: psycopg.Error) -> StoreUnavailableError:
        lost = not isinstance(exc, psycopg.errors.DeadlockDetected | psycopg.errors.QueryCanceled)
        if lost and not self._closed:
            try:  # drop the pool's other connections the server closed too, before they are used
                self._pool.check()
            except Exception:  # best effort: the pool reconnects anyway
                logger.debug("checking the pool's connections failed", exc_info=True)
        return StoreUnavailableError(
            f"the PostgreSQL store {self.location} is unavailable: {redact_text(str(exc)).strip()}"
        )

    # -- the hooks of SQLStore ---------------------------------------------------------
    def _lock_registrations(self, db: Session) -> None:
        db.execute("SELECT pg_advisory_xact_lock(?)", (self._registrations_key,))

    def _notify(self, db: Session) -> None:
        db.execute("SELECT pg_notify(?, '')", (self._channel,))

    def _clock(self, db: Session) -> datetime | None:
        if not self._database_clock:
            return None
        row = db.execute("SELECT clock_timestamp()").fetchone()
        return row[0] if row else None

    def watch(self, callback: Callable[[], None]) -> None:
        """LISTEN for schedule changes on a connection of this store's own, in a
        daemon thread, and call ``callback()`` for each (and once after reconnecting,
        for what may have changed meanwhile). Idempotent."""
        if self._listener is not None or self._closed:
            return
        self._listener = threading.Thread(
            target=self._listen, args=(callback,), name="task-scheduler-listen", daemon=True
        )
        self._listener.start()

    def _listen(self, callback: Callable[[], None]) -> None:
        failures = 0
        while not self._closing.is_set():
            try:
                with psycopg.connect(self.url, autocommit=True, **self._connect_options) as connection:
                    connection.execute(sql.SQL("LISTEN {}").format(sql.Identifier(self._channel)))
                    if failures:
                        logger.info("listening to %s for schedule changes again", self.location)
                        callback()
                    failures = 0
                    while not self._closing.is_set():
                        for _ in connection.notifies(timeout=0.5):
                            callback()
            except psycopg.Error as exc:
                if failures == 0:
                    logger.warning(
                        "lost the notification connection to %s (%s); nodes see changes within check_interval "
                        "until it is back",
                        self.location,
                        redact_text(str(exc)).strip(),
                    )
                failures += 1
                self._closing.wait(min(30.0, 0.5 * 2 ** min(failures, 6)))

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._closing.set()
        if self._listener is not None:
            self._listener.join(timeout=5)
        self._pool.close()
