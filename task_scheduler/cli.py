"""The ``task-scheduler`` command (also ``python -m task_scheduler``).

Exit codes: 0 ok; 1 not found or failed; 2 usage or configuration error.
``--config`` is accepted before or after the subcommand; without it the config is
found as `find_config` says. With no subcommand, ``run`` is assumed.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import threading
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from task_scheduler.config import CONFIG_SEARCH_PATH, SchedulerConfig, find_config, load_config
from task_scheduler.errors import ConfigError, TaskSchedulerError
from task_scheduler.schedules import CronRule, resolve_timezone

__all__ = ["main"]

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
_COMMANDS = ("run", "validate", "next")


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", "-c", default=argparse.SUPPRESS, help="config file (JSON or TOML)")
    common.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="machine-readable output")
    parser = argparse.ArgumentParser(
        prog="task-scheduler",
        description="Run and inspect the task_scheduler service.",
        parents=[common],
        epilog="Exit codes: 0 ok, 1 not found or failed, 2 usage or configuration error.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.add_parser("run", parents=[common], help="run the service in the foreground (default)")
    commands.add_parser("validate", parents=[common], help="check a config file and its jobs")
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
    handler = {"run": _run, "validate": _validate, "next": _next}[options.command]
    try:
        return handler(options)
    except ConfigError as exc:
        print(f"task-scheduler: config error: {exc}", file=sys.stderr)
        return EXIT_USAGE
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
        print(json.dumps({"valid": True, "config": config.source, "jobs": [task.task_id for task, _ in jobs]}))
    else:
        print(f"{config.source}: OK, {len(jobs)} enabled job(s)")
        for task, rule in jobs:
            print(f"  {task.task_id}: {rule.describe()}")
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


def _version() -> str:
    from task_scheduler import __version__

    return __version__
