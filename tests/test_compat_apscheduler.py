"""The APScheduler face: add_job with string and object triggers, job management,
job defaults, listeners, persistent job stores across restarts, named instances,
and the day_of_week translation checked against APScheduler itself."""

from __future__ import annotations

import sys
import textwrap
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from task_scheduler import ManualClock, RunState, ScheduleError, TaskError
from task_scheduler.compat.apscheduler import (
    EVENT_JOB_ERROR,
    EVENT_JOB_EXECUTED,
    BackgroundScheduler,
    ConflictingIdError,
    CronTrigger,
    DateTrigger,
    IntervalTrigger,
    JobLookupError,
    MemoryJobStore,
    SchedulerManager,
    SQLAlchemyJobStore,
    ThreadPoolExecutor,
)

T0 = datetime(2030, 1, 1, tzinfo=UTC)  # a Tuesday
CALLS: list[Any] = []


def record(*args: Any, **kwargs: Any) -> None:
    """A module-level job function: it can be stored as data."""
    CALLS.append((args, kwargs))


def fail() -> None:
    raise RuntimeError("boom")


@pytest.fixture(autouse=True)
def clear_calls() -> Iterator[None]:
    CALLS.clear()
    yield
    SchedulerManager.shutdown_all()


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(T0)


@pytest.fixture
def aps(clock: ManualClock) -> Iterator[BackgroundScheduler]:
    scheduler = BackgroundScheduler(timezone="UTC", clock=clock, job_defaults={"max_instances": 2})
    yield scheduler
    scheduler.shutdown()


def advance(scheduler: BackgroundScheduler, clock: ManualClock, seconds: float) -> None:
    clock.advance(seconds)
    scheduler.task_scheduler.run_due()
    assert scheduler.task_scheduler.wait_for_runs(10)


def test_string_and_object_triggers(aps: BackgroundScheduler, clock: ManualClock) -> None:
    daily = aps.add_job(record, "cron", hour=2, minute=30, id="daily_report", args=["user123"],
                        kwargs={"action": "sync"})  # fmt: skip
    aps.add_job(record, CronTrigger(hour=2, minute=30), id="daily_object")
    aps.add_job(record, CronTrigger.from_crontab("0 2 * * *"), id="crontab")
    aps.add_job(record, "interval", weeks=0, days=0, hours=0, minutes=0, seconds=30, id="heartbeat")
    aps.add_job(record, IntervalTrigger(minutes=5), id="sync_data")
    aps.add_job(record, "date", run_date=T0 + timedelta(seconds=10), id="delayed")
    aps.add_job(record, DateTrigger(run_date=T0 + timedelta(seconds=20)), id="delayed_object")
    aps.add_job(record, "cron", day_of_week="mon", hour=9, id="weekly_summary")
    aps.add_job(record, "cron", day=1, hour=0, id="monthly_cleanup")
    aps.add_job(record, "cron", day_of_week="mon-fri", hour="*", id="workday_check")
    assert daily.next_run_time == T0 + timedelta(hours=2, minutes=30)
    runs = {job.id: job.next_run_time for job in aps.get_jobs()}
    assert runs["crontab"] == T0 + timedelta(hours=2) and runs["heartbeat"] == T0 + timedelta(seconds=30)
    assert runs["weekly_summary"] == datetime(2030, 1, 7, 9, tzinfo=UTC)  # Monday
    # T0 itself matches these, as in APScheduler (a job added at a matching time fires then)
    assert runs["monthly_cleanup"] == runs["workday_check"] == T0
    assert [job.id for job in aps.get_jobs()][2:4] == ["delayed", "delayed_object"]  # by next run time
    for _ in range(30):
        advance(aps, clock, 1)
    # monthly_cleanup and workday_check (T0), delayed, delayed_object, heartbeat
    assert CALLS == [((), {})] * 5
    advance(aps, clock, 2.5 * 3600)
    assert (("user123",), {"action": "sync"}) in CALLS


def test_job_management(aps: BackgroundScheduler, clock: ManualClock) -> None:
    aps.add_job(record, "interval", seconds=10, id="job", name="同步用户数据")
    with pytest.raises(ConflictingIdError):
        aps.add_job(record, "interval", seconds=10, id="job")
    job = aps.get_job("job")
    assert job is not None and job.name == "同步用户数据" and job.max_instances == 2 and not job.paused
    assert aps.get_job("nope") is None
    paused = aps.pause_job("job")
    assert paused.paused and paused.next_run_time is None
    advance(aps, clock, 10)
    assert CALLS == []
    aps.resume_job("job")
    aps.reschedule_job("job", trigger="interval", seconds=5)
    assert aps.get_job("job").next_run_time == clock.now() + timedelta(seconds=5)  # type: ignore[union-attr]
    aps.modify_job("job", args=[42], max_instances=3)
    job = aps.get_job("job")
    assert job is not None and job.args == (42,) and job.max_instances == 3
    advance(aps, clock, 5)
    assert CALLS == [((42,), {})]
    aps.add_job(record, "interval", seconds=10, id="job", replace_existing=True)
    aps.remove_job("job")
    with pytest.raises(JobLookupError):
        aps.remove_job("job")
    aps.add_job(record, "interval", seconds=1, id="a")
    aps.add_job(record, "interval", seconds=1, id="b", next_run_time=None)  # added paused
    assert aps.get_job("b").paused  # type: ignore[union-attr]
    aps.remove_all_jobs()
    assert aps.get_jobs() == []


def test_scheduled_job_decorator_next_run_time_and_listeners(aps: BackgroundScheduler, clock: ManualClock) -> None:
    events: list[tuple[int, str, bool]] = []
    aps.add_listener(lambda e: events.append((e.code, e.job_id, e.exception is not None)),
                     EVENT_JOB_EXECUTED | EVENT_JOB_ERROR)  # fmt: skip

    @aps.scheduled_job(IntervalTrigger(minutes=5), id="data_sync")
    def sync_from_external_api() -> None:
        CALLS.append("sync")

    aps.add_job(fail, "interval", seconds=60, id="safe_task", next_run_time=clock.now())  # also runs now
    advance(aps, clock, 0)
    assert events == [(EVENT_JOB_ERROR, "safe_task", True)]
    advance(aps, clock, 300)
    assert CALLS == ["sync"] and (EVENT_JOB_EXECUTED, "data_sync", False) in events
    aps.add_job(record, "interval", seconds=60, id="later", next_run_time=clock.now() + timedelta(seconds=7))
    assert aps.get_job("later").next_run_time == clock.now() + timedelta(seconds=7)  # type: ignore[union-attr]
    with pytest.raises(TaskError, match="interval trigger only"):
        aps.add_job(record, "cron", hour=1, id="x", next_run_time=clock.now() + timedelta(seconds=7))


def test_day_of_week_is_translated_and_crontab_keeps_its_numbering() -> None:
    assert CronTrigger(day_of_week=0).rule(T0).next_fire_time(T0) == datetime(2030, 1, 7, tzinfo=UTC)  # Monday
    assert CronTrigger(day_of_week="sat-sun")._rule.expression == "0 0 0 * * 6-7"
    assert CronTrigger(day_of_week="*/2")._rule.expression == "0 0 0 * * 1-7/2"  # mon, wed, fri, sun
    sunday = CronTrigger.from_crontab("0 2 * * 0").rule(T0).next_fire_time(T0)
    assert sunday == datetime(2030, 1, 6, 2, tzinfo=UTC)  # crontab's 0 is Sunday
    assert CronTrigger(day="1st mon")._rule.expression == "0 0 0 * * 1#1"
    assert CronTrigger(day="last")._rule.expression == "0 0 0 L * *"
    with pytest.raises(ScheduleError, match="matching both"):
        CronTrigger(day="1-7", day_of_week="mon")
    with pytest.raises(ScheduleError, match="0 = Monday"):
        CronTrigger(day_of_week=7)
    with pytest.raises(ScheduleError, match="not supported"):
        CronTrigger(week=2)


CASES = [
    {"day_of_week": 0}, {"day_of_week": 6}, {"day_of_week": "0-4"}, {"day_of_week": "5-6", "hour": 8},
    {"day_of_week": "mon,wed,fri", "hour": "9-17/4"}, {"day_of_week": "*/2", "minute": 15}, {"day_of_week": "1-5/2"},
    {"day_of_week": "sat-sun"}, {"day_of_week": "tue", "hour": 2, "minute": 30}, {"hour": 2, "minute": 30},
    {"day": 1, "hour": 0}, {"day": "last"}, {"day": "2nd fri"}, {"day": "last sun", "hour": 23},
    {"month": "jan-mar", "day": 15}, {"second": "*/20", "minute": 1}, {"day_of_week": "mon-fri", "hour": "*"},
]  # fmt: skip


@pytest.mark.parametrize("fields", CASES, ids=[str(case) for case in CASES])
def test_cron_triggers_fire_when_apschedulers_do(fields: dict[str, Any]) -> None:
    """Differential: the same keywords give the same 25 fire times as APScheduler 3."""
    aps_cron = pytest.importorskip("apscheduler.triggers.cron")
    theirs = aps_cron.CronTrigger(timezone="UTC", **fields)
    ours = CronTrigger(timezone="UTC", **fields).rule(T0)
    mine: list[datetime] = []
    expected: list[datetime] = []
    previous, moment = None, T0
    for _ in range(25):
        fire = theirs.get_next_fire_time(previous, moment)
        expected.append(fire)
        previous, moment = fire, fire + timedelta(microseconds=1)
    fire_ours = ours.first_fire_time(T0)
    for _ in range(25):
        assert fire_ours is not None
        mine.append(fire_ours)
        fire_ours = ours.next_fire_time(fire_ours)
    assert mine == expected


def test_persistent_job_store_survives_a_restart_and_an_unimportable_job_is_reported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, clock: ManualClock
) -> None:
    monkeypatch.chdir(tmp_path)
    module = tmp_path / "report_jobs.py"
    module.write_text(
        textwrap.dedent("""
        RUNS = []
        def daily_report(user, action="default"):
            RUNS.append((user, action))
    """)
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    import report_jobs  # type: ignore[import-not-found]

    stores = {"default": SQLAlchemyJobStore(url="sqlite:///jobs.db")}
    first = BackgroundScheduler(jobstores=stores, timezone="UTC", clock=clock)
    first.add_job(report_jobs.daily_report, "interval", seconds=60, id="report", args=["u1"],
                  kwargs={"action": "sync"})  # fmt: skip
    first.add_job("report_jobs:daily_report", "cron", hour=3, id="by_reference", args=["u2"])
    with pytest.raises(TaskError, match="lambda"):
        first.add_job(lambda: None, "interval", seconds=1, id="unstorable")
    first.shutdown()
    assert (tmp_path / "jobs.db").exists()

    second = BackgroundScheduler(jobstores={"default": "sqlite:///jobs.db"}, timezone="UTC", clock=clock)
    assert sorted(job.id for job in second.get_jobs()) == ["by_reference", "report"]  # restored, not re-added
    job = second.get_job("report")
    assert job is not None and job.args == ("u1",) and job.next_run_time == T0 + timedelta(seconds=60)
    assert repr(job.trigger) == "<Trigger (every 1 minute)>"
    advance(second, clock, 60)
    assert report_jobs.RUNS == [("u1", "sync")]
    second.shutdown()

    module.unlink()
    monkeypatch.delitem(sys.modules, "report_jobs")
    third = BackgroundScheduler(jobstores={"default": "sqlite:///jobs.db"}, timezone="UTC", clock=clock)
    job = third.get_job("report")
    assert job is not None and job.func is None  # kept, and reported
    status = third.task_scheduler.get_task_status("report")
    assert "cannot import 'report_jobs:daily_report'" in status["problem"]
    advance(third, clock, 60)
    [failed, *_] = third.task_scheduler.store.history("report")
    assert failed.state is RunState.FAILED and "report_jobs" in (failed.error or "")
    third.shutdown()


def test_named_instances_are_independent(tmp_path: Path) -> None:
    default = SchedulerManager.get_instance()
    report = SchedulerManager.get_instance("report")
    cleanup = SchedulerManager.get_instance(
        "cleanup",
        jobstores={"default": MemoryJobStore()},
        executors={"default": ThreadPoolExecutor(3)},
        job_defaults={"coalesce": True, "max_instances": 3, "misfire_grace_time": 60},
        timezone="Asia/Shanghai",
    )
    assert SchedulerManager.get_instance("report") is report and default is not report
    assert cleanup.task_scheduler.config.scheduler.max_workers == 3
    assert str(cleanup.task_scheduler.timezone) == "Asia/Shanghai"
    report.add_job(record, "interval", seconds=1, id="same")
    cleanup.add_job(record, "interval", seconds=1, id="same")
    assert [j.id for j in default.get_jobs()] == [] and cleanup.get_job("same").max_instances == 3  # type: ignore[union-attr]
    assert report.scheduler.get_job("same") is not None  # .scheduler: the APScheduler-like object
    with pytest.raises(Exception, match="other options"):
        SchedulerManager.get_instance("report", timezone="UTC")
    db = SchedulerManager.get_instance("db", jobstores={"default": f"sqlite:///{tmp_path}/jobs.db"})
    assert db.persistent and db.task_scheduler.store.location == str(tmp_path / "jobs.db")
    report.start()
    assert report.running and not cleanup.running
