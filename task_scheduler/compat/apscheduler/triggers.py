"""APScheduler's triggers (``CronTrigger``, ``IntervalTrigger``, ``DateTrigger``) as
factories of our `ScheduleRule`: a trigger waits for the time its job is added
(``DateTrigger()`` means "now"), then gives the rule. ``CronTrigger`` translates
APScheduler's day_of_week numbering (0 = Monday); ``from_crontab`` keeps crontab's
(0 and 7 = Sunday). See `task_scheduler.compat.apscheduler` for the differences.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import datetime, timedelta, tzinfo
from typing import Any

from task_scheduler.errors import ScheduleError, TaskError
from task_scheduler.schedules import CronRule, IntervalRule, OnceRule, ScheduleRule

__all__ = ["BaseTrigger", "CronTrigger", "DateTrigger", "IntervalTrigger", "RuleTrigger", "trigger_from"]


class BaseTrigger:
    """A trigger is a rule waiting for the time it is added (``DateTrigger()`` means now)."""

    timezone: str | tzinfo | None = None

    def rule(self, now: datetime, zone: str | tzinfo | None = None) -> ScheduleRule:
        """The `ScheduleRule`; ``zone`` applies when the trigger names none."""
        raise NotImplementedError

    def get_next_fire_time(self, previous_fire_time: datetime | None, now: datetime) -> datetime | None:
        """APScheduler's pure next-fire call (for checking a migrated trigger)."""
        rule = self.rule(now)
        return rule.next_fire_time(previous_fire_time) if previous_fire_time else rule.first_fire_time(now)


_DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")  # APScheduler's order: 0 is Monday
_NTH = {"1st": 1, "2nd": 2, "3rd": 3, "4th": 4, "5th": 5}


class CronTrigger(BaseTrigger):
    """APScheduler's cron trigger: fields as keywords, APScheduler's day_of_week
    numbering (0 = Monday), translated to a `CronRule` (see the module doc)."""

    def __init__(
        self,
        year: int | str | None = None,
        month: int | str | None = None,
        day: int | str | None = None,
        week: int | str | None = None,
        day_of_week: int | str | None = None,
        hour: int | str | None = None,
        minute: int | str | None = None,
        second: int | str | None = None,
        start_date: datetime | str | None = None,
        end_date: datetime | str | None = None,
        timezone: str | tzinfo | None = None,
        jitter: float | None = None,
    ) -> None:
        for name, value in (("year", year), ("week", week)):
            if value is not None and str(value).strip() != "*":
                raise ScheduleError(f"CronTrigger: the {name!r} field is not supported; use start_date/end_date")
        fields: dict[str, int | str] = {}
        for name, value in (("month", month), ("hour", hour), ("minute", minute), ("second", second)):
            if value is not None:
                fields[name] = value
        nth = _day_expression(day) if day is not None else None
        if nth is not None:
            if day_of_week is not None and str(day_of_week).strip() != "*":
                raise ScheduleError(f"CronTrigger: day={day!r} names a weekday already; drop day_of_week")
            fields["day_of_week"] = nth
        else:
            if day is not None:
                fields["day"] = "L" if str(day).strip().lower() == "last" else day
            if day_of_week is not None:
                fields["day_of_week"] = _crontab_days(day_of_week)
        restricted = [name for name in ("day", "day_of_week") if str(fields.get(name, "*")).strip() != "*"]
        if len(restricted) == 2:
            raise ScheduleError(
                f"CronTrigger(day={day!r}, day_of_week={day_of_week!r}): APScheduler fires on days matching both, "
                "cron on days matching either; say it with one field (e.g. day='1st mon' or day_of_week='mon#1' "
                "for the first Monday)"
            )
        self.fields = fields
        self.start_date, self.end_date, self.timezone, self.jitter = start_date, end_date, timezone, jitter
        self._rule = self._build(timezone)  # errors show now, at construction

    def _build(self, zone: str | tzinfo | None) -> CronRule:
        keywords: dict[str, Any] = dict(self.fields) or {"second": 0}  # no field: every minute, at second 0
        return CronRule(**keywords, start=self.start_date, end=self.end_date, timezone=zone, jitter=self.jitter or 0)

    @classmethod
    def from_crontab(cls, expr: str, timezone: str | tzinfo | None = None) -> CronTrigger:
        """A standard five-field crontab line, in crontab's numbering (0 and 7 = Sunday)."""
        values = expr.split()
        if len(values) != 5:
            raise ScheduleError(f"Wrong number of fields; got {len(values)}, expected 5")
        trigger = cls.__new__(cls)
        trigger.fields = {"cron": expr}
        trigger.start_date = trigger.end_date = trigger.jitter = None
        trigger.timezone = timezone
        trigger._rule = CronRule(cron=expr, timezone=timezone)
        return trigger

    def rule(self, now: datetime, zone: str | tzinfo | None = None) -> ScheduleRule:
        if self.timezone is not None or zone is None:
            return self._rule
        if "cron" in self.fields:
            return CronRule(cron=str(self.fields["cron"]), timezone=zone)
        return self._build(zone)

    def __repr__(self) -> str:
        return f"<CronTrigger ({self._rule.expression})>"


def _crontab_days(value: int | str) -> str:
    """APScheduler day_of_week (0 = mon ... 6 = sun) as crontab fields (1 = mon ... 7 = sun)."""
    items = []
    for raw in str(value).lower().split(","):
        item, slash, step = raw.strip().partition("/")
        step = slash + step
        if item == "*":
            items.append(("1-7" if step else "*") + step)
        elif "-" in item:
            first, _, last = item.partition("-")
            items.append(f"{_day_number(first, value)}-{_day_number(last, value)}{step}")
        else:
            items.append(f"{_day_number(item, value)}{'-7' if step else ''}{step}")
    return ",".join(items)


def _day_number(token: str, whole: object) -> int:
    token = token.strip()
    if token.isdigit() and 0 <= int(token) <= 6:
        return int(token) + 1
    if token in _DAYS:
        return _DAYS.index(token) + 1
    raise ScheduleError(f"day_of_week {whole!r}: {token!r} is not 0-6 (0 = Monday, as in APScheduler) or mon-sun")


def _day_expression(day: int | str) -> str | None:
    """``"1st mon"`` / ``"last fri"`` as a crontab day_of_week item, else None."""
    match = re.fullmatch(r"(1st|2nd|3rd|4th|5th|last)\s+(mon|tue|wed|thu|fri|sat|sun)", str(day).strip().lower())
    if match is None:
        return None
    weekday = (_DAYS.index(match.group(2)) + 1) % 7  # crontab: Sunday is 0
    return f"{weekday}L" if match.group(1) == "last" else f"{weekday}#{_NTH[match.group(1)]}"


class IntervalTrigger(BaseTrigger):
    """Every weeks/days/hours/minutes/seconds; the first fire one interval after the
    job is added, or on the grid of ``start_date``."""

    def __init__(
        self,
        weeks: float = 0,
        days: float = 0,
        hours: float = 0,
        minutes: float = 0,
        seconds: float = 0,
        start_date: datetime | str | None = None,
        end_date: datetime | str | None = None,
        timezone: str | tzinfo | None = None,
        jitter: float | None = None,
    ) -> None:
        self.interval = timedelta(weeks=weeks, days=days, hours=hours, minutes=minutes, seconds=seconds)
        self.start_date, self.end_date, self.timezone, self.jitter = start_date, end_date, timezone, jitter
        self._rule = self._build(timezone, start_date)

    def _build(self, zone: str | tzinfo | None, start: datetime | str | None) -> IntervalRule:
        return IntervalRule(seconds=self.interval.total_seconds(), start=start, end=self.end_date, timezone=zone,
                            jitter=self.jitter or 0)  # fmt: skip

    def rule(self, now: datetime, zone: str | tzinfo | None = None) -> ScheduleRule:
        if self.timezone is not None or zone is None:
            return self._rule
        return self._build(zone, self.start_date)

    def __repr__(self) -> str:
        return f"<IntervalTrigger (interval={self.interval!r})>"


class DateTrigger(BaseTrigger):
    """Once at ``run_date`` (None: when the job is added)."""

    def __init__(self, run_date: datetime | str | None = None, timezone: str | tzinfo | None = None) -> None:
        self.run_date, self.timezone = run_date, timezone
        if run_date is not None:
            OnceRule(run_at=run_date, timezone=timezone)  # errors show now

    def rule(self, now: datetime, zone: str | tzinfo | None = None) -> ScheduleRule:
        return OnceRule(run_at=self.run_date if self.run_date is not None else now, timezone=self.timezone or zone)

    def __repr__(self) -> str:
        return f"<DateTrigger (run_date={self.run_date!r})>"


TRIGGERS: dict[str, type[BaseTrigger]] = {"cron": CronTrigger, "interval": IntervalTrigger, "date": DateTrigger}


def trigger_from(
    trigger: str | BaseTrigger | None, trigger_args: Mapping[str, Any], timezone: str | tzinfo | None = None
) -> BaseTrigger:
    """A trigger object from ``add_job``'s arguments; a trigger named by a string gets
    the scheduler's ``timezone`` unless its arguments give one (as in APScheduler)."""
    if isinstance(trigger, BaseTrigger):
        if trigger_args:
            raise TaskError(f"unexpected arguments for a trigger object: {', '.join(sorted(trigger_args))}")
        return trigger
    kind = trigger or "date"
    if kind not in TRIGGERS:
        raise TaskError(f"unknown trigger {kind!r} (use 'cron', 'interval', 'date' or a trigger object)")
    if timezone is not None and "timezone" not in trigger_args:
        trigger_args = {**trigger_args, "timezone": timezone}
    try:
        return TRIGGERS[kind](**trigger_args)
    except TypeError as exc:
        raise TaskError(f"bad arguments for the {kind!r} trigger: {exc}") from exc


class RuleTrigger(BaseTrigger):
    """The trigger of a job restored from the store or added another way: its rule."""

    def __init__(self, rule: ScheduleRule) -> None:
        self._rule = rule

    def rule(self, now: datetime, zone: str | tzinfo | None = None) -> ScheduleRule:
        return self._rule

    def __repr__(self) -> str:
        return f"<Trigger ({self._rule.describe()})>"
