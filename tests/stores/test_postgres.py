"""The PostgreSQL store's own behaviour on a real server: opening and migrating, several
connections claiming at once, lost connections, notifications, the store's clock.
(The contract suite and the scheduler tests run on it too; several service processes
are in tests/integration/test_cluster.py.)"""

from __future__ import annotations

import multiprocessing
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from task_scheduler import (
    FunctionTask,
    IntervalRule,
    RunState,
    SchedulerConfig,
    StoreError,
    StoreUnavailableError,
    SystemClock,
    TaskContext,
    TaskScheduler,
)
from tests.pg import URL, execute, require_postgres
from tests.stores.test_contract import NODE, T0, claim, definition

pytestmark = pytest.mark.usefixtures("pg_schema")
CONTEXT = multiprocessing.get_context("fork")


def open_store(schema: str, **options: object):  # type: ignore[no-untyped-def]
    from task_scheduler.stores.postgres import PostgresStore

    return PostgresStore(URL, schema=schema, **{"clock": "local", **options})  # type: ignore[arg-type]


@pytest.fixture
def store(pg_schema: str) -> Iterator[object]:
    store = open_store(pg_schema)
    yield store
    store.close()


def _open_at_once(schema: str, barrier: multiprocessing.synchronize.Barrier, errors: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    barrier.wait()
    try:
        store = open_store(schema, wait=30)
        store.sync_tasks([definition()], f"node-{multiprocessing.current_process().pid}")
        store.close()
    except Exception as exc:  # noqa: BLE001 - reported to the test
        errors.put(f"{type(exc).__name__}: {exc}")


def test_nodes_starting_at_once_on_an_empty_database_make_one_schema(pg_schema: str) -> None:
    errors: multiprocessing.Queue[str] = CONTEXT.Queue()
    barrier = CONTEXT.Barrier(6)
    processes = [CONTEXT.Process(target=_open_at_once, args=(pg_schema, barrier, errors)) for _ in range(6)]
    for process in processes:
        process.start()
    for process in processes:
        process.join(60)
    assert errors.empty(), errors.get()
    assert [p.exitcode for p in processes] == [0] * 6
    assert execute(f"SELECT version FROM {pg_schema}.schema_version") == [(1,)]
    assert execute(f"SELECT count(*) FROM {pg_schema}.registrations") == [(6,)]


def test_a_newer_schema_is_refused(pg_schema: str) -> None:
    open_store(pg_schema).close()
    execute(f"INSERT INTO {pg_schema}.schema_version (version) VALUES (99)")
    with pytest.raises(StoreError, match="schema version 99, newer than"):
        open_store(pg_schema)


def test_separate_connections_never_share_an_occurrence(pg_schema: str) -> None:
    """Like nodes: each claimer has its own pool, and they claim at the same time."""
    setup = open_store(pg_schema)
    setup.sync_tasks([definition(f"t{i}", max_instances=100) for i in range(60)], NODE)
    setup.close()
    got: list[tuple[str, datetime]] = []
    lock = threading.Lock()
    barrier = threading.Barrier(4)

    def worker() -> None:
        own = open_store(pg_schema)
        barrier.wait()
        for step in range(15):
            result = claim(own, T0 + timedelta(seconds=10 * step), limit=7)
            with lock:
                got.extend((r.task_id, r.scheduled_for) for r in result.runs)
        own.close()

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert got and len(got) == len(set(got))


def test_an_unreachable_server_is_unavailable_and_the_password_never_shown() -> None:
    from task_scheduler.stores.postgres import PostgresStore

    require_postgres()
    started = time.monotonic()
    with pytest.raises(StoreUnavailableError) as caught:
        PostgresStore("postgresql://someone:s3cret@127.0.0.1:9/test", wait=1)
    assert time.monotonic() - started < 15
    assert "s3cret" not in str(caught.value) and "someone:***@127.0.0.1:9" in str(caught.value)


def test_text_with_nul_characters_is_kept(store) -> None:  # type: ignore[no-untyped-def]
    store.sync_tasks([definition()], NODE)
    [run] = claim(store, T0).runs
    run.state, run.finished_at, run.output = RunState.SUCCEEDED, T0, "a\x00b ünïcode"
    store.finish([run])
    assert store.history("job")[0].output == "a\ufffdb ünïcode"


def test_a_lost_connection_is_unavailable_once_then_the_store_reconnects(store) -> None:  # type: ignore[no-untyped-def]
    store.sync_tasks([definition()], NODE)
    name = store._pool.kwargs["application_name"]
    killed = execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = %s", (name,))
    assert killed
    outcomes = []
    for _ in range(3):
        try:
            outcomes.append(sorted(store.task_states()))
        except StoreUnavailableError as exc:
            assert "unavailable" in str(exc)
            outcomes.append("unavailable")
    assert outcomes[-1] == ["job"] and outcomes.count("unavailable") <= 1


def test_watch_wakes_on_a_new_task_a_trigger_and_a_resume(pg_schema: str) -> None:
    watcher, other = open_store(pg_schema), open_store(pg_schema)
    woken = threading.Event()
    try:
        watcher.watch(woken.set)
        time.sleep(0.5)  # the listener connects
        for change in (
            lambda: other.sync_tasks([definition()], "other"),
            lambda: other.request_run("job", T0, None),
            lambda: other.set_paused("job", False),
        ):
            woken.clear()
            change()
            assert woken.wait(5)
        woken.clear()
        other.set_paused("job", True)  # pausing wakes nobody
        assert not woken.wait(1)
    finally:
        watcher.close()
        other.close()


class Ahead(SystemClock):
    """A node whose wall clock runs ``seconds`` ahead of the real time."""

    def __init__(self, seconds: float) -> None:
        self.offset = timedelta(seconds=seconds)

    def now(self) -> datetime:
        return super().now() + self.offset


@pytest.mark.parametrize("offset", [5.0, -5.0], ids=["5s-ahead", "5s-behind"])
def test_a_node_with_a_wrong_clock_fires_on_the_database_clock(
    pg_schema: str, base_dir: Path, offset: float, caplog: pytest.LogCaptureFixture
) -> None:
    """The node's clock is off by 5 s; due times follow the database's: nothing runs
    early (ahead) or late (behind), and the skew is logged and reported."""
    config = SchedulerConfig.from_dict(
        {
            "scheduler": {"timezone": "UTC", "base_dir": str(base_dir), "check_interval": 0.2},
            "store": {"url": URL, "schema": pg_schema, "clock": "database", "lease_seconds": 3},
            "logging": {"log_file": None},
        }
    )
    started: list[tuple[datetime, datetime]] = []  # (scheduled, real time at start)

    def work(context: TaskContext) -> None:
        started.append((context.scheduled_for, datetime.now(UTC)))

    first = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=2)
    scheduler = TaskScheduler(config, clock=Ahead(offset))
    scheduler.add_task(FunctionTask("tick", "tick", work), IntervalRule(seconds=0.5, start=first))
    scheduler.start()
    time.sleep(4.5)
    [node] = scheduler.store.nodes()
    scheduler.stop()
    assert len(started) >= 4
    earliest = min((begun - scheduled).total_seconds() for scheduled, begun in started)
    latest = max((begun - scheduled).total_seconds() for scheduled, begun in started)
    assert earliest >= -0.01, f"a run started {-earliest:.3f}s before it was due"
    assert latest < 1.0, f"a run started {latest:.3f}s after it was due"
    assert node.skew is not None and abs(node.skew - offset) < 0.5
    assert any(("ahead of" if offset > 0 else "behind") in r.getMessage() for r in caplog.records)


def test_shared_values_are_seen_by_another_node_and_survive_reopening(pg_schema: str) -> None:
    first, second = open_store(pg_schema), open_store(pg_schema)
    first.shared.set("cookie", '"SESSDATA=x"', T0 + timedelta(hours=1))
    assert second.shared.get("cookie", T0) == '"SESSDATA=x"'
    first.close()
    second.close()
    again = open_store(pg_schema)
    assert again.shared.keys(T0) == ["cookie"]
    again.close()


def test_config_names_the_store_keys_and_the_missing_extra(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from task_scheduler import ConfigError
    from task_scheduler.stores import open_store as open_configured

    def config(**store: object) -> SchedulerConfig:
        return SchedulerConfig.from_dict({"store": {"url": URL, **store}, "scheduler": {"base_dir": str(tmp_path)}})

    with pytest.raises(ConfigError, match=r"store\.clock: must be 'database' or 'local'"):
        config(clock="ntp")
    with pytest.raises(ConfigError, match=r"store\.schema: must be a plain PostgreSQL identifier"):
        config(schema="a; DROP TABLE x")
    with pytest.raises(ConfigError, match=r"unsupported store 'mysql://me:\*\*\*@db/x'") as caught:
        SchedulerConfig.from_dict({"store": {"url": "mysql://me:pw@db/x"}})
    assert "pw" not in str(caught.value)
    monkeypatch.setitem(sys.modules, "psycopg", None)  # as if the [postgres] extra were not installed
    monkeypatch.delitem(sys.modules, "task_scheduler.stores.postgres", raising=False)
    with pytest.raises(ConfigError, match=r"pip install 'task_scheduler\[postgres\]'"):
        open_configured(config())
