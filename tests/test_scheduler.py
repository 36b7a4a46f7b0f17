"""The scheduler driven by an injected clock: run_due(now) steps, no sleeps."""

from __future__ import annotations

import gc
import sys
import threading
import weakref
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from task_scheduler import (
    BaseTask,
    CronRule,
    EventType,
    FunctionTask,
    IntervalRule,
    ManualClock,
    OnceRule,
    RunState,
    SchedulerConfig,
    ScheduleRule,
    ScheduleType,
    ScriptTask,
    TaskContext,
    TaskError,
    TaskNotFoundError,
    TaskScheduler,
    TaskSchedulerError,
)
from tests.conftest import write_script

T0 = datetime(2030, 1, 1, tzinfo=UTC)


def step(scheduler: TaskScheduler, clock: ManualClock, seconds: float) -> float:
    clock.advance(seconds)
    delay = scheduler.run_due()
    assert scheduler.wait_for_runs(10)
    return delay


class Recorder:
    def __init__(self, clock: ManualClock) -> None:
        self.clock = clock
        self.calls: list[tuple[str, datetime]] = []
        self.lock = threading.Lock()

    def task(self, task_id: str, **options: Any) -> FunctionTask:
        def work(context: TaskContext) -> None:
            with self.lock:
                self.calls.append((task_id, context.scheduled_for))

        return FunctionTask(task_id, task_id, work, **options)


def test_fires_in_due_order_and_sleeps_until_the_next_due_time(scheduler: TaskScheduler, clock: ManualClock) -> None:
    recorder = Recorder(clock)
    scheduler.add_task(recorder.task("slow"), IntervalRule(seconds=0.5))
    scheduler.add_task(recorder.task("once"), OnceRule(run_at=T0 + timedelta(seconds=0.2)))
    assert scheduler.run_due() == pytest.approx(0.2)  # wakes at the earliest due time
    step(scheduler, clock, 0.2)
    step(scheduler, clock, 0.3)
    assert [c[0] for c in recorder.calls] == ["once", "slow"]
    clock.advance(0.5)
    assert scheduler.run_due() <= 1.0  # never longer than check_interval


def test_interval_drift_does_not_accumulate(scheduler: TaskScheduler, clock: ManualClock) -> None:
    recorder = Recorder(clock)
    scheduler.add_task(recorder.task("tick"), IntervalRule(seconds=10))
    for _ in range(50):
        step(scheduler, clock, 10.37)  # the loop always wakes late
    scheduled = [when for _, when in recorder.calls]
    assert scheduled[0] == T0 + timedelta(seconds=10)
    assert all((when - T0).total_seconds() % 10 == 0 for when in scheduled)  # still on the 10 s grid
    coalesced = scheduler.store.history("tick", state=RunState.MISSED)
    assert len(scheduled) + len(coalesced) == 51  # every occurrence in 518.5 s accounted for


def test_once_fires_once_and_finishes(scheduler: TaskScheduler, clock: ManualClock) -> None:
    recorder = Recorder(clock)
    scheduler.add_task(recorder.task("once"), ScheduleRule(ScheduleType.ONCE, run_at=T0 + timedelta(seconds=5)))
    for _ in range(5):
        step(scheduler, clock, 3)
    assert len(recorder.calls) == 1
    status = scheduler.get_task_status("once")
    assert status["status"] == "finished" and status["next_run_time"] is None and status["run_count"] == 1


def test_stats_are_right(scheduler: TaskScheduler, clock: ManualClock) -> None:
    outcomes = iter([True, False, True, True])

    class Flaky(BaseTask):
        def execute(self) -> bool:  # type: ignore[override]
            ok = next(outcomes)
            if not ok:
                self.last_error = "checksum mismatch"
            return ok

    scheduler.add_task(Flaky("flaky", "Flaky", max_retries=0), IntervalRule(seconds=1))
    for _ in range(2):
        step(scheduler, clock, 1)
    status = scheduler.get_task_status("flaky")
    assert (status["run_count"], status["success_count"], status["failure_count"]) == (2, 1, 1)
    assert status["last_error"] == "checksum mismatch" and status["success_rate"] == 50.0
    for _ in range(2):
        step(scheduler, clock, 1)
    status = scheduler.get_task_status("flaky")
    assert (status["run_count"], status["success_rate"], status["last_error"]) == (4, 75.0, None)
    assert status["last_run_time"] == (T0 + timedelta(seconds=4)).isoformat()
    assert status["next_run_time"] == (T0 + timedelta(seconds=5)).isoformat()
    totals = scheduler.get_task_status()
    assert totals["total_tasks"] == 1 and totals["total_runs"] == 4 and totals["failed_runs"] == 1
    assert totals["tasks"]["flaky"]["run_count"] == 4 and "rss_bytes" in totals["process"]


def test_a_task_that_raises_or_returns_garbage_does_not_disturb_others(
    scheduler: TaskScheduler, clock: ManualClock
) -> None:
    recorder = Recorder(clock)
    scheduler.add_task(FunctionTask("boom", "boom", lambda: 1 / 0), IntervalRule(seconds=1))
    scheduler.add_task(FunctionTask("junk", "junk", lambda: object()), IntervalRule(seconds=1))
    scheduler.add_task(recorder.task("good"), IntervalRule(seconds=1))
    for _ in range(3):
        step(scheduler, clock, 1)
    assert len(recorder.calls) == 3
    assert scheduler.get_task_status("boom")["failure_count"] == 3
    assert scheduler.get_task_status("boom")["last_error"] == "ZeroDivisionError: division by zero"
    assert scheduler.get_task_status("junk")["success_count"] == 3


def test_misfire_past_grace_is_missed_within_grace_runs_late(config: SchedulerConfig, clock: ManualClock) -> None:
    config.scheduler.misfire_grace_time = 30
    scheduler = TaskScheduler(config, clock=clock)
    recorder = Recorder(clock)
    scheduler.add_task(recorder.task("late"), OnceRule(run_at=T0 + timedelta(seconds=10)))
    scheduler.add_task(recorder.task("lost"), OnceRule(run_at=T0 - timedelta(seconds=60)))
    step(scheduler, clock, 25)  # 15 s late: within grace
    assert [c[0] for c in recorder.calls] == ["late"]
    [missed] = scheduler.store.history("lost")
    assert missed.state is RunState.MISSED and "misfire_grace_time=30" in (missed.error or "")
    scheduler.stop()


def test_coalesce_collapses_missed_occurrences_into_one_run(config: SchedulerConfig, clock: ManualClock) -> None:
    config.scheduler.misfire_grace_time = None
    scheduler = TaskScheduler(config, clock=clock)
    recorder = Recorder(clock)
    scheduler.add_task(recorder.task("tick"), IntervalRule(seconds=10))
    step(scheduler, clock, 55)  # five occurrences due at once
    assert recorder.calls == [("tick", T0 + timedelta(seconds=50))]
    missed = scheduler.store.history("tick", state=RunState.MISSED)
    assert len(missed) == 4 and all("coalesced" in (m.error or "") for m in missed)
    assert scheduler.get_task_status("tick")["next_run_time"] == (T0 + timedelta(seconds=60)).isoformat()
    scheduler.stop()


def test_without_coalesce_every_occurrence_runs(config: SchedulerConfig, clock: ManualClock) -> None:
    config.scheduler.misfire_grace_time = None
    config.scheduler.coalesce = False
    scheduler = TaskScheduler(config, clock=clock)
    recorder = Recorder(clock)
    scheduler.add_task(recorder.task("tick", max_instances=10), IntervalRule(seconds=10))
    clock.advance(35)
    for _ in range(4):
        scheduler.run_due()
        scheduler.wait_for_runs(5)
    assert sorted(when for _, when in recorder.calls) == [T0 + timedelta(seconds=s) for s in (10, 20, 30)]
    scheduler.stop()


def test_max_instances_skips_and_records(scheduler: TaskScheduler, clock: ManualClock) -> None:
    release = threading.Event()
    events: list[EventType] = []
    scheduler.add_listener(lambda event: events.append(event.type), EventType.MAX_INSTANCES)
    scheduler.add_task(FunctionTask("busy", "busy", lambda: release.wait(10)), IntervalRule(seconds=1))
    clock.advance(1)
    scheduler.run_due()
    clock.advance(1)
    scheduler.run_due()  # the first run still holds the only instance
    release.set()
    assert scheduler.wait_for_runs(10)
    [skipped] = scheduler.store.history("busy", state=RunState.SKIPPED)
    assert "max_instances=1" in (skipped.error or "") and events == [EventType.MAX_INSTANCES]
    assert scheduler.get_task_status("busy")["skipped_count"] == 1


def test_retry_is_a_timed_occurrence_with_backoff(scheduler: TaskScheduler, clock: ManualClock) -> None:
    attempts: list[int] = []

    def flaky(context: TaskContext) -> bool:
        attempts.append(context.attempt)
        return context.attempt >= 3

    scheduler.add_task(
        FunctionTask("flaky", "flaky", flaky, max_retries=3, retry_delay=10, retry_backoff="exponential"),
        OnceRule(run_at=T0 + timedelta(seconds=1)),
    )
    step(scheduler, clock, 1)
    assert attempts == [1]
    step(scheduler, clock, 9)
    assert attempts == [1]  # no retry before its time, and no worker slept
    step(scheduler, clock, 1)
    assert attempts == [1, 2]
    step(scheduler, clock, 19)
    assert attempts == [1, 2]
    step(scheduler, clock, 1)  # second retry after 2 * 10 s
    assert attempts == [1, 2, 3]
    status = scheduler.get_task_status("flaky")
    assert (status["run_count"], status["success_count"], status["retry_count"]) == (1, 1, 2)
    assert status["status"] == "finished"


def test_function_timeout_sets_cancel_and_records_timed_out(scheduler: TaskScheduler, clock: ManualClock) -> None:
    started = threading.Event()

    def cooperative(context: TaskContext) -> None:
        started.set()
        context.cancel_event.wait(30)

    scheduler.add_task(FunctionTask("slow", "slow", cooperative, timeout=5, max_retries=0), OnceRule(run_at=T0))
    scheduler.run_due()
    assert started.wait(10)  # a timeout counts from the start of the run
    clock.advance(6)
    scheduler.run_due()  # past the deadline: the loop cancels it
    assert scheduler.wait_for_runs(10)
    [record] = scheduler.store.history("slow")
    assert record.state is RunState.TIMED_OUT


def test_pause_resume_run_now_remove(scheduler: TaskScheduler, clock: ManualClock) -> None:
    recorder = Recorder(clock)
    scheduler.add_task(recorder.task("job"), IntervalRule(seconds=10))
    scheduler.pause_task("job")
    step(scheduler, clock, 10)
    assert recorder.calls == [] and scheduler.get_task_status("job")["status"] == "paused"
    scheduler.resume_task("job")
    step(scheduler, clock, 0)
    assert len(recorder.calls) == 1  # the occurrence missed while paused, within grace
    scheduler.run_now("job")
    step(scheduler, clock, 0)
    assert len(recorder.calls) == 2
    scheduler.remove_task("job")
    step(scheduler, clock, 30)
    assert len(recorder.calls) == 2
    with pytest.raises(TaskNotFoundError):
        scheduler.get_task_status("job")


def test_a_removed_task_is_not_kept_alive(scheduler: TaskScheduler, clock: ManualClock) -> None:
    """Tasks added and removed at run time leave their counters and history behind,
    not their objects (nor what those hold)."""

    class Job(BaseTask):
        def execute(self) -> bool:
            return True

    other = TaskScheduler(scheduler.config, store=scheduler.store, clock=clock, node_id="other")
    other.add_task(Job("job"), IntervalRule(seconds=10))  # another node runs it too, and goes on
    job = Job("job")
    freed = weakref.ref(job)
    scheduler.add_task(job, IntervalRule(seconds=10))
    step(scheduler, clock, 10)
    scheduler.remove_task("job")
    del job
    gc.collect()
    assert freed() is None
    assert [record.state.value for record in scheduler.store.history("job")] == ["succeeded"]


def test_a_setting_changed_on_one_task_leaves_the_others_alone(scheduler: TaskScheduler) -> None:
    """Tasks with equal settings share one settings object: a setting changed on one
    task after it was made (``task.timeout = 5``) is that task's alone."""
    first, second = FunctionTask("a", None, print), FunctionTask("b", None, print)
    first.timeout, first.max_instances, first.tags = 5.0, 3, ["nightly"]  # a list: not shareable
    for task in (first, second):
        scheduler.add_task(task, IntervalRule(seconds=10))
    statuses = [scheduler.get_task_status(task_id) for task_id in ("a", "b")]
    assert [(s["timeout"], s["max_instances"], s["tags"]) for s in statuses] == [
        (5.0, 3, ["nightly"]),
        (scheduler.config.tasks.default_timeout, 1, []),
    ]


def test_a_subclass_defining_a_setting_itself_is_refused() -> None:
    """A class attribute ``timeout = 30`` (as Celery task classes say it) or a property
    of a setting's name would change what the task reports, not what the scheduler
    does: defining the class says so."""
    with pytest.raises(
        TypeError, match=r"Backup\.timeout: a task setting is not a class attribute; pass it to BaseTask"
    ):

        class Backup(BaseTask):
            timeout = 30.0

    with pytest.raises(TypeError, match=r"Report\.enabled: a task setting is not a class attribute"):

        class Report(BaseTask):
            @property
            def enabled(self) -> bool:
                return False


def test_settings_set_from_two_threads_are_both_kept() -> None:
    """Each write swaps the task's shared settings object: two threads writing two
    settings of one task must not undo each other's writes."""
    task = FunctionTask("job", None, print)
    lost: list[str] = []

    def write(name: str) -> None:
        for value in range(1, 3001):
            setattr(task, name, value)
            if getattr(task, name) != value:
                lost.append(name)

    before = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        writers = [threading.Thread(target=write, args=(name,)) for name in ("timeout", "max_retries")]
        for writer in writers:
            writer.start()
        for writer in writers:
            writer.join()
    finally:
        sys.setswitchinterval(before)
    assert lost == [] and (task.timeout, task.max_retries) == (3000, 3000)


def test_a_rule_that_cannot_say_what_it_is_is_refused_at_add(scheduler: TaskScheduler) -> None:
    """A rule class of the user's own whose fingerprint fails is refused by add_task,
    not accepted to break every later status call."""

    class Hourly(ScheduleRule):
        def __init__(self) -> None:
            self._init_common(None, None, None, 0, {})

        def next_fire_time(self, after: datetime) -> datetime:
            return after + timedelta(hours=1)

        def describe(self) -> str:
            return "every hour"

    with pytest.raises(NotImplementedError):  # ScheduleRule.to_dict
        scheduler.add_task(FunctionTask("job", None, print), Hourly())
    scheduler.add_task(FunctionTask("other", None, print), IntervalRule(hours=1))
    assert scheduler.get_task_status("other")["status"] == "scheduled"
    with pytest.raises(TaskNotFoundError):
        scheduler.get_task_status("job")


def test_bad_additions_are_rejected_and_change_nothing(scheduler: TaskScheduler, clock: ManualClock) -> None:
    recorder = Recorder(clock)
    scheduler.add_task(recorder.task("job"), IntervalRule(seconds=1))
    with pytest.raises(TaskError, match="'job' is already registered"):
        scheduler.add_task(recorder.task("job"), IntervalRule(seconds=5))
    with pytest.raises(TaskError, match="script not found"):
        scheduler.add_task(ScriptTask("ghost", "ghost", "scripts/ghost.py"), IntervalRule(seconds=1))
    with pytest.raises(TaskError, match="expected a ScheduleRule"):
        scheduler.add_task(recorder.task("x"), "every minute")  # type: ignore[arg-type]
    with pytest.raises(TaskNotFoundError, match="no task with id 'nope'"):
        scheduler.pause_task("nope")
    step(scheduler, clock, 1)
    assert [t.task_id for t in scheduler.get_tasks()] == ["job"] and len(recorder.calls) == 1


def test_a_raising_listener_is_isolated(scheduler: TaskScheduler, clock: ManualClock) -> None:
    seen: list[str] = []

    def bad(event: object) -> None:
        raise RuntimeError("listener bug")

    scheduler.add_listener(bad)
    scheduler.add_listener(lambda event: seen.append(event.type.name))
    scheduler.add_task(FunctionTask("job", "job", lambda: None), IntervalRule(seconds=1))
    step(scheduler, clock, 1)
    step(scheduler, clock, 1)
    assert seen.count("EXECUTED") == 2 and seen.count("SUBMITTED") == 2


def test_script_task_through_the_scheduler(scheduler: TaskScheduler, clock: ManualClock, base_dir: Any) -> None:
    write_script(
        base_dir, "count.py", "import os\nopen(os.environ['TASK_SCHEDULER_DATA_DIR'] + '/n', 'a').write('x')\n"
    )
    (base_dir / "data").mkdir(exist_ok=True)
    scheduler.add_task(ScriptTask("count", "count", "scripts/count.py"), CronRule(cron="* * * * * *"))
    for _ in range(3):
        step(scheduler, clock, 1)
    assert (base_dir / "data" / "n").read_text() == "xxx"


def test_disabled_task_is_registered_paused(scheduler: TaskScheduler, clock: ManualClock) -> None:
    recorder = Recorder(clock)
    scheduler.add_task(recorder.task("off", enabled=False), IntervalRule(seconds=1))
    step(scheduler, clock, 2)
    assert recorder.calls == [] and scheduler.get_task_status("off")["paused"] is True


def test_background_loop_runs_and_stops(config: SchedulerConfig) -> None:
    """The one real-time test: the loop thread fires a job and stops cleanly."""
    done = threading.Event()
    scheduler = TaskScheduler(config)
    scheduler.add_task(FunctionTask("now", "now", done.set), OnceRule(run_at=datetime.now(UTC)))
    scheduler.start()
    try:
        assert done.wait(10)
    finally:
        scheduler.stop(wait=True, timeout=5)
    assert not scheduler.running
    scheduler.stop()  # idempotent


def test_start_lowers_the_gil_switch_interval_and_never_raises_it(base_dir: Any) -> None:
    """A worker computing in Python keeps the GIL up to the switch interval while the
    loop waits to fire: start() lowers Python's 5 ms to scheduler.switch_interval
    (process-wide), leaves a lower one alone, and null turns it off."""
    before = sys.getswitchinterval()
    sys.setswitchinterval(0.005)
    try:
        for setting, expected in ((0.002, 0.002), (None, 0.002), (0.004, 0.002), (0.001, 0.001)):
            config = SchedulerConfig.from_dict(
                {
                    "scheduler": {"timezone": "UTC", "base_dir": str(base_dir), "switch_interval": setting},
                    "store": {"url": "memory://"},
                    "logging": {"log_file": None},
                }
            )
            scheduler = TaskScheduler(config)
            scheduler.start()
            scheduler.stop()
            assert sys.getswitchinterval() == pytest.approx(expected)
    finally:
        sys.setswitchinterval(before)


def test_reschedule_remove_listener_and_context_manager(config: SchedulerConfig, clock: ManualClock) -> None:
    seen: list[str] = []

    def listener(event: Any) -> None:
        seen.append(event.task_id)

    with TaskScheduler(config, clock=clock) as scheduler:
        recorder = Recorder(clock)
        scheduler.add_task(recorder.task("job"), IntervalRule(seconds=10))
        scheduler.add_listener(listener, EventType.EXECUTED)
        scheduler.reschedule_task("job", IntervalRule(seconds=3))
        step(scheduler, clock, 3)
        scheduler.remove_listener(listener)
        step(scheduler, clock, 3)
        assert [when for _, when in recorder.calls] == [T0 + timedelta(seconds=3), T0 + timedelta(seconds=6)]
        assert seen == ["job"]
        [first, _] = sorted(scheduler.store.history("job"), key=lambda r: r.scheduled_for)
        assert first.queue_delay is not None and first.to_dict()["queue_delay"] == first.queue_delay
    assert not scheduler.running and scheduler._stopped


def test_history_is_pruned_by_count_and_age(config: SchedulerConfig, clock: ManualClock) -> None:
    config.history.max_runs_per_task = 3
    config.history.max_age_days = 1
    scheduler = TaskScheduler(config, clock=clock)
    scheduler.add_task(FunctionTask("tick", "tick", lambda: None), IntervalRule(seconds=60))
    for _ in range(8):
        step(scheduler, clock, 60)
    # (the memory store bounds its history with the same setting as it goes)
    assert len(scheduler.store.history("tick")) == (3 if config.store.url == "memory://" else 8)
    scheduler.pause_task("tick")  # no new records from here on
    step(scheduler, clock, 600)  # ten more minutes on the monotonic clock: the pruner runs
    scheduler._maintenance.join(10)
    assert len(scheduler.store.history("tick")) == 3
    clock.advance(2 * 86400)
    scheduler.run_due()
    scheduler._maintenance.join(10)
    assert scheduler.store.history("tick") == []  # all older than a day
    scheduler.stop()


def test_scheduled_decorator(scheduler: TaskScheduler, clock: ManualClock) -> None:
    calls: list[str] = []

    @scheduler.scheduled(interval=5, max_retries=0)
    def every_five() -> None:
        calls.append("five")

    @scheduler.scheduled(cron="*/2 * * * * *", task_id="even")
    def every_two_seconds() -> None:
        calls.append("two")

    assert every_five() is None and calls == ["five"]  # still a plain function
    calls.clear()
    for _ in range(5):
        step(scheduler, clock, 1)
    assert sorted(calls) == ["five", "two", "two", "two"]  # cron: 0 (it matches now), 2, 4
    assert scheduler.get_task_status("even")["schedule"] == "cron '*/2 * * * * *' (UTC)"
    assert scheduler.get_task(f"{__name__}.test_scheduled_decorator.<locals>.every_five").name == "every_five"
    with pytest.raises(TaskError, match="needs one of"):
        scheduler.scheduled(cron="* * * * *", interval=5)
    with pytest.raises(TaskError, match="needs one of"):
        scheduler.scheduled()


def test_after_stop_status_and_history_answer_and_changes_are_refused(
    config: SchedulerConfig, clock: ManualClock
) -> None:
    """Scripts and tests stop the scheduler, then read the stats: the final state
    answers (counts equal to what the history holds); changing anything says why."""
    scheduler = TaskScheduler(config, clock=clock)
    scheduler.add_task(FunctionTask("tick", "tick", lambda: None), IntervalRule(seconds=10))
    scheduler.add_task(FunctionTask("fail", "fail", lambda: 1 / 0), IntervalRule(seconds=10))
    for _ in range(3):
        step(scheduler, clock, 10)
    scheduler.stop()
    status = scheduler.get_task_status("tick")
    assert status["run_count"] == 3 == len(scheduler.store.history("tick"))
    totals = scheduler.get_task_status()
    assert totals["total_runs"] == 6 and totals["failed_runs"] == 3 and totals["scheduler_running"] is False
    assert [task.task_id for task in scheduler.get_tasks()] == ["tick", "fail"]
    assert scheduler.store.task_states()["fail"].failure_count == 3
    for change in (
        lambda: scheduler.add_task(FunctionTask("new", "new", lambda: None), IntervalRule(seconds=1)),
        lambda: scheduler.pause_task("tick"),
        lambda: scheduler.resume_task("tick"),
        lambda: scheduler.run_now("tick"),
        lambda: scheduler.remove_task("tick"),
    ):
        with pytest.raises(TaskSchedulerError, match="the scheduler is stopped"):
            change()
