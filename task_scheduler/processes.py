"""Supervising the processes scripts run in: their process group, output and resources.

A script runs in its own process group (`task_scheduler.tasks.ScriptTask` starts it).
`GroupKiller` stops a group: SIGTERM, a grace period, SIGKILL; `stop_process_group`
does the same for a group left behind by a dead scheduler process. `read_until_exit`
reads stdout and stderr into bounded tails until the process exits (seen at once
through a pidfd even when a grandchild keeps the pipes open). `MeasuredPopen` reaps
with ``os.wait4`` so the kernel's accounting of the script survives (``Popen.wait``
discards it) and samples the script's memory high-water mark while it runs: the CPU
seconds and peak RSS end up in the run record (``cpu_user``, ``cpu_system``,
``max_rss``), ``task-scheduler show``, the API, the dashboard and the metrics.
"""

from __future__ import annotations

import functools
import logging
import os
import select
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from task_scheduler.tasks import TaskContext

__all__ = [
    "GroupKiller", "MeasuredPopen", "decode", "devnull", "read_until_exit", "report_process", "stop_process_group",
]  # fmt: skip

logger = logging.getLogger(__name__)


class MeasuredPopen(subprocess.Popen[bytes]):
    """A Popen that reaps its child with ``os.wait4`` and keeps its resource use.

    CPU: ``ru_utime``/``ru_stime`` of the script plus the descendants it waited for
    (the kernel folds those in). Peak RSS is subtler: Linux counts the memory image
    the child had *before* exec - the service's own, shared by vfork - in
    ``ru_maxrss``, so /bin/true would report the service's size. The peak is therefore
    the larger of (a) the script's own high-water mark (``VmHWM``, post-exec) sampled
    from /proc while it runs, at most every `PEAK_SAMPLE_EVERY` seconds, and (b)
    ``ru_maxrss`` when it exceeds the service's own peak (then it is the script's or a
    waited-for descendant's, never the service's); None when neither says anything (a
    run shorter than one sample that stayed below the service's size). Descendants
    killed with the group after the script exited are reaped by init and not counted.

    ``poll`` and ``wait`` are the only reaping paths, so Popen itself never calls
    waitpid (which would lose the rusage, or race ours into ECHILD). Cost: one
    wait4 instead of one waitpid per run, and a /proc read per sample.
    """

    PEAK_SAMPLE_EVERY = 0.25
    _reap_lock = threading.Lock()  # reaping is rare and quick: one lock for all

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.rusage: Any = None  # resource.struct_rusage once reaped
        self.sampled_peak: int | None = None  # bytes
        self._next_sample = time.monotonic() + self.PEAK_SAMPLE_EVERY

    def poll(self) -> int | None:
        if self.returncode is None:
            with self._reap_lock:
                if self.returncode is None:
                    try:
                        pid, status, usage = os.wait4(self.pid, os.WNOHANG)
                    except ChildProcessError:  # reaped elsewhere: let Popen decide as it would
                        return super().poll()
                    if pid:
                        self.rusage = usage
                        self.returncode = os.waitstatus_to_exitcode(status)
            if self.returncode is None and time.monotonic() >= self._next_sample:
                self._sample_peak()
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        # Not a blocking wait4: two threads (this one and the group killer's) may
        # wait, and only one reap may happen, under the lock. Exit is awaited on a
        # pidfd (or by short sleeps where there is none), then reaped by poll.
        deadline = None if timeout is None else time.monotonic() + timeout
        delay = 0.0005
        while (code := self.poll()) is None:
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                raise subprocess.TimeoutExpired(self.args, timeout or 0.0)
            pidfd = _pidfd(self.pid)
            if pidfd is None:
                time.sleep(delay if remaining is None else min(delay, remaining))
                delay = min(delay * 2, 0.05)
                continue
            try:
                select.select([pidfd], [], [], remaining)
            finally:
                os.close(pidfd)
        return code

    def _sample_peak(self) -> None:
        self._next_sample = time.monotonic() + self.PEAK_SAMPLE_EVERY
        try:
            with open(f"/proc/{self.pid}/status", "rb") as status:
                for line in status:
                    if line.startswith(b"VmHWM:"):
                        peak = int(line.split()[1]) * 1024
                        self.sampled_peak = max(peak, self.sampled_peak or 0)
                        return
        except (OSError, ValueError, IndexError):
            pass  # gone, or no /proc: ru_maxrss alone decides

    def resources(self) -> tuple[float, float, int | None] | None:
        """(user seconds, system seconds, peak RSS bytes or None) once reaped."""
        if self.rusage is None:
            return None
        import resource

        scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, KiB elsewhere
        reported = self.rusage.ru_maxrss * scale
        own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale
        peaks = [p for p in (self.sampled_peak, reported if reported > own else None) if p is not None]
        return self.rusage.ru_utime, self.rusage.ru_stime, max(peaks) if peaks else None


def _pidfd(pid: int) -> int | None:
    try:
        return os.pidfd_open(pid)
    except (AttributeError, OSError):
        return None


class GroupKiller:
    """SIGTERM to a process group, then SIGKILL after a grace period, at most once."""

    def __init__(self, process: subprocess.Popen[bytes], grace: float) -> None:
        self.process = process
        self.grace = grace
        self.started = False
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def start(self) -> None:
        with self._lock:
            if self.started:
                return
            self.started = True
        if not _signal_group(self.process.pid, signal.SIGTERM):
            return
        self._thread = threading.Thread(target=self._escalate, name=f"kill-{self.process.pid}", daemon=True)
        self._thread.start()

    def _escalate(self) -> None:
        # The leader may exit while others in its group ignore SIGTERM: wait for the
        # whole group, and SIGKILL whatever is left once the grace period is over.
        deadline = time.monotonic() + self.grace
        while time.monotonic() < deadline and _group_alive(self.process.pid):
            self.process.poll()  # reap the leader so a zombie does not count as alive
            time.sleep(0.05)
        _signal_group(self.process.pid, signal.SIGKILL)

    def wait(self) -> None:
        if self._thread is not None:
            self._thread.join()
        self.process.wait()


def report_process(context: TaskContext, pid: int) -> None:
    """Record the script's pid and start time (this moment: its process exists, and a
    restart only compares it with the kernel's to within 2 s to tell a reused pid)."""
    assert context.on_process is not None
    try:
        context.on_process(context.run_id, pid, time.time())
    except Exception:  # the run goes on: this only helps a later restart clean up
        logger.warning("could not record process %d of run %s", pid, context.run_id, exc_info=True)


@functools.cache
def devnull() -> int:
    """One read-only descriptor of /dev/null for every script's stdin (Popen's
    ``DEVNULL`` opens and closes one per process)."""
    return os.open(os.devnull, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))


def stop_process_group(pgid: int, grace: float) -> None:
    """SIGTERM to a process group, then SIGKILL to what is left after ``grace``
    seconds; returns once no process of the group runs any more (zombies waiting for
    a parent that is not us to reap them count as gone)."""
    if not _signal_group(pgid, signal.SIGTERM):
        return
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and _group_running(pgid):
        time.sleep(0.05)
    _signal_group(pgid, signal.SIGKILL)
    deadline = time.monotonic() + 5.0
    while time.monotonic() < deadline and _group_running(pgid):
        time.sleep(0.02)


def _group_running(pgid: int) -> bool:
    """Whether a process of group ``pgid`` that is not a zombie exists (/proc on Linux)."""
    proc = Path("/proc")
    if not proc.is_dir():
        return _group_alive(pgid)
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()  # after "pid (comm) ": state ppid pgrp ...
        if fields[2] == str(pgid) and fields[0] not in ("Z", "X"):
            return True
    return False


def _signal_group(pgid: int, sig: signal.Signals) -> bool:
    try:
        os.killpg(pgid, sig)
        return True
    except (ProcessLookupError, PermissionError):
        return False


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except (ProcessLookupError, PermissionError):
        return False


def read_until_exit(
    process: subprocess.Popen[bytes], timeout: float | None, killer: GroupKiller, limit: int
) -> tuple[bytearray, bytearray]:
    """Read both pipes into bounded tails until the process exits and the pipes close.

    Waits on a pidfd when the platform has one, so exit is seen at once even if a
    grandchild keeps the pipes open; after exit, remaining output is drained briefly.
    """
    streams = [process.stdout, process.stderr]
    tails = {stream.fileno(): bytearray() for stream in streams if stream is not None}
    poller = select.poll()
    for fd in tails:
        os.set_blocking(fd, False)
        poller.register(fd, select.POLLIN)
    pidfd = _pidfd(process.pid)
    if pidfd is not None:
        poller.register(pidfd, select.POLLIN)
    open_pipes = len(tails)
    deadline = None if timeout is None else time.monotonic() + timeout
    exited_at: float | None = None
    try:
        while open_pipes or exited_at is None:  # until it exited and its pipes closed
            now = time.monotonic()
            if deadline is not None and now >= deadline and not killer.started:
                killer.start()
            if process.poll() is not None and exited_at is None:
                exited_at = now
            if exited_at is not None and (now - exited_at > 0.5 or not open_pipes):
                break  # a grandchild holds the pipes (the caller kills the group), or all is read
            wait = 0.5 if pidfd is not None else 0.05
            if deadline is not None and not killer.started:
                wait = max(0.0, min(wait, deadline - now))
            for fd, _ in poller.poll(wait * 1000):
                if fd == pidfd:  # the process exited
                    poller.unregister(pidfd)
                    os.close(pidfd)
                    pidfd = None
                    continue
                chunk = os.read(fd, 65536)
                if not chunk:
                    poller.unregister(fd)
                    open_pipes -= 1
                    continue
                tail = tails[fd]
                tail += chunk
                if len(tail) > limit:
                    del tail[: len(tail) - limit]
    finally:
        if pidfd is not None:
            os.close(pidfd)
        for stream in streams:
            if stream is not None:
                stream.close()
    process.wait()
    out, err = tails.values()
    return out, err


def decode(data: bytearray) -> str:
    return data.decode("utf-8", errors="replace")
