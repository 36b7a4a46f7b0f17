"""Every quick-start example of the four reference documents (shared/seeds), rewritten
with our imports, runs and proves its job fired.

Clocks: a `ManualClock` drives time; where the seed starts the scheduler for real,
the loop runs with a short ``check_interval`` so that it sees the advanced clock at
once. Comments name the seed and the section each example comes from.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from task_scheduler import (
    BaseTask,
    FunctionTask,
    ManualClock,
    RetryPolicy,
    RunState,
    SchedulerConfig,
    ScheduleRule,
    ScheduleType,
    ScriptTask,
    TaskError,
    TaskScheduler,
    cron,
    decorators,
    interval,
    load_config,
    once,
    register_handler,
    scheduled,
)
from task_scheduler.aio import AsyncScheduler as Scheduler
from task_scheduler.handlers import unregister_handler
from task_scheduler.shared import SharedStore
from task_scheduler.workqueue import HandlerScheduler, WorkQueue
from tests.conftest import write_script

FIRED: list[str] = []


@pytest.fixture(autouse=True)
def fresh() -> Iterator[None]:
    FIRED.clear()
    decorators.forget_declarations()
    decorators.set_default_scheduler(None)
    yield
    decorators.forget_declarations()
    decorators.set_default_scheduler(None)
    for task_type in ("download_audio", "convert_format", "test_task", "download_bilibili_audio"):
        unregister_handler(task_type)


def live_config(tmp_path: Path, store: str = "memory://", **scheduler: Any) -> SchedulerConfig:
    """A config whose loop notices an advanced ManualClock within 10 ms."""
    return SchedulerConfig.from_dict({
        "scheduler": {"check_interval": 0.01, "timezone": "UTC", "base_dir": str(tmp_path), **scheduler},
        "store": {"url": store}, "logging": {"log_file": None}, "tasks": {"retry_jitter": 0},
    })  # fmt: skip


async def tick_until(clock: ManualClock, condition: Callable[[], bool], step: float = 1.0, limit: int = 400) -> None:
    """Advance the clock ``step`` seconds at a time until ``condition()``."""
    for _ in range(limit):
        if condition():
            return
        clock.advance(step)
        await asyncio.sleep(0.015)
    raise AssertionError("the job did not fire")


# -- 000: chronflow README -------------------------------------------------------------------


def test_000_basic_usage(tmp_path: Path) -> None:
    clock = ManualClock(datetime(2030, 1, 1, tzinfo=UTC))
    scheduler = Scheduler(live_config(tmp_path), clock=clock)

    @cron("*/5 * * * * *")  # every 5 s
    async def task1() -> None:
        FIRED.append("task1")

    @interval(30)  # every 30 s
    async def task2() -> None:
        FIRED.append("task2")

    async def main() -> None:
        runner = asyncio.create_task(scheduler.start())  # the seed awaits it: it runs until stopped
        await tick_until(clock, lambda: "task2" in FIRED)
        await scheduler.stop()
        await runner

    asyncio.run(main())
    assert FIRED.count("task1") >= 6 and FIRED.count("task2") == 1


def test_000_sqlite_persistence(tmp_path: Path) -> None:
    # SQLiteBackend(db_path="scheduler.db") -> the store URL; RedisBackend has no counterpart (use SQLite)
    clock = ManualClock(datetime(2030, 1, 1, 23, 59, 30, tzinfo=UTC))
    scheduler = Scheduler(live_config(tmp_path, "sqlite://scheduler.db", max_workers=20), clock=clock)

    @interval(60)
    async def sync_task() -> None:
        FIRED.append("sync")

    @cron("0 0 * * *")  # midnight
    async def daily_cleanup() -> None:
        FIRED.append("cleanup")

    async def main() -> None:
        await scheduler.start(block=False)
        await tick_until(clock, lambda: "sync" in FIRED and "cleanup" in FIRED)
        await scheduler.stop()

    asyncio.run(main())
    assert (tmp_path / "scheduler.db").exists()
    assert TaskScheduler(live_config(tmp_path, "sqlite://scheduler.db")).store.task_states()["sync_task"].run_count == 1


def test_000_advanced_usage(scheduler: TaskScheduler, clock: ManualClock) -> None:
    clock.set(datetime(2025, 12, 31, 23, 59, 40, tzinfo=UTC))
    decorators.set_default_scheduler(scheduler)
    attempts: list[int] = []

    @scheduled(
        interval=10,
        retry_policy=RetryPolicy(max_attempts=5, strategy="exponential", wait_min=1.0, wait_max=60.0),
        timeout=30.0,  # 30 s
        max_instances=3,
        tags=["critical", "data-sync"],
    )
    async def important_task() -> None:
        attempts.append(1)
        if len(attempts) < 3:
            raise ConnectionError("flaky upstream")

    @once(at=datetime(2025, 12, 31, 23, 59, 59, tzinfo=UTC))
    async def new_year_celebration() -> None:
        FIRED.append("新年快乐!")

    for _ in range(25):
        clock.advance(1)
        scheduler.run_due()
        scheduler.wait_for_runs(10)
    assert FIRED == ["新年快乐!"]
    metrics = scheduler.get_task_status("important_task")
    assert len(attempts) >= 3 and metrics["success_count"] >= 1  # retried with backoff 1 s, 2 s, then succeeded
    assert [info.name for info in decorators.get_task_by_tag("critical", scheduler)] == ["important_task"]


def test_000_config_file_and_stats(tmp_path: Path) -> None:
    # config.toml in our shape (the README's "Coming from chronflow" maps the keys)
    (tmp_path / "config.toml").write_text(
        '[scheduler]\nmax_workers = 20\nshutdown_timeout = 60.0\nlog_level = "INFO"\ntimezone = "Asia/Shanghai"\n'
        '[store]\nurl = "sqlite://scheduler_state.db"\n[logging]\nlog_file = "scheduler.log"\nconsole = false\n'
    )
    config = load_config(tmp_path / "config.toml")  # SchedulerConfig.from_file("config.toml")
    clock = ManualClock()
    scheduler = Scheduler(config, clock=clock)

    @interval(1, name="task_name")
    def job() -> None:
        FIRED.append("job")

    for _ in range(3):
        clock.advance(1)
        scheduler.scheduler.run_due()
        scheduler.scheduler.wait_for_runs(10)

    async def main() -> dict[str, Any]:
        return await scheduler.get_stats()

    stats = asyncio.run(main())
    assert stats["max_workers"] == 20 and stats["backend"] == "SQLiteStore" and stats["total_tasks"] == 1
    assert scheduler.get_task("task_name").metrics.total_runs == 3 == len(FIRED)
    scheduler.scheduler.stop()


# -- 001: chronflow integration guide ----------------------------------------------------------


def test_001_duplicate_registration_pitfall(scheduler: TaskScheduler) -> None:
    decorators.set_default_scheduler(scheduler)

    def init_tasks() -> None:  # the "wrong" way: a decorator inside a function called twice
        @interval(seconds=10, name="my_task")
        async def my_task() -> None:
            print("执行任务...")

    init_tasks()
    init_tasks()
    assert [task["name"] for task in decorators.list_tasks(scheduler)] == ["my_task"]  # still one task
    with pytest.raises(TaskError, match="cannot take the same name"):

        @interval(seconds=10, name="my_task")
        async def another_task() -> None: ...

    print([d.task_id for d in decorators.declarations()])  # the seed's _pending_tasks check


def test_001_embedded_in_an_async_application(tmp_path: Path) -> None:
    clock = ManualClock()

    @interval(seconds=30)
    async def health_check() -> None:
        FIRED.append("执行健康检查...")

    class Application:
        def __init__(self) -> None:
            self.scheduler = Scheduler(live_config(tmp_path), clock=clock)

        async def startup(self) -> None:
            self.task = asyncio.create_task(self.scheduler.start())  # in the background, non-blocking

        async def shutdown(self) -> None:
            await self.scheduler.stop()

    async def main() -> None:
        app = Application()
        await app.startup()
        await tick_until(clock, lambda: bool(FIRED), step=5)
        stats = await app.scheduler.get_stats()
        assert stats["running"] and stats["total_tasks"] == 1
        await app.shutdown()
        await app.task

    asyncio.run(main())


def test_001_foreground_run_stopped_like_ctrl_c(tmp_path: Path) -> None:
    clock = ManualClock()

    @cron("*/5 * * * * *")
    async def log_task() -> None:
        FIRED.append("记录日志...")

    async def main() -> None:
        scheduler = Scheduler(live_config(tmp_path), clock=clock)
        runner = asyncio.create_task(scheduler.start())  # foreground: blocks
        await tick_until(clock, lambda: len(FIRED) >= 2)
        runner.cancel()  # what Ctrl+C does to asyncio.run's main task
        with pytest.raises(asyncio.CancelledError):
            await runner
        assert not scheduler.running

    asyncio.run(main())


def test_001_monitoring_and_task_control(scheduler: TaskScheduler, clock: ManualClock) -> None:
    face = Scheduler(scheduler=scheduler)

    @interval(seconds=1, name="my_task", tags=["important"])
    def my_task() -> None:
        FIRED.append("run")

    for _ in range(2):
        clock.advance(1)
        scheduler.run_due()
        scheduler.wait_for_runs(10)
    for task in face.list_tasks():
        print(f"{task['name']}")
        print(f"  状态: {task['status']}")
        print(f"  总执行: {task['total_runs']}")
        print(f"  成功率: {task['success_rate']:.1f}%")
    face.pause_task("my_task")
    assert [t.name for t in face.get_task_by_status("paused")] == ["my_task"]
    face.resume_task("my_task")
    assert [t.name for t in face.get_task_by_tag("important")] == ["my_task"]
    assert face.list_tasks()[0]["total_runs"] == 2 == len(FIRED)


def test_001_yaml_and_environment_config(tmp_path: Path) -> None:
    (tmp_path / "config.yaml").write_text(
        "scheduler:\n  max_workers: 10\n  timezone: Asia/Shanghai\nstore:\n  url: 'memory://'\n"
    )
    config = load_config(tmp_path / "config.yaml", environ={"TASK_SCHEDULER__SCHEDULER__MAX_WORKERS": "5"})
    assert config.scheduler.max_workers == 5 and config.scheduler.timezone == "Asia/Shanghai"


# -- 002: the enterprise TaskScheduler (our native API) ----------------------------------------


def test_002_quick_start(base_dir: Path, clock: ManualClock) -> None:
    write_script(base_dir, "updata.py", "print('uploaded')\n")
    config = SchedulerConfig.from_dict({"scheduler": {"base_dir": str(base_dir), "timezone": "UTC"},
                                        "store": {"url": "memory://"}, "logging": {"log_file": None}})  # fmt: skip
    scheduler = TaskScheduler(config, clock=clock)
    task = ScriptTask(task_id="data_upload", name="数据上传任务", script_path="scripts/updata.py")
    schedule = ScheduleRule(ScheduleType.INTERVAL, seconds=3600)
    scheduler.add_task(task, schedule)

    def my_function(param1: str, param2: str, key: str) -> bool:
        FIRED.append(f"{param1} {param2} {key}")
        return True

    scheduler.add_task(FunctionTask(task_id="func_task", name="函数任务", func=my_function, args=("arg1", "arg2"),
                                    kwargs={"key": "value"}, description="执行自定义函数"),
                       ScheduleRule(ScheduleType.ONCE, run_at=clock.now() + timedelta(minutes=5)))  # fmt: skip

    class CustomTask(BaseTask):
        def execute(self) -> bool:
            FIRED.append("custom")
            return True

    scheduler.add_task(CustomTask("custom", "Custom"), ScheduleRule(ScheduleType.INTERVAL, seconds=30))
    for seconds in (300, 3300):  # five minutes, then the rest of the hour
        clock.advance(seconds)
        scheduler.run_due()
        assert scheduler.wait_for_runs(30)
    assert scheduler.get_task_status("data_upload")["success_count"] == 1
    # each jump's 30 s fires coalesce into one run (the late ones are recorded missed)
    assert sorted(FIRED) == ["arg1 arg2 value", "custom", "custom"]
    scheduler.stop()


# -- 003: a framework's guide to APScheduler ----------------------------------------------------


JOBS: list[tuple[str, Any]] = []


async def daily_report() -> None:
    JOBS.append(("daily_report", None))


async def process_user(user_id: str, action: str = "default") -> None:
    JOBS.append((user_id, action))


async def health_check() -> None:
    JOBS.append(("health_check", None))


async def delayed_task() -> None:
    JOBS.append(("delayed_task", None))


def test_003_apscheduler_guide(clock: ManualClock) -> None:
    from task_scheduler.compat.apscheduler import (
        EVENT_JOB_ERROR,
        EVENT_JOB_EXECUTED,
        CronTrigger,
        DateTrigger,
        IntervalTrigger,
        SchedulerManager,
    )

    JOBS.clear()
    scheduler = SchedulerManager.get_instance("guide", timezone="UTC", clock=clock)
    events: list[str] = []

    def job_listener(event: Any) -> None:
        events.append(f"{'failed' if event.exception else 'done'}: {event.job_id}")

    scheduler.scheduler.add_listener(job_listener, EVENT_JOB_EXECUTED | EVENT_JOB_ERROR)
    try:
        scheduler.add_job(daily_report, "cron", hour=2, minute=30, id="daily_report")
        scheduler.add_job(daily_report, CronTrigger(hour=2, minute=30), id="daily_report", replace_existing=True)
        scheduler.add_job(daily_report, "cron", day_of_week="mon", hour=9, id="weekly_summary")
        scheduler.add_job(daily_report, "cron", day=1, hour=0, id="monthly_cleanup")
        scheduler.add_job(daily_report, "cron", day_of_week="mon-fri", hour="*", id="workday_check")
        scheduler.add_job(daily_report, CronTrigger.from_crontab("0 2 * * *"), id="daily_task")
        scheduler.add_job(health_check, "interval", seconds=30, id="heartbeat")
        scheduler.add_job(health_check, IntervalTrigger(minutes=5), id="sync_data")
        run_time = clock.now() + timedelta(seconds=10)
        scheduler.add_job(delayed_task, DateTrigger(run_date=run_time), id="delayed_task")
        scheduler.add_job(process_user, "cron", hour=3, args=["user123"], kwargs={"action": "sync"},
                          id="process_user_sync")  # fmt: skip

        @scheduler.scheduled_job(IntervalTrigger(minutes=5))
        async def sync_from_external_api() -> None:
            JOBS.append(("sync_from_external_api", None))

        for job in scheduler.get_jobs():
            print(f"任务: {job.id}, 下次执行: {job.next_run_time}, 状态: {'暂停' if job.paused else '运行中'}")
        assert scheduler.get_job("daily_report") is not None
        scheduler.pause_job("daily_report")
        scheduler.resume_job("daily_report")
        scheduler.reschedule_job("daily_report", trigger=CronTrigger(hour=3, minute=0))
        for _ in range(4 * 60):  # four hours, a minute at a time
            clock.advance(60)
            scheduler.task_scheduler.run_due()
            scheduler.task_scheduler.wait_for_runs(10)
        assert ("delayed_task", None) in JOBS and ("user123", "sync") in JOBS
        assert ("sync_from_external_api", None) in JOBS and ("daily_report", None) in JOBS
        assert "done: heartbeat" in events
        scheduler.remove_job("daily_report")
        scheduler.remove_all_jobs()
        assert scheduler.get_jobs() == []
        report_scheduler = SchedulerManager.get_instance("report")
        cleanup_scheduler = SchedulerManager.get_instance("cleanup")
        assert report_scheduler is not cleanup_scheduler
    finally:
        SchedulerManager.shutdown_all()


# -- 004: the message queue + shared store + database-backed scheduler ---------------------------


def test_004_queue_shared_store_and_workers(scheduler: TaskScheduler) -> None:
    queue = WorkQueue()  # get_queue()
    public = SharedStore(scheduler)
    task_id = queue.push_task(
        {"type": "download_audio", "params": {"url": "https://example.com/song.mp3", "save_path": "/music/song.mp3"}}
    )
    queue.push_task({"task_id": "my-custom-id", "type": "convert_format",
                     "params": {"input": "song.mp3", "output": "song.flac"}})  # fmt: skip
    processed: list[tuple[int, str]] = []

    def worker(worker_id: int) -> None:
        while True:
            task = queue.pop_task(timeout=0.2)
            if task is None:
                return
            processed.append((worker_id, task["task_id"]))
            queue.task_done()

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert sorted(t for _, t in processed) == sorted([task_id, "my-custom-id"]) and queue.is_empty()

    public.set_public("api_key", "your_api_key")
    public.set_public("session_token", "token123", ttl=60)
    assert public.get_public("api_key") == "your_api_key"
    public.delete_public("session_token")
    public.set_public("bilibili_cookie", "SESSDATA=xxx; bili_jct=yyy", ttl=3600)
    public.set_public(f"task_{task_id}_status", "pending")
    print(f"队列大小: {queue.get_queue_size()}, 所有键: {public.list_keys()}")
    assert public.list_keys() == ["api_key", "bilibili_cookie", f"task_{task_id}_status"]


def test_004_scheduler_tasks_flow_through_the_queue(tmp_path: Path) -> None:
    clock = ManualClock(datetime(2030, 1, 1, 1, 59, tzinfo=UTC))
    config = live_config(tmp_path, "sqlite://tasks.db")
    queue = WorkQueue()
    scheduler = HandlerScheduler(TaskScheduler(config, clock=clock), queue=queue)  # get_scheduler()
    done: list[str] = []

    def process_download_audio(params: dict[str, Any]) -> None:
        done.append(f"download {params['url']}")

    def process_convert_format(params: dict[str, Any]) -> None:
        done.append(f"convert {params['input_file']}")

    TASK_HANDLERS = {"download_audio": process_download_audio, "convert_format": process_convert_format}  # noqa: N806
    stop = threading.Event()

    def worker(worker_id: int) -> None:  # the seed's own worker loop, unchanged but for task_done
        while not stop.is_set():
            task = queue.pop_task(timeout=0.05)
            if task:
                handler = TASK_HANDLERS.get(task["type"])
                if handler:
                    try:
                        handler(task.get("params", {}))
                        queue.task_done()
                    except Exception as e:  # noqa: BLE001 - the seed's worker catches everything
                        queue.task_done(task, error=e)  # so the run is recorded failed at once

    for i in range(3):
        threading.Thread(target=worker, args=(i,), daemon=True).start()
    scheduler.start()
    try:
        shared = SharedStore(scheduler.scheduler)
        shared.set_public("bilibili_cookie", "SESSDATA=xxx", ttl=3600)
        scheduler.add_scheduler_task(
            name="每小时下载收藏夹",
            task_type="download_audio",
            schedule_type="interval",
            interval_seconds=3600,
            params={"url": "https://example.com/favorites"},
        )
        scheduler.add_scheduler_task(
            name="每日格式转换",
            task_type="convert_format",
            schedule_type="cron",
            cron_expression="0 2 * * *",
            params={"input_file": "/music/temp", "output_format": "flac"},
        )
        scheduler.add_scheduler_task(name="延迟下载", task_type="download_audio", schedule_type="once",
                                     execute_at=int(clock.now().timestamp()) + 5,
                                     params={"url": "https://example.com/song.mp3"})  # fmt: skip
        deadline = time.monotonic() + 20
        wanted = {"download https://example.com/song.mp3", "convert /music/temp"}  # at 01:59:05 and 02:00
        while not wanted <= set(done) and time.monotonic() < deadline:
            clock.advance(5)
            time.sleep(0.02)
        assert wanted <= set(done)
        tasks = {t["name"]: t for t in scheduler.list_tasks(enabled_only=False)}
        for name, task in tasks.items():
            print(f"{name}: 执行{task['run_count']}次")
        assert tasks["延迟下载"]["run_count"] == 1 and tasks["每日格式转换"]["run_count"] == 1
        assert tasks["每小时下载收藏夹"]["next_run_at"] == int(datetime(2030, 1, 1, 2, 59, tzinfo=UTC).timestamp())
        assert scheduler.scheduler.store.history(tasks["延迟下载"]["task_id"])[0].state is RunState.SUCCEEDED
    finally:
        stop.set()
        scheduler.stop(timeout=5)


def test_004_one_click_startup_script(tmp_path: Path) -> None:
    """start_queue_system.py: handlers registered by type, max_runs=5, every 10 s."""
    clock = ManualClock()
    register_handler("test_task", lambda params: FIRED.append(params["message"]))
    scheduler = HandlerScheduler(TaskScheduler(live_config(tmp_path, "sqlite://tasks.db"), clock=clock),
                                 queue=WorkQueue(), workers=3)  # fmt: skip
    scheduler.start()
    try:
        scheduler.add_scheduler_task(name="测试任务", task_type="test_task", schedule_type="interval",
                                     interval_seconds=10, params={"message": "Hello from scheduler!"}, max_runs=5,
                                     description="每10秒执行一次,共5次")  # fmt: skip
        deadline = time.monotonic() + 20
        while len(FIRED) < 5 and time.monotonic() < deadline:
            clock.advance(10)
            time.sleep(0.03)
        for _ in range(5):
            clock.advance(10)
            time.sleep(0.02)
        assert FIRED == ["Hello from scheduler!"] * 5  # max_runs: exactly five
        assert scheduler.list_tasks(enabled_only=True) == []  # finished
    finally:
        scheduler.stop(timeout=5)
