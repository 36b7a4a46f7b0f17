"""Schedule rules: pure next-fire math for interval, cron and one-time schedules.

Nothing here reads a clock. ``rule.next_fire_time(after)`` returns the first fire
time strictly after ``after``; ``rule.first_fire_time(now)`` is the first one a newly
added task gets. All returned datetimes are time-zone aware.

Time zones and DST (the semantics users trip on):

- An **interval** is real elapsed time, computed in UTC: ``every 1 hour`` fires 24
  times on a 23-hour DST day and 25 times on a 25-hour one.
- A **cron** rule matches local wall-clock time in its zone. A wall time that does
  not exist (spring forward, e.g. 02:30 in Europe/Berlin on the last Sunday of
  March) fires once at the first instant after the gap (03:00) when the rule names
  specific hours, and is skipped when the hour field is a wildcard (``*/15 * * * *``
  simply runs at the times that exist). A wall time that occurs twice (fall back)
  fires once, at its first occurrence, when the rule names specific hours; a
  wildcard-hour rule fires in both passes because both are real time. This is ISC
  cron's rule for fixed-time jobs, and it makes a fixed-time daily job run exactly
  once per local day. "Wildcard hour" means the hour field is exactly ``*``: ``*/2``
  or ``0-23`` name hours (ISC cron and cronsim instead treat a rule whose minute or
  hour field starts with ``*`` as wildcard, and skip or repeat its times).
- Naive datetimes given to a rule (``run_at``, ``start``, ``end``) are read in the
  rule's zone.

Cron expressions are parsed by our own strict parser in `task_scheduler.cron` (syntax
there), not by croniter: croniter 7's ``expand`` reads a single-value range such as
``9-9`` as ``*`` and gets steps in the day of week and wrap-around ranges wrong, and
every rule inherited that.
"""

from __future__ import annotations

import copy
import os
import sys
import zlib
from datetime import UTC, datetime, timedelta, tzinfo
from enum import Enum
from functools import lru_cache
from typing import Any, ClassVar
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from task_scheduler.cron import fields_from_keywords, parse_cron, split_expression
from task_scheduler.errors import ScheduleError

__all__ = [
    "CronRule",
    "IntervalRule",
    "OnceRule",
    "ScheduleRule",
    "ScheduleType",
    "resolve_timezone",
]

_ONE_SECOND = timedelta(seconds=1)
_COMMON_KEYWORDS = ("timezone", "start", "end", "jitter")
_FINGERPRINTS: dict[tuple[Any, ...], str] = {}  # rule identity -> fingerprint or template (bounded)
_START = "\x00start\x00"  # where a template takes the rule's start
_START_TEXT = repr(_START)


def _fingerprint_text(data: dict[str, Any]) -> str:
    """The fingerprint of a rule's `to_dict` (a stored format: never change it)."""
    if isinstance(data.get("timezone"), tzinfo):
        data["timezone"] = str(data["timezone"])
    return repr(sorted(data.items()))


# The keywords each rule type takes in its object form (config, JobSpec, API).
_KEYWORDS = {
    "interval": ("weeks", "days", "hours", "minutes", "seconds", *_COMMON_KEYWORDS),
    "cron": ("cron", "second", "minute", "hour", "day", "month", "day_of_week", *_COMMON_KEYWORDS),
    "once": ("run_at", "timezone", "jitter"),
}
_ONE_MICROSECOND = timedelta(microseconds=1)


class ScheduleType(Enum):
    """The kinds of schedule a task can have."""

    INTERVAL = "interval"
    CRON = "cron"
    ONCE = "once"


def _check_keys(what: str, data: dict[str, Any], valid: tuple[str, ...]) -> None:
    unknown = sorted(set(data) - set(valid))
    if unknown:
        raise ScheduleError(f"{what}: unknown key {unknown[0]!r} (valid: {', '.join(valid)})")


def resolve_timezone(name: str | tzinfo | None) -> tzinfo:
    """Return a tzinfo for an IANA name, ``"local"`` (the system zone) or ``"UTC"``.

    ``"local"`` reads ``$TZ`` then ``/etc/localtime``; if neither names an IANA zone
    it falls back to UTC rather than a fixed offset that would be wrong across DST.
    """
    if isinstance(name, tzinfo):
        return name
    if name is None or name.upper() == "UTC":
        return UTC
    if name == "local":
        return _local_zone()
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ScheduleError(f"unknown time zone {name!r}") from exc


@lru_cache(maxsize=1)
def _local_zone() -> tzinfo:
    candidates = [os.environ.get("TZ", "").lstrip(":")]
    try:
        link = os.path.realpath("/etc/localtime")
        if "zoneinfo/" in link:
            candidates.append(link.split("zoneinfo/", 1)[1])
    except OSError:
        pass
    for key in candidates:
        if key:
            try:
                return ZoneInfo(key)
            except (ZoneInfoNotFoundError, ValueError):
                continue
    return UTC


def _as_aware(value: datetime | str, zone: tzinfo, field: str) -> datetime:
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value)
        except ValueError as exc:
            raise ScheduleError(f"{field}: not an ISO 8601 datetime: {value!r}") from exc
    if not isinstance(value, datetime):
        raise ScheduleError(f"{field}: expected a datetime, got {value!r}")
    return value.replace(tzinfo=zone) if value.tzinfo is None else value


class ScheduleRule:
    """When a task fires. ``ScheduleRule(ScheduleType.CRON, cron="0 2 * * *")`` builds the
    matching subclass (`IntervalRule`, `CronRule`, `OnceRule`), which can also be used
    directly.

    Common options: ``timezone`` (IANA name or tzinfo; None means the scheduler's zone),
    ``start`` and ``end`` (no fire before/after), ``jitter`` (seconds; each occurrence
    is shifted by a deterministic pseudo-random amount in ``[0, jitter)`` derived from
    the task id and the occurrence, so restarts and nodes agree on it).
    """

    __slots__ = ("_arguments", "_fingerprint", "end", "jitter", "start", "timezone")
    schedule_type: ClassVar[ScheduleType]
    timezone: tzinfo | None
    # The constructor's arguments when they include naive datetimes, which must be
    # read again in the scheduler's zone (see with_timezone); otherwise None.
    _arguments: dict[str, Any] | None

    def __new__(cls, schedule_type: ScheduleType | str | None = None, /, **_: Any) -> ScheduleRule:
        if cls is ScheduleRule:
            if schedule_type is None:
                raise ScheduleError("ScheduleRule needs a ScheduleType (INTERVAL, CRON or ONCE)")
            try:
                kind = ScheduleType(schedule_type)
            except ValueError as exc:
                raise ScheduleError(f"unknown schedule type {schedule_type!r}") from exc
            cls = _RULE_CLASSES[kind]
        return super().__new__(cls)

    def _init_common(
        self,
        timezone: str | tzinfo | None,
        start: datetime | str | None,
        end: datetime | str | None,
        jitter: float,
        arguments: dict[str, Any],
    ) -> None:
        self._fingerprint: str | None = None
        naive = False
        for value in (start, end, arguments.get("run_at")):
            if isinstance(value, str) or (isinstance(value, datetime) and value.tzinfo is None):
                naive = True
        self._arguments = arguments if naive else None
        self.timezone = None if timezone is None else resolve_timezone(timezone)
        zone = self.timezone or UTC
        self.start = None if start is None else _as_aware(start, zone, "start").astimezone(UTC)
        self.end = None if end is None else _as_aware(end, zone, "end").astimezone(UTC)
        if self.start and self.end and self.end < self.start:
            raise ScheduleError(f"end {self.end.isoformat()} is before start {self.start.isoformat()}")
        if not isinstance(jitter, (int, float)) or jitter < 0:
            raise ScheduleError(f"jitter must be a number of seconds >= 0, got {jitter!r}")
        self.jitter = float(jitter) if jitter else 0.0  # the shared constant: no float object per rule

    # -- the pure math every rule provides ------------------------------------------
    def next_fire_time(self, after: datetime) -> datetime | None:
        """The first fire time strictly after ``after`` (aware), in UTC; None when done."""
        raise NotImplementedError

    def first_fire_time(self, now: datetime) -> datetime | None:
        """The first fire time of a task added at ``now``."""
        return self.next_fire_time(now - _ONE_MICROSECOND)

    def describe(self) -> str:
        """The schedule in words, for people (``every 30 seconds``)."""
        raise NotImplementedError

    def to_dict(self) -> dict[str, Any]:
        """The rule as the JSON config's ``schedule`` object (round-trips via `from_dict`)."""
        raise NotImplementedError

    # -- shared helpers -------------------------------------------------------------
    def with_timezone(self, zone: tzinfo) -> ScheduleRule:
        """A copy bound to ``zone`` if this rule has no zone of its own, else self.

        Naive datetimes the rule was built with are re-read in ``zone``.
        """
        if self.timezone is not None:
            return self
        if self._arguments is not None:
            return type(self)(**{**self._arguments, "timezone": zone})
        return self._in_zone(zone)

    def _in_zone(self, zone: tzinfo) -> ScheduleRule:
        """This rule read in ``zone``; only rules that depend on wall time copy."""
        return self

    def fingerprint(self) -> str:
        """A stable text identity: a changed fingerprint means the task is rescheduled.
        Equal rules share one string (many tasks often share a rule); rules equal but
        for their ``start`` share a template the start is put into."""
        if self._fingerprint is None:
            self._fingerprint = self._make_fingerprint()
        return self._fingerprint

    def _make_fingerprint(self) -> str:
        identity = self._identity()
        if identity is None:
            return sys.intern(_fingerprint_text(self.to_dict()))
        if self.start is None:
            fingerprint = _FINGERPRINTS.get(identity)
            if fingerprint is None:
                fingerprint = sys.intern(_fingerprint_text(self.to_dict()))
                if len(_FINGERPRINTS) < 4096:
                    _FINGERPRINTS[identity] = fingerprint
            return fingerprint
        fingerprint = _FINGERPRINTS.get((identity, self.start))
        if fingerprint is None:
            template = _FINGERPRINTS.get((identity, _START))
            if template is None:
                template = _fingerprint_text({**self.to_dict(), "start": _START})
                if len(_FINGERPRINTS) < 4096:
                    _FINGERPRINTS[(identity, _START)] = template
            fingerprint = template.replace(_START_TEXT, repr(self.start.isoformat()))
            if len(_FINGERPRINTS) < 4096:
                _FINGERPRINTS[(identity, self.start)] = fingerprint
        return fingerprint

    def _identity(self) -> tuple[Any, ...] | None:
        """Everything but ``start`` that makes two rules equal, as a key for the
        fingerprint cache; None: do not cache (a rule type that does not say)."""
        return None

    def jitter_offset(self, task_id: str, fire_time: datetime) -> timedelta:
        """The deterministic delay ``[0, jitter)`` for one occurrence of one task."""
        if not self.jitter:
            return timedelta(0)
        seed = zlib.crc32(f"{task_id}@{int(fire_time.timestamp())}".encode())
        fraction = seed / 2**32
        return timedelta(seconds=self.jitter * fraction)

    def _common_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {}
        if self.timezone is not None:
            data["timezone"] = getattr(self.timezone, "key", None) or str(self.timezone)  # JSON: a name
        if self.start is not None:
            data["start"] = self.start.isoformat()
        if self.end is not None:
            data["end"] = self.end.isoformat()
        if self.jitter:
            data["jitter"] = self.jitter
        return data

    def _bounded(self, fire: datetime | None) -> datetime | None:
        if fire is None or (self.end is not None and fire > self.end):
            return None
        return fire

    @staticmethod
    def from_dict(data: dict[str, Any]) -> ScheduleRule:
        """Build a rule from the config's ``schedule`` object.

        Exactly one of ``interval`` (``{"seconds": 30}`` or a number of seconds),
        ``cron`` (an expression or ``{"hour": 2, "minute": 30}``) or ``once`` (an ISO
        datetime), plus optional ``timezone``, ``start``, ``end``, ``jitter``.
        """
        if not isinstance(data, dict):
            raise ScheduleError(f"schedule must be an object, got {data!r}")
        kinds = [kind for kind in ("interval", "cron", "once") if kind in data]
        if len(kinds) != 1:
            raise ScheduleError("schedule needs exactly one of 'interval', 'cron', 'once'")
        _check_keys("schedule", data, ("interval", "cron", "once", *_COMMON_KEYWORDS))
        common = {key: data[key] for key in _COMMON_KEYWORDS if key in data}
        kind, spec = kinds[0], data[kinds[0]]
        if kind == "interval" and isinstance(spec, (int, float)) and not isinstance(spec, bool):
            return IntervalRule(seconds=spec, **common)
        if kind == "cron" and isinstance(spec, str):
            return CronRule(cron=spec, **common)
        if kind == "once" and isinstance(spec, (str, datetime)):
            return OnceRule(run_at=spec, **common)
        if not isinstance(spec, dict):
            forms = {"interval": "a number of seconds", "cron": "an expression", "once": "an ISO 8601 datetime"}
            raise ScheduleError(f"{kind} must be {forms[kind]} or an object of keywords, got {spec!r}")
        _check_keys(kind, spec, _KEYWORDS[kind])
        rule_class: type[ScheduleRule] = {"interval": IntervalRule, "cron": CronRule, "once": OnceRule}[kind]
        return rule_class(**spec, **common)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.describe()}>"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ScheduleRule) and self.fingerprint() == other.fingerprint()

    def __hash__(self) -> int:
        return hash(self.fingerprint())


class IntervalRule(ScheduleRule):
    """Every N seconds/minutes/hours/days/weeks of real elapsed time.

    The first fire: without ``start``, one period after the task is first added;
    with ``start="now"``, at once when the task is first added; with a ``start``
    time, on the grid ``start + k * period``. "First added" means new to the store
    or with a changed rule: a restart keeps the stored next fire time, so neither
    form fires an extra time at every restart (occurrences missed while the service
    was down follow the misfire rules). Later fires follow the previous *scheduled*
    time (never the time a run finished), so lateness never accumulates.
    """

    __slots__ = ("period", "start_now")
    schedule_type = ScheduleType.INTERVAL

    def __init__(
        self,
        schedule_type: ScheduleType | str | None = None,
        /,
        *,
        weeks: float = 0,
        days: float = 0,
        hours: float = 0,
        minutes: float = 0,
        seconds: float = 0,
        start: datetime | str | None = None,
        end: datetime | str | None = None,
        timezone: str | tzinfo | None = None,
        jitter: float = 0,
    ) -> None:
        self.period = _period(weeks, days, hours, minutes, seconds)
        self.start_now = start == "now"
        arguments = {"weeks": weeks, "days": days, "hours": hours, "minutes": minutes, "seconds": seconds,
                     "start": start, "end": end, "jitter": jitter}  # fmt: skip
        self._init_common(timezone, None if self.start_now else start, end, jitter, arguments)

    def next_fire_time(self, after: datetime) -> datetime | None:
        after = after.astimezone(UTC)
        if self.start is None:
            return self._bounded(after + self.period)
        start = self.start
        if after < start:
            return self._bounded(start)
        periods = (after - start) // self.period + 1
        return self._bounded(start + periods * self.period)

    def first_fire_time(self, now: datetime) -> datetime | None:
        if self.start_now:
            return self._bounded(now.astimezone(UTC))
        if self.start is None:
            return self.next_fire_time(now)
        return self.next_fire_time(now - _ONE_MICROSECOND)

    def describe(self) -> str:
        return _describe_interval(self.period, self.start_now)

    def _identity(self) -> tuple[Any, ...] | None:
        return (IntervalRule, self.period, self.start_now, self.end, self.timezone, self.jitter)

    def to_dict(self) -> dict[str, Any]:
        common = self._common_dict()
        if self.start_now:
            common["start"] = "now"
        return {"interval": {"seconds": self.period.total_seconds()}, **common}


@lru_cache(maxsize=1024)
def _period(weeks: float, days: float, hours: float, minutes: float, seconds: float) -> timedelta:
    """The checked period; equal intervals share one timedelta."""
    parts = {"weeks": weeks, "days": days, "hours": hours, "minutes": minutes, "seconds": seconds}
    for name, value in parts.items():
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise ScheduleError(f"interval {name} must be a number, got {value!r}")
    if any(value < 0 for value in parts.values()) or sum(parts.values()) <= 0:
        given = ", ".join(f"{value!r} {name}" for name, value in parts.items() if value != 0) or "0 seconds"
        raise ScheduleError(f"an interval must be a positive duration (more than 0 seconds), got {given}")
    return timedelta(**parts)


@lru_cache(maxsize=1024)
def _describe_interval(period: timedelta, start_now: bool) -> str:
    """The interval in words (cached: equal intervals share one string)."""
    seconds = period.total_seconds()
    first = ", first at once" if start_now else ""
    for unit, size in (("week", 604800), ("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds >= size and seconds % size == 0:
            count = int(seconds // size)
            return f"every {count} {unit}{'s' if count != 1 else ''}{first}"
    return f"every {seconds:g} second{'s' if seconds != 1 else ''}{first}"


class OnceRule(ScheduleRule):
    """Fires once at ``run_at``. A ``run_at`` in the past is due immediately and then
    follows the misfire rules (runs if within ``misfire_grace_time``, else MISSED)."""

    __slots__ = ("run_at",)
    schedule_type = ScheduleType.ONCE

    def __init__(
        self,
        schedule_type: ScheduleType | str | None = None,
        /,
        *,
        run_at: datetime | str | None = None,
        timezone: str | tzinfo | None = None,
        jitter: float = 0,
    ) -> None:
        if run_at is None:
            raise ScheduleError("once: run_at is required")
        self._init_common(timezone, None, None, jitter, {"run_at": run_at, "jitter": jitter})
        self.run_at = _as_aware(run_at, self.timezone or UTC, "run_at").astimezone(UTC)

    def next_fire_time(self, after: datetime) -> datetime | None:
        return self.run_at if self.run_at > after.astimezone(UTC) else None

    def first_fire_time(self, now: datetime) -> datetime | None:
        return self.run_at

    def describe(self) -> str:
        return f"once at {self.run_at.isoformat()}"

    def to_dict(self) -> dict[str, Any]:
        return {"once": self.run_at.isoformat(), **self._common_dict()}


# -- cron ---------------------------------------------------------------------------


class CronRule(ScheduleRule):
    """Fires when local wall-clock time matches a cron expression.

    ``cron`` takes 5 fields (``minute hour day month day_of_week``), or 6 with seconds
    first (``*/5 * * * * *``), or an alias (``@daily``, ``@hourly`` ...). Instead of
    ``cron`` the fields can be given as keywords (``hour=2, minute=30,
    day_of_week="mon-fri"``): fields less significant than the least significant one
    given default to their minimum, the rest to ``*`` (so ``hour=2`` means 02:00:00).
    Day of week counts Sunday as 0 and as 7. When both day and day_of_week are
    restricted a day matching either fires (Vixie cron); a field starting with ``*``
    (like ``*/2``) counts as unrestricted for that choice. Ranges must go upward
    (``22-23,0-2``, not ``22-2``). The full syntax is in `task_scheduler.cron`, DST
    in the module docstring.
    """

    __slots__ = ("_spec", "expression", "fields")
    schedule_type = ScheduleType.CRON

    def __init__(
        self,
        schedule_type: ScheduleType | str | None = None,
        /,
        *,
        cron: str | None = None,
        second: int | str | None = None,
        minute: int | str | None = None,
        hour: int | str | None = None,
        day: int | str | None = None,
        month: int | str | None = None,
        day_of_week: int | str | None = None,
        start: datetime | str | None = None,
        end: datetime | str | None = None,
        timezone: str | tzinfo | None = None,
        jitter: float = 0,
    ) -> None:
        keywords = {
            "second": second,
            "minute": minute,
            "hour": hour,
            "day": day,
            "month": month,
            "day_of_week": day_of_week,
        }
        given = {name: value for name, value in keywords.items() if value is not None}
        if cron is not None and given:
            raise ScheduleError("cron: give either an expression or keyword fields, not both")
        if cron is not None:
            if not isinstance(cron, str):
                raise ScheduleError(f"cron expression must be a string, got {cron!r}")
            self.expression = " ".join(cron.split())
            fields = split_expression(self.expression)
        elif given:
            fields = fields_from_keywords(given)
            self.expression = " ".join(fields)
        else:
            raise ScheduleError("cron: an expression or at least one field is required")
        self.fields = fields
        self._spec = parse_cron(fields, self.expression)
        arguments = {"cron": self.expression, "start": start, "end": end, "jitter": jitter}
        self._init_common(timezone, start, end, jitter, arguments)

    def _in_zone(self, zone: tzinfo) -> ScheduleRule:
        clone = copy.copy(self)  # shares the parsed fields
        clone.timezone, clone._fingerprint = zone, None
        return clone

    @classmethod
    def from_crontab(cls, expression: str, timezone: str | tzinfo | None = None) -> CronRule:
        """A rule from a crontab line's schedule part (5 or 6 fields, or an alias)."""
        return cls(cron=expression, timezone=timezone)

    def next_fire_time(self, after: datetime) -> datetime | None:
        # Every comparison is between UTC datetimes: Python compares two datetimes of
        # the same zone by wall time and ignores fold, which is wrong in a DST repeat.
        zone = self.timezone or UTC
        after = after.astimezone(UTC)
        if self.start is not None and after < self.start:
            after = self.start - _ONE_MICROSECOND
        local = after.astimezone(zone)
        fire = self._next_in_wall_order(after, local.replace(tzinfo=None, microsecond=0) + _ONE_SECOND)
        if self._spec.hour_wildcard and local.fold == 0 and local.replace(fold=1).utcoffset() != local.utcoffset():
            # ``after`` lies in the first pass of a repeated hour: wall-time order
            # runs past the second pass, which a wildcard-hour rule also fires in.
            transition = _transition(after, local.replace(fold=1).astimezone(UTC), zone)
            repeat = self._spec.next_match(transition.astimezone(zone).replace(tzinfo=None))
            if repeat is not None:
                first = repeat.replace(tzinfo=zone).astimezone(UTC)
                second = repeat.replace(tzinfo=zone, fold=1).astimezone(UTC)
                if first != second and (fire is None or second < fire):
                    fire = self._bounded(second)
        return fire

    def _next_in_wall_order(self, after: datetime, moment: datetime) -> datetime | None:
        zone = self.timezone or UTC
        spec = self._spec
        while True:
            wall = spec.next_match(moment)
            if wall is None:
                return None
            first = wall.replace(tzinfo=zone).astimezone(UTC)
            second = wall.replace(tzinfo=zone, fold=1).astimezone(UTC)
            if first == second:  # an ordinary wall time
                if first > after:
                    return self._bounded(first)
            elif first < second:  # fall back: the wall time occurs twice
                if first > after:
                    return self._bounded(first)
                if spec.hour_wildcard and second > after:
                    return self._bounded(second)
            else:  # spring forward: the wall time does not exist
                gap_end = _transition(second, first, zone)
                if not spec.hour_wildcard and gap_end > after:
                    return self._bounded(gap_end)
                resume = gap_end.astimezone(zone).replace(tzinfo=None)
                if resume > wall:
                    moment = resume
                    continue
            moment = wall + _ONE_SECOND

    def describe(self) -> str:
        zone = getattr(self.timezone, "key", None) or (str(self.timezone) if self.timezone else None)
        return f"cron '{self.expression}'" + (f" ({zone})" if zone else "")

    def to_dict(self) -> dict[str, Any]:
        return {"cron": self.expression, **self._common_dict()}


def _transition(before: datetime, after: datetime, zone: tzinfo) -> datetime:
    """The first instant (UTC, whole seconds) in ``(before, after]`` whose UTC offset
    is that of ``after``: the DST transition between two instants around it."""
    target = after.astimezone(zone).utcoffset()
    low, high = int(before.timestamp()), int(after.timestamp())
    while high - low > 1:
        middle = (low + high) // 2
        if datetime.fromtimestamp(middle, UTC).astimezone(zone).utcoffset() == target:
            high = middle
        else:
            low = middle
    return datetime.fromtimestamp(high, UTC)


_RULE_CLASSES: dict[ScheduleType, type[ScheduleRule]] = {
    ScheduleType.INTERVAL: IntervalRule,
    ScheduleType.CRON: CronRule,
    ScheduleType.ONCE: OnceRule,
}
