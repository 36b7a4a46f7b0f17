"""Running the service: the `TaskScheduler` plus its operational faces.

``task-scheduler run`` calls `run_service`: logging, the scheduler, then what the
config asks for around it - the HTTP API/metrics/dashboard (``http.enabled``,
`task_scheduler.web.server`), failure notifications (`task_scheduler.notify`), the
systemd notifier when ``$NOTIFY_SOCKET`` is set (`task_scheduler.systemd`) - and
`TaskScheduler.run_forever` until SIGTERM/SIGINT. The faces attach through the
scheduler's public API and events; none holds scheduling logic.

Daemon mode, for hosts without systemd (``run --daemon [--pidfile PATH]``):

- everything that can fail early (the config, its jobs, a pidfile held by a running
  daemon) fails in the foreground with the usual message and exit code;
- the process forks twice with a ``setsid`` between (no controlling terminal, not a
  session leader, so it can never get one back), changes to the config's
  ``base_dir`` (as the systemd unit's ``WorkingDirectory``), and keeps an exclusive
  lock on the pidfile for its whole life: the lock, not the pid in it, tells whether
  the daemon runs, so a stale pidfile or a reused pid is never mistaken for it;
- stdin becomes /dev/null and stdout/stderr (fds 1 and 2, not just Python's
  objects: so output of C code and of tracebacks at exit goes there too) are
  appended to the log file (``logging.log_dir``/``log_file``, required). The fds
  0-2 are replaced, never closed, so no file opened later can land on them. Logging
  writes no console copy (stderr is the file), and after each rotation fds 1 and 2
  follow to the new file;
- the command returns only when the daemon is ready (its first loop step done) and
  prints its pid, or, when it died during start-up, the last lines of its log with
  exit code 1.

`stop_daemon` (``task-scheduler stop``) sends SIGTERM to the pid in the pidfile if
its lock is held, and waits for the lock to be released (the process is gone) up to
a timeout: the service's own shutdown (``shutdown_timeout``, then killing scripts)
plus a margin.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from task_scheduler.errors import ConfigError, TaskSchedulerError

if TYPE_CHECKING:
    from task_scheduler.config import SchedulerConfig
    from task_scheduler.scheduler import TaskScheduler

__all__ = ["default_pidfile", "reload_config", "run_service", "serve_forever", "stop_daemon"]

logger = logging.getLogger(__name__)

READY_WAIT = 120.0  # seconds ``run --daemon`` waits for the daemon to be ready
_READY = b"R"


def serve_forever(scheduler: TaskScheduler) -> int:
    """`TaskScheduler.run_forever`: start, then wait for SIGTERM/SIGINT (stop
    gracefully, return 0) while SIGHUP reloads the config. Main thread only."""
    stop, reload = threading.Event(), threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        (reload if signum == signal.SIGHUP else stop).set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
    try:
        scheduler.start()
        while not stop.wait(scheduler.config.scheduler.check_interval):
            if reload.is_set():
                reload.clear()
                scheduler.reload_config()
        logger.info("received stop signal; shutting down")
        scheduler.stop(wait=True)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0


def default_pidfile(config: SchedulerConfig) -> Path:
    """Where ``run --daemon`` and ``stop`` put and find the pidfile by default."""
    return config.data_dir / "task-scheduler.pid"


def run_service(config: SchedulerConfig, *, daemon: bool = False, pidfile: Path | None = None) -> int:
    """Run the scheduler and its faces until a stop signal; returns the exit code."""
    from task_scheduler import __version__
    from task_scheduler.logs import ResilientFileHandler, configure_logging
    from task_scheduler.scheduler import TaskScheduler

    ready_pipe: int | None = None
    if daemon:
        ready_pipe = _daemonize(config, pidfile or default_pidfile(config))
        ResilientFileHandler.stdio_follows = True
    log_file = configure_logging(config)
    scheduler = TaskScheduler(config)
    logger.info("task_scheduler %s starting with %s (log file %s)", __version__, config.source, log_file or "none")
    faces = _Faces(scheduler)
    try:
        faces.start()
    except OSError as exc:  # the HTTP port is taken, ...
        logger.error("cannot start: %s", exc)
        scheduler.stop(wait=False)
        raise TaskSchedulerError(f"cannot serve HTTP on {config.http.host}:{config.http.port}: {exc}") from exc
    if ready_pipe is not None:
        _when_ready(scheduler, lambda: _signal_ready(ready_pipe))
    try:
        code = scheduler.run_forever()
    finally:
        faces.stop()
    stuck = [
        t.name for t in threading.enumerate() if t is not threading.main_thread() and not t.daemon and t.is_alive()
    ]
    if stuck:
        # Python threads cannot be killed: a function that ignores its cancel event
        # would keep the process alive forever. Say so, then leave anyway; the last
        # line of the log still says that the scheduler stopped.
        logger.warning("scheduler stopped; exiting with %d task thread(s) still running: %s", len(stuck), stuck)
        logging.shutdown()
        os._exit(code)
    return code


class _Faces:
    """The operational faces of one scheduler, started and stopped together."""

    def __init__(self, scheduler: TaskScheduler) -> None:
        from task_scheduler.notify import Notifier
        from task_scheduler.systemd import SystemdNotifier

        self.scheduler = scheduler
        self.notifier = Notifier.for_scheduler(scheduler)
        self.systemd = SystemdNotifier(scheduler)
        self.web = None
        if scheduler.config.http.enabled:
            from task_scheduler.web.server import WebServer

            self.web = WebServer(scheduler, scheduler.config.http)

    def start(self) -> None:
        if self.web is not None:
            self.web.start()
        self.notifier.start()
        self.systemd.start()

    def stop(self) -> None:
        self.systemd.stop()
        if self.web is not None:
            self.web.stop()
        self.notifier.stop(timeout=5.0)


def _when_ready(scheduler: TaskScheduler, callback: Callable[[], None]) -> None:
    """Call ``callback()`` from a thread once the loop has made its first step."""

    def wait() -> None:
        while scheduler.last_step is None:
            time.sleep(0.05)
        callback()

    threading.Thread(target=wait, name="task-scheduler-ready", daemon=True).start()


def _signal_ready(fd: int) -> None:
    with contextlib.suppress(OSError):  # the parent gave up waiting: nothing to tell
        os.write(fd, _READY)
    with contextlib.suppress(OSError):
        os.close(fd)


# -- daemon mode ---------------------------------------------------------------------------


def _daemonize(config: SchedulerConfig, pidfile: Path) -> int:
    """Detach (see the module doc). Returns, in the daemon only, the pipe to write
    "ready" to; the original process exits here with the start-up's outcome."""
    if not config.logging.log_file:
        raise ConfigError("daemon mode writes its output to the log file: set logging.log_file", key="logging.log_file")
    if config.source:
        config.source = str(Path(config.source).resolve())  # the daemon changes directory
    base_dir = config.base_dir
    log_path = config.path(config.logging.log_dir) / config.logging.log_file
    log_path.parent.mkdir(parents=True, exist_ok=True)
    pidfile = pidfile if pidfile.is_absolute() else Path.cwd() / pidfile
    pidfile.parent.mkdir(parents=True, exist_ok=True)
    lock = os.open(pidfile, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        running = os.pread(lock, 32, 0).decode(errors="replace").strip()
        os.close(lock)
        raise TaskSchedulerError(f"already running (pid {running or '?'}, pidfile {pidfile})") from None
    log = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
    read_end, write_end = os.pipe()
    sys.stdout.flush()
    sys.stderr.flush()
    if os.fork() > 0:  # the original process: wait for the daemon's word
        os.close(write_end)
        os.close(lock)
        os._exit(_await_daemon(read_end, pidfile, log_path))
    os.close(read_end)
    os.setsid()
    if os.fork() > 0:  # the session leader: leave, so the daemon can never get a terminal
        os._exit(0)
    os.chdir(base_dir)
    os.ftruncate(lock, 0)
    os.pwrite(lock, f"{os.getpid()}\n".encode(), 0)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.dup2(log, 1)
    os.dup2(log, 2)
    os.close(null)
    os.close(log)
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(AttributeError, ValueError):
            stream.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # until run_forever installs its reload handler
    pid = os.getpid()

    def remove_pidfile() -> None:
        with contextlib.suppress(OSError):
            if pidfile.read_text().strip() == str(pid):
                pidfile.unlink()

    import atexit

    atexit.register(remove_pidfile)
    _keep_open.append(lock)  # the lock lives as long as the process
    return write_end


_keep_open: list[int] = []


def _await_daemon(read_end: int, pidfile: Path, log_path: Path) -> int:
    """In the original process: 0 once the daemon says it is ready, 1 if it died."""
    import select

    ready, _, _ = select.select([read_end], [], [], READY_WAIT)
    word = os.read(read_end, 1) if ready else b""
    pid = ""
    with contextlib.suppress(OSError):
        pid = pidfile.read_text().strip()
    if word == _READY:
        print(f"task-scheduler: started in the background, pid {pid}; log {log_path}; stop: task-scheduler stop")
        return 0
    if not ready:
        print(f"task-scheduler: started, pid {pid}, but not ready after {READY_WAIT:.0f}s; see {log_path}")
        return 0
    tail = ""
    with contextlib.suppress(OSError):
        tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-8:])
    print(f"task-scheduler: the service stopped during start-up; the end of {log_path}:\n{tail}", file=sys.stderr)
    return 1


def stop_daemon(pidfile: Path, timeout: float) -> tuple[bool, str]:
    """SIGTERM the daemon holding ``pidfile`` and wait up to ``timeout`` seconds for
    it to exit. Returns (stopped or was not running, message)."""
    try:
        lock = os.open(pidfile, os.O_RDWR)
    except FileNotFoundError:
        return True, f"not running (no pidfile {pidfile})"
    try:
        if _try_lock(lock):
            with contextlib.suppress(OSError):
                pidfile.unlink()
            return True, f"not running (removed the stale pidfile {pidfile})"
        text = os.pread(lock, 32, 0).decode(errors="replace").strip()
        try:
            pid = int(text)
        except ValueError:
            return False, f"the pidfile {pidfile} is locked but holds no pid ({text!r})"
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        except PermissionError:
            return False, f"not allowed to signal pid {pid} (run as the service's user)"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if _try_lock(lock):
                return True, f"stopped (pid {pid})"
            time.sleep(0.1)
        return False, f"pid {pid} is still running after {timeout:.0f}s (waiting for jobs, or hung: kill -9 {pid})"
    finally:
        os.close(lock)


def _try_lock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    fcntl.flock(fd, fcntl.LOCK_UN)
    return True


def reload_config(scheduler: TaskScheduler) -> bool:
    """`TaskScheduler.reload_config`: re-read the config file and apply its jobs,
    task defaults and logging (SIGHUP)."""
    from task_scheduler.config import load_config
    from task_scheduler.logs import configure_logging
    from task_scheduler.stores.base import Origin

    if not scheduler.config.source:
        logger.warning("reload requested but the scheduler has no config file")
        return False
    try:
        config = load_config(scheduler.config.source)
        pairs = config.build_tasks()
    except TaskSchedulerError as exc:
        logger.error("config reload rejected, keeping the running config: %s", exc)
        return False
    if (config.scheduler, config.store) != (scheduler.config.scheduler, scheduler.config.store):
        logger.warning("the scheduler and store sections changed; they apply at the next start")
        config.scheduler, config.store = scheduler.config.scheduler, scheduler.config.store
    with scheduler._lock:
        old = {task_id for task_id, entry in scheduler._entries.items() if entry.origin is Origin.CONFIG}
    for task_id in old - {task.task_id for task, _, _ in pairs}:
        scheduler.remove_task(task_id)
    scheduler.config = config
    scheduler._add([(task, rule, spec.to_dict(), None) for task, rule, spec in pairs], Origin.CONFIG, True)
    configure_logging(config)
    logger.info("config reloaded from %s: %d job(s)", config.source, len(pairs))
    return True
