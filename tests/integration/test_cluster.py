"""Several service processes on one PostgreSQL database: the cluster as operators run
it. Each node is ``python -m task_scheduler`` with its own directory and log; the
tests read the shared state through the store (or the CLI) like an operator would."""

from __future__ import annotations

import itertools
import math
import os
import signal
import socket
import time
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psutil
import pytest

from task_scheduler import IntervalRule, RunState
from tests.integration.helpers import Service, wait_for
from tests.pg import URL, execute
from tests.reliability.ledger import assert_ledger, expected_fires

pytestmark = pytest.mark.integration

LEASE, CHECK = 3.0, 0.5
SCRIPTS = {
    "slow.py": "import time\ntime.sleep(20)\n",
    "work.py": "import time\ntime.sleep(0.7)\n",
    "long.py": "import time\ntime.sleep(5)\nprint('done')\n",
}


class Node(Service):
    """One service process of the cluster, in ``root/name``."""

    def __init__(
        self, root: Path, name: str, schema: str, jobs: list[dict[str, Any]], url: str = URL, **scheduler: Any
    ) -> None:
        base = root / name
        (base / "scripts").mkdir(parents=True)
        for script, body in SCRIPTS.items():
            (base / "scripts" / script).write_text(body)
        (base / "cluster_jobs.py").write_text("def tick():\n    pass\n")
        config = {
            "scheduler": {"check_interval": CHECK, "timezone": "UTC", "max_workers": 4, "shutdown_timeout": 2,
                          **scheduler},
            "store": {"url": url, "schema": schema, "lease_seconds": LEASE},
            "tasks": {"kill_grace": 1},
            "logging": {"console": False},
            "jobs": jobs,
        }  # fmt: skip
        super().__init__(base, config)

    @property
    def node_id(self) -> str:
        assert self.process is not None
        return f"{socket.gethostname()}:{self.process.pid}"

    def stop(self) -> None:
        code, stderr = self.signal(signal.SIGTERM)
        assert code == 0, stderr
        assert "Traceback" not in self.log, self.log[-3000:]

    def cut_connections(self) -> int:
        """pg_terminate_backend on every connection of this node; how many there were."""
        rows = execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = %s",
            (f"task-scheduler {self.node_id}",),
        )
        return len(rows)


@pytest.fixture
def cluster(tmp_path: Path, pg_schema: str) -> Iterator[list[Node]]:
    """The nodes a test starts; whatever is left running is killed at the end."""
    nodes: list[Node] = []
    yield nodes
    for node in nodes:
        node.ensure_stopped()


def reader(schema: str) -> Any:
    from task_scheduler.stores.postgres import PostgresStore

    return PostgresStore(URL, schema=schema, clock="local")


def whole_second(ahead: float) -> datetime:
    return datetime.fromtimestamp(math.ceil(time.time() + ahead), UTC)


def tick(job_id: str, seconds: float, start: datetime | None = None) -> dict[str, Any]:
    schedule: dict[str, Any] = {"interval": {"seconds": seconds}}
    if start is not None:
        schedule["start"] = start.isoformat()
    return {"id": job_id, "type": "function", "function": "cluster_jobs:tick", "schedule": schedule}


def test_three_nodes_run_every_occurrence_of_200_jobs_exactly_once(
    tmp_path: Path, pg_schema: str, cluster: list[Node]
) -> None:
    """200 jobs every second for 30 s on 3 nodes: each occurrence in the window ran
    once (none twice, none missing), and every node took its share."""
    start = whole_second(4)
    offsets = [timedelta(milliseconds=5 * i) for i in range(200)]  # due times spread over each second
    jobs = [tick(f"j{i:03d}", 1, start + offset) for i, offset in enumerate(offsets)]
    cluster += [Node(tmp_path, f"n{k}", pg_schema, jobs, log_level="WARNING") for k in range(3)]
    for node in cluster:
        node.start()
    window = (start + timedelta(seconds=3), start + timedelta(seconds=33))
    time.sleep(max(0.0, (window[1] - datetime.now(UTC)).total_seconds() + 1.5))
    for node in cluster:
        node.stop()
    store = reader(pg_schema)
    records = store.history(limit=10**6)
    store.close()
    ran = [r for r in records if window[0] <= r.scheduled_for < window[1] and r.attempt == 1 and not r.manual]
    counts = Counter((r.task_id, r.scheduled_for) for r in ran)
    expected = {
        (f"j{i:03d}", start + offset + timedelta(seconds=second))
        for i, offset in enumerate(offsets)
        for second in range(3, 33)
    }
    assert len(expected) == 6000
    duplicates = sorted(key for key, count in counts.items() if count > 1)
    missing, unexpected = sorted(expected - set(counts)), sorted(set(counts) - expected)
    assert not duplicates and not missing and not unexpected, (duplicates[:5], missing[:5], unexpected[:5])
    assert Counter(r.state for r in ran) == {RunState.SUCCEEDED: 6000}
    shares = Counter(r.node for r in ran)
    print(f"\n6,000 occurrences in 30 s on 3 nodes: {sorted(shares.values())}")
    assert sorted(shares) == sorted(node.node_id for node in cluster)
    assert min(shares.values()) >= 300, shares  # "spread": every node ran at least 5 %


def test_a_killed_node_s_runs_are_interrupted_and_recovered_elsewhere_once(
    tmp_path: Path, pg_schema: str, cluster: list[Node]
) -> None:
    """kill -9 of a node running four 20-second scripts of recover=True jobs: another
    node records them INTERRUPTED and runs each again, once, within lease_seconds +
    check_interval. The dead node's scripts were its children: nothing on that host
    supervises them any more, so they run on as orphans until they end (under
    systemd the unit's control group is killed with the service; see the README)."""
    due = whole_second(2)
    jobs = [
        {"id": f"slow{i}", "script_path": "scripts/slow.py", "schedule": {"once": due.isoformat()}, "recover": True}
        for i in range(4)
    ]
    first = Node(tmp_path, "a", pg_schema, jobs).start()
    cluster.append(first)
    store = reader(pg_schema)
    scripts: list[psutil.Process] = []
    try:
        assert wait_for(lambda: len([r for r in store.active_runs() if r.node == first.node_id]) == 4, 30)
        assert first.process is not None
        leader = psutil.Process(first.process.pid)

        def children() -> list[psutil.Process]:
            return [p for p in leader.children(recursive=True) if any(a.endswith("slow.py") for a in p.cmdline())]

        assert wait_for(lambda: len(children()) == 4, 10)
        scripts = children()
        second = Node(tmp_path, "b", pg_schema, jobs).start()
        cluster.append(second)

        def looping() -> bool:  # b's loop sent a heartbeat: its start-up recovery is over
            return any(n.node_id == second.node_id and n.heartbeat_at > n.started_at for n in store.nodes())

        assert wait_for(looping, 30)
        killed_at = time.monotonic()
        first.kill()

        def recovered() -> bool:
            active = store.active_runs()
            return len([r for r in active if r.node == second.node_id and r.attempt == 2]) == 4

        assert wait_for(recovered, 30, interval=0.05)
        elapsed = time.monotonic() - killed_at
        print(f"\nrecovered on another node {elapsed:.2f}s after kill -9 (lease {LEASE}s, check_interval {CHECK}s)")
        assert elapsed <= LEASE + CHECK + 1.0  # (+1 s: process scheduling on a loaded 2-core machine)
        time.sleep(2 * CHECK + 1)  # and nothing runs a third time
        active = store.active_runs()
        assert sorted((r.task_id, r.attempt, r.node) for r in active) == [
            (f"slow{i}", 2, second.node_id) for i in range(4)
        ], second.log[-3000:]
        interrupted = store.history(state=RunState.INTERRUPTED)
        assert sorted((r.task_id, r.attempt) for r in interrupted) == [(f"slow{i}", 1) for i in range(4)]
        assert all("lease" in (r.error or "") for r in interrupted)
        assert all(script.is_running() for script in scripts)  # orphans of the dead node
        second.stop()  # a live node stops its own scripts (shutdown_timeout, then their process groups)
        # (interrupted by that stop, recover=True queues them for the next node that starts)
        assert all(r.state is RunState.SCHEDULED for r in store.active_runs())
    finally:
        store.close()
        for script in scripts:
            if script.is_running():
                os.killpg(script.pid, signal.SIGKILL)


def test_every_connection_of_a_node_cut_mid_run_loses_and_duplicates_nothing(
    tmp_path: Path, pg_schema: str, cluster: list[Node]
) -> None:
    """pg_terminate_backend on all of a node's connections, twice, while scripts run:
    it reconnects, and the ledger of every task has each occurrence exactly once."""
    start = whole_second(2)
    jobs = [
        {"id": "work", "script_path": "scripts/work.py", "schedule": {"interval": {"seconds": 1},
                                                                      "start": start.isoformat()}},
        *[tick(f"t{i}", 0.5, start) for i in range(10)],
    ]  # fmt: skip
    node = Node(tmp_path, "a", pg_schema, jobs).start()
    cluster.append(node)
    store = reader(pg_schema)
    try:
        assert wait_for(lambda: len(store.history("work")) >= 2, 30)
        for _ in range(2):
            assert wait_for(lambda: any(r.task_id == "work" for r in store.active_runs()), 10, interval=0.02)
            assert node.cut_connections() >= 2  # the pool's and the LISTEN connection
            time.sleep(2.5)
        assert wait_for(lambda: "schedule changes again" in node.log, 10)  # LISTEN reconnected
        time.sleep(1)
        node.stop()
        states = store.task_states()
        for task_id, seconds in [("work", 1.0), *[(f"t{i}", 0.5) for i in range(10)]]:
            rule = IntervalRule(seconds=seconds, start=start)
            first = min(r.scheduled_for for r in store.history(task_id, limit=10_000) if r.attempt == 1)
            next_run_at = states[task_id].next_run_at
            assert next_run_at is not None
            outcomes = assert_ledger(store, task_id, expected_fires(rule, first, next_run_at))
            assert RunState.INTERRUPTED not in outcomes, (task_id, outcomes)
    finally:
        store.close()


def test_three_nodes_starting_at_once_on_an_empty_database_and_the_cli_on_the_cluster(
    tmp_path: Path, pg_schema: str, cluster: list[Node]
) -> None:
    """Three nodes start together on a database without the schema: one schema, no
    errors. The CLI sees the whole cluster, and a trigger, a pause and a resume act
    on it; a trigger wakes the nodes at once (LISTEN/NOTIFY), not at their next
    check_interval (5 s here)."""
    jobs = [*[tick(f"t{i}", 1) for i in range(20)], tick("hourly", 3600)]
    cluster += [Node(tmp_path, f"n{k}", pg_schema, jobs, check_interval=5) for k in range(3)]
    for node in cluster:
        node.start()
    store = None
    try:
        # (the schema does not exist until a node creates it)
        assert wait_for(lambda: execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", (pg_schema,)), 30)
        store = reader(pg_schema)
        assert wait_for(lambda: len(store.nodes()) == 3, 30)
        assert execute(f"SELECT version FROM {pg_schema}.schema_version") == [(1,)]
        cli = cluster[0]
        status = cli.cli_json("status")
        assert status["alive"] and len(status["nodes"]) == 3 and all(n["alive"] for n in status["nodes"])
        assert all(n["skew"] is not None and abs(n["skew"]) < 1 for n in status["nodes"])
        assert "clock skew" in cli.cli("status").stdout
        assert len(cli.cli_json("list")) == 21
        time.sleep(1)  # the nodes went to sleep for up to check_interval
        triggered = time.monotonic()
        cli.cli_json("trigger", "hourly")
        assert wait_for(lambda: store.history("hourly"), 10, interval=0.02)
        print(f"\na triggered run finished {time.monotonic() - triggered:.2f}s after the trigger (check_interval 5s)")
        assert time.monotonic() - triggered < 3  # (the CLI process itself takes ~1 s to start)
        assert cli.cli_json("pause", "t0")["paused"] and cli.cli_json("show", "t0")["status"] == "paused"
        paused_at = datetime.now(UTC)
        time.sleep(2)
        assert not [r for r in store.history("t0") if r.scheduled_for > paused_at + timedelta(seconds=1)]
        assert not cli.cli_json("resume", "t0")["paused"]
        assert wait_for(lambda: any(r.scheduled_for > paused_at for r in store.history("t0")), 10)
        assert [r["task_id"] for r in cli.cli_json("history", "hourly")] == ["hourly"]
        for node in cluster:
            node.stop()
            assert "ERROR" not in node.log, node.log[-3000:]
    finally:
        if store is not None:
            store.close()


def test_nodes_with_different_jobs_run_only_their_own_and_the_last_deployed_rule_wins(
    tmp_path: Path, pg_schema: str, cluster: list[Node]
) -> None:
    """Node a runs only_a and shared (every 1 s); node b, started later, runs only_b and
    shared every 2 s: neither runs the other's job nor unschedules it, and the rule of
    the node that registered it last (b: a rolling deploy's new version) wins."""
    first = Node(tmp_path, "a", pg_schema, [tick("only_a", 0.5), tick("shared", 1)]).start()
    cluster.append(first)
    store = reader(pg_schema)
    try:
        assert wait_for(lambda: len(store.history("shared")) >= 2, 30)
        second = Node(tmp_path, "b", pg_schema, [tick("only_b", 0.5), tick("shared", 2)]).start()
        cluster.append(second)
        assert wait_for(lambda: second.node_id in {n.node_id for n in store.nodes()}, 30)
        switched = datetime.now(UTC)
        time.sleep(6)
        listed = {row["task_id"]: row for row in second.cli_json("list")}
        assert sorted(listed) == ["only_a", "only_b", "shared"] and listed["shared"]["schedule"] == "every 2 seconds"
        first.stop()
        second.stop()
        assert {r.node for r in store.history("only_a")} == {first.node_id}
        assert {r.node for r in store.history("only_b")} == {second.node_id}
        after = sorted(r.scheduled_for for r in store.history("shared") if r.scheduled_for > switched)
        assert len(after) >= 2 and {r.node for r in store.history("shared") if r.scheduled_for > switched} == {
            second.node_id
        }
        assert {(b - a).total_seconds() for a, b in itertools.pairwise(after)} == {2.0}
    finally:
        store.close()


@pytest.fixture
def cut_off_role(pg_schema: str) -> Iterator[str]:
    """A login role for one node, so that the test can shut that node out of the
    database (NOLOGIN plus pg_terminate_backend: a network partition, as the node
    sees it) and let it back in."""
    role = f"{pg_schema}_node"
    execute(f"CREATE ROLE {role} LOGIN SUPERUSER")
    yield role
    execute(f"DROP OWNED BY {role}")
    execute(f"DROP ROLE {role}")


def test_a_node_cut_off_from_the_database_keeps_its_run_and_writes_the_outcome_later(
    tmp_path: Path, pg_schema: str, cluster: list[Node], cut_off_role: str
) -> None:
    """Node a loses the database while a 5-second script runs; its lease lapses and
    node b records the run INTERRUPTED. The script finishes meanwhile; when a gets
    back in, it writes the buffered outcome (which replaces the interruption, with
    consistent counters), registers its tasks again and goes on claiming."""
    watcher = Node(tmp_path, "b", pg_schema, [tick("b_tick", 1)]).start()
    cluster.append(watcher)
    store = reader(pg_schema)
    try:
        assert wait_for(lambda: len(store.nodes()) == 1, 30)
        role_url = URL.replace("postgres@", f"{cut_off_role}@", 1)
        jobs = [
            {"id": "long", "script_path": "scripts/long.py", "schedule": {"once": whole_second(2).isoformat()}},
            tick("a_tick", 1),
        ]
        node = Node(tmp_path, "a", pg_schema, jobs, url=role_url).start()
        cluster.append(node)
        assert wait_for(lambda: any(r.task_id == "long" for r in store.active_runs()), 30, interval=0.05)
        execute(f"ALTER ROLE {cut_off_role} NOLOGIN")
        execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s", (cut_off_role,))
        assert wait_for(lambda: store.history("long", RunState.INTERRUPTED), 15, interval=0.1)
        assert node.node_id not in {n.node_id for n in store.nodes()}  # reaped by b
        time.sleep(3)  # the script ends while a cannot reach the database
        cut_until = datetime.now(UTC)
        execute(f"ALTER ROLE {cut_off_role} LOGIN")
        assert wait_for(lambda: store.history("long", RunState.SUCCEEDED), 30, interval=0.1)
        [record] = store.history("long")
        assert (record.state, record.node, record.output) == (RunState.SUCCEEDED, node.node_id, "done\n")
        state = store.task_states()["long"]
        assert (state.run_count, state.success_count, state.interrupted_count) == (1, 1, 0)
        assert wait_for(lambda: any(r.scheduled_for > cut_until for r in store.history("a_tick")), 15)
        assert node.log.count("claiming stops") == 1 and "registered 2 task(s) again" in node.log
        node.stop()
        watcher.stop()
    finally:
        store.close()
