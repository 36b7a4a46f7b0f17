"""State stores: one module per backend, all speaking the `Store` contract.

``store.url`` picks one: ``memory://`` (nothing persisted), ``sqlite://PATH`` (the
default, ``DATA_DIR/state.db``), ``postgresql://user@host:5432/db`` (a cluster of
nodes; `stores.postgres`, needs the ``postgres`` extra). Everything after
``sqlite://`` is the path, so ``sqlite:///var/lib/task-scheduler/state.db`` is
absolute and ``sqlite://state.db`` is relative to ``scheduler.base_dir``.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from task_scheduler.errors import ConfigError
from task_scheduler.stores.base import Store
from task_scheduler.stores.memory import MemoryStore
from task_scheduler.stores.sqlite import SQLiteStore

if TYPE_CHECKING:
    from task_scheduler.config import SchedulerConfig

__all__ = ["MemoryStore", "SQLiteStore", "Store", "open_store", "store_path"]


def store_path(config: SchedulerConfig) -> Path | None:
    """The SQLite file the config names (or defaults to); None for other stores."""
    url = config.store.url
    if url is None:
        return config.data_dir / "state.db"
    if url.startswith("sqlite://"):
        raw = url[len("sqlite://") :]
        if raw.startswith("//"):
            raw = "/" + raw.lstrip("/")
        return config.path(raw)
    return None


def open_store(config: SchedulerConfig, *, service: bool = False) -> Store:
    """Open the store named by ``config.store.url``; ``service`` for the long-lived
    scheduler process (SQLite then checkpoints its log in the background)."""
    url = config.store.url or "sqlite://"
    if url.startswith("memory://"):
        return MemoryStore(config.history.max_runs_per_task or 1000)
    if url.startswith(("postgresql://", "postgres://")):
        return _open_postgres(config, url, service)
    path = store_path(config)
    if path is not None:
        # The service waits longer for the file lock than a CLI call: it must not
        # give up at start because the disk is slow while a CLI call writes.
        busy_timeout = config.store.busy_timeout if service else min(10.0, config.store.busy_timeout)
        return SQLiteStore(path, busy_timeout=busy_timeout, checkpoint_interval=1.0 if service else None)
    raise ConfigError(
        f"unsupported store {url!r} (use memory://, sqlite://PATH or postgresql://...)",
        source=config.source,
        key="store.url",
    )


def _open_postgres(config: SchedulerConfig, url: str, service: bool) -> Store:
    try:
        from task_scheduler.stores.postgres import PostgresStore
    except ImportError as exc:
        raise ConfigError(
            f"the PostgreSQL store needs psycopg ({exc}): pip install 'task_scheduler[postgres]'",
            source=config.source,
            key="store.url",
        ) from exc
    settings = config.store
    # The loop, the pruner and a few CLI-like calls share the pool; workers rarely
    # touch the store (a script's pid), so max_workers + 2 is plenty.
    pool_size = min(config.scheduler.max_workers + 2, 16) if service else 2
    wait = settings.busy_timeout if service else min(5.0, settings.busy_timeout)
    return PostgresStore(url, schema=settings.schema, pool_size=pool_size, clock=settings.clock, wait=wait)
