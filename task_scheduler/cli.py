"""The ``task-scheduler`` command (also ``python -m task_scheduler``).

Exit codes: 0 ok; 1 not found or failed (``status``: no live service; the state
store locked or unreachable for too long); 2 usage, configuration or damaged
state-file error (restarting cannot fix those).
``--config`` is accepted before or after the subcommand; without it the config is
found as `find_config` says. With no subcommand, ``run`` is assumed.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import socket
import sys
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime, tzinfo
from typing import Any

import psutil

from task_scheduler.config import CONFIG_SEARCH_PATH, SchedulerConfig, find_config, load_config
from task_scheduler.errors import ConfigError, StoreError, StoreUnavailableError, TaskNotFoundError, TaskSchedulerError
from task_scheduler.schedules import CronRule, resolve_timezone
from task_scheduler.stores import Store, open_store, store_path
from task_scheduler.stores.base import NodeInfo, RunRecord, RunState

__all__ = ["main"]

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
_FIELD_OF = {"script": "script_path", "function": "function", "class": "class", "builtin": "builtin",
             "handler": "handler"}  # fmt: skip
_COMMANDS = ("run", "validate", "list", "status", "history", "show", "next", "trigger", "pause", "resume")


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", "-c", default=argparse.SUPPRESS, help="config file (JSON or TOML)")
    common.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="machine-readable output")
    parser = argparse.ArgumentParser(
        prog="task-scheduler",
        description="Run and inspect the task_scheduler service.",
        parents=[common],
        epilog="Exit codes: 0 ok, 1 not found or failed, 2 usage, configuration or state-file error.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.add_parser("run", parents=[common], help="run the service in the foreground (default)")
    commands.add_parser("validate", parents=[common], help="check a config file and its jobs")
    commands.add_parser("list", parents=[common], help="the scheduled tasks, their next run and last result")
    commands.add_parser("status", parents=[common], help="is the service alive: pid, uptime, running runs")
    history = commands.add_parser("history", parents=[common], help="finished runs, newest first")
    history.add_argument("task_id", nargs="?", help="only this task")
    history.add_argument("--state", choices=[s.value for s in RunState if s.is_final], help="only this outcome")
    history.add_argument("--limit", type=int, default=20, help="how many runs (default 20)")
    show = commands.add_parser("show", parents=[common], help="one task: rule, stats, last runs with output")
    show.add_argument("task_id")
    for name, text in (("trigger", "run a task now (within check_interval)"), ("pause", "stop firing a task"),
                       ("resume", "fire a paused task again")):  # fmt: skip
        commands.add_parser(name, parents=[common], help=text).add_argument("task_id")
    preview = commands.add_parser("next", parents=[common], help="preview the fire times of a cron expression")
    preview.add_argument("expression", help='cron expression, e.g. "*/15 9-17 * * mon-fri"')
    preview.add_argument("-n", "--count", type=int, default=5, help="how many fire times (default 5)")
    preview.add_argument("--tz", default="local", help="time zone (default: the system zone)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    arguments = list(sys.argv[1:] if argv is None else argv)
    if not any(word in _COMMANDS for word in arguments) and not {"-h", "--help"} & set(arguments):
        arguments.insert(0, "run")
    parser = build_parser()
    try:
        options = parser.parse_args(arguments)
    except SystemExit as exc:  # argparse exits 2 on usage errors, 0 on --help
        return int(exc.code or 0)
    handler = {
        "run": _run,
        "validate": _validate,
        "list": _list,
        "status": _status,
        "history": _history,
        "show": _show,
        "next": _next,
        "trigger": _trigger,
        "pause": _pause,
        "resume": _pause,
    }[options.command]
    try:
        return handler(options)
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


def _config(options: argparse.Namespace) -> SchedulerConfig:
    path = find_config(getattr(options, "config", None))
    if path is None:
        raise ConfigError(
            "no config file found: pass --config, set TASK_SCHEDULER_CONFIG, or create one of "
            + ", ".join(CONFIG_SEARCH_PATH)
        )
    return load_config(path)


def _run(options: argparse.Namespace) -> int:
    from task_scheduler.logs import configure_logging
    from task_scheduler.scheduler import TaskScheduler

    config = _config(options)
    log_file = configure_logging(config)
    scheduler = TaskScheduler(config)
    logging.getLogger(__name__).info(
        "task_scheduler %s starting with %s (log file %s)", _version(), config.source, log_file or "none"
    )
    code = scheduler.run_forever()
    stuck = [
        t.name for t in threading.enumerate() if t is not threading.main_thread() and not t.daemon and t.is_alive()
    ]
    if stuck:
        # Python threads cannot be killed: a function that ignores its cancel event
        # would keep the process alive forever. Say so, then leave anyway.
        logging.getLogger(__name__).warning("exiting with %d task thread(s) still running: %s", len(stuck), stuck)
        logging.shutdown()
        os._exit(code)
    return code


def _validate(options: argparse.Namespace) -> int:
    config = _config(options)
    jobs = config.build_tasks()
    if getattr(options, "json", False):
        print(json.dumps({"valid": True, "config": config.source,
                          "jobs": [{"id": task.task_id, "type": spec.kind, "type_inferred": spec.type is None,
                                    "schedule": rule.describe()} for task, rule, spec in jobs]}))  # fmt: skip
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
    if getattr(options, "json", False):
        print(json.dumps([moment.isoformat() for moment in times]))
    else:
        for moment in times:
            print(moment.strftime("%Y-%m-%d %H:%M:%S %Z (%a)"))
    return EXIT_OK


# -- commands that read or change the store -------------------------------------------


def _open(options: argparse.Namespace) -> tuple[SchedulerConfig, Store]:
    config = _config(options)
    if store_path(config) is None:
        raise StoreError(
            f"the store {config.store.url!r} lives inside the service process; "
            "configure a sqlite store to use this command"
        )
    return config, open_store(config)


def _list(options: argparse.Namespace) -> int:
    config, store = _open(options)
    with _closing(store):
        states = store.task_states()
        active = store.active_runs()
    zone = resolve_timezone(config.scheduler.timezone)
    running = {r.task_id for r in active if r.state is RunState.RUNNING}
    if _wants_json(options):
        _print_json([{**s.to_dict(), "running": s.task_id in running} for s in states.values()])
        return EXIT_OK
    rows = [
        [
            state.task_id,
            state.schedule,
            "paused" if state.paused else ("finished" if state.finished else _when(state.next_run_at, zone)),
            "running" if state.task_id in running else (state.last_state.value if state.last_state else "-"),
            "yes" if state.paused else "no",
        ]
        for state in sorted(states.values(), key=lambda s: s.task_id)
    ]
    _print_table(["ID", "SCHEDULE", "NEXT RUN", "LAST RESULT", "PAUSED"], rows)
    return EXIT_OK


def _status(options: argparse.Namespace) -> int:
    config, store = _open(options)
    with _closing(store):
        nodes = store.nodes()
        active = store.active_runs()
    now = datetime.now(UTC)
    live = [node for node in nodes if _alive(node, now, config.store.lease_seconds)]
    running = [r for r in active if r.state is RunState.RUNNING]
    node_reports: list[dict[str, Any]] = [
        {
            **node.to_dict(),
            "alive": node in live,
            "uptime_seconds": round((now - node.started_at).total_seconds(), 1),
            "running_runs": sum(1 for r in running if r.node == node.node_id),
        }
        for node in nodes
    ]
    report = {
        "alive": bool(live),
        "store": store.location,
        "nodes": node_reports,
        "running_runs": len(running),
        "queued_runs": len(active) - len(running),
    }
    if _wants_json(options):
        _print_json(report)
    else:
        print(f"store: {store.location}")
        if not nodes:
            print("service: not running (no scheduler has registered with this store)")
        for node in node_reports:
            state = "running" if node["alive"] else "not responding"
            print(
                f"service: {state}, pid {node['pid']} on {node['host']}, up {_duration(node['uptime_seconds'])}, "
                f"{node['running_runs']} run(s) in progress, last heartbeat {node['heartbeat_at']}"
            )
        print(f"runs: {report['running_runs']} running, {report['queued_runs']} queued")
    return EXIT_OK if live else EXIT_FAILED


def _history(options: argparse.Namespace) -> int:
    config, store = _open(options)
    with _closing(store):
        if (
            options.task_id
            and options.task_id not in store.task_states()
            and not store.history(options.task_id, limit=1)
        ):
            raise TaskNotFoundError(options.task_id)
        state = RunState(options.state) if options.state else None
        records = store.history(options.task_id, state, max(1, options.limit))
    if _wants_json(options):
        _print_json([r.to_dict() for r in records])
        return EXIT_OK
    zone = resolve_timezone(config.scheduler.timezone)
    _print_table(["RUN", "TASK", "SCHEDULED", "STATE", "TRY", "SECONDS", "ERROR"], [_run_row(r, zone) for r in records])
    return EXIT_OK


def _show(options: argparse.Namespace) -> int:
    config, store = _open(options)
    with _closing(store):
        state = store.task_states().get(options.task_id)
        if state is None:
            raise TaskNotFoundError(options.task_id)
        records = store.history(options.task_id, limit=5)
        active = [r for r in store.active_runs() if r.task_id == options.task_id]
    if _wants_json(options):
        _print_json({**state.to_dict(), "active_runs": [r.to_dict() for r in active],
                     "recent_runs": [r.to_dict() for r in records]})  # fmt: skip
        return EXIT_OK
    zone = resolve_timezone(config.scheduler.timezone)
    completed = state.run_count
    rate = f"{100.0 * state.success_count / completed:.1f}%" if completed else "-"
    average = f"{state.total_duration / completed:.3f}s" if completed else "-"
    print(f"task:        {state.task_id} ({state.name})")
    print(f"schedule:    {state.schedule}")
    print(f"status:      {'paused' if state.paused else 'finished' if state.finished else 'scheduled'}")
    print(f"next run:    {_when(state.next_run_at, zone)}")
    print(f"last run:    {_when(state.last_run_at, zone)} ({state.last_state.value if state.last_state else '-'})")
    print(f"runs:        {completed} ({state.success_count} ok, {state.failure_count} failed, {rate} success), "
          f"{state.retry_count} retried, {state.missed_count} missed, {state.skipped_count} skipped, "
          f"{state.interrupted_count} interrupted")  # fmt: skip
    print(f"avg time:    {average}")
    if state.last_error:
        print(f"last error:  {state.last_error}")
    for record in active:
        print(f"in progress: {record.run_id} {record.state.value} (scheduled {_when(record.scheduled_for, zone)})")
    for record in records:
        error = f": {record.error}" if record.error else ""
        print(f"\n--- run {record.run_id} {record.state.value} attempt {record.attempt}, "
              f"scheduled {_when(record.scheduled_for, zone)}{error}")  # fmt: skip
        if record.output:
            print("\n".join(record.output.rstrip().splitlines()[-20:]))
    return EXIT_OK


def _trigger(options: argparse.Namespace) -> int:
    config, store = _open(options)
    with _closing(store):
        record = store.request_run(options.task_id, datetime.now(UTC), None)
        live = [n for n in store.nodes() if _alive(n, datetime.now(UTC), config.store.lease_seconds)]
    if _wants_json(options):
        _print_json({"run_id": record.run_id, "task_id": record.task_id, "service_alive": bool(live)})
    else:
        print(f"queued run {record.run_id} of {record.task_id}")
    if not live:
        print("task-scheduler: warning: no running service; the run starts when one does", file=sys.stderr)
    return EXIT_OK


def _pause(options: argparse.Namespace) -> int:
    _, store = _open(options)
    paused = options.command == "pause"
    with _closing(store):
        state = store.set_paused(options.task_id, paused)
    if _wants_json(options):
        _print_json(state.to_dict())
    else:
        print(f"{state.task_id} {'paused' if paused else 'resumed'}")
    return EXIT_OK


# -- output helpers ----------------------------------------------------------------------


@contextmanager
def _closing(store: Store) -> Iterator[Store]:
    try:
        yield store
    finally:
        store.close()


def _alive(node: NodeInfo, now: datetime, lease_seconds: float) -> bool:
    """Heartbeats come every lease/3 seconds; a node silent for a whole lease is gone."""
    if (now - node.heartbeat_at).total_seconds() > lease_seconds:
        return False
    return node.host != socket.gethostname() or psutil.pid_exists(node.pid)


def _wants_json(options: argparse.Namespace) -> bool:
    return bool(getattr(options, "json", False))


def _print_json(data: Any) -> None:
    print(json.dumps(data, indent=2, default=str))


def _print_table(headers: list[str], rows: list[list[str]]) -> None:
    if not rows:
        print("(none)")
        return
    widths = [max(len(str(cell)) for cell in column) for column in zip(headers, *rows, strict=True)]
    for row in [headers, *rows]:
        print("  ".join(str(cell).ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())


def _run_row(record: RunRecord, zone: tzinfo) -> list[str]:
    error = (record.error or "").replace("\n", " ")
    return [
        record.run_id[:12],
        record.task_id,
        _when(record.scheduled_for, zone),
        record.state.value,
        str(record.attempt),
        f"{record.duration:.3f}" if record.duration is not None else "-",
        error if len(error) <= 60 else error[:57] + "...",
    ]


def _when(moment: datetime | None, zone: tzinfo) -> str:
    return moment.astimezone(zone).strftime("%Y-%m-%d %H:%M:%S %Z") if moment else "-"


def _duration(seconds: float) -> str:
    minutes, second = divmod(int(seconds), 60)
    hours, minute = divmod(minutes, 60)
    days, hour = divmod(hours, 24)
    return f"{days}d {hour}h {minute}m" if days else f"{hour}h {minute}m {second}s" if hours else f"{minute}m {second}s"


def _version() -> str:
    from task_scheduler import __version__

    return __version__
