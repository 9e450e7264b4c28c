"""milter-report-statistics: watch milter processes' memory, CPU and descriptors.

Every interval, one line per matching process: time, PID, virtual and resident size,
%CPU over the interval, CPU time, open descriptors and the command line. Built on
psutil, so the CPU columns work on Linux (the original asked ``top`` without PIDs and
left them empty) and the descriptor count is exact (it counted ``.`` and ``..``).
"""

from __future__ import annotations

import os
import re
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TextIO

import psutil

ROW = "%8s %6s %9s %9s %5s %8s %5s %s"
HEADER = ROW % ("Time", "PID", "VSS", "RSS", "%CPU", "CPU time", "#FD", "command")
INTERPRETERS = re.compile(r"\A(?:python[0-9.]*|ruby[0-9.]*|perl|sh|bash)\Z")


@dataclass
class Selection:
    """Which processes to report."""

    targets: tuple[str, ...] = ()
    filters: tuple[re.Pattern, ...] = ()
    pids: tuple[int, ...] = ()


def pids_from_directory(directory: str) -> list[int]:
    """The PIDs in every ``*.pid`` file under ``directory`` (recursive, read once, RS-4)."""
    pids = []
    for root, _dirs, files in os.walk(directory):
        for name in sorted(files):
            if not name.endswith(".pid"):
                continue
            try:
                with open(os.path.join(root, name)) as handle:
                    text = handle.read().strip()
            except OSError:
                continue
            if text.isdigit():
                pids.append(int(text))
    return pids


def program_names(cmdline: list[str]) -> set[str]:
    """The names a TARGET may equal: argv[0]'s basename (with ``lt-`` removed, RS-6), the first word of
    a process title (``milter-manager: worker …``) and, for an interpreter, its script's basename."""
    if not cmdline:
        return set()
    names = set()
    first = cmdline[0]
    for candidate in (os.path.basename(first), os.path.basename(first.split(" ", 1)[0]).rstrip(":")):
        names.add(candidate)
        if candidate.startswith("lt-"):
            names.add(candidate[3:])
    if INTERPRETERS.match(os.path.basename(first)) and len(cmdline) > 1 and not cmdline[1].startswith("-"):
        names.add(os.path.basename(cmdline[1]))
    return names


def matches(selection: Selection, cmdline: list[str]) -> bool:
    command = " ".join(cmdline)
    if not program_names(cmdline) & set(selection.targets):
        return False
    return all(pattern.search(command) for pattern in selection.filters)


def cpu_time_text(seconds: float) -> str:
    """``top``'s TIME+ form: minutes:seconds.hundredths."""
    hundredths = int(round(seconds * 100))
    minutes, rest = divmod(hundredths, 6000)
    return f"{minutes}:{rest // 100:02d}.{rest % 100:02d}"


@dataclass
class Reporter:
    """Keeps the psutil handles between ticks so %CPU is over the interval."""

    selection: Selection
    out: TextIO = field(default_factory=lambda: sys.stdout)
    _known: dict[int, psutil.Process] = field(default_factory=dict)

    def processes(self) -> list[psutil.Process]:
        me = os.getpid()
        if self.selection.pids:
            found = []
            for pid in self.selection.pids:
                if pid == me:
                    continue
                try:
                    found.append(self._handle(pid))
                except psutil.Error:
                    continue
            return found
        found = []
        for process in psutil.process_iter(["pid", "cmdline"]):
            if process.pid == me:
                continue
            cmdline = process.info.get("cmdline") or []
            if matches(self.selection, cmdline):
                found.append(self._handle(process.pid))
        return found

    def _handle(self, pid: int) -> psutil.Process:
        process = self._known.get(pid)
        if process is None or not process.is_running():
            process = psutil.Process(pid)
            process.cpu_percent(None)  # the first call only starts the measurement
            self._known[pid] = process
        return process

    def rows(self, now: float | None = None) -> list[str]:
        """One tick: the rows, or the not-found line (RS-2)."""
        clock = time.strftime("%H:%M:%S", time.localtime(now))
        rows = []
        for process in self.processes():
            rows.append(self._row(clock, process))
        if not rows:
            return [f"{clock:>8} not found"]
        return rows

    @staticmethod
    def _row(clock: str, process: psutil.Process) -> str:
        try:
            with process.oneshot():
                memory = process.memory_info()
                times = process.cpu_times()
                cpu = process.cpu_percent(None)
                fds = process.num_fds()
                command = " ".join(process.cmdline())
            return ROW % (clock, process.pid, f"{memory.vms // 1024} kB", f"{memory.rss // 1024} kB", f"{cpu:.1f}",
                          cpu_time_text(times.user + times.system), fds, command)
        except psutil.Error:
            return ROW % (clock, process.pid, "", "", "", "", "", "")  # vanished: empty values

    def run(self, interval: float, ticks: int | None = None) -> None:
        """Print the header, then a block every ``interval`` seconds (minus the time the block took)."""
        self.out.write(HEADER + "\n")
        self.out.flush()
        count = 0
        while ticks is None or count < ticks:
            started = time.monotonic()
            self.out.write("\n".join(self.rows()) + "\n")
            self.out.flush()
            count += 1
            if ticks is not None and count >= ticks:
                break
            time.sleep(max(0.0, interval - (time.monotonic() - started)))


def compile_filters(patterns: Iterable[str]) -> tuple[re.Pattern, ...]:
    return tuple(re.compile(pattern, re.IGNORECASE) for pattern in patterns)
