"""Cron syntax: every expression from issue 9, pinned through the three ways a user
writes one (``ScheduleRule``, a config file, ``task-scheduler next``), and the
rejected forms with messages that name the field."""

from __future__ import annotations

import json
import random
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cronsim import CronSim, CronSimError

from task_scheduler import ConfigError, CronRule, ScheduleError, ScheduleRule, ScheduleType, load_config
from task_scheduler.cli import main
from tests.test_cron_reference import BOUNDS, MONTH_NAMES, WEEKDAY_NAMES, WEEKDAYS, parse_field

START = datetime(2024, 1, 1, tzinfo=UTC)  # a Monday

# expression -> its first fires after START (UTC), as "YYYY-MM-DD HH:MM:SS Day"
ACCEPTED = {
    # a single-value range is that one value, in every field
    "0 0 * 9-9 *": ["2024-09-01 00:00:00 Sun", "2024-09-02 00:00:00 Mon", "2024-09-03 00:00:00 Tue"],
    "23,55 22-22 * * *": ["2024-01-01 22:23:00 Mon", "2024-01-01 22:55:00 Mon", "2024-01-02 22:23:00 Tue"],
    "0 0 * * 0-0": ["2024-01-07 00:00:00 Sun", "2024-01-14 00:00:00 Sun", "2024-01-21 00:00:00 Sun"],
    "* * 20-20 5 *": ["2024-05-20 00:00:00 Mon", "2024-05-20 00:01:00 Mon", "2024-05-20 00:02:00 Mon"],
    "0 9-9 * * mon-fri": ["2024-01-01 09:00:00 Mon", "2024-01-02 09:00:00 Tue", "2024-01-03 09:00:00 Wed"],
    "5-5 10-10 3-3 * * *": ["2024-01-01 03:10:05 Mon", "2024-01-02 03:10:05 Tue", "2024-01-03 03:10:05 Wed"],
    "0 0 1 jun-jun *": ["2024-06-01 00:00:00 Sat", "2025-06-01 00:00:00 Sun", "2026-06-01 00:00:00 Mon"],
    # a step from the maximum stays at the maximum
    "59/15 * * * *": ["2024-01-01 00:59:00 Mon", "2024-01-01 01:59:00 Mon", "2024-01-01 02:59:00 Mon"],
    # the day of week runs over 0-7: 3/4 is 3 and 7 (Wednesday, Sunday), 7/5 is 7 (Sunday)
    "0 0 * * 3/4": ["2024-01-03 00:00:00 Wed", "2024-01-07 00:00:00 Sun", "2024-01-10 00:00:00 Wed"],
    "0 0 * * 7/5": ["2024-01-07 00:00:00 Sun", "2024-01-14 00:00:00 Sun", "2024-01-21 00:00:00 Sun"],
    "0 0 * * */3": ["2024-01-03 00:00:00 Wed", "2024-01-06 00:00:00 Sat", "2024-01-07 00:00:00 Sun"],
    "0 0 * * sat-7": ["2024-01-06 00:00:00 Sat", "2024-01-07 00:00:00 Sun", "2024-01-13 00:00:00 Sat"],
    # a wrap-around written the accepted way
    "0 22-23,0-2 * * *": ["2024-01-01 01:00:00 Mon", "2024-01-01 02:00:00 Mon", "2024-01-01 22:00:00 Mon"],
    "0 0 1 11-12/3,1-2/3 *": ["2024-11-01 00:00:00 Fri", "2025-01-01 00:00:00 Wed", "2025-11-01 00:00:00 Sat"],
    # n#k and nL next to a restricted day of month: either matches (Vixie)
    "0 0 15 * 5#3": ["2024-01-15 00:00:00 Mon", "2024-01-19 00:00:00 Fri", "2024-02-15 00:00:00 Thu"],
    "0 0 1 * 5L": ["2024-01-26 00:00:00 Fri", "2024-02-01 00:00:00 Thu", "2024-02-23 00:00:00 Fri"],
    "0 0 * * friL": ["2024-01-26 00:00:00 Fri", "2024-02-23 00:00:00 Fri", "2024-03-29 00:00:00 Fri"],
    "0 0 * * fri,fri#3": ["2024-01-05 00:00:00 Fri", "2024-01-12 00:00:00 Fri", "2024-01-19 00:00:00 Fri"],
    "0 0 L 2 *": ["2024-02-29 00:00:00 Thu", "2025-02-28 00:00:00 Fri", "2026-02-28 00:00:00 Sat"],
    # 6 fields: seconds first
    "30 0 0 * * *": ["2024-01-01 00:00:30 Mon", "2024-01-02 00:00:30 Tue", "2024-01-03 00:00:30 Wed"],
}

# expression -> fragments of the error
REJECTED = {
    "5-1 * * * *": ["cron field 'minute' has a descending range '5-1'", "write '5-59,0-1'"],
    "0 22-2 * * *": ["cron field 'hour' has a descending range '22-2' in '0 22-2 * * *'", "write '22-23,0-2'"],
    "0 0 * * sat-sun": ["cron field 'day_of_week' has a descending range 'sat-sun'", "write '6-7'"],
    "0 0 * * fri-mon": ["cron field 'day_of_week' has a descending range 'fri-mon'", "write '5-7,1'"],
    "0 0 1 11-2/3 *": ["cron field 'month' has a descending range '11-2/3'", "write '11-12,1-2' with a step"],
    "0 0 1 * L5": ["cron field 'day_of_week' has invalid value 'L5'", "'5L' for the last Friday"],
    "0 0 0 1 1 * 2025": ["has 7 fields", "expected 5"],
    "0 0 ? * 1": ["cron field 'day' has invalid value '?'", "write '*'"],
    "*/0 * * * *": ["cron field 'minute' has invalid value '*/0'", "must be a whole number >= 1"],
    "0 0 31 4 *": ["never fires"],
}


def fires(rule: ScheduleRule, after: datetime, count: int) -> list[str]:
    result = []
    for _ in range(count):
        fire = rule.next_fire_time(after)
        assert fire is not None
        result.append(fire.strftime("%Y-%m-%d %H:%M:%S %a"))
        after = fire
    return result


@pytest.mark.parametrize("expression", list(ACCEPTED))
def test_accepted_expression_through_schedule_rule(expression: str) -> None:
    rule = ScheduleRule(ScheduleType.CRON, cron=expression, timezone="UTC")
    assert fires(rule, START, 3) == ACCEPTED[expression]


@pytest.mark.parametrize("expression", list(REJECTED))
def test_rejected_expression_through_schedule_rule(expression: str) -> None:
    with pytest.raises(ScheduleError) as caught:
        ScheduleRule(ScheduleType.CRON, cron=expression)
    for fragment in REJECTED[expression]:
        assert fragment in str(caught.value)


def test_every_expression_through_a_config_file(tmp_path: Path) -> None:
    jobs = [
        {"id": f"job{i}", "type": "function", "function": "builtins:print", "schedule": {"cron": e, "timezone": "UTC"}}
        for i, e in enumerate(ACCEPTED)
    ]
    jobs.append({"id": "keywords", "type": "function", "function": "builtins:print",
                 "schedule": {"cron": {"hour": "9-9", "day_of_week": "mon-fri"}, "timezone": "UTC"}})  # fmt: skip
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"jobs": jobs}))
    rules = {task.task_id: rule for task, rule, _ in load_config(path, environ={}).build_tasks()}
    for i, expression in enumerate(ACCEPTED):
        assert fires(rules[f"job{i}"], START, 3) == ACCEPTED[expression], expression
    assert fires(rules["keywords"], START, 3) == ACCEPTED["0 9-9 * * mon-fri"]


@pytest.mark.parametrize("expression", list(REJECTED))
def test_rejected_expression_in_a_config_file_names_job_and_field(tmp_path: Path, expression: str) -> None:
    path = tmp_path / "config.json"
    job = {"id": "nightly", "type": "function", "function": "builtins:print", "schedule": {"cron": expression}}
    path.write_text(json.dumps({"jobs": [job]}))
    with pytest.raises(ConfigError) as caught:
        load_config(path, environ={})
    assert f"{path}: jobs[0] (id 'nightly').schedule: " in str(caught.value)
    assert REJECTED[expression][0] in str(caught.value)


@pytest.mark.parametrize("expression", list(ACCEPTED))
def test_cli_next_agrees_with_the_rule(expression: str, capsys: pytest.CaptureFixture[str]) -> None:
    rule = CronRule(cron=expression, timezone="UTC")
    before = datetime.now(UTC)
    assert main(["next", expression, "-n", "4", "--tz", "UTC", "--json"]) == 0
    after = datetime.now(UTC)
    shown = [datetime.fromisoformat(t) for t in json.loads(capsys.readouterr().out)]
    # the preview starts at its own "now", somewhere between before and after
    assert shown in (chain(rule, before, 4), chain(rule, after, 4))
    assert chain(rule, START, 3) == [datetime.strptime(t, "%Y-%m-%d %H:%M:%S %a").replace(tzinfo=UTC)
                                     for t in ACCEPTED[expression]]  # fmt: skip


def chain(rule: CronRule, after: datetime, count: int) -> list[datetime]:
    result = []
    for _ in range(count):
        fire = rule.next_fire_time(after)
        assert fire is not None
        result.append(fire)
        after = fire
    return result


@pytest.mark.parametrize("expression", list(REJECTED))
def test_cli_next_rejects_with_the_same_message(expression: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["next", expression, "--tz", "UTC"]) == 2
    assert REJECTED[expression][0] in capsys.readouterr().err


def test_keyword_fields_go_through_the_same_parser() -> None:
    rule = CronRule(hour="9-9", day_of_week="mon-fri", timezone="UTC")
    assert fires(rule, START, 3) == ACCEPTED["0 9-9 * * mon-fri"]
    with pytest.raises(ScheduleError, match="cron field 'hour' has a descending range '22-2'"):
        CronRule(hour="22-2")
    with pytest.raises(ScheduleError, match="cron field 'day_of_week' has invalid value 'mon, fri'"):
        CronRule(day_of_week="mon, fri")


@pytest.mark.parametrize(
    ("expression", "fragment", "cronsim_rejects"),
    [
        ("60 * * * *", "cron field 'minute' has invalid value '60' in '60 * * * *': 60 is out of range", True),
        ("0 24 * * *", "cron field 'hour' has invalid value '24'", True),
        ("0 0 0 * *", "cron field 'day' has invalid value '0'", True),
        ("0 0 1 13 *", "cron field 'month' has invalid value '13'", True),
        ("0 0 * * 8", "cron field 'day_of_week' has invalid value '8'", True),
        ("60 0 0 * * *", "cron field 'second' has invalid value '60'", True),
        ("1,,2 * * * *", "cron field 'minute' has invalid value '1,,2'", True),
        ("0 0 * * 1#6", "cron field 'day_of_week' has invalid value '1#6'", True),
        ("0 0 * * 1#0", "cron field 'day_of_week' has invalid value '1#0'", True),
        ("0 0 * * mon-fri#2", "cron field 'day_of_week' has invalid value 'mon-fri#2'", True),
        ("0 0 * * L", "cron field 'day_of_week' has invalid value 'L'", True),
        ("0 0 L/2 * *", "cron field 'day' has invalid value 'L/2'", False),
        ("0 0 15W * *", "'W' (nearest weekday) is not supported", True),
        ("0 0 LW * *", "'W' (nearest weekday) is not supported", False),
        ("H * * * *", "cron field 'minute' has invalid value 'H'", True),
        ("0 L * * *", "cron field 'hour' has invalid value 'L'", True),
        ("0 0 * jan-feb mon-jan", "cron field 'day_of_week' has invalid value 'mon-jan'", True),
        ("0 0 * * monday", "cron field 'day_of_week' has invalid value 'monday'", True),
        ("0 0 * 1-2-3 *", "cron field 'month' has invalid value '1-2-3'", True),
        ("0 0 * * -1", "cron field 'day_of_week' has invalid value '-1'", True),
        ("*-5 * * * *", "cron field 'minute' has invalid value '*-5'", True),
        ("0 0 * * 1/x", "cron field 'day_of_week' has invalid value '1/x'", True),
        ("@reboot", "unknown cron alias '@reboot'", True),
        ("* * * *", "has 4 fields", True),
    ],
)
def test_invalid_forms_name_the_field(expression: str, fragment: str, cronsim_rejects: bool) -> None:
    with pytest.raises(ScheduleError) as caught:
        CronRule(cron=expression)
    assert fragment in str(caught.value)
    if cronsim_rejects:  # where cronsim accepts (L/2, LW) we are stricter on purpose
        with pytest.raises(CronSimError):
            CronSim(expression, START)


def test_every_wrap_around_range_is_rejected_with_a_rewrite_that_means_it() -> None:
    """For each field and random a > b: rejected (by cronsim too), and the suggested
    rewrite parses and means a..max plus min..b."""
    rng = random.Random(9)
    names = {"month": dict(zip(MONTH_NAMES, range(1, 13), strict=True)), "day_of_week": WEEKDAYS}
    positions = {"second": 0, "minute": 1, "hour": 2, "day": 3, "month": 4, "day_of_week": 5}
    for name, (low, high) in BOUNDS.items():
        for _ in range(25):
            b, a = sorted(rng.sample(range(low, high + 1), 2))
            if name == "day_of_week" and (a, b) == (7, 0):
                continue  # 7-0 is Sunday to Sunday
            first, last = str(a), str(b)
            if name in names and rng.random() < 0.5:
                spell = MONTH_NAMES[a - 1] if name == "month" else WEEKDAY_NAMES[a % 7]
                first = spell if name == "month" or a < 7 else first
                last = MONTH_NAMES[b - 1] if name == "month" else WEEKDAY_NAMES[b]
            fields = ["0", "0", "0", "*", "*", "*"]
            fields[positions[name]] = f"{first}-{last}"
            expression = " ".join(fields)
            with pytest.raises(ScheduleError) as caught:
                CronRule(cron=expression)
            message = str(caught.value)
            assert f"cron field '{name}' has a descending range '{first}-{last}'" in message
            with pytest.raises(CronSimError):
                CronSim(expression, START)
            rewrite = message.split("(write '")[1].split("'")[0]
            fields[positions[name]] = rewrite
            CronRule(cron=" ".join(fields))  # parses
            wrapped = set(range(a, high + 1)) | set(range(low, b + 1))
            meaning = parse_field(rewrite, low, high, names.get(name, {}))
            if name == "day_of_week":
                wrapped, meaning = {v % 7 for v in wrapped}, {v % 7 for v in meaning}
            assert meaning == wrapped, (expression, rewrite)
