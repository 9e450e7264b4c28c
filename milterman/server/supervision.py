"""The workers as the master sees them: their records, how they ended, and what they report (D-5).

Standard library only. A worker tells the master two things through one pipe the
master makes before forking (:class:`ReportPipe`): that it is *ready* (it reached its
serving loop), or why it *could not boot* (an exception before it was ready). The
second is followed by the worker's exit with :data:`BOOT_ERROR_STATUS`.

"Workers cannot boot" (what makes the master halt, as gunicorn's arbiter does instead of
backing off forever): :data:`BOOT_ATTEMPTS` workers in a row exit with
:data:`BOOT_ERROR_STATUS` before they were ready, with no worker becoming ready in
between. Other deaths (a signal, another status) neither count nor reset the count;
they are replaced with the quick-death back-off.
"""

from __future__ import annotations

import os
import signal
from dataclasses import dataclass

from .process import close_quietly

#: a worker's exit status when it failed before it could serve (the master halts after BOOT_ATTEMPTS in a row)
BOOT_ERROR_STATUS = 3
#: boot failures in a row that make the master halt
BOOT_ATTEMPTS = 3
#: the master's exit status when it halted because workers cannot boot (1 stays "could not start")
HALT_STATUS = 3
#: a report line stays below PIPE_BUF, so workers writing at once never interleave
MAX_REPORT = 1024


@dataclass
class WorkerProcess:
    """One forked worker: what the master needs to supervise it."""

    pid: int
    generation: int
    heartbeat_fd: int
    started: float
    stop_sent: float | None = None
    #: the worker reported it reached its serving loop
    ready: bool = False
    #: why it could not boot, as it reported (``TYPE: message``)
    boot_error: str | None = None


def describe_status(status: int) -> str:
    """How a child ended, for the log: an exit code or a signal name."""
    if os.WIFSIGNALED(status):
        number = os.WTERMSIG(status)
        try:
            name = signal.Signals(number).name
        except ValueError:
            name = str(number)
        return f"killed by signal {name}"
    return f"exited with status {os.WEXITSTATUS(status)}"


def is_boot_failure(worker: WorkerProcess, status: int) -> bool:
    """The worker gave up before it was ready (see the module's definition)."""
    return not worker.ready and os.WIFEXITED(status) and os.WEXITSTATUS(status) == BOOT_ERROR_STATUS


class ReportPipe:
    """Workers → master: ``PID ready`` or ``PID boot-error TEXT``, one line each."""

    def __init__(self) -> None:
        self.read_fd, self.write_fd = os.pipe()
        os.set_blocking(self.read_fd, False)
        self._partial = b""

    # ------------------------------------------------------------ in a worker

    def in_worker(self) -> None:
        """After fork: the worker only writes."""
        os.close(self.read_fd)
        self.read_fd = -1

    def _write(self, line: str) -> None:
        data = line.replace("\n", " | ").encode("utf-8", "replace")[:MAX_REPORT - 1] + b"\n"
        try:
            os.write(self.write_fd, data)
        except OSError:
            pass  # the master is gone: nobody to tell

    def ready(self) -> None:
        self._write(f"{os.getpid()} ready")

    def boot_error(self, error: BaseException) -> None:
        self._write(f"{os.getpid()} boot-error {type(error).__name__}: {error}")

    # ------------------------------------------------------------ in the master

    def read(self) -> list[tuple[int, str, str]]:
        """Every complete report waiting: (pid, "ready" or "boot-error", text)."""
        while True:
            try:
                chunk = os.read(self.read_fd, 65536)
            except (BlockingIOError, InterruptedError):
                break
            if not chunk:
                break
            self._partial += chunk
        *lines, self._partial = self._partial.split(b"\n")
        reports = []
        for line in lines:
            pid, _, rest = line.decode("utf-8", "replace").partition(" ")
            kind, _, text = rest.partition(" ")
            if pid.isdigit():
                reports.append((int(pid), kind, text))
        return reports

    def close(self) -> None:
        close_quietly(self.read_fd, self.write_fd)
        self.read_fd = self.write_fd = -1
