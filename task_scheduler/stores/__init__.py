"""State stores: one module per backend, all speaking the `Store` contract."""

from __future__ import annotations

from typing import TYPE_CHECKING

from task_scheduler.errors import ConfigError
from task_scheduler.stores.base import Store
from task_scheduler.stores.memory import MemoryStore

if TYPE_CHECKING:
    from task_scheduler.config import SchedulerConfig

__all__ = ["MemoryStore", "Store", "open_store"]


def open_store(config: SchedulerConfig) -> Store:
    """The store named by ``config.store.url``."""
    url = config.store.url
    if url.startswith("memory://"):
        return MemoryStore(config.store.history_max_runs_per_task)
    raise ConfigError(f"unsupported store {url!r}", source=config.source, key="store.url")
