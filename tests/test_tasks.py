"""Tasks on their own: the legacy bool contract, functions, scripts."""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import psutil
import pytest

from task_scheduler import BaseTask, FunctionTask, RunState, ScriptTask, TaskContext, TaskError
from task_scheduler.execution import CANCEL_SHUTDOWN, execute_attempt
from task_scheduler.stores.base import RunRecord, new_run_id
from tests.conftest import write_script


def attempt(task: BaseTask, timeout: float | None = None) -> tuple[RunRecord, TaskContext]:
    record = RunRecord(new_run_id(), task.task_id, datetime.now(UTC), RunState.RUNNING)
    context = TaskContext(task.task_id, record.run_id, record.scheduled_for, 1, logging.getLogger("t"), timeout=timeout)
    return execute_attempt(task, record, context, lambda: datetime.now(UTC)), context


class LegacyTask(BaseTask):
    """The seed's contract: execute(self) -> bool, last_error on failure."""

    def __init__(self, task_id: str, outcome: bool) -> None:
        super().__init__(task_id, "legacy")
        self.outcome = outcome

    def execute(self) -> bool:  # type: ignore[override]
        if not self.outcome:
            self.last_error = "sensor offline"
        return self.outcome


def test_legacy_subclass_success_and_false() -> None:
    assert attempt(LegacyTask("ok", True))[0].state is RunState.SUCCEEDED
    failed, _ = attempt(LegacyTask("bad", False))
    assert failed.state is RunState.FAILED and failed.error == "sensor offline"


def test_subclass_with_context_receives_it() -> None:
    seen = {}

    class WithContext(BaseTask):
        def execute(self, context: TaskContext) -> bool:
            seen["run_id"] = context.run_id
            return True

    record, _ = attempt(WithContext("ctx"))
    assert record.state is RunState.SUCCEEDED and seen["run_id"] == record.run_id


def test_function_exception_is_a_failure_with_its_message() -> None:
    def explode() -> None:
        raise ValueError("disk on fire")

    record, _ = attempt(FunctionTask("f", "f", explode))
    assert record.state is RunState.FAILED and record.error == "ValueError: disk on fire"


def test_function_return_values() -> None:
    assert attempt(FunctionTask("none", "n", lambda: None))[0].state is RunState.SUCCEEDED
    assert attempt(FunctionTask("false", "f", lambda: False))[0].state is RunState.FAILED
    garbage, _ = attempt(FunctionTask("garbage", "g", lambda: {"rows": 3}))
    assert garbage.state is RunState.SUCCEEDED and garbage.output == "{'rows': 3}"


def test_function_args_kwargs_and_context_keyword() -> None:
    got = {}

    def work(a: int, b: int, *, scale: int, context: TaskContext) -> None:
        got["value"] = (a + b) * scale
        got["attempt"] = context.attempt

    assert attempt(FunctionTask("f", "f", work, args=(1, 2), kwargs={"scale": 10}))[0].state is RunState.SUCCEEDED
    assert got == {"value": 30, "attempt": 1}


def test_async_function_runs_and_times_out_for_real() -> None:
    async def quick() -> int:
        await asyncio.sleep(0)
        return 7

    async def slow() -> None:
        await asyncio.sleep(30)

    assert attempt(FunctionTask("q", "q", quick))[0].output == "7"
    started = time.monotonic()
    record, _ = attempt(FunctionTask("s", "s", slow), timeout=0.2)
    assert record.state is RunState.TIMED_OUT and time.monotonic() - started < 10


def test_cancelled_function_is_interrupted() -> None:
    def cooperative(context: TaskContext) -> None:
        context.cancel_event.wait(10)

    task = FunctionTask("c", "c", cooperative)
    record = RunRecord(new_run_id(), "c", datetime.now(UTC), RunState.RUNNING)
    context = TaskContext("c", record.run_id, record.scheduled_for, 1, logging.getLogger("t"))
    threading.Timer(0.1, context.cancel, args=(CANCEL_SHUTDOWN,)).start()
    final = execute_attempt(task, record, context, lambda: datetime.now(UTC))
    assert final.state is RunState.INTERRUPTED


def test_invalid_task_arguments() -> None:
    with pytest.raises(TaskError, match="task_id must be a non-empty string"):
        FunctionTask("", "x", print)
    with pytest.raises(TaskError, match="task 'x': func must be callable"):
        FunctionTask("x", "x", "print")  # type: ignore[arg-type]
    with pytest.raises(TaskError, match="task 'x': timeout must be a positive number"):
        FunctionTask("x", "x", print, timeout=-1)
    with pytest.raises(TaskError, match="task 'x': max_instances must be an integer >= 1"):
        FunctionTask("x", "x", print, max_instances=0)


# -- scripts --------------------------------------------------------------------------


def bound(base_dir: Path, task: ScriptTask, allowed: list[Path] | None = None) -> ScriptTask:
    task.bind(base_dir, base_dir / "data", [base_dir / "scripts"] if allowed is None else allowed)
    return task


def test_python_script_success_output_and_environment(base_dir: Path) -> None:
    write_script(
        base_dir, "hello.py", "import os, sys\nprint('hello', sys.argv[1:], os.environ['TASK_SCHEDULER_TASK_ID'])\n"
    )
    record, _ = attempt(bound(base_dir, ScriptTask("hello", "Hello", "scripts/hello.py", args=["--mode", "auto"])))
    assert record.state is RunState.SUCCEEDED and record.exit_code == 0
    assert record.output is not None and "hello ['--mode', 'auto'] hello" in record.output


def test_script_exit_codes(base_dir: Path) -> None:
    write_script(base_dir, "fail.py", "import sys\nprint('oops', file=sys.stderr)\nsys.exit(3)\n")
    record, _ = attempt(bound(base_dir, ScriptTask("fail", "Fail", "scripts/fail.py")))
    assert record.state is RunState.FAILED and record.exit_code == 3
    assert record.error == "exit code 3: oops"


def test_executable_runs_directly_without_a_shell(base_dir: Path) -> None:
    write_script(base_dir, "tool.sh", '#!/bin/sh\necho "args:$1"\n')
    record, _ = attempt(bound(base_dir, ScriptTask("sh", "sh", "scripts/tool.sh", args=["a b; rm -rf /"])))
    assert record.state is RunState.SUCCEEDED and record.output == "args:a b; rm -rf /\n"


def test_missing_and_disallowed_scripts_are_rejected(base_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    with pytest.raises(TaskError, match=r"task 'gone': script not found: .*nope\.py"):
        bound(base_dir, ScriptTask("gone", "gone", "scripts/nope.py"))
    outside = tmp_path_factory.mktemp("elsewhere") / "evil.py"
    outside.write_text("print('x')\n")
    with pytest.raises(TaskError, match=r"task 'evil': script .*evil\.py is outside allowed_script_dirs"):
        bound(base_dir, ScriptTask("evil", "evil", str(outside)))
    (base_dir / "scripts" / "link.py").symlink_to(outside)
    with pytest.raises(TaskError, match="outside allowed_script_dirs"):
        bound(base_dir, ScriptTask("link", "link", "scripts/link.py"))
    write_script(base_dir, "noexec", "#!/bin/sh\n").chmod(0o644)
    with pytest.raises(TaskError, match="is not executable"):
        bound(base_dir, ScriptTask("noexec", "noexec", "scripts/noexec"))


def test_script_timeout_kills_the_whole_process_group(base_dir: Path) -> None:
    marker = base_dir / "grandchild.pid"
    write_script(
        base_dir,
        "hang.py",
        "import subprocess, sys, time\n"
        f"child = subprocess.Popen(['sleep', '1000'])\nopen({str(marker)!r}, 'w').write(str(child.pid))\n"
        "time.sleep(1000)\n",
    )
    task = bound(base_dir, ScriptTask("hang", "hang", "scripts/hang.py", timeout=1, kill_grace=1))
    record, _ = attempt(task, timeout=1)
    assert record.state is RunState.TIMED_OUT
    grandchild = int(marker.read_text())
    assert _gone(grandchild)


def test_script_that_ignores_sigterm_gets_sigkill(base_dir: Path) -> None:
    write_script(
        base_dir,
        "stubborn.py",
        "import signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "print('up', flush=True)\ntime.sleep(1000)\n",
    )
    record, _ = attempt(
        bound(base_dir, ScriptTask("stubborn", "s", "scripts/stubborn.py", timeout=0.5, kill_grace=0.5)), timeout=0.5
    )
    assert record.state is RunState.TIMED_OUT and record.exit_code == -9


def test_script_leaving_a_background_child_leaves_nothing_behind(base_dir: Path) -> None:
    marker = base_dir / "bg.pid"
    write_script(base_dir, "bg.sh", f"#!/bin/sh\nsleep 1000 &\necho $! > {marker}\nexit 0\n")
    record, _ = attempt(bound(base_dir, ScriptTask("bg", "bg", "scripts/bg.sh", kill_grace=1)))
    assert record.state is RunState.SUCCEEDED
    assert _gone(int(marker.read_text().strip()))


def test_output_tail_is_bounded(base_dir: Path) -> None:
    write_script(base_dir, "loud.py", "import sys\nfor i in range(200000):\n    sys.stdout.write(f'line {i}\\n')\n")
    record, _ = attempt(bound(base_dir, ScriptTask("loud", "loud", "scripts/loud.py", output_limit=4096)))
    assert record.state is RunState.SUCCEEDED and record.output is not None
    assert len(record.output) <= 4096 and record.output.endswith("line 199999\n")


def test_inherit_env_allowlist(base_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SECRET_TOKEN", "hunter2")
    monkeypatch.setenv("VISIBLE", "yes")
    write_script(
        base_dir,
        "env.py",
        "import os\nprint(os.environ.get('SECRET_TOKEN'), os.environ.get('VISIBLE'), os.environ.get('EXTRA'))\n",
    )
    task = ScriptTask("env", "env", "scripts/env.py", inherit_env=["VISIBLE", "PATH"], env={"EXTRA": "1"})
    record, _ = attempt(bound(base_dir, task))
    assert record.output == "None yes 1\n"


def test_a_script_sees_the_environment_as_it_is_when_it_starts(base_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A change to the service's environment between two runs reaches the second, and
    # an inherited variable whose name looks secret is masked in the output.
    write_script(base_dir, "env.py", "import os\nprint(os.environ.get('STAGE'), os.environ.get('SERVICE_TOKEN'))\n")
    task = bound(base_dir, ScriptTask("env", "env", "scripts/env.py"))
    monkeypatch.setenv("STAGE", "one")
    assert attempt(task)[0].output == "one None\n"
    monkeypatch.setenv("STAGE", "two")
    monkeypatch.setenv("SERVICE_TOKEN", "tok-12345")
    assert attempt(task)[0].output == "two ***\n"
    monkeypatch.delenv("STAGE")
    assert attempt(task)[0].output == "None ***\n"


def _gone(pid: int, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        time.sleep(0.05)
    os.kill(pid, 9)
    return False
