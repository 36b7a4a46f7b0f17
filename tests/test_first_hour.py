"""What a new user hits in the first hour (issue 10): user modules, BaseTask subclasses
from the config, read-only commands without user code, config forms, the CLI in
pipes and tables, secrets in output, one line per missed catch-up."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import textwrap
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from task_scheduler import (
    ConfigError,
    FunctionTask,
    IntervalRule,
    ManualClock,
    RunState,
    SchedulerConfig,
    TaskScheduler,
    load_config,
)
from task_scheduler.cli import main
from tests.conftest import write_script

T0 = datetime(2030, 1, 1, tzinfo=UTC)
CONSOLE_SCRIPT = Path(sys.executable).with_name("task-scheduler")

MYTASKS = """
from task_scheduler import BaseTask

CALLS = []

def hello(name="world"):
    CALLS.append(name)
    return f"hello {name}"

class Backup(BaseTask):
    def __init__(self, task_id, name=None, *, source, keep=3, **options):
        super().__init__(task_id, name, **options)
        self.source, self.keep = source, keep

    def execute(self, context):
        CALLS.append((self.task_id, self.source, self.keep))
        return True

class NotATask:
    pass
"""


def write_config(base_dir: Path, jobs: list[dict[str, Any]], **sections: Any) -> Path:
    config = {"scheduler": {"timezone": "UTC"}, "logging": {"log_file": None}, "jobs": jobs, **sections}
    path = base_dir / "config.json"
    path.write_text(json.dumps(config))
    return path


def cli(*arguments: str, cwd: Path | str = "/", program: list[str] | None = None) -> subprocess.CompletedProcess[str]:
    command = program or [sys.executable, "-m", "task_scheduler"]
    return subprocess.run([*command, *arguments], cwd=cwd, capture_output=True, text=True, timeout=60)


# -- 2. function jobs and BaseTask subclasses from the config ----------------------------


def test_user_modules_resolve_alike_from_any_directory_and_python_path(tmp_path: Path) -> None:
    (tmp_path / "mytasks.py").write_text(MYTASKS)
    (tmp_path / "lib").mkdir()
    (tmp_path / "lib" / "libtasks.py").write_text("def ping():\n    return 'pong'\n")
    path = write_config(
        tmp_path,
        [
            {"id": "hello", "type": "function", "function": "mytasks:hello", "schedule": {"interval": 60}},
            {"id": "ping", "type": "function", "function": "libtasks:ping", "schedule": {"interval": 60}},
        ],
        scheduler={"timezone": "UTC", "python_path": ["lib"]},
    )
    for program in ([str(CONSOLE_SCRIPT)], [sys.executable, "-m", "task_scheduler"]):
        result = cli("validate", "-c", str(path), program=program)  # run from "/", not the config's folder
        assert result.returncode == 0, result.stderr
        assert "hello (function): every 1 minute" in result.stdout and "ping (function)" in result.stdout


def test_a_basetask_subclass_from_the_config_runs_with_its_params(tmp_path: Path) -> None:
    (tmp_path / "mytasks.py").write_text(MYTASKS)
    path = write_config(
        tmp_path,
        [
            {
                "id": "backup",
                "type": "class",
                "class": "mytasks:Backup",
                "params": {"source": "/srv", "keep": 7},
                "timeout": 30,
                "schedule": {"interval": {"seconds": 10}},
            }
        ],
    )
    result = cli("validate", "-c", str(path))
    assert result.returncode == 0 and "backup (class): every 10 seconds" in result.stdout, result.stderr
    config = load_config(path)
    config.store.url = "memory://"
    clock = ManualClock(T0)
    scheduler = TaskScheduler(config, clock=clock)
    assert scheduler.get_task("backup").timeout == 30
    clock.advance(10)
    scheduler.run_due()
    assert scheduler.wait_for_runs(10)
    import mytasks  # type: ignore[import-not-found]  # importable now: base_dir is on the path

    assert mytasks.CALLS == [("backup", "/srv", 7)]
    scheduler.stop()


@pytest.mark.parametrize(
    ("job", "message"),
    [
        ({"class": "nowhere:Backup"}, "jobs[0] (id 'b').class: cannot import 'nowhere:Backup': ModuleNotFoundError"),
        ({"class": "mytasks:NotATask"}, "jobs[0] (id 'b').class: 'mytasks:NotATask' is not a BaseTask subclass"),
        ({"class": "mytasks:Backup", "params": {"sauce": 1}}, "jobs[0] (id 'b').params: bad params for mytasks:Backup"),
        ({"class": "mytasks:Backup", "kwargs": {"a": 1}}, "jobs[0] (id 'b').kwargs: does not apply to a class job"),
        ({"function": "mytasks:hello", "class": "mytasks:Backup"}, "jobs[0] (id 'b').type: cannot tell what runs"),
    ],
)
def test_class_and_function_jobs_are_checked_at_load(tmp_path: Path, job: dict[str, Any], message: str) -> None:
    (tmp_path / "mytasks.py").write_text(MYTASKS.replace("CALLS = []", "CALLS = []  # " + tmp_path.name))
    path = write_config(tmp_path, [{"id": "b", "schedule": {"interval": 5}, **job}])
    result = cli("validate", "-c", str(path))
    assert result.returncode == 2
    assert message in result.stderr and str(path) in result.stderr


def test_a_job_without_type_says_what_was_inferred(base_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_script(base_dir, "ok.py", "print('ok')\n")
    path = write_config(base_dir, [{"id": "ok", "script_path": "scripts/ok.py", "schedule": {"interval": 5}}])
    assert main(["validate", "-c", str(path)]) == 0
    assert "ok (script, type inferred from script_path): every 5 seconds" in capsys.readouterr().out


def test_read_only_commands_work_without_the_jobs_code(tmp_path: Path) -> None:
    """An operator inspecting a running service should not need its PYTHONPATH."""
    path = write_config(
        tmp_path, [{"id": "gone", "type": "function", "function": "vanished_module:run", "schedule": {"interval": 5}}]
    )
    assert "cannot import 'vanished_module:run'" in cli("validate", "-c", str(path)).stderr
    for arguments in (["list"], ["history"], ["next", "0 3 * * *"], ["list", "--json"]):
        result = cli(*arguments, "-c", str(path))
        assert result.returncode == 0, (arguments, result.stderr)
    status = cli("status", "-c", str(path))
    assert status.returncode == 1 and "not running" in status.stdout and "import" not in status.stderr


# -- 5. config forms ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("schedule", "message"),
    [
        ({"interval": -5}, "an interval must be a positive duration (more than 0 seconds), got -5 seconds"),
        ({"interval": 0}, "an interval must be a positive duration (more than 0 seconds), got 0 seconds"),
        ({"interval": {"secs": 5}}, "interval: unknown key 'secs' (valid: weeks, days, hours, minutes, seconds,"),
        ({"cron": {"hours": 3}}, "cron: unknown key 'hours' (valid: cron, second, minute, hour, day, month,"),
        ({"once": {"when": "2030-01-01"}}, "once: unknown key 'when' (valid: run_at, timezone, jitter)"),
        ({"interval": 5, "every": 3}, "schedule: unknown key 'every' (valid: interval, cron, once, timezone,"),
    ],
)
def test_schedule_errors_name_the_key_and_list_the_valid_ones(
    base_dir: Path, schedule: dict[str, Any], message: str
) -> None:
    write_script(base_dir, "ok.py", "print('ok')\n")
    path = write_config(base_dir, [{"id": "a", "script_path": "scripts/ok.py", "schedule": schedule}])
    with pytest.raises(ConfigError) as caught:
        load_config(path, environ={})
    assert "jobs[0] (id 'a').schedule: " + message in str(caught.value)


def test_every_rule_takes_its_keyword_form(base_dir: Path) -> None:
    write_script(base_dir, "ok.py", "print('ok')\n")
    schedules = [
        {"once": {"run_at": "2030-01-01T00:00:00+00:00"}},
        {"interval": {"minutes": 5}},
        {"cron": {"hour": 3, "day_of_week": "mon-fri"}},
    ]
    jobs = [{"id": f"j{i}", "script_path": "scripts/ok.py", "schedule": s} for i, s in enumerate(schedules)]
    config = load_config(write_config(base_dir, jobs), environ={})
    rules = [rule.describe() for _, rule, _ in config.build_tasks()]
    assert rules == ["once at 2030-01-01T00:00:00+00:00", "every 5 minutes", "cron '0 0 3 * * mon-fri'"]


def test_an_interval_starting_now_fires_at_once_but_not_again_at_restart(base_dir: Path) -> None:
    config = SchedulerConfig.from_dict(
        {"scheduler": {"timezone": "UTC", "base_dir": str(base_dir)}, "logging": {"log_file": None}}
    )
    clock, calls = ManualClock(T0), []
    rule = IntervalRule(minutes=5, start="now")
    first = TaskScheduler(config, clock=clock)
    first.add_task(FunctionTask("collect", "collect", lambda context: calls.append(context.scheduled_for)), rule)
    first.run_due()
    assert first.wait_for_runs(10) and calls == [T0]  # at once, not five minutes later
    clock.advance(60)
    first.stop()
    second = TaskScheduler(config, clock=clock)  # a restart a minute later: no extra run
    second.add_task(FunctionTask("collect", "collect", lambda context: calls.append(context.scheduled_for)), rule)
    second.run_due()
    assert second.wait_for_runs(10) and calls == [T0]
    clock.advance(240)
    second.run_due()
    assert second.wait_for_runs(10) and calls == [T0, datetime(2030, 1, 1, 0, 5, tzinfo=UTC)]
    second.stop()


def test_the_shipped_config_fires_its_frequent_jobs_at_start() -> None:
    config = load_config(Path(__file__).resolve().parents[1] / "scheduler_config.json", build_jobs=False)
    schedules = {job.id: job.schedule for job in config.jobs}
    assert schedules["heartbeat"].get("start") == "now" and schedules["sensor_data_collection"].get("start") == "now"


# -- 6. the CLI an operator lives in ----------------------------------------------------------


def test_unknown_command_names_the_valid_ones_and_subcommands_have_help() -> None:
    result = cli("bogus")
    assert result.returncode == 2 and "unknown command 'bogus' (commands: run, validate, list," in result.stderr
    help_text = cli("history", "--help").stdout
    assert "Finished runs, newest first" in help_text


def test_every_command_behaves_in_a_pipe(tmp_path: Path) -> None:
    path = write_config(tmp_path, [])
    producer = subprocess.Popen(
        [sys.executable, "-m", "task_scheduler", "next", "* * * * * *", "-n", "200000", "-c", str(path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert producer.stdout is not None and producer.stderr is not None
    producer.stdout.readline()
    producer.stdout.close()  # like `| head -1`
    stderr = producer.stderr.read().decode()
    assert producer.wait(60) == 0 and "Traceback" not in stderr and "BrokenPipe" not in stderr
    head = subprocess.run(
        f"{sys.executable} -m task_scheduler list -c {path} | head -c 1", shell=True, capture_output=True, text=True
    )  # a real shell pipe into head
    assert "Traceback" not in head.stderr


def sqlite_config(base_dir: Path, **tasks: Any) -> SchedulerConfig:
    return SchedulerConfig.from_dict(
        {
            "scheduler": {"timezone": "UTC", "base_dir": str(base_dir)},
            "store": {"url": "sqlite://data/state.db"},
            "tasks": {"max_retries": 0, **tasks},
            "logging": {"log_file": None},
        }
    )


def run_steps(scheduler: TaskScheduler, clock: ManualClock, steps: int, seconds: float) -> None:
    for _ in range(steps):
        clock.advance(seconds)
        scheduler.run_due()
        assert scheduler.wait_for_runs(30)


def test_list_aligns_wide_characters_and_history_tells_runs_apart(
    base_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = sqlite_config(base_dir)
    (base_dir / "config.json").write_text(json.dumps({"store": {"url": "sqlite://data/state.db"},
                                                       "scheduler": {"timezone": "UTC"}}))  # fmt: skip
    clock = ManualClock(T0)
    scheduler = TaskScheduler(config, clock=clock)
    for task_id in ("备份数据库", "report"):
        scheduler.add_task(FunctionTask(task_id, task_id, lambda: None), IntervalRule(seconds=10))
    run_steps(scheduler, clock, 3, 10)
    scheduler.stop()
    assert main(["list", "-c", str(base_dir / "config.json")]) == 0
    lines = capsys.readouterr().out.splitlines()
    starts = {_display_index(line, "every 10 seconds") for line in lines[1:]}
    assert len(starts) == 1 and _display_index(lines[0], "SCHEDULE") in starts
    assert main(["history", "report", "-c", str(base_dir / "config.json")]) == 0
    runs = [line.split()[0] for line in capsys.readouterr().out.splitlines()[1:]]
    assert len(runs) == 3 and len(set(runs)) == 3  # the shown part differs from run to run
    assert main(["show", runs[0], "-c", str(base_dir / "config.json")]) == 0
    assert f"--- run {runs[0]} of report succeeded" in capsys.readouterr().out


def _display_index(line: str, text: str) -> int:
    import unicodedata

    prefix = line[: line.index(text)]
    return sum(2 if unicodedata.east_asian_width(c) in "WF" else 1 for c in prefix)


def test_a_catch_up_logs_one_line_per_task_with_the_count(base_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    clock = ManualClock(T0)
    scheduler = TaskScheduler(sqlite_config(base_dir), clock=clock)
    scheduler.add_task(FunctionTask("tick", "tick", lambda: None), IntervalRule(seconds=5))
    run_steps(scheduler, clock, 1, 5)
    with caplog.at_level(logging.WARNING, logger="task_scheduler.scheduler"):
        run_steps(scheduler, clock, 1, 120)  # down two minutes: 23 occurrences not run
    lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING and "tick" in r.getMessage()]
    assert len(lines) == 1 and "23 occurrences from" in lines[0] and "missed" in lines[0], lines
    assert len(scheduler.store.history("tick", RunState.MISSED)) == 23  # the history keeps a row for each
    scheduler.stop()


# -- 7. secrets in output ------------------------------------------------------------------


def test_secret_values_are_masked_in_stored_output(base_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_script(base_dir, "leak.py", textwrap.dedent("""
        import os
        print("token is", os.environ["API_TOKEN"], "and key is", os.environ["DEPLOY_KEY"])
        raise SystemExit("failed with " + os.environ["API_TOKEN"])
    """))  # fmt: skip
    path = base_dir / "config.json"
    path.write_text(json.dumps({
        "scheduler": {"timezone": "UTC"}, "store": {"url": "sqlite://data/state.db"}, "logging": {"log_file": None},
        "tasks": {"max_retries": 0, "secret_env": ["DEPLOY_KEY"]},
        "jobs": [{"id": "leak", "script_path": "scripts/leak.py", "schedule": {"interval": 10},
                  "env": {"API_TOKEN": "s3cr3tvalue", "DEPLOY_KEY": "deploykeyvalue"}}],
    }))  # fmt: skip
    clock = ManualClock(T0)
    scheduler = TaskScheduler(str(path), clock=clock)
    run_steps(scheduler, clock, 1, 10)
    scheduler.stop()
    capsys.readouterr()
    assert main(["show", "leak", "-c", str(path)]) == 0
    shown = capsys.readouterr().out
    assert main(["history", "--json", "-c", str(path)]) == 0
    history = capsys.readouterr().out
    for text in (shown, history):
        assert "s3cr3tvalue" not in text and "deploykeyvalue" not in text
    assert "token is *** and key is ***" in shown and "failed with ***" in history
    assert '"API_TOKEN": "***"' in shown  # and the stored definition masks the env value too
