"""Cron expressions: the accepted syntax, parsed into value sets, and the wall-time matcher.

This module reads no clock and knows no time zone: `CronSpec.next_match` walks naive
wall time. `task_scheduler.schedules.CronRule` puts it in a zone and applies the DST
rules.

We parse the fields ourselves. croniter 7's ``expand``, which this replaced, returns
``*`` for a single-value range (``9-9``), so ``0 0 * 9-9 *`` fired every day; it also
read ``3/4`` in the day of week as Wednesday only, accepted wrap-around ranges
(``22-2``) with a meaning of its own, and lost the plain Fridays in ``fri,fri#3``.

The syntax is Vixie/Debian cron's, strictly:

- Fields: ``minute hour day month day_of_week``, or six with seconds first; an
  alias (``@yearly``, ``@annually``, ``@monthly``, ``@weekly``, ``@daily``,
  ``@midnight``, ``@hourly``). Any other number of fields is an error.
- Each field is a comma-separated list of items: ``*``, ``n``, ``a-b`` (``a <= b``),
  ``*/s``, ``a-b/s`` and ``a/s`` (which means ``a-max/s``). Steps are whole numbers
  >= 1; a step past the end of the range just gives the first value.
- Names: ``jan``-``dec`` in the month and ``sun``-``sat`` in the day of week, any
  case, three letters, anywhere a number may stand (``mon-fri``, ``jan/3``).
- Day of week runs over 0-7 with both 0 and 7 Sunday, as in Vixie cron: ``*/2`` is
  0,2,4,6, ``3/4`` is Wednesday and Sunday, ``7/5`` Sunday only, ``fri-7`` Friday
  to Sunday.
- Day of month ``L`` is the last day of the month. Day of week ``n#k`` is the k-th
  weekday n of the month (k 1-5) and ``nL`` the last weekday n of the month
  (``5L``, ``friL``); both may be mixed with plain items (``mon,fri#1``).
- A range must go upward: ``22-2`` and ``sat-sun`` (6-0) are errors whose message
  shows how to write them (``22-23,0-2``, ``6-7``). Also rejected, with the field
  named: values out of range, step 0, empty list items, ``?``, ``W``, ``L5``
  (write ``5L``), hashed ``H``.
- Day of month and day of week (Vixie cron): if either field starts with ``*``, a
  day must match both; otherwise a day matching either fires. So ``0 0 15 * 5#3`` is
  the 15th and the third Friday, ``0 0 */2 * mon`` odd days that are Mondays.
"""

from __future__ import annotations

import calendar
from bisect import bisect_left
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from functools import lru_cache

from task_scheduler.errors import ScheduleError

__all__ = ["FIELDS", "CronSpec", "fields_from_keywords", "parse_cron", "split_expression"]

FIELDS = ("second", "minute", "hour", "day", "month", "day_of_week")
_BOUNDS = {"second": (0, 59), "minute": (0, 59), "hour": (0, 23), "day": (1, 31), "month": (1, 12),
           "day_of_week": (0, 7)}  # fmt: skip
_ALLOWED = {
    "second": "0-59",
    "minute": "0-59",
    "hour": "0-23",
    "day": "1-31 or L",
    "month": "1-12 or jan-dec",
    "day_of_week": "0-7 or sun-sat (0 and 7 are Sunday), n#k, nL",
}
_NAMES: dict[str, dict[str, int]] = {
    "month": {name.lower(): number for number, name in enumerate(calendar.month_abbr) if name},
    "day_of_week": {name: number for number, name in enumerate(("sun", "mon", "tue", "wed", "thu", "fri", "sat"))},
}
_ALIASES = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
# A valid rule must match at least once in this many years (Feb 29 on a given
# weekday recurs every 28 years, but 40 across a century that is not a leap year,
# e.g. a Friday Feb 29 in 2092, then 2132); beyond that the expression can never fire.
_SEARCH_YEARS = 41


@dataclass(frozen=True)
class CronSpec:
    """The value sets of one expression, shared by every rule that uses it."""

    seconds: tuple[int, ...]
    minutes: tuple[int, ...]
    hours: tuple[int, ...]
    days: frozenset[int]
    last_day: bool
    months: frozenset[int]
    weekdays: frozenset[int]  # cron numbering: Sunday is 0
    nth_weekdays: frozenset[tuple[int, int]]  # (weekday, k): the k-th such weekday of the month
    last_weekdays: frozenset[int]  # the last such weekday of the month
    day_star: bool
    weekday_star: bool
    # The hour field is exactly ``*``: the DST rules (see schedules) treat such a rule
    # as "every hour that exists", any other hour field as naming specific hours.
    hour_wildcard: bool

    def day_matches(self, day: date) -> bool:
        month_length = calendar.monthrange(day.year, day.month)[1]
        day_hit = day.day in self.days or (self.last_day and day.day == month_length)
        weekday = (day.weekday() + 1) % 7
        weekday_hit = (
            weekday in self.weekdays
            or (weekday, (day.day - 1) // 7 + 1) in self.nth_weekdays
            or (weekday in self.last_weekdays and day.day + 7 > month_length)
        )
        # Vixie cron: if either field starts with '*', both must match; otherwise either.
        if self.day_star or self.weekday_star:
            return day_hit and weekday_hit
        return day_hit or weekday_hit

    def next_match(self, moment: datetime) -> datetime | None:
        """The first naive wall time >= ``moment`` (whole seconds) matching every field."""
        moment = moment.replace(fold=0)
        limit_year = moment.year + _SEARCH_YEARS
        while moment.year <= limit_year:
            if moment.month not in self.months:
                year, month = moment.year, moment.month + 1
                while month not in self.months:
                    month += 1
                    if month > 12:
                        year, month = year + 1, 1
                        if year > limit_year:
                            return None
                if month > 12:
                    year, month = year + 1, min(self.months)
                moment = datetime(year, month, 1)
                continue
            if not self.day_matches(moment.date()):
                moment = datetime(moment.year, moment.month, moment.day) + timedelta(days=1)
                continue
            hour = _next_value(self.hours, moment.hour)
            if hour is None:
                moment = datetime(moment.year, moment.month, moment.day) + timedelta(days=1)
                continue
            if hour != moment.hour:
                moment = moment.replace(hour=hour, minute=0, second=0)
            minute = _next_value(self.minutes, moment.minute)
            if minute is None:
                moment = moment.replace(minute=0, second=0) + timedelta(hours=1)
                continue
            if minute != moment.minute:
                moment = moment.replace(minute=minute, second=0)
            second = _next_value(self.seconds, moment.second)
            if second is None:
                moment = moment.replace(second=0) + timedelta(minutes=1)
                continue
            return moment.replace(second=second)
        return None


def _next_value(values: tuple[int, ...], current: int) -> int | None:
    index = bisect_left(values, current)
    return values[index] if index < len(values) else None


# -- parsing ----------------------------------------------------------------------------


def split_expression(expression: str) -> tuple[str, ...]:
    """The six fields (seconds first) of an expression of 5 or 6 fields, or an alias."""
    if expression.startswith("@"):
        if expression.lower() not in _ALIASES:
            raise ScheduleError(f"unknown cron alias {expression!r} (known: {', '.join(_ALIASES)})")
        expression = _ALIASES[expression.lower()]
    parts = expression.split()
    if len(parts) == 5:
        return ("0", *parts)
    if len(parts) == 6:
        return tuple(parts)
    raise ScheduleError(
        f"cron expression {expression!r} has {len(parts)} fields; expected 5 "
        "(minute hour day month day_of_week) or 6 (second minute hour day month day_of_week)"
    )


def fields_from_keywords(given: dict[str, int | str]) -> tuple[str, ...]:
    """The six fields for keyword arguments (``hour=2, minute=30``): fields less
    significant than the least significant one given default to their minimum, the
    rest to ``*``."""
    significance = ["month", "day", "hour", "minute", "second"]  # day_of_week ranks as day
    least = max(significance.index("day" if name == "day_of_week" else name) for name in given)
    fields = []
    for name in FIELDS:
        if name in given:
            text = str(given[name]).strip()
            if not text or len(text.split()) != 1:
                raise ScheduleError(f"cron field '{name}' has invalid value {text!r}: expected one field, no spaces")
            fields.append(text)
        elif name in ("second", "minute", "hour") and significance.index(name) > least:
            fields.append("0")
        else:
            fields.append("*")
    return tuple(fields)


@lru_cache(maxsize=4096)
def parse_cron(fields: tuple[str, ...], expression: str) -> CronSpec:
    """The value sets of six fields (seconds first); errors name the field and value."""
    parsed = {name: _Field(name, text, expression) for name, text in zip(FIELDS, fields, strict=True)}
    _, _, hour, day, month, day_of_week = fields
    spec = CronSpec(
        seconds=tuple(sorted(parsed["second"].values)),
        minutes=tuple(sorted(parsed["minute"].values)),
        hours=tuple(sorted(parsed["hour"].values)),
        days=frozenset(parsed["day"].values),
        last_day=parsed["day"].last_day,
        months=frozenset(parsed["month"].values),
        weekdays=frozenset(value % 7 for value in parsed["day_of_week"].values),
        nth_weekdays=frozenset(parsed["day_of_week"].nth_weekdays),
        last_weekdays=frozenset(parsed["day_of_week"].last_weekdays),
        day_star=day.startswith("*"),
        weekday_star=day_of_week.startswith("*"),
        hour_wildcard=hour == "*",
    )
    if spec.next_match(datetime(2000, 1, 1)) is None:
        raise ScheduleError(f"cron expression {expression!r} never fires (day {day!r} never occurs in month {month!r})")
    return spec


class _Field:
    """One field's text read into sets of integers, or a ScheduleError naming it."""

    def __init__(self, name: str, text: str, expression: str) -> None:
        self.name, self.text, self.expression = name, text, expression
        self.values: set[int] = set()
        self.last_day = False
        self.nth_weekdays: set[tuple[int, int]] = set()
        self.last_weekdays: set[int] = set()
        for item in text.split(","):
            self._read_item(item)

    def _read_item(self, item: str) -> None:
        if not item:
            raise self._invalid(self.text, "a list item is empty")
        upper = item.upper()
        if self.name == "day" and upper == "L":
            self.last_day = True
        elif self.name == "day_of_week" and "#" in item:
            weekday, _, nth = item.partition("#")
            if not (nth.isascii() and nth.isdigit() and 1 <= int(nth) <= 5):
                raise self._invalid(item, f"'#{nth}' must be #1 to #5 (the k-th such weekday of the month)")
            self.nth_weekdays.add((self._number(weekday, item) % 7, int(nth)))
        elif self.name == "day_of_week" and upper.startswith("L"):
            raise self._invalid(item, "write 'nL' for the last weekday n of the month, e.g. '5L' for the last Friday")
        elif self.name == "day_of_week" and upper.endswith("L"):
            self.last_weekdays.add(self._number(item[:-1], item) % 7)
        else:
            self.values.update(self._range(item))

    def _range(self, item: str) -> range:
        low, high = _BOUNDS[self.name]
        body, slash, step_text = item.partition("/")
        step = 1
        if slash:
            if not (step_text.isascii() and step_text.isdigit() and int(step_text) >= 1):
                raise self._invalid(item, f"the step {step_text!r} must be a whole number >= 1")
            step = int(step_text)
        if body == "*":
            return range(low, high + 1, step)
        if "-" in body:
            first_text, _, last_text = body.partition("-")
            first, last = self._number(first_text, item), self._number(last_text, item)
            if first > last:
                raise self._descending(item, first, last, bool(slash))
            return range(first, last + 1, step)
        first = self._number(body, item)
        return range(first, (high if slash else first) + 1, step)

    def _number(self, text: str, item: str) -> int:
        names = _NAMES.get(self.name, {})
        if text.lower() in names:
            return names[text.lower()]
        if not (text.isascii() and text.isdigit()):
            if text == "?":
                reason = "'?' is not cron syntax; write '*'"
            elif text.upper().endswith("W"):
                reason = "'W' (nearest weekday) is not supported"
            elif text.upper() == "L":
                reason = "'L' (the last day of the month) may only stand alone in the day field"
            elif not text:
                reason = "a number is missing"
            else:
                reason = f"{text!r} is not a number" + (" or a name" if names else "")
            raise self._invalid(item, reason)
        value = int(text)
        low, high = _BOUNDS[self.name]
        if not low <= value <= high:
            raise self._invalid(item, f"{value} is out of range")
        return value

    def _invalid(self, item: str, reason: str) -> ScheduleError:
        return ScheduleError(
            f"cron field '{self.name}' has invalid value '{item}' in '{self.expression}': {reason}"
            f" (allowed: {_ALLOWED[self.name]})"
        )

    def _descending(self, item: str, first: int, last: int, stepped: bool) -> ScheduleError:
        low, high = _BOUNDS[self.name]
        if self.name == "day_of_week":
            low = 1  # 7 already stands for Sunday in the first part
        parts = [f"{first}-{high}" if first < high else f"{first}"]
        if last >= low:
            parts.append(f"{low}-{last}" if low < last else f"{low}")
        advice = f"write '{','.join(parts)}'" + (" with a step on each part" if stepped else "")
        return ScheduleError(
            f"cron field '{self.name}' has a descending range '{item}' in '{self.expression}': "
            f"ranges must go upward ({advice}; allowed: {_ALLOWED[self.name]})"
        )
