"""systemd's notify protocol (``Type=notify``) and watchdog, without libsystemd.

Under systemd (``$NOTIFY_SOCKET`` set) the service sends, as datagrams on that Unix
socket (a leading ``@`` names the abstract namespace):

- ``READY=1`` once its jobs are loaded and the loop has made its first step
  (start-up recovery included), so ``systemctl start`` returns when it really runs;
- ``WATCHDOG=1`` every half ``WatchdogSec`` (``$WATCHDOG_USEC``), but only while the
  loop keeps stepping: a loop stuck for half the watchdog interval stops the pings,
  and systemd kills and restarts the service (``Restart=on-failure``). Set
  ``WatchdogSec`` above twice ``scheduler.check_interval`` and above the longest
  store wait (``store.busy_timeout``), or a healthy loop sleeping or waiting for a
  lock looks hung (the service warns at start when it is not);
- ``STATUS=...`` every `STATUS_EVERY` seconds: tasks, runs in flight, outcomes since
  start (``systemctl status`` shows it);
- ``STOPPING=1`` when the shutdown begins (the loop has stopped firing).

The variables are removed from the environment once read, so scripts the service
runs do not inherit them. Without ``$NOTIFY_SOCKET`` nothing is sent.

`stderr_is_journal` tells whether stderr is connected to the journal
(``$JOURNAL_STREAM``), where `task_scheduler.logs` drops its own timestamps (the
journal has them) and prefixes the syslog priority (``<3>`` for errors).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable, MutableMapping
from typing import TYPE_CHECKING

from task_scheduler.monitoring import RunTally

if TYPE_CHECKING:
    from task_scheduler.scheduler import TaskScheduler

__all__ = ["SystemdNotifier", "notify", "stderr_is_journal"]

logger = logging.getLogger(__name__)

STATUS_EVERY = 10.0  # seconds between STATUS= updates
POLL_EVERY = 0.5  # how often the notifier looks at the loop (seconds)


def notify(message: str, socket_path: str | None = None) -> bool:
    """Send one notify message (``READY=1``, ...) to ``socket_path`` or
    ``$NOTIFY_SOCKET``; False when there is none or sending failed."""
    path = socket_path if socket_path is not None else os.environ.get("NOTIFY_SOCKET")
    if not path:
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(_address(path))
            sock.sendall(message.encode())
        return True
    except OSError as exc:
        logger.warning("cannot notify systemd at %s: %s", path, exc)
        return False


def _address(path: str) -> str:
    return "\0" + path[1:] if path.startswith("@") else path


def stderr_is_journal(environ: MutableMapping[str, str] | None = None) -> bool:
    """Whether stderr is the journal's stream (``$JOURNAL_STREAM`` is ``dev:inode``
    of it; a redirected stderr does not match and keeps full log lines)."""
    value = (os.environ if environ is None else environ).get("JOURNAL_STREAM", "")
    device, _, inode = value.partition(":")
    try:
        status = os.fstat(2)
        return (status.st_dev, status.st_ino) == (int(device), int(inode))
    except (OSError, ValueError):
        return False


class SystemdNotifier:
    """Tells systemd about ``scheduler``: ready, alive, status, stopping (module doc).

    ``environ`` (default ``os.environ``) is read once and the notify variables are
    removed from it. ``clock`` is the monotonic clock the loop's ``last_step`` uses.
    """

    def __init__(
        self,
        scheduler: TaskScheduler,
        environ: MutableMapping[str, str] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        env = os.environ if environ is None else environ
        self.scheduler = scheduler
        self.socket_path = env.pop("NOTIFY_SOCKET", None) or None
        self.watchdog: float | None = None  # seconds
        usec, pid = env.pop("WATCHDOG_USEC", None), env.pop("WATCHDOG_PID", None)
        if usec and (not pid or pid == str(os.getpid())):
            try:
                self.watchdog = int(usec) / 1_000_000 or None
            except ValueError:
                logger.warning("ignoring WATCHDOG_USEC=%r: not a number", usec)
        self.tally = RunTally()
        self._clock = clock
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._socket: socket.socket | None = None

    @property
    def enabled(self) -> bool:
        return self.socket_path is not None

    def start(self) -> None:
        """Begin watching the scheduler (call after ``scheduler.start()``)."""
        if not self.enabled or self._thread is not None:
            return
        self.scheduler.add_listener(self.tally.on_event)
        settings = self.scheduler.config
        if self.watchdog is not None:
            slowest = max(2 * settings.scheduler.check_interval, settings.store.busy_timeout)
            if self.watchdog / 2 <= slowest:
                logger.warning(
                    "WatchdogSec=%gs is short: the loop may sleep %gs or wait %gs for the store; a healthy "
                    "service can be killed (set WatchdogSec above %gs)",
                    self.watchdog, settings.scheduler.check_interval, settings.store.busy_timeout, 2 * slowest,
                )  # fmt: skip
        self._thread = threading.Thread(target=self._run, name="task-scheduler-systemd", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Send STOPPING=1 (if not sent yet) and end the thread."""
        if self._thread is None:
            return
        self._stop.set()
        self._thread.join(5)
        self._thread = None

    def send(self, *lines: str) -> bool:
        """One datagram with ``lines``; errors are logged, never raised."""
        assert self.socket_path is not None
        try:
            if self._socket is None:
                self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                self._socket.connect(_address(self.socket_path))
            self._socket.sendall("\n".join(lines).encode())
            return True
        except OSError as exc:
            logger.warning("cannot notify systemd at %s: %s", self.socket_path, exc)
            if self._socket is not None:
                self._socket.close()
                self._socket = None
            return False

    def status(self) -> str:
        """The STATUS= text: tasks, runs in flight, outcomes since start, loop age."""
        counts = self.tally.summary()
        in_flight = counts.pop("in_flight")
        tasks = len(self.scheduler.get_tasks())
        outcomes = ", ".join(f"{count} {state}" for state, count in sorted(counts.items())) or "none yet"
        step = self.scheduler.last_step
        age = "" if step is None else f"; loop stepped {max(0.0, self._clock() - step):.1f}s ago"
        return f"{tasks} task(s), {in_flight} run(s) in flight; since start: {outcomes}{age}"

    def _run(self) -> None:
        try:
            self._watch()
        except Exception:
            logger.exception("systemd notifier failed; no more notifications are sent")
        finally:
            if self._socket is not None:
                self._socket.close()
                self._socket = None

    def _watch(self) -> None:
        scheduler = self.scheduler
        while scheduler.last_step is None:  # the first step: start-up recovery done
            if self._stop.wait(0.05):
                self.send("STOPPING=1")
                return
        self.send("READY=1", f"STATUS={self.status()}")
        logger.info(
            "told systemd the service is ready%s",
            f"; watchdog every {self.watchdog / 2:g}s" if self.watchdog else "",
        )
        next_status = self._clock() + STATUS_EVERY
        next_ping = self._clock()
        stalled = False
        while not self._stop.wait(POLL_EVERY if self.watchdog is None else min(POLL_EVERY, self.watchdog / 4)):
            if not scheduler.running:
                break
            now = self._clock()
            if self.watchdog is not None and now >= next_ping:
                step = scheduler.last_step
                age = now - step if step is not None else float("inf")
                if age < self.watchdog / 2:
                    self.send("WATCHDOG=1")
                    next_ping = now + self.watchdog / 2
                    if stalled:
                        logger.warning("the scheduler loop steps again; watchdog pings resumed")
                    stalled = False
                elif not stalled:
                    stalled = True
                    logger.error("the scheduler loop has not stepped for %.1fs: not pinging the watchdog", age)
            if now >= next_status:
                next_status = now + STATUS_EVERY
                self.send(f"STATUS={self.status()}")
        self.send("STOPPING=1", "STATUS=stopping: waiting for running jobs")
