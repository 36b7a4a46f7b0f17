"""The JSON API against the running service (a subprocess), with a real HTTP client."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.integration.helpers import wait_for
from tests.web.conftest import TOKEN, WebService, finished_runs, request

pytestmark = pytest.mark.integration


def test_health_and_readiness(web: WebService) -> None:
    health = web.get("/healthz")
    assert health.status == 200 and health.json()["status"] == "ok"
    assert health.json()["loop_age_seconds"] < health.json()["stale_after_seconds"]
    assert web.get("/readyz").json() == {"status": "ready"}


def test_tasks_are_what_the_cli_lists(web: WebService) -> None:
    answer = web.get("/api/tasks")
    assert answer.status == 200 and answer.headers["Content-Type"].startswith("application/json")
    tasks = answer.json()["tasks"]
    cli = web.service.cli_json("list")
    assert (
        [t["task_id"] for t in tasks]
        == [t["task_id"] for t in cli]
        == sorted(["hello", "burn", "broken", "pausable", "nightly"])
    )
    stable = ("task_id", "name", "schedule", "origin", "paused", "finished")
    assert [{k: t[k] for k in stable} for t in tasks] == [{k: t[k] for k in stable} for t in cli]
    nightly = next(t for t in tasks if t["task_id"] == "nightly")
    assert nightly["schedule"] == "cron '0 3 * * *' (UTC)" and nightly["status"] == "scheduled"


def test_one_task_with_its_runs_and_a_404_for_an_unknown_one(web: WebService) -> None:
    finished_runs(web, "hello")
    detail = web.get("/api/tasks/hello?recent=3").json()
    assert detail["task_id"] == "hello" and detail["name"] == "Hello" and detail["spec"]["script_path"]
    assert 1 <= len(detail["recent_runs"]) <= 3 and "hello from the job" in detail["recent_runs"][0]["output"]
    missing = web.get("/api/tasks/no-such-task")
    assert missing.status == 404 and missing.json() == {"error": "no task with id 'no-such-task'"}


def test_runs_filtered_by_task_state_and_limit_and_one_run_with_its_output(web: WebService) -> None:
    finished_runs(web, "broken", 2)
    runs = web.get("/api/runs?task=broken&state=failed&limit=2").json()["runs"]
    assert len(runs) == 2 and {r["task_id"] for r in runs} == {"broken"} and {r["state"] for r in runs} == {"failed"}
    one = web.get(f"/api/runs/{runs[0]['run_id']}").json()
    assert one["run_id"] == runs[0]["run_id"] and one["exit_code"] == 3 and "about to fail" in one["output"]
    assert web.get(f"/api/runs/{runs[0]['run_id'][-8:]}").json()["run_id"] == runs[0]["run_id"]  # a unique part
    assert web.get("/api/runs/ffffffffffffffff").status == 404
    assert web.get("/api/runs?state=bogus").status == 400
    assert web.get("/api/runs?limit=0").status == 400
    assert web.get("/api/runs?limit=x").json() == {"error": "limit must be an integer"}
    assert web.get("/api/runs?task=no-such-task").status == 404


def test_changes_need_the_token(web: WebService) -> None:
    without = web.post("/api/tasks/pausable/pause", token=None)
    assert without.status == 401 and without.headers["WWW-Authenticate"].startswith("Bearer")
    assert "Bearer" in without.json()["error"]
    wrong = web.post("/api/tasks/pausable/pause", token=TOKEN + "x")
    assert wrong.status == 403 and wrong.json() == {"error": "wrong token"}
    basic = request(web.url + "/api/tasks/pausable/pause", "POST", None)
    assert basic.status == 401
    assert web.get("/api/tasks/pausable").json()["paused"] is False  # nothing changed


def test_pause_resume_and_trigger_change_what_every_face_shows(web: WebService) -> None:
    paused = web.post("/api/tasks/pausable/pause")
    assert paused.status == 200 and paused.json()["status"] == "paused" and paused.json()["paused"] is True
    listed = {t["task_id"]: t for t in web.service.cli_json("list")}
    assert listed["pausable"]["status"] == "paused"
    assert next(t for t in web.get("/api/tasks").json()["tasks"] if t["task_id"] == "pausable")["paused"]
    resumed = web.post("/api/tasks/pausable/resume")
    assert resumed.status == 200 and resumed.json()["paused"] is False
    triggered = web.post("/api/tasks/pausable/trigger")
    assert triggered.status == 202
    run_id = triggered.json()["run_id"]
    assert wait_for(lambda: web.get(f"/api/runs/{run_id}").json().get("state") == "succeeded", timeout=30)
    assert web.post("/api/tasks/no-such-task/trigger").status == 404
    assert (
        web.post("/api/tasks/no-such-task/pause").json()["error"]
        == "task 'no-such-task' is not scheduled by this service"
    )


def test_script_runs_report_their_resource_use_in_api_and_cli(web: WebService) -> None:
    run_id = web.post("/api/tasks/burn/trigger").json()["run_id"]
    assert wait_for(lambda: web.get(f"/api/runs/{run_id}").json().get("state") == "succeeded", timeout=30)
    run = web.get(f"/api/runs/{run_id}").json()
    assert run["cpu_user"] + run["cpu_system"] >= 0.35
    assert run["max_rss"] >= 120_000_000  # the script's own 120 MB
    shown = web.service.cli("show", run_id)
    assert shown.returncode == 0 and "peak rss" in shown.stdout and "cpu " in shown.stdout
    hello = finished_runs(web, "hello")[0]
    assert hello["cpu_user"] is not None and (hello["max_rss"] is None or hello["max_rss"] < 100_000_000)


def test_errors_are_json(web: WebService) -> None:
    assert web.get("/api/nothing").status == 404 and "error" in web.get("/api/nothing").json()
    wrong_method = web.get("/api/tasks/hello/pause")
    assert wrong_method.status == 405 and wrong_method.headers["Allow"] == "POST"
    assert web.post("/api/tasks").status == 405


def test_status_is_what_the_cli_says(web: WebService) -> None:
    status = web.get("/api/status").json()
    cli = web.service.cli_json("status")
    assert status["alive"] is cli["alive"] is True
    assert [n["node_id"] for n in status["nodes"]] == [n["node_id"] for n in cli["nodes"]]
    assert status["this_node"] == status["nodes"][0]["node_id"]


def test_metrics_names(web: WebService) -> None:
    finished_runs(web, "broken")
    answer = web.get("/metrics")
    assert answer.status == 200 and answer.headers["Content-Type"].startswith("text/plain")
    text = answer.body.decode()
    for name in (
        "task_scheduler_runs_total",
        "task_scheduler_run_duration_seconds_bucket",
        "task_scheduler_run_lateness_seconds_bucket",
        "task_scheduler_run_cpu_seconds_total",
        "task_scheduler_tasks",
        "task_scheduler_task_next_fire_timestamp_seconds",
        "task_scheduler_task_missed_total",
        "task_scheduler_task_skipped_total",
        "task_scheduler_runs_running",
        "task_scheduler_runs_queued",
        "task_scheduler_runs_waiting_for_worker",
        "task_scheduler_loop_last_step_age_seconds",
        "task_scheduler_store_up",
        "task_scheduler_info",
        "process_resident_memory_bytes",
        "process_cpu_seconds_total",
    ):
        assert f"\n{name}" in text, name
    assert 'task_scheduler_runs_total{outcome="failed",task="broken"}' in text
    assert 'task_scheduler_tasks{state="scheduled"}' in text
    assert "run_id" not in text  # bounded labels: never a run id
    assert "_created" not in text


def test_promtool_style_parse_of_metrics_and_alert_rules(web: WebService) -> None:
    """The exposition parses with prometheus_client's own parser, and every metric the
    example alert rules use is exported."""
    from prometheus_client.parser import text_string_to_metric_families

    finished_runs(web, "broken")
    names = {sample.name for family in text_string_to_metric_families(web.get("/metrics").body.decode())
             for sample in family.samples}  # fmt: skip
    rules = (Path(__file__).resolve().parents[2] / "docs" / "alerts.yml").read_text()
    used = {word for word in _words(rules) if word.startswith(("task_scheduler_", "process_"))}
    assert used and used <= names | {"up"}, used - names


def _words(text: str) -> set[str]:
    import re

    return set(re.findall(r"[a-z_][a-z0-9_]*", text))


def test_cli_json_output_is_the_api_json(web: WebService) -> None:
    run = finished_runs(web, "broken")[0]
    cli = web.service.cli("show", run["run_id"], "--json")
    assert cli.returncode == 0, cli.stderr
    assert json.loads(cli.stdout) == web.get(f"/api/runs/{run['run_id']}").json()


def test_promtool_accepts_the_metrics_and_the_alert_rules(web: WebService) -> None:
    """Prometheus's own linter, where it is installed (Debian: the prometheus package)."""
    import shutil
    import subprocess

    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed (apt-get install prometheus); the parser test above still ran")
    alerts = Path(__file__).resolve().parents[2] / "docs" / "alerts.yml"
    rules = subprocess.run([promtool, "check", "rules", str(alerts)], capture_output=True, text=True, timeout=60)
    assert rules.returncode == 0, rules.stdout + rules.stderr
    lint = subprocess.run([promtool, "check", "metrics"], input=web.get("/metrics").body.decode(),
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert lint.returncode == 0, lint.stdout + lint.stderr
