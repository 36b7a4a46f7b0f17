"""The shared key-value store in the SQLite file (table ``shared_values``, schema v3).

Kept apart from `task_scheduler.stores.sqlite` (the schedule state) but on the same
connection and lock, so a value written by one process is read by every other
process on the file, and survives restarts. Expiry times are integer microseconds
since the epoch, like every time in the file; reads filter expired rows out, so
`purge` only reclaims space.

The same SQL serves the PostgreSQL store (its session takes these ``?`` placeholders,
its times are ``timestamptz``): it passes its own ``to_db``.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from datetime import UTC, datetime, timedelta
from typing import Any

from task_scheduler.stores.sql_queries import Session

__all__ = ["SQLiteSharedValues"]

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


def _to_db(moment: datetime) -> int:
    return (moment - _EPOCH) // _MICROSECOND


class SQLiteSharedValues:
    """The `SharedValues` contract on the store's SQLite connection. ``transaction``
    is the store's one-transaction context manager; ``to_db`` stores a time."""

    def __init__(
        self, transaction: Callable[[], AbstractContextManager[Session]], to_db: Callable[[datetime], Any] = _to_db
    ) -> None:
        self._transaction = transaction
        self._to_db = to_db

    def set(self, key: str, value: str, expires_at: datetime | None) -> None:
        until = None if expires_at is None else self._to_db(expires_at)
        with self._transaction() as db:
            db.execute(
                "INSERT INTO shared_values (key, value, expires_at) VALUES (?, ?, ?) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value, expires_at = excluded.expires_at",
                (key, value, until),
            )

    def get(self, key: str, now: datetime) -> str | None:
        with self._transaction() as db:
            row = db.execute(
                "SELECT value FROM shared_values WHERE key = ? AND (expires_at IS NULL OR expires_at > ?)",
                (key, self._to_db(now)),
            ).fetchone()
        return None if row is None else str(row[0])

    def delete(self, key: str) -> bool:
        with self._transaction() as db:
            return int(db.execute("DELETE FROM shared_values WHERE key = ?", (key,)).rowcount) > 0

    def keys(self, now: datetime | None) -> list[str]:
        with self._transaction() as db:
            if now is None:
                rows = db.execute("SELECT key FROM shared_values ORDER BY key").fetchall()
            else:
                rows = db.execute(
                    "SELECT key FROM shared_values WHERE expires_at IS NULL OR expires_at > ? ORDER BY key",
                    (self._to_db(now),),
                ).fetchall()
        return [str(key) for (key,) in rows]

    def purge(self, now: datetime) -> int:
        with self._transaction() as db:
            return int(db.execute("DELETE FROM shared_values WHERE expires_at <= ?", (self._to_db(now),)).rowcount)

    def clear(self) -> int:
        with self._transaction() as db:
            return int(db.execute("DELETE FROM shared_values").rowcount)
