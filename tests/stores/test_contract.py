"""One contract, every store: the same calls must mean the same thing."""

from __future__ import annotations

import stat
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from task_scheduler import MemoryStore, RunState, StoreError, TaskNotFoundError
from task_scheduler.stores import SQLiteStore, Store
from task_scheduler.stores.base import NodeInfo, Retry, TaskDefinition
from tests.pg import URL as POSTGRES_URL

T0 = datetime(2030, 1, 1, tzinfo=UTC)
NODE = "node-a"


def every(seconds: float):  # type: ignore[no-untyped-def]
    return lambda task_id, after: after + timedelta(seconds=seconds)


def once(task_id: str, after: datetime) -> None:
    return None


def definition(
    task_id: str = "job", first: datetime | None = T0, fingerprint: str = "every 10s", **options: object
) -> TaskDefinition:
    return TaskDefinition(task_id, fingerprint, first, name=task_id.title(), schedule=fingerprint, **options)  # type: ignore[arg-type]


@pytest.fixture(params=["memory", "sqlite", "postgres"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    store: Store
    if request.param == "memory":
        store = MemoryStore()
    elif request.param == "sqlite":
        store = SQLiteStore(tmp_path / "state.db")
    else:
        from task_scheduler.stores.postgres import PostgresStore

        store = PostgresStore(POSTGRES_URL, schema=request.getfixturevalue("pg_schema"), clock="local")
    yield store
    store.close()


EVERY_10_SECONDS = every(10)


def claim(store: Store, now: datetime, next_fire=EVERY_10_SECONDS, limit: int = 100):  # type: ignore[no-untyped-def]
    return store.claim_due(now, limit, NODE, now + timedelta(seconds=30), next_fire)


def test_sync_registers_keeps_and_reschedules(store: Store) -> None:
    states = store.sync_tasks([definition()], NODE)
    assert states["job"].next_run_at == T0 and states["job"].name == "Job"
    store.set_paused("job", True)
    kept = store.sync_tasks([definition(first=T0 + timedelta(hours=1))], NODE)  # same fingerprint: state kept
    assert kept["job"].next_run_at == T0 and kept["job"].paused
    changed = store.sync_tasks([definition(first=T0 + timedelta(hours=1), fingerprint="every 20s")], NODE)
    assert changed["job"].next_run_at == T0 + timedelta(hours=1) and changed["job"].paused


def test_an_occurrence_is_claimed_once(store: Store) -> None:
    store.sync_tasks([definition()], NODE)
    first = claim(store, T0)
    assert [(r.task_id, r.scheduled_for, r.state) for r in first.runs] == [("job", T0, RunState.RUNNING)]
    assert first.next_due == T0 + timedelta(seconds=10)
    assert claim(store, T0).runs == []


def test_concurrent_claimers_never_share_an_occurrence(store: Store) -> None:
    store.sync_tasks([definition(f"t{i}", max_instances=100) for i in range(50)], NODE)
    got: list[tuple[str, datetime]] = []
    lock = threading.Lock()

    def worker() -> None:
        for step in range(20):
            result = claim(store, T0 + timedelta(seconds=10 * step), limit=7)
            with lock:
                got.extend((r.task_id, r.scheduled_for) for r in result.runs)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(got) == len(set(got))


def test_finish_counts_and_finishes_once_tasks(store: Store) -> None:
    store.sync_tasks([definition(fingerprint="once")], NODE)
    [run] = claim(store, T0, next_fire=once).runs
    run.state, run.started_at, run.finished_at = RunState.SUCCEEDED, T0, T0 + timedelta(seconds=2)
    store.finish([run])
    state = store.task_states()["job"]
    assert (state.run_count, state.success_count, state.finished, state.next_run_at) == (1, 1, True, None)
    assert state.total_duration == 2.0 and state.last_state is RunState.SUCCEEDED
    [record] = store.history("job")
    assert record.state is RunState.SUCCEEDED and record.duration == 2.0
    assert claim(store, T0 + timedelta(days=1), next_fire=once).runs == []


def test_retry_is_a_scheduled_row_claimed_when_due(store: Store) -> None:
    store.sync_tasks([definition(fingerprint="once")], NODE)
    [run] = claim(store, T0, next_fire=once).runs
    run.state, run.finished_at, run.error = RunState.FAILED, T0, "boom"
    store.finish([run], [Retry(run, T0 + timedelta(seconds=5))])
    assert store.task_states()["job"].finished is False
    assert claim(store, T0 + timedelta(seconds=4), next_fire=once).runs == []
    [again] = claim(store, T0 + timedelta(seconds=5), next_fire=once).runs
    assert (again.attempt, again.scheduled_for) == (2, T0)
    state = store.task_states()["job"]
    assert (state.retry_count, state.run_count, state.last_error) == (1, 0, "boom")


def test_misfire_and_coalesce_are_recorded(store: Store) -> None:
    store.sync_tasks([definition(misfire_grace_time=15)], NODE)
    result = claim(store, T0 + timedelta(seconds=40))  # due: 0 (late), 10 (late), 20, 30, 40
    assert [r.scheduled_for for r in result.runs] == [T0 + timedelta(seconds=40)]
    missed = sorted(result.recorded, key=lambda r: r.scheduled_for)
    assert [(r.state, (r.scheduled_for - T0).seconds) for r in missed] == [
        (RunState.MISSED, s) for s in (0, 10, 20, 30)
    ]
    assert "misfire_grace_time=15" in (missed[0].error or "") and "coalesced" in (missed[3].error or "")
    assert store.task_states()["job"].missed_count == 4


def test_catch_up_runs_the_latest_missed_occurrence(store: Store) -> None:
    store.sync_tasks([definition(misfire_grace_time=1, catch_up=True)], NODE)
    result = claim(store, T0 + timedelta(seconds=35))
    assert [r.scheduled_for for r in result.runs] == [T0 + timedelta(seconds=30)]
    assert len(result.recorded) == 3


def test_max_instances_skip_and_pending_rows_wait(store: Store) -> None:
    store.sync_tasks([definition()], NODE)
    claim(store, T0)
    second = claim(store, T0 + timedelta(seconds=10))
    assert second.runs == [] and [r.state for r in second.recorded] == [RunState.SKIPPED]
    manual = store.request_run("job", T0 + timedelta(seconds=11), None)
    third = claim(store, T0 + timedelta(seconds=11))
    assert third.runs == []  # waits for the instance, not dropped
    assert any(r.run_id == manual.run_id and r.state is RunState.SCHEDULED for r in store.active_runs())


def test_pause_and_unknown_tasks(store: Store) -> None:
    store.sync_tasks([definition()], NODE)
    store.set_paused("job", True)
    assert claim(store, T0 + timedelta(seconds=5)).runs == []
    with pytest.raises(TaskNotFoundError):
        store.set_paused("nope", True)
    with pytest.raises(TaskNotFoundError):
        store.request_run("nope", T0, None)


def test_removed_task_keeps_history_and_counters(store: Store) -> None:
    store.sync_tasks([definition()], NODE)
    [run] = claim(store, T0).runs
    run.state, run.finished_at = RunState.SUCCEEDED, T0
    store.finish([run])
    store.remove_tasks(["job"])
    assert "job" not in store.task_states() and claim(store, T0 + timedelta(hours=1)).runs == []
    assert len(store.history("job")) == 1
    assert store.sync_tasks([definition()], NODE)["job"].run_count == 1


def test_leases_heartbeat_reap_and_leave(store: Store) -> None:
    store.sync_tasks([definition("a"), definition("b")], NODE)
    runs = {r.task_id: r for r in claim(store, T0).runs}
    node = NodeInfo(NODE, "host", 123, T0, T0 + timedelta(seconds=20))
    store.heartbeat(node, [runs["a"].run_id], T0 + timedelta(seconds=60))
    [reaped] = store.reap(T0 + timedelta(seconds=45), 30)  # b's lease (30 s) expired, a's was renewed
    assert (reaped.task_id, reaped.state) == ("b", RunState.INTERRUPTED)
    assert [n.node_id for n in store.nodes()] == [NODE]
    [left] = store.leave(NODE, T0 + timedelta(seconds=50), "stopped")
    assert (left.task_id, left.error) == ("a", "stopped") and store.nodes() == []
    assert store.task_states()["a"].interrupted_count == 1 and store.active_runs() == []


def test_a_running_scripts_process_is_recorded_on_its_run(store: Store) -> None:
    store.sync_tasks([definition(f"t{i}") for i in range(50)], NODE)
    runs = claim(store, T0).runs
    target = runs[37]
    store.record_process(target.run_id, 4242, 1_900_000_000.5)
    store.record_process("no-such-run", 1, 1.0)  # a run that is gone: nothing to note, no error
    by_id = {r.run_id: r for r in store.active_runs()}
    assert (by_id[target.run_id].pid, by_id[target.run_id].pid_started) == (4242, 1_900_000_000.5)
    assert all(r.pid is None for run_id, r in by_id.items() if run_id != target.run_id)
    shown = store.run(target.run_id)
    assert shown is not None and shown.pid == 4242


def test_prune_by_age_and_count(store: Store) -> None:
    store.sync_tasks([definition(misfire_grace_time=0, coalesce=False)], NODE)
    claim(store, T0 + timedelta(seconds=95))  # ten missed records, finished at T0+95
    assert len(store.history("job")) == 10
    assert store.prune(None, 4) == 6 and len(store.history("job")) == 4
    assert store.prune(T0 + timedelta(seconds=96), None) == 4


def test_history_filters_and_order(store: Store) -> None:
    store.sync_tasks([definition("a"), definition("b")], NODE)
    for step, state in enumerate([RunState.SUCCEEDED, RunState.FAILED, RunState.SUCCEEDED]):
        now = T0 + timedelta(seconds=10 * step)
        for run in claim(store, now).runs:
            run.state, run.finished_at = state, now
            store.finish([run])
    assert len(store.history()) == 6
    assert [r.scheduled_for for r in store.history("a")] == [T0 + timedelta(seconds=s) for s in (20, 10, 0)]
    assert [r.task_id for r in store.history(state=RunState.FAILED)] in (["a", "b"], ["b", "a"])
    assert len(store.history(limit=2)) == 2


# -- SQLite specifics -----------------------------------------------------------------


def test_sqlite_persists_across_reopen_with_safe_file_mode(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "state.db"
    first = SQLiteStore(path)
    first.sync_tasks([definition()], NODE)
    first.set_paused("job", True)
    first.close()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    second = SQLiteStore(path)
    assert second.task_states()["job"].paused
    journal = second._db.execute("PRAGMA journal_mode").fetchone()[0]
    second.close()
    assert journal == "wal"


def test_sqlite_corrupt_file_gives_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    path.write_bytes(b"this is not a database" * 100)
    with pytest.raises(StoreError, match=r"cannot open the state database .*state\.db.*move it aside \(mv "):
        SQLiteStore(path)


def test_sqlite_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    SQLiteStore(path).close()
    import sqlite3

    with sqlite3.connect(path) as db:
        db.execute("PRAGMA user_version = 99")
    with pytest.raises(StoreError, match="schema version 99, newer than"):
        SQLiteStore(path)


def test_sqlite_separate_connections_never_share_an_occurrence(tmp_path: Path) -> None:
    """Like two processes on one file: each claimer has its own connection."""
    path = tmp_path / "state.db"
    setup = SQLiteStore(path)
    setup.sync_tasks([definition(f"t{i}", max_instances=100) for i in range(30)], NODE)
    setup.close()
    got: list[tuple[str, datetime]] = []
    lock = threading.Lock()

    def worker() -> None:
        own = SQLiteStore(path)
        for step in range(15):
            result = claim(own, T0 + timedelta(seconds=10 * step), limit=5)
            with lock:
                got.extend((r.task_id, r.scheduled_for) for r in result.runs)
        own.close()

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert got and len(got) == len(set(got))


def test_sqlite_migrates_a_version_1_file(tmp_path: Path) -> None:
    import json
    import sqlite3

    from task_scheduler.stores.sqlite import _MIGRATIONS, SCHEMA_VERSION

    path = tmp_path / "state.db"
    with sqlite3.connect(path) as db:
        db.executescript(_MIGRATIONS[0] + ";PRAGMA user_version = 1;")
        options = json.dumps({**definition().options(), "name": "Old Job", "schedule": "every 10s"})
        db.execute(
            "INSERT INTO tasks (task_id, fingerprint, options, paused) VALUES ('job', 'every 10s', ?, 1)", (options,)
        )
    store = SQLiteStore(path)
    state = store.task_states()["job"]
    version = store._db.execute("PRAGMA user_version").fetchone()[0]
    store.close()
    assert (state.name, state.schedule, state.paused, version) == ("Old Job", "every 10s", True, SCHEMA_VERSION)


def test_sqlite_reads_runs_through_an_index_in_every_call(tmp_path: Path) -> None:
    """Every statement the store sends about runs reaches them through an index, never
    by scanning the table (millions of rows after a year): claims, outcomes, retries,
    leases, status (active runs), history and pruning. SQLite reads a partial index
    only for a query that carries its very term, so a reworded query can lose it."""
    store = SQLiteStore(tmp_path / "state.db")
    statements: list[str] = []
    store._db.set_trace_callback(statements.append)
    store.sync_tasks([definition("a"), definition("b", misfire_grace_time=0, coalesce=False)], NODE)
    for step in range(3):
        for run in claim(store, T0 + timedelta(seconds=10 * step)).runs:
            store.finish([_succeeded(run)])
    [run, *_] = claim(store, T0 + timedelta(seconds=95)).runs  # and missed records for b
    run.state, run.finished_at = RunState.FAILED, T0
    store.finish([run], [Retry(run, T0 + timedelta(seconds=200))])  # a scheduled row
    node = NodeInfo(NODE, "host", 123, T0, T0)
    store.heartbeat(node, [r.run_id for r in store.active_runs()], T0 + timedelta(seconds=300))
    assert store.active_runs() and store.reap(T0 + timedelta(seconds=100), 3600) == []
    assert store.history(limit=2) and store.history("a") and store.history(state=RunState.MISSED)
    assert store.run(run.run_id) is not None and store.task_states()["a"].run_count == 3
    assert store.prune(T0 + timedelta(seconds=1), 2) > 0
    store.leave(NODE, T0 + timedelta(seconds=100), "stopped")
    about_runs = [sql for sql in statements if " runs " in sql and not sql.startswith(("INSERT", "EXPLAIN"))]
    assert len(about_runs) >= 15, statements
    for sql in about_runs:
        plan = [row[3] for row in store._db.execute(f"EXPLAIN QUERY PLAN {sql}")]
        assert not [step for step in plan if step.split(" AS ")[0] in ("SCAN runs", "SCAN r")], (sql, plan)
    store.close()


def test_sqlite_background_checkpoints_move_the_log_into_the_file(tmp_path: Path) -> None:
    import time

    path = tmp_path / "state.db"
    store = SQLiteStore(path, checkpoint_interval=0.05)
    assert store._db.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 0
    before = path.stat().st_size
    store.sync_tasks([definition(f"t{i}") for i in range(2000)], NODE)
    deadline = time.monotonic() + 10
    while path.stat().st_size <= before and time.monotonic() < deadline:
        time.sleep(0.05)
    grown = path.stat().st_size > before
    store.close()
    assert grown and store._checkpointer is not None and not store._checkpointer.is_alive()


def test_reads_still_answer_after_close(store: Store) -> None:
    """A stopped scheduler closes its store and still reports its final state."""
    store.sync_tasks([definition()], NODE)
    [run] = claim(store, T0).runs
    run.state, run.started_at, run.finished_at = RunState.SUCCEEDED, T0, T0 + timedelta(seconds=1)
    store.finish([run])
    store.close()
    assert store.task_states()["job"].run_count == 1
    assert [r.run_id for r in store.history("job")] == [run.run_id]
    assert store.run(run.run_id[-12:]) is not None and store.active_runs() == []
    assert isinstance(store.revision(), int) and store.nodes() == []


# -- shared values (store.shared) -------------------------------------------------------


def test_shared_values_set_get_replace_delete(store: Store) -> None:
    shared = store.shared
    shared.set("token", '"abc"', None)
    shared.set("token", '"def"', T0 + timedelta(seconds=60))
    assert shared.get("token", T0) == '"def"' and shared.get("missing", T0) is None
    assert shared.keys(T0) == ["token"]
    assert shared.delete("token") is True and shared.delete("token") is False
    assert shared.get("token", T0) is None


def test_shared_values_expire_at_their_time_for_every_read(store: Store) -> None:
    shared = store.shared
    shared.set("short", "1", T0 + timedelta(seconds=10))
    shared.set("forever", "2", None)
    assert shared.get("short", T0 + timedelta(seconds=9)) == "1"
    assert shared.get("short", T0 + timedelta(seconds=10)) is None  # at its expiry it is gone
    assert shared.keys(T0 + timedelta(seconds=10)) == ["forever"]
    assert shared.keys(None) == ["forever", "short"]  # expired, not yet purged
    assert shared.purge(T0 + timedelta(seconds=10)) == 1
    assert shared.keys(None) == ["forever"]
    assert shared.clear() == 1 and shared.keys(None) == []


def test_shared_values_keep_any_text(store: Store) -> None:
    text = '{"emoji": "\U0001f600", "cjk": "\u516c\u5171", "quote": "\'\\""}'
    store.shared.set("\u952e", text, None)
    assert store.shared.get("\u952e", T0) == text


def test_sqlite_shared_values_are_seen_by_another_connection_and_survive_reopening(tmp_path: Path) -> None:
    first, second = SQLiteStore(tmp_path / "state.db"), SQLiteStore(tmp_path / "state.db")
    first.shared.set("cookie", '"SESSDATA=x"', T0 + timedelta(hours=1))
    assert second.shared.get("cookie", T0) == '"SESSDATA=x"'
    first.close()
    second.close()
    again = SQLiteStore(tmp_path / "state.db")
    assert again.shared.keys(T0) == ["cookie"]
    again.close()


# -- several nodes on one store -----------------------------------------------------------


def test_a_node_claims_only_what_it_registered_and_the_last_rule_registered_wins(store: Store) -> None:
    store.sync_tasks([definition("a")], "n1")
    store.sync_tasks([definition("b")], "n2")
    lease = T0 + timedelta(seconds=30)
    first = store.claim_due(T0, 100, "n1", lease, EVERY_10_SECONDS).runs
    second = store.claim_due(T0, 100, "n2", lease, EVERY_10_SECONDS).runs
    assert [r.task_id for r in first] == ["a"] and [r.task_id for r in second] == ["b"]
    for run in first + second:
        run.state, run.finished_at = RunState.SUCCEEDED, T0
    store.finish(first + second)
    # A rolling deploy: n2 starts with a new rule for "a"; from then on only n2 runs it.
    later = T0 + timedelta(seconds=60)
    store.sync_tasks([definition("a", first=later, fingerprint="every 20s")], "n2")
    assert store.claim_due(later, 100, "n1", later + timedelta(seconds=30), EVERY_10_SECONDS).runs == []
    runs = store.claim_due(later, 100, "n2", later + timedelta(seconds=30), every(20)).runs
    assert [(r.scheduled_for, r.node) for r in runs if r.task_id == "a"] == [(later, "n2")]


def test_a_node_removing_a_task_leaves_it_to_the_others(store: Store) -> None:
    store.sync_tasks([definition("a")], "n1")
    store.sync_tasks([definition("a")], "n2")
    store.remove_tasks(["a"], "n1")
    assert "a" in store.task_states() and store.unschedule_unregistered() == []
    assert [r.node for r in store.claim_due(T0, 10, "n2", T0 + timedelta(seconds=30), EVERY_10_SECONDS).runs] == ["n2"]
    store.remove_tasks(["a"], "n2")
    assert "a" not in store.task_states()


def test_silent_nodes_are_reaped_with_their_registrations(store: Store) -> None:
    store.sync_tasks([definition("a")], "n1")
    store.sync_tasks([definition("b")], "n2")
    store.heartbeat(NodeInfo("n1", "h1", 1, T0, T0), [], T0 + timedelta(seconds=30))
    store.heartbeat(NodeInfo("n2", "h2", 2, T0, T0 + timedelta(seconds=90)), [], T0 + timedelta(seconds=120))
    assert store.reap(T0 + timedelta(seconds=100), 30) == []
    assert [n.node_id for n in store.nodes()] == ["n2"]
    assert sorted(store.task_states()) == ["b"]  # nobody runs "a" any more


def test_a_late_outcome_replaces_the_interruption(store: Store) -> None:
    store.sync_tasks([definition(recover=True)], NODE)
    [run] = claim(store, T0).runs
    [reaped] = store.reap(T0 + timedelta(seconds=31), 30)  # the lease (30 s) lapsed: the node looks dead
    assert reaped.state is RunState.INTERRUPTED and store.task_states()["job"].interrupted_count == 1
    run.state, run.started_at, run.finished_at = RunState.SUCCEEDED, T0, T0 + timedelta(seconds=40)
    store.finish([run])  # ... but it was only cut off from the store, and its run succeeded
    [record] = store.history("job")
    assert (record.run_id, record.state) == (run.run_id, RunState.SUCCEEDED)
    state = store.task_states()["job"]
    assert (state.interrupted_count, state.success_count, state.run_count) == (0, 1, 1)
    [again] = claim(store, T0 + timedelta(seconds=31)).runs  # recover=True had queued the next attempt
    assert (again.attempt, again.scheduled_for) == (2, T0)


def test_an_outcome_sent_twice_is_counted_once(store: Store) -> None:
    store.sync_tasks([definition(fingerprint="once")], NODE)
    [run] = claim(store, T0, next_fire=once).runs
    run.state, run.finished_at = RunState.FAILED, T0
    store.finish([run], [Retry(run, T0 + timedelta(seconds=5))])
    store.finish([run], [Retry(run, T0 + timedelta(seconds=5))])  # the commit's answer was lost: sent again
    state = store.task_states()["job"]
    assert (state.retry_count, len(store.history("job"))) == (1, 1)
    assert len([r for r in store.active_runs() if r.state is RunState.SCHEDULED]) == 1


def test_memory_store_keeps_nothing_per_finished_run_but_history() -> None:
    """A year of one-time jobs must not grow the memory store's bookkeeping: a task
    with no run in progress has no entry among the active runs (which the lease
    sweep and every process lookup walk), and a removed task stays countable."""
    store = MemoryStore(max_history_per_task=1)
    store.sync_tasks([definition(f"t{i}", fingerprint="once") for i in range(50)], NODE)
    runs = claim(store, T0, next_fire=once).runs
    store.finish([_succeeded(run) for run in runs])
    assert len(runs) == 50 and store._active == {}
    store.remove_tasks(["t0"])
    assert store.reap(T0 + timedelta(hours=1), node_timeout=60) == []
    assert store.history("t0")[0].state is RunState.SUCCEEDED
    assert store.sync_tasks([definition("t0", fingerprint="once")], NODE)["t0"].run_count == 1  # back, counters kept


def _succeeded(record):  # type: ignore[no-untyped-def]
    record.state, record.started_at, record.finished_at = RunState.SUCCEEDED, T0, T0
    return record
