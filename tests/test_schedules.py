"""Schedule rules: exact next-fire math, DST windows checked against the brute-force reference."""

from __future__ import annotations

import itertools
import re
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from task_scheduler import CronRule, IntervalRule, OnceRule, ScheduleError, ScheduleRule, ScheduleType
from tests.test_cron_reference import reference_fires

BERLIN = ZoneInfo("Europe/Berlin")
NEW_YORK = ZoneInfo("America/New_York")
LORD_HOWE = ZoneInfo("Australia/Lord_Howe")


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


def fires(rule: ScheduleRule, after: datetime, count: int) -> list[datetime]:
    result = []
    for _ in range(count):
        after = rule.next_fire_time(after)
        assert after is not None
        result.append(after)
    return result


def fires_until(rule: ScheduleRule, start: datetime, end: datetime) -> list[datetime]:
    result, moment = [], start
    while True:
        moment = rule.next_fire_time(moment)
        if moment is None or moment > end:
            return result
        result.append(moment)


# -- the reference of tests/test_cron_reference.py over fixed DST windows -------------


def reference_until(expression: str, zone: ZoneInfo, start: datetime, end: datetime) -> list[datetime]:
    count = 64
    while True:
        fires = reference_fires(expression, zone, start, count)
        if len(fires) < count or fires[-1] > end:
            return [fire for fire in fires if fire <= end]
        count *= 4


REFERENCE_EXPRESSIONS = [
    "*/15 * * * *",
    "30 2 * * *",
    "0 2 * * *",
    "15 1-3 * * *",
    "0 */2 * * *",
    "0 3 * * 0",
    "0 0 * * 7",
    "45 2 * * 1-5",
    "*/20 9-17 * * mon-fri",
    "0 12 1,15 * fri",
    "0 0 29 2 *",
    "59 23 28-31 * *",
    "0 0 */2 * *",
    "0 2-2 * * *",
    "*/20 2 * * *",
    "0,30 1-2 * * *",
    "45 1 * * *",
    "15 2 * * *",
    "30 2 * * * *",
]
REFERENCE_WINDOWS = [
    (BERLIN, utc(2024, 3, 28), utc(2024, 4, 2)),  # spring forward 2024-03-31 02:00 -> 03:00
    (BERLIN, utc(2024, 10, 24), utc(2024, 10, 29)),  # fall back 2024-10-27 03:00 -> 02:00
    (NEW_YORK, utc(2024, 3, 8), utc(2024, 3, 12)),  # spring forward 2024-03-10
    (NEW_YORK, utc(2024, 11, 1), utc(2024, 11, 5)),  # fall back 2024-11-03
    (ZoneInfo("UTC"), utc(2024, 2, 26), utc(2024, 3, 3)),  # leap day and a month end
    (LORD_HOWE, utc(2024, 10, 4), utc(2024, 10, 8)),  # spring forward 2024-10-06 02:00 -> 02:30
    (LORD_HOWE, utc(2024, 4, 5), utc(2024, 4, 9)),  # fall back 2024-04-07 02:00 -> 01:30
    (ZoneInfo("Asia/Kolkata"), utc(2024, 2, 27), utc(2024, 3, 2)),  # +05:30, no DST
]


@pytest.mark.parametrize("expression", REFERENCE_EXPRESSIONS)
def test_cron_matches_brute_force_reference(expression: str) -> None:
    for zone, start, end in REFERENCE_WINDOWS:
        rule = CronRule(cron=expression, timezone=zone)
        assert fires_until(rule, start, end) == reference_until(expression, zone, start, end), (expression, zone)


# -- fixed dates --------------------------------------------------------------------


def test_month_ends_and_last_day() -> None:
    rule = CronRule(cron="0 0 31 * *", timezone="UTC")
    assert fires(rule, utc(2024, 1, 31, 12), 3) == [utc(2024, 3, 31), utc(2024, 5, 31), utc(2024, 7, 31)]
    last = CronRule(cron="0 18 L * *", timezone="UTC")
    assert fires(last, utc(2024, 1, 1), 3) == [utc(2024, 1, 31, 18), utc(2024, 2, 29, 18), utc(2024, 3, 31, 18)]


def test_leap_day_only_in_leap_years() -> None:
    rule = CronRule(cron="0 0 29 2 *", timezone="UTC")
    assert fires(rule, utc(2024, 3, 1), 2) == [utc(2028, 2, 29), utc(2032, 2, 29)]


def test_sunday_is_zero_and_seven() -> None:
    zero = CronRule(cron="0 9 * * 0", timezone="UTC")
    seven = CronRule(cron="0 9 * * 7", timezone="UTC")
    named = CronRule(cron="0 9 * * sun", timezone="UTC")
    expected = [utc(2024, 6, 2, 9), utc(2024, 6, 9, 9)]  # Sundays
    assert (
        fires(zero, utc(2024, 6, 1), 2)
        == fires(seven, utc(2024, 6, 1), 2)
        == fires(named, utc(2024, 6, 1), 2)
        == expected
    )


def test_day_and_weekday_both_restricted_means_either() -> None:
    rule = CronRule(cron="0 0 13 * fri", timezone="UTC")  # every 13th and every Friday
    assert fires(rule, utc(2024, 9, 1), 4) == [utc(2024, 9, 6), utc(2024, 9, 13), utc(2024, 9, 20), utc(2024, 9, 27)]


def test_six_fields_have_seconds_first() -> None:
    rule = CronRule(cron="*/5 * * * * *", timezone="UTC")
    assert fires(rule, utc(2024, 1, 1, 0, 0, 58), 3) == [
        utc(2024, 1, 1, 0, 1, 0),
        utc(2024, 1, 1, 0, 1, 5),
        utc(2024, 1, 1, 0, 1, 10),
    ]


def test_keyword_fields_default_lower_fields_to_minimum() -> None:
    rule = ScheduleRule(ScheduleType.CRON, hour=2, minute=30, day_of_week="mon-fri", timezone="UTC")
    assert rule.fields == ("0", "30", "2", "*", "*", "mon-fri")
    assert fires(rule, utc(2024, 6, 7, 3), 2) == [utc(2024, 6, 10, 2, 30), utc(2024, 6, 11, 2, 30)]  # Fri -> Mon
    assert CronRule(hour=2).expression == "0 0 2 * * *"
    assert CronRule(minute="*/10").expression == "0 */10 * * * *"


def test_aliases_and_from_crontab() -> None:
    assert CronRule.from_crontab("@daily", timezone="UTC").next_fire_time(utc(2024, 1, 1, 5)) == utc(2024, 1, 2)
    assert CronRule.from_crontab("@hourly", timezone="UTC").next_fire_time(utc(2024, 1, 1, 5, 1)) == utc(2024, 1, 1, 6)


def test_first_fire_includes_now_when_it_matches() -> None:
    rule = CronRule(cron="0 12 * * *", timezone="UTC")
    assert rule.first_fire_time(utc(2024, 1, 1, 12)) == utc(2024, 1, 1, 12)
    assert rule.first_fire_time(utc(2024, 1, 1, 12, 0, 0) + timedelta(microseconds=1)) == utc(2024, 1, 2, 12)


# -- DST ------------------------------------------------------------------------------


def test_daily_job_in_spring_gap_runs_once_right_after_the_gap() -> None:
    rule = CronRule(cron="30 2 * * *", timezone=BERLIN)
    local = [t.astimezone(BERLIN).strftime("%m-%d %H:%M %Z") for t in fires(rule, utc(2024, 3, 29, 12), 3)]
    assert local == ["03-30 02:30 CET", "03-31 03:00 CEST", "04-01 02:30 CEST"]


def test_daily_job_in_repeated_hour_runs_once() -> None:
    rule = CronRule(cron="30 1 * * *", timezone=NEW_YORK)
    moments = fires_until(rule, utc(2024, 11, 2), utc(2024, 11, 5))
    assert [t.astimezone(NEW_YORK).strftime("%m-%d %H:%M %Z") for t in moments] == [
        "11-02 01:30 EDT",
        "11-03 01:30 EDT",
        "11-04 01:30 EST",
    ]


def test_wildcard_hour_job_runs_in_both_passes_of_the_repeated_hour() -> None:
    rule = CronRule(cron="*/30 * * * *", timezone=BERLIN)
    moments = fires_until(rule, utc(2024, 10, 26, 23, 45), utc(2024, 10, 27, 2, 10))
    assert [t.astimezone(BERLIN).strftime("%H:%M %Z") for t in moments] == [
        "02:00 CEST",
        "02:30 CEST",
        "02:00 CET",
        "02:30 CET",
        "03:00 CET",
    ]


def test_wildcard_hour_job_skips_the_missing_hour() -> None:
    rule = CronRule(cron="0 * * * *", timezone=BERLIN)
    moments = fires_until(rule, utc(2024, 3, 30, 23, 30), utc(2024, 3, 31, 2, 30))
    assert [t.astimezone(BERLIN).strftime("%H:%M") for t in moments] == ["01:00", "03:00", "04:00"]


def local(moments: list[datetime], zone: ZoneInfo) -> list[str]:
    return [t.astimezone(zone).strftime("%m-%d %H:%M %z") for t in moments]


def test_lord_howe_half_hour_shift_follows_the_same_rules() -> None:
    # spring forward 2024-10-06 02:00 -> 02:30 (+10:30 -> +11); fall back 2024-04-07 02:00 -> 01:30
    in_gap = CronRule(cron="15 2 * * *", timezone=LORD_HOWE)
    assert local(fires(in_gap, utc(2024, 10, 4, 12), 3), LORD_HOWE) == [
        "10-05 02:15 +1030",
        "10-06 02:30 +1100",  # 02:15 does not exist: right after the gap
        "10-07 02:15 +1100",
    ]
    after_gap = CronRule(cron="45 2 * * *", timezone=LORD_HOWE)
    assert local(fires(after_gap, utc(2024, 10, 4, 12), 2), LORD_HOWE) == ["10-05 02:45 +1030", "10-06 02:45 +1100"]
    repeated = CronRule(cron="45 1 * * *", timezone=LORD_HOWE)
    assert local(fires(repeated, utc(2024, 4, 5, 12), 3), LORD_HOWE) == [
        "04-06 01:45 +1100",
        "04-07 01:45 +1100",  # once, in the first pass
        "04-08 01:45 +1030",
    ]
    wildcard = CronRule(cron="*/30 * * * *", timezone=LORD_HOWE)
    assert local(fires_until(wildcard, utc(2024, 4, 6, 14), utc(2024, 4, 6, 16)), LORD_HOWE) == [
        "04-07 01:30 +1100",
        "04-07 01:30 +1030",  # both passes
        "04-07 02:00 +1030",
        "04-07 02:30 +1030",
    ]
    assert local(fires_until(wildcard, utc(2024, 10, 5, 14), utc(2024, 10, 5, 16)), LORD_HOWE) == [
        "10-06 01:00 +1030",
        "10-06 01:30 +1030",
        "10-06 02:30 +1100",  # 02:00 does not exist: skipped
        "10-06 03:00 +1100",
    ]


def test_stepped_hours_name_hours_for_dst() -> None:
    """Only an hour field of exactly ``*`` is a wildcard: ``*/2`` names hours, so its
    missing 02:00 fires after the gap and its repeated 02:00 once (Debian cron and
    cronsim would skip the first and repeat the second)."""
    rule = CronRule(cron="0 */2 * * *", timezone=BERLIN)
    assert local(fires_until(rule, utc(2024, 3, 30, 22), utc(2024, 3, 31, 3)), BERLIN) == [
        "03-31 00:00 +0100",
        "03-31 03:00 +0200",
        "03-31 04:00 +0200",
    ]
    assert local(fires_until(rule, utc(2024, 10, 26, 21), utc(2024, 10, 27, 4)), BERLIN) == [
        "10-27 00:00 +0200",
        "10-27 02:00 +0200",
        "10-27 04:00 +0100",
    ]
    six_fields = CronRule(cron="0 30 2 * * *", timezone=BERLIN)  # seconds first; same rule
    assert local(fires(six_fields, utc(2024, 3, 30, 12), 2), BERLIN) == ["03-31 03:00 +0200", "04-01 02:30 +0200"]


def test_one_fire_per_local_day_across_a_dst_year() -> None:
    rule = CronRule(cron="30 2 * * *", timezone=BERLIN)
    moments = fires_until(rule, utc(2024, 1, 1), utc(2025, 1, 1))
    days = [t.astimezone(BERLIN).date() for t in moments]
    assert len(days) == len(set(days)) == 366


def test_interval_is_real_elapsed_time_across_dst() -> None:
    rule = IntervalRule(hours=1, start=datetime(2024, 3, 31, 0, 0), timezone=BERLIN)
    moments = fires_until(rule, utc(2024, 3, 30, 22), utc(2024, 3, 31, 22))
    assert len(moments) == 24  # a 23-hour local day still gets a fire every real hour
    assert all(b - a == timedelta(hours=1) for a, b in itertools.pairwise(moments))


# -- interval and once ----------------------------------------------------------------


def test_interval_does_not_drift() -> None:
    rule = IntervalRule(seconds=30)
    first = rule.first_fire_time(
        utc(
            2024,
            1,
            1,
            0,
            0,
            0,
        )
        + timedelta(milliseconds=123)
    )
    later = fires(rule, first, 1000)[-1]
    assert later - first == timedelta(seconds=30 * 1000)


def test_interval_with_start_stays_on_grid_and_stops_at_end() -> None:
    rule = IntervalRule(minutes=10, start=utc(2024, 1, 1, 0, 5), end=utc(2024, 1, 1, 0, 40))
    assert rule.first_fire_time(utc(2024, 1, 1, 0, 17)) == utc(2024, 1, 1, 0, 25)
    assert fires_until(rule, utc(2024, 1, 1), utc(2024, 1, 2)) == [
        utc(2024, 1, 1, 0, 5),
        utc(2024, 1, 1, 0, 15),
        utc(2024, 1, 1, 0, 25),
        utc(2024, 1, 1, 0, 35),
    ]


def test_once_fires_once_and_naive_time_is_read_in_the_rule_zone() -> None:
    rule = ScheduleRule(ScheduleType.ONCE, run_at=datetime(2024, 7, 1, 12, 0), timezone=BERLIN)
    assert rule.first_fire_time(utc(2024, 1, 1)) == utc(2024, 7, 1, 10)
    assert rule.next_fire_time(utc(2024, 7, 1, 10)) is None
    bound = OnceRule(run_at=datetime(2024, 7, 1, 12, 0)).with_timezone(NEW_YORK)
    assert bound.first_fire_time(utc(2024, 1, 1)) == utc(2024, 7, 1, 16)


def test_from_dict_round_trips() -> None:
    for data in (
        {"interval": {"seconds": 90}},
        {"cron": "*/5 * * * * *", "timezone": "Europe/Berlin"},
        {"once": "2030-01-01T00:00:00+00:00"},
    ):
        rule = ScheduleRule.from_dict(data)
        assert ScheduleRule.from_dict(rule.to_dict()) == rule


def test_jitter_is_deterministic_and_bounded() -> None:
    rule = IntervalRule(seconds=60, jitter=10)
    offsets = {rule.jitter_offset("a", utc(2024, 1, 1, 0, i)) for i in range(50)}
    assert all(timedelta(0) <= o < timedelta(seconds=10) for o in offsets) and len(offsets) > 10
    assert rule.jitter_offset("a", utc(2024, 1, 1)) == rule.jitter_offset("a", utc(2024, 1, 1))


# -- invalid input names the culprit ------------------------------------------------------


@pytest.mark.parametrize(
    ("expression", "fragment"),
    [
        ("61 * * * *", "cron field 'minute' has invalid value '61'"),
        ("* 25 * * *", "cron field 'hour' has invalid value '25'"),
        ("* * 32 * *", "cron field 'day' has invalid value '32'"),
        ("* * * 13 *", "cron field 'month' has invalid value '13'"),
        ("* * * * funday", "cron field 'day_of_week' has invalid value 'funday'"),
        ("99 * * * * *", "cron field 'second' has invalid value '99'"),
        ("* * *", "has 3 fields"),
        ("0 0 30 2 *", "never fires"),
    ],
)
def test_invalid_cron_names_field_and_value(expression: str, fragment: str) -> None:
    with pytest.raises(
        ScheduleError,
    ) as caught:
        CronRule(cron=expression)
    assert fragment in str(caught.value)


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"seconds": 0}, "an interval must be a positive duration (more than 0 seconds), got 0 seconds"),
        ({"seconds": -5}, "an interval must be a positive duration (more than 0 seconds), got -5 seconds"),
        ({"minutes": "5"}, "interval minutes must be a number"),
    ],
)
def test_invalid_interval(kwargs: dict[str, object], fragment: str) -> None:
    with pytest.raises(ScheduleError, match=re.escape(fragment)):
        ScheduleRule(ScheduleType.INTERVAL, **kwargs)


def test_invalid_rule_inputs() -> None:
    with pytest.raises(ScheduleError, match="unknown time zone 'Mars/Olympus'"):
        CronRule(cron="* * * * *", timezone="Mars/Olympus")
    with pytest.raises(ScheduleError, match="run_at is required"):
        ScheduleRule(ScheduleType.ONCE)
    with pytest.raises(ScheduleError, match="unknown schedule type"):
        ScheduleRule("weekly")
    with pytest.raises(ScheduleError, match="exactly one of"):
        ScheduleRule.from_dict({"cron": "* * * * *", "interval": 5})
    with pytest.raises(ScheduleError, match=r"end .* is before start"):
        IntervalRule(seconds=1, start=utc(2024, 2, 1), end=utc(2024, 1, 1))


def test_fixed_time_seen_from_inside_the_second_pass_waits_for_the_next_day() -> None:
    rule = CronRule(cron="30 2 * * *", timezone=BERLIN)
    after = utc(2024, 10, 27, 1, 0)  # 02:00 CET, the second pass of 02:00-03:00
    assert rule.next_fire_time(after) == utc(2024, 10, 28, 1, 30)
    for start in (utc(2024, 10, 26, 23, 59), utc(2024, 10, 27, 0, 45), utc(2024, 10, 27, 1, 15)):
        for window_zone, window_start, window_end in [(BERLIN, start, utc(2024, 10, 28, 3))]:
            assert fires_until(CronRule(cron="*/15 2 * * *", timezone=window_zone), window_start, window_end) == (
                reference_until("*/15 2 * * *", window_zone, window_start, window_end)
            )


@pytest.mark.parametrize(
    ("rule", "stored"),
    [
        (IntervalRule(seconds=30), "[('interval', {'seconds': 30.0})]"),
        (IntervalRule(minutes=1, start="now"), "[('interval', {'seconds': 60.0}), ('start', 'now')]"),
        (
            IntervalRule(seconds=30, start=utc(2024, 1, 1, 0, 0, 7)),
            "[('interval', {'seconds': 30.0}), ('start', '2024-01-01T00:00:07+00:00')]",
        ),
        (
            IntervalRule(hours=1, start="2024-03-01T12:00:00.250000", end=utc(2027, 1, 1), timezone=BERLIN, jitter=5),
            "[('end', '2027-01-01T00:00:00+00:00'), ('interval', {'seconds': 3600.0}), ('jitter', 5.0), "
            "('start', '2024-03-01T11:00:00.250000+00:00'), ('timezone', 'Europe/Berlin')]",
        ),
        (CronRule(cron="0 2 * * *", timezone=NEW_YORK), "[('cron', '0 2 * * *'), ('timezone', 'America/New_York')]"),
        (OnceRule(run_at=utc(2024, 5, 1)), "[('once', '2024-05-01T00:00:00+00:00')]"),
    ],
)
def test_fingerprints_keep_their_stored_format(rule: ScheduleRule, stored: str) -> None:
    """Stores compare fingerprints across versions: a changed text would reschedule
    every stored task once. Rules alike but for their start share a cached template,
    so many such rules in a row must each still get their own start."""
    assert rule.fingerprint() == stored
    if rule.start is not None:
        for seconds in (1, 3601, 86_400 * 400):
            later = rule.start + timedelta(seconds=seconds, microseconds=seconds % 7)
            twin = type(rule).from_dict({**rule.to_dict(), "start": later.isoformat()})
            assert twin.fingerprint() == stored.replace(rule.start.isoformat(), later.isoformat())
