"""The ``task-scheduler`` command (also ``python -m task_scheduler``).

Exit codes: 0 ok; 1 not found or failed (``status``: no live service; the state
store locked or unreachable for too long); 2 usage, configuration or damaged
state-file error (restarting cannot fix those).
``--config`` is accepted before or after the subcommand; without it the config is
found as `find_config` says. With no subcommand, ``run`` is assumed. Commands that
only read the state (list, status, history, show, next) never import the jobs'
code, so an operator can use them without the service's Python path. Every command
behaves in a pipe (``| head``, ``| grep -q``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import unicodedata
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime, tzinfo
from pathlib import Path
from typing import Any

from task_scheduler import monitoring
from task_scheduler.config import CONFIG_SEARCH_PATH, SchedulerConfig, find_config, load_config
from task_scheduler.errors import ConfigError, StoreError, StoreUnavailableError, TaskNotFoundError, TaskSchedulerError
from task_scheduler.jobs import load_specs, store_jobs, unstore_job
from task_scheduler.redact import redact_data
from task_scheduler.schedules import CronRule, resolve_timezone
from task_scheduler.stores import Store, open_store
from task_scheduler.stores.base import RunState

__all__ = ["main"]

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
_FIELD_OF = {"script": "script_path", "function": "function", "class": "class", "builtin": "builtin",
             "handler": "handler"}  # fmt: skip
RUN_ID_SHOWN = 12  # the run id's last digits tell runs apart (the first ones name the process)

_COMMANDS: dict[str, tuple[str, str]] = {
    # name: (one-line help, description for "COMMAND --help")
    "run": ("run the service in the foreground (default), or --daemon",
            "Run the scheduler with the config's jobs and the stored persistent jobs until SIGTERM/SIGINT; "
            "SIGHUP reloads the config. --daemon detaches (for hosts without systemd): it returns once the "
            "service is ready, writes the pidfile and sends stdout/stderr to the log file."),
    "validate": ("check a config file and its jobs",
                 "Load the config, import the jobs' code and check their scripts; print each job's type and "
                 "schedule. Exit 2 with the file, key path and problem when something is wrong."),
    "list": ("the scheduled tasks, their next run and last result",
             "Every scheduled task: where it comes from (config, code, persistent), its schedule, next run "
             "and last result; tasks that cannot run are listed with the reason."),
    "status": ("is the service alive: nodes, uptime, running runs",
               "The scheduler processes using the store (pid, host, uptime, last heartbeat, clock skew) and "
               "the runs in progress. Exit 1 when no service is alive."),
    "history": ("finished runs, newest first", "Finished runs, newest first; RUN is the end of the run id, "
                "which 'show' accepts."),
    "show": ("one task (rule, stats, definition, last runs) or one run",
             "A task: its schedule, counters, stored definition and last runs with their output. A run id "
             "(or the part 'history' shows): that run with its whole output tail."),
    "next": ("preview the fire times of a cron expression",
             "Print the next fire times of a cron expression, computed by the same code the scheduler uses."),
    "trigger": ("run a task now (within check_interval)",
                "Queue one extra run of a task, due now; the running service starts it within check_interval."),
    "pause": ("stop firing a task", "Pause a task; a run in progress finishes. Survives restarts."),
    "resume": ("fire a paused task again", "Resume a paused task; missed occurrences follow the misfire rules."),
    "add": ("add a persistent job (kept in the store)",
            "Add a job defined by data to the store: a script, a 'module:callable', a BaseTask subclass, a "
            "builtin or a handler, on a schedule. Every later process restores it; a running service picks "
            "it up within check_interval. --from-json takes a job object (the config's job format) or a list."),
    "remove": ("remove a persistent job", "Remove a persistent job from the store; its history is kept. Jobs "
               "of the config file are removed there."),
    "stop": ("stop a service started with run --daemon",
             "Send SIGTERM to the daemon of the pidfile and wait until it has stopped (its running jobs get "
             "shutdown_timeout, then are killed)."),
}  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", "-c", default=argparse.SUPPRESS, help="config file (JSON, TOML or YAML)")
    common.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="machine-readable output")
    parser = argparse.ArgumentParser(
        prog="task-scheduler",
        description="Run and inspect the task_scheduler service.",
        parents=[common],
        epilog="Exit codes: 0 ok, 1 not found or failed, 2 usage, configuration or damaged state file.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    def command(name: str) -> argparse.ArgumentParser:
        text, description = _COMMANDS[name]
        return commands.add_parser(name, parents=[common], help=text, description=description)

    run = command("run")
    run.add_argument("--daemon", action="store_true", help="detach; output goes to the log file")
    run.add_argument("--pidfile", type=Path, help="default: DATA_DIR/task-scheduler.pid")
    stop = command("stop")
    stop.add_argument("--pidfile", type=Path, help="default: DATA_DIR/task-scheduler.pid")
    stop.add_argument("--timeout", type=float, help="seconds to wait (default: shutdown_timeout + kill_grace + 15)")
    command("validate")
    command("list")
    command("status")
    history = command("history")
    history.add_argument("task_id", nargs="?", help="only this task")
    history.add_argument("--state", choices=[s.value for s in RunState if s.is_final], help="only this outcome")
    history.add_argument("--limit", type=int, default=20, help="how many runs (default 20)")
    command("show").add_argument("target", metavar="TASK_OR_RUN", help="a task id, or a run id or its last digits")
    for name in ("trigger", "pause", "resume", "remove"):
        command(name).add_argument("task_id")
    preview = command("next")
    preview.add_argument("expression", help='cron expression, e.g. "*/15 9-17 * * mon-fri"')
    preview.add_argument("-n", "--count", type=int, default=5, help="how many fire times (default 5)")
    preview.add_argument("--tz", default="local", help="time zone (default: the system zone)")
    _add_arguments(command("add"))
    return parser


def _add_arguments(add: argparse.ArgumentParser) -> None:
    add.add_argument("task_id", nargs="?", help="the job's id (not with --from-json)")
    add.add_argument("--from-json", metavar="FILE", help="a job object, or a list of them, in the config's format")
    when = add.add_argument_group("schedule (one of)")
    when.add_argument("--cron", help='cron expression, e.g. "0 2 * * *" or "*/30 * * * * *"')
    when.add_argument("--interval", type=float, metavar="SECONDS", help="every SECONDS")
    when.add_argument("--once", metavar="DATETIME", help="once, at an ISO 8601 date and time")
    when.add_argument("--timezone", help="the schedule's time zone (default: the scheduler's)")
    what = add.add_argument_group("what runs (one of)")
    what.add_argument("--script", metavar="PATH", help="a script inside allowed_script_dirs")
    what.add_argument("--function", metavar="MODULE:CALLABLE", help="an importable function")
    what.add_argument("--class", dest="class_ref", metavar="MODULE:CLASS", help="a BaseTask subclass")
    what.add_argument("--builtin", metavar="NAME", help="a builtin job (log_cleanup)")
    what.add_argument("--handler", metavar="TASK_TYPE", help="a registered handler")
    what.add_argument("--arg", dest="args", action="append", default=[], help="a script argument (repeatable)")
    what.add_argument("--kwargs", type=_json_object, metavar="JSON", help="keyword arguments of the function")
    what.add_argument("--params", type=_json_object, metavar="JSON", help="params of a class, builtin or handler")
    options = add.add_argument_group("options")
    options.add_argument("--name")
    options.add_argument("--description", default="")
    options.add_argument("--timeout", type=float, metavar="SECONDS")
    options.add_argument("--max-retries", type=int)
    options.add_argument("--max-instances", type=int, default=1)
    options.add_argument("--max-runs", type=int)
    options.add_argument("--recover", action="store_true", help="re-run a run interrupted by a crash")
    options.add_argument("--tag", dest="tags", action="append", default=[])
    options.add_argument("--paused", action="store_true", help="add it paused")
    options.add_argument("--replace", action="store_true", help="replace a persistent job with this id")


def main(argv: Sequence[str] | None = None) -> int:
    arguments = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    first = _first_word(arguments)
    if first is None and not {"-h", "--help"} & set(arguments):
        arguments.insert(0, "run")
    elif first is not None and first not in _COMMANDS:
        print(f"task-scheduler: unknown command {first!r} (commands: {', '.join(_COMMANDS)})", file=sys.stderr)
        return EXIT_USAGE
    try:
        options = parser.parse_args(arguments)
    except SystemExit as exc:  # argparse exits 2 on usage errors, 0 on --help
        return int(exc.code or 0)
    handler = globals()[f"_{options.command}"]
    try:
        return int(handler(options))
    except BrokenPipeError:
        # The reader went away (| head): stop quietly; point stdout at /dev/null so
        # the interpreter's final flush does not complain either.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
    except ConfigError as exc:
        print(f"task-scheduler: config error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except StoreUnavailableError as exc:  # not damaged: trying again later can work (systemd restarts on 1)
        print(f"task-scheduler: state unavailable: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except StoreError as exc:
        print(f"task-scheduler: state error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except TaskNotFoundError as exc:
        print(f"task-scheduler: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except TaskSchedulerError as exc:
        print(f"task-scheduler: error: {exc}", file=sys.stderr)
        return EXIT_FAILED


def _first_word(arguments: list[str]) -> str | None:
    """The first argument that is not an option (nor the value of --config)."""
    skip = False
    for argument in arguments:
        if skip:
            skip = False
        elif argument in ("--config", "-c"):
            skip = True
        elif not argument.startswith("-"):
            return argument
    return None


def _config(options: argparse.Namespace, build_jobs: bool = True) -> SchedulerConfig:
    path = find_config(getattr(options, "config", None))
    if path is None:
        raise ConfigError(
            "no config file found: pass --config, set TASK_SCHEDULER_CONFIG, or create one of "
            + ", ".join(CONFIG_SEARCH_PATH)
        )
    return load_config(path, build_jobs=build_jobs)


def _run(options: argparse.Namespace) -> int:
    from task_scheduler.service import run_service

    return run_service(_config(options), daemon=getattr(options, "daemon", False),
                       pidfile=getattr(options, "pidfile", None))  # fmt: skip


def _stop(options: argparse.Namespace) -> int:
    from task_scheduler.service import default_pidfile, stop_daemon

    pidfile = options.pidfile
    config = _config(options, build_jobs=False) if pidfile is None or options.timeout is None else None
    if pidfile is None:
        assert config is not None
        pidfile = default_pidfile(config)
    timeout = options.timeout
    if timeout is None:
        assert config is not None
        timeout = config.scheduler.shutdown_timeout + config.tasks.kill_grace + 15
    stopped, message = stop_daemon(pidfile, timeout)
    print(f"task-scheduler: {message}", file=sys.stdout if stopped else sys.stderr)
    return EXIT_OK if stopped else EXIT_FAILED


def _validate(options: argparse.Namespace) -> int:
    config = _config(options)
    jobs = config.build_tasks()
    if _wants_json(options):
        _print_json({"valid": True, "config": config.source,
                     "jobs": [{"id": task.task_id, "type": spec.kind, "type_inferred": spec.type is None,
                               "schedule": rule.describe()} for task, rule, spec in jobs]})  # fmt: skip
    else:
        print(f"{config.source}: OK, {len(jobs)} enabled job(s)")
        for task, rule, spec in jobs:
            inferred = f", type inferred from {_FIELD_OF[spec.kind]}" if spec.type is None else ""
            print(f"  {task.task_id} ({spec.kind}{inferred}): {rule.describe()}")
    return EXIT_OK


def _next(options: argparse.Namespace) -> int:
    try:
        zone = resolve_timezone(options.tz)
        rule = CronRule(cron=options.expression, timezone=zone)
    except TaskSchedulerError as exc:
        raise ConfigError(str(exc)) from exc
    moment: datetime | None = datetime.now(UTC)
    times: list[Any] = []
    for _ in range(max(0, options.count)):
        assert moment is not None
        moment = rule.next_fire_time(moment)
        if moment is None:
            break
        times.append(moment.astimezone(zone))
    if _wants_json(options):
        print(json.dumps([moment.isoformat() for moment in times]))
    else:
        for moment in times:
            print(moment.strftime("%Y-%m-%d %H:%M:%S %Z (%a)"))
    return EXIT_OK


# -- commands that read or change the store -------------------------------------------


@contextmanager
def _opened(options: argparse.Namespace, build_jobs: bool = False) -> Iterator[tuple[SchedulerConfig, Store]]:
    config = _config(options, build_jobs=build_jobs)
    if config.store.url and config.store.url.startswith("memory://"):
        raise StoreError(
            "the store 'memory://' lives inside the service process; configure a shared store "
            "(sqlite:// or postgresql://) to use this command"
        )
    store = open_store(config)
    try:
        yield config, store
    finally:
        store.close()


def _list(options: argparse.Namespace) -> int:
    with _opened(options) as (config, store):
        tasks = monitoring.overview(store)
    if _wants_json(options):
        _print_json(tasks)
        return EXIT_OK
    zone = resolve_timezone(config.scheduler.timezone)
    rows = [
        [
            task["task_id"] + (" !" if task["problem"] else ""),
            task["origin"],
            task["schedule"],
            task["status"] if task["status"] in ("paused", "finished") else _when(task["next_run_at"], zone),
            "running" if task["running"] else task["last_state"] or "-",
        ]
        for task in tasks
    ]
    _print_table(["ID", "ORIGIN", "SCHEDULE", "NEXT RUN", "LAST RESULT"], rows)
    for task in tasks:
        if task["problem"]:
            print(f"! {task['task_id']}: {task['problem']}")
    return EXIT_OK


def _status(options: argparse.Namespace) -> int:
    with _opened(options) as (config, store):
        report = monitoring.service_status(store, config.store.lease_seconds)
    if _wants_json(options):
        _print_json(report)
    else:
        print(f"store: {report['store']}")
        if not report["nodes"]:
            print("service: not running (no scheduler has registered with this store)")
        for node in report["nodes"]:
            state = "running" if node["alive"] else "not responding"
            skew = f", clock skew {node['skew']:+.3f}s" if node.get("skew") is not None else ""
            print(
                f"service: {state}, node {node['node_id']}, pid {node['pid']} on {node['host']}, started "
                f"{node['started_at']} (up {_duration(node['uptime_seconds'])}), {node['running_runs']} run(s) in "
                f"progress, last heartbeat {node['heartbeat_at']}{skew}"
            )
        print(f"runs: {report['running_runs']} running, {report['queued_runs']} queued")
    return EXIT_OK if report["alive"] else EXIT_FAILED


def _history(options: argparse.Namespace) -> int:
    state = RunState(options.state) if options.state else None
    with _opened(options) as (config, store):
        records = monitoring.runs(store, options.task_id, state, options.limit)
    if _wants_json(options):
        _print_json(records)
        return EXIT_OK
    zone = resolve_timezone(config.scheduler.timezone)
    _print_table(["RUN", "TASK", "SCHEDULED", "STATE", "TRY", "SECONDS", "ERROR"], [_run_row(r, zone) for r in records])
    return EXIT_OK


def _show(options: argparse.Namespace) -> int:
    with _opened(options) as (config, store):
        try:
            detail: dict[str, Any] | None = monitoring.task_detail(store, options.target)
            run = None
        except TaskNotFoundError:
            detail, run = None, monitoring.run_detail(store, options.target)
            if run is None:
                raise TaskNotFoundError(options.target) from None
    zone = resolve_timezone(config.scheduler.timezone)
    if run is not None:
        if _wants_json(options):
            _print_json(run)
        else:
            _print_run(run, zone, tail=None)
        return EXIT_OK
    assert detail is not None
    if detail["spec"] is not None:
        detail["spec"] = redact_data(detail["spec"], config.tasks.secret_env)
    if _wants_json(options):
        _print_json(detail)
        return EXIT_OK
    completed = detail["run_count"]
    rate = f"{detail['success_rate']:.1f}%" if completed else "-"
    average = f"{detail['average_duration']:.3f}s" if completed else "-"
    print(f"task:        {detail['task_id']} ({detail['name']})")
    print(f"origin:      {detail['origin']}")
    print(f"schedule:    {detail['schedule']}")
    print(f"status:      {detail['status']}")
    print(f"next run:    {_when(detail['next_run_at'], zone)}")
    print(f"last run:    {_when(detail['last_run_at'], zone)} ({detail['last_state'] or '-'})")
    print(f"runs:        {completed} ({detail['success_count']} ok, {detail['failure_count']} failed, {rate} success), "
          f"{detail['retry_count']} retried, {detail['missed_count']} missed, {detail['skipped_count']} skipped, "
          f"{detail['interrupted_count']} interrupted")  # fmt: skip
    print(f"avg time:    {average}")
    if detail["problem"]:
        print(f"problem:     {detail['problem']}")
    if detail["last_error"]:
        print(f"last error:  {detail['last_error']}")
    if detail["spec"] is not None:
        print("definition:  " + json.dumps(detail["spec"], indent=2, sort_keys=True).replace("\n", "\n             "))
    for record in detail["active_runs"]:
        print(f"in progress: {record['run_id'][-RUN_ID_SHOWN:]} {record['state']} "
              f"(scheduled {_when(record['scheduled_for'], zone)})")  # fmt: skip
    for record in detail["recent_runs"]:
        print()
        _print_run(record, zone, tail=20)
    return EXIT_OK


def _trigger(options: argparse.Namespace) -> int:
    with _opened(options) as (config, store):
        record = store.request_run(options.task_id, datetime.now(UTC), None)
        live = monitoring.service_status(store, config.store.lease_seconds)["alive"]
    if _wants_json(options):
        _print_json({"run_id": record.run_id, "task_id": record.task_id, "service_alive": live})
    else:
        print(f"queued run {record.run_id[-RUN_ID_SHOWN:]} of {record.task_id}")
    if not live:
        print("task-scheduler: warning: no running service; the run starts when one does", file=sys.stderr)
    return EXIT_OK


def _pause(options: argparse.Namespace) -> int:
    paused = options.command == "pause"
    with _opened(options) as (_, store):
        state = store.set_paused(options.task_id, paused)
    if _wants_json(options):
        _print_json(state.to_dict())
    else:
        print(f"{state.task_id} {'paused' if paused else 'resumed'}")
    return EXIT_OK


_resume = _pause


def _add(options: argparse.Namespace) -> int:
    if options.from_json:
        if options.task_id:
            raise ConfigError("give either a task id with its options or --from-json, not both")
        items = load_specs(Path(options.from_json))
        source = options.from_json
    else:
        items, source = [_spec_from_options(options)], None
    with _opened(options) as (config, store):
        states = store_jobs(store, config, items, replace=options.replace, source=source)
        if options.paused:
            for task_id in states:
                store.set_paused(task_id, True)
    if _wants_json(options):
        _print_json([state.to_dict() for state in states.values()])
    else:
        zone = resolve_timezone(config.scheduler.timezone)
        for state in states.values():
            print(f"added {state.task_id}: {state.schedule}, next run {_when(state.next_run_at, zone)}")
    return EXIT_OK


def _remove(options: argparse.Namespace) -> int:
    with _opened(options) as (_, store):
        unstore_job(store, options.task_id)
    if not _wants_json(options):
        print(f"removed {options.task_id} (its history is kept)")
    else:
        _print_json({"removed": options.task_id})
    return EXIT_OK


def _spec_from_options(options: argparse.Namespace) -> dict[str, Any]:
    if not options.task_id:
        raise ConfigError("add needs a task id (or --from-json FILE)")
    schedules = {key: value for key, value in (("cron", options.cron), ("interval", options.interval),
                                                ("once", options.once)) if value is not None}  # fmt: skip
    if len(schedules) != 1:
        raise ConfigError("add needs exactly one of --cron, --interval, --once")
    if options.timezone:
        schedules["timezone"] = options.timezone
    spec: dict[str, Any] = {"id": options.task_id, "schedule": schedules, "description": options.description,
                            "max_instances": options.max_instances, "recover": options.recover,
                            "tags": options.tags}  # fmt: skip
    for key, value in (("script_path", options.script), ("function", options.function), ("class", options.class_ref),
                       ("builtin", options.builtin), ("handler", options.handler), ("name", options.name),
                       ("kwargs", options.kwargs), ("params", options.params), ("timeout", options.timeout),
                       ("max_retries", options.max_retries), ("max_runs", options.max_runs)):  # fmt: skip
        if value is not None:
            spec[key] = value
    if options.args:
        spec["args"] = options.args
    return spec


def _json_object(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"not JSON: {exc.msg}") from exc
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("expected a JSON object")
    return value


# -- output helpers ----------------------------------------------------------------------


def _wants_json(options: argparse.Namespace) -> bool:
    return bool(getattr(options, "json", False))


def _print_json(data: Any) -> None:
    print(json.dumps(data, indent=2, default=str))


def _print_table(headers: list[str], rows: list[list[str]]) -> None:
    """Columns aligned by display width: a CJK character takes two columns."""
    if not rows:
        print("(none)")
        return
    widths = [max(_width(str(cell)) for cell in column) for column in zip(headers, *rows, strict=True)]
    for row in [headers, *rows]:
        cells = [str(cell) + " " * (width - _width(str(cell))) for cell, width in zip(row, widths, strict=True)]
        print("  ".join(cells).rstrip())


def _width(text: str) -> int:
    return sum(
        0 if unicodedata.combining(char) else 2 if unicodedata.east_asian_width(char) in "WF" else 1 for char in text
    )


def _run_row(record: dict[str, Any], zone: tzinfo) -> list[str]:
    error = (record["error"] or "").replace("\n", " ")
    return [
        record["run_id"][-RUN_ID_SHOWN:],
        record["task_id"],
        _when(record["scheduled_for"], zone),
        record["state"],
        str(record["attempt"]),
        f"{record['duration']:.3f}" if record["duration"] is not None else "-",
        error if len(error) <= 60 else error[:57] + "...",
    ]


def _print_run(record: dict[str, Any], zone: tzinfo, tail: int | None) -> None:
    error = f": {record['error']}" if record["error"] else ""
    print(f"--- run {record['run_id'][-RUN_ID_SHOWN:]} of {record['task_id']} {record['state']}, attempt "
          f"{record['attempt']}, scheduled {_when(record['scheduled_for'], zone)}{error}")  # fmt: skip
    if record.get("cpu_user") is not None:
        rss = "-" if record["max_rss"] is None else f"{record['max_rss'] / 1048576:.1f} MiB"
        print(f"    cpu {record['cpu_user']:.3f}s user, {record['cpu_system']:.3f}s system, peak rss {rss}")
    if record["output"]:
        lines = record["output"].rstrip().splitlines()
        print("\n".join(lines if tail is None else lines[-tail:]))


def _when(moment: datetime | str | None, zone: tzinfo) -> str:
    if isinstance(moment, str):
        moment = datetime.fromisoformat(moment)
    return moment.astimezone(zone).strftime("%Y-%m-%d %H:%M:%S %Z") if moment else "-"


def _duration(seconds: float) -> str:
    minutes, second = divmod(int(seconds), 60)
    hours, minute = divmod(minutes, 60)
    days, hour = divmod(hours, 24)
    return f"{days}d {hour}h {minute}m" if days else f"{hour}h {minute}m {second}s" if hours else f"{minute}m {second}s"


def _version() -> str:
    from task_scheduler import __version__

    return __version__
