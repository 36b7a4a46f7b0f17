"""Resource use of the processes scripts run in: CPU seconds and peak memory.

`MeasuredPopen` is the Popen that `task_scheduler.tasks.ScriptTask` starts scripts
with; it reaps with ``os.wait4`` so the kernel's accounting of the script survives
(``Popen.wait`` discards it), and samples the script's memory high-water mark while
it runs. The figures end up in the run record (``cpu_user``, ``cpu_system``,
``max_rss``), ``task-scheduler show``, the API, the dashboard and the metrics.
"""

from __future__ import annotations

import os
import select
import subprocess
import sys
import threading
import time
from typing import Any

__all__ = ["MeasuredPopen"]


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
