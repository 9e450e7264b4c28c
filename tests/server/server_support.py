"""Helpers for the acceptance tests of the pre-forking server (imported by conftest.py and the tests).

Kept out of conftest.py because ``from conftest import`` is ambiguous when several
test directories have a conftest.py.

Everything here runs real processes: the server under test (milter-test-client or
``config_app.py``) is started with ``start_new_session=True`` so that it and its
workers can always be found and killed at teardown; every wait is bounded.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import psutil

#: subprocesses start outside the checkout, so they import the installed package (issue 8)
RUN_DIR = "/"
HERE = Path(__file__).resolve().parent
CONFIG_APP = HERE / "config_app.py"
PYTHON = sys.executable

#: ``[TIME] [PID]: MESSAGE`` (n_workers > 0) or ``[TIME]: MESSAGE`` (logging.md §2)
LOG_LINE = re.compile(r"^\[(?P<time>\d{4}-\d\d-\d\dT[0-9:.]+Z)\](?: \[(?P<pid>\d+)\])?: (?P<message>.*)$")
FINISHED = re.compile(r"^\[sessions\]\[finished\] (\d+)\(\+(\d+)\) (\d+)$")


def clean_env(**extra: str) -> dict[str, str]:
    """The environment for the tools: no MILTER_* / NOTIFY_SOCKET / LISTEN_* settings, no TERM."""
    env = {key: value for key, value in os.environ.items()
           if not key.startswith(("MILTER_", "LISTEN_")) and key not in ("TERM", "COLUMNS", "NOTIFY_SOCKET")}
    env.update(extra)
    return env


def short_dir(tmp_path: Path) -> Path:
    """``tmp_path``, or a short directory when unix socket paths would get too long (sun_path is 108 bytes)."""
    if len(str(tmp_path)) < 70:
        return tmp_path
    return Path(tempfile.mkdtemp(prefix="ms-", dir="/tmp"))


def wait_until(predicate: Callable[[], object], timeout: float, what: str, interval: float = 0.02):
    """Poll ``predicate`` until it returns something true (returned) or fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


def signal_mask(pid: int, field: str = "SigCgt") -> int:
    """The caught-signals (or blocked, ignored) bit mask of a process, from /proc/PID/status."""
    with open(f"/proc/{pid}/status") as handle:
        for line in handle:
            if line.startswith(field + ":"):
                return int(line.split()[1], 16)
    raise AssertionError(f"no {field} in /proc/{pid}/status")


def catches(pid: int, *numbers: int) -> bool:
    """Whether the process has handlers for these signals and does not block them.

    A new worker inherits the master's handlers but starts with the signals serve()
    handles blocked; it unblocks them once its own handlers are installed, so
    "caught and not blocked" means the worker reached its serving loop.
    """
    try:
        caught, blocked = signal_mask(pid, "SigCgt"), signal_mask(pid, "SigBlk")
    except (OSError, AssertionError):
        return False
    bits = [1 << (number - 1) for number in numbers]
    return all(caught & bit and not blocked & bit for bit in bits)


def mapped_files(pid: int) -> set[str]:
    """The files mapped into a process (shared objects of imported C extensions among them)."""
    with open(f"/proc/{pid}/maps") as handle:
        return {line.split(None, 5)[5].strip() for line in handle if len(line.split(None, 5)) == 6}


# ------------------------------------------------------------------------------------------ the log


@dataclass
class LogLine:
    time: str
    pid: int | None
    message: str


def parse_log(text: str) -> list[LogLine]:
    """Log lines (continuation lines of multi-line messages are folded into their line)."""
    lines: list[LogLine] = []
    for raw in text.splitlines():
        match = LOG_LINE.match(raw)
        if match:
            pid = match.group("pid")
            lines.append(LogLine(match.group("time"), int(pid) if pid else None, match.group("message")))
        elif lines:
            lines[-1].message += "\n" + raw
    return lines


def read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8", errors="surrogateescape")
    except FileNotFoundError:
        return ""


# ------------------------------------------------------------------------------------------ the server


class ServerProcess:
    """A server under test: the master (and its workers), its log file and its socket."""

    def __init__(self, argv: list[str], *, log_path: Path, socket_path: Path | None = None,
                 address: tuple[str, int] | None = None, env: dict[str, str] | None = None,
                 pid_file: Path | None = None, daemon: bool = False, user: str | None = None) -> None:
        self.argv = argv
        self.log_path = log_path
        self.socket_path = socket_path
        self.address = address
        self.pid_file = pid_file
        self.daemon = daemon
        self._output: list[str] = []
        self._lock = threading.Lock()
        #: every process of this server we ever saw (psutil objects: kill() checks for pid reuse)
        self.known: dict[int, psutil.Process] = {}
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, env=env or clean_env(), cwd=RUN_DIR,
                                     start_new_session=True)
        self._remember(self.proc.pid)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.master_pid = self.proc.pid

    # ------------------------------------------------------------ bookkeeping

    def _read(self) -> None:
        for raw in iter(self.proc.stdout.readline, b""):
            with self._lock:
                self._output.append(raw.decode("utf-8", "surrogateescape"))
        self.proc.stdout.close()

    def _remember(self, pid: int) -> None:
        if pid not in self.known:
            try:
                self.known[pid] = psutil.Process(pid)
            except psutil.NoSuchProcess:
                pass

    @property
    def output(self) -> str:
        """What the command printed on stdout/stderr (start-up errors)."""
        with self._lock:
            return "".join(self._output)

    @property
    def master(self) -> psutil.Process:
        return self.known[self.master_pid]

    # ------------------------------------------------------------ waiting

    def wait_listening(self, timeout: float = 15.0) -> None:
        """Bounded wait until the socket accepts a connection (the probe sends nothing)."""

        def connected() -> bool:
            if not self.daemon and self.proc.poll() is not None:
                raise AssertionError(f"the server exited with {self.proc.returncode}: {self.output!r}\n"
                                     f"log: {self.log()!r}")
            family = socket.AF_UNIX if self.socket_path else socket.AF_INET
            with socket.socket(family, socket.SOCK_STREAM) as probe:
                probe.settimeout(1)
                try:
                    probe.connect(str(self.socket_path) if self.socket_path else self.address)
                    return True
                except OSError:
                    return False

        wait_until(connected, timeout, f"the server to listen ({self.argv})")

    def wait_detached(self, timeout: float = 15.0) -> int:
        """--daemon: the command returns; the master's pid is read from the pid file."""
        code = self.proc.wait(timeout)
        self._reader.join(5)
        assert code == 0, f"the daemon command exited with {code}: {self.output!r}"
        assert self.pid_file is not None
        text = wait_until(lambda: read_text(self.pid_file).strip(), timeout, f"the pid file {self.pid_file}")
        self.master_pid = int(text)
        self._remember(self.master_pid)
        return code

    def workers(self) -> list[int]:
        """Pids of the master's current children (the workers)."""
        try:
            children = self.master.children()
        except psutil.NoSuchProcess:
            return []
        alive = []
        for child in children:
            self._remember(child.pid)
            try:
                if child.status() != psutil.STATUS_ZOMBIE:
                    alive.append(child.pid)
            except psutil.NoSuchProcess:
                pass
        return sorted(alive)

    def wait_workers(self, count: int, timeout: float = 15.0, serving: bool = True) -> list[int]:
        """Wait until the master has exactly ``count`` workers (and, with ``serving``, each of them
        has installed its signal handlers, i.e. reached its serving loop); their pids."""

        def ready():
            pids = self.workers()
            if len(pids) != count:
                return None
            if serving and not all(catches(pid, signal.SIGTERM, signal.SIGUSR1) for pid in pids):
                return None
            return pids

        return wait_until(ready, timeout, f"{count} serving workers (have {self.workers()})")

    def log(self) -> str:
        return read_text(self.log_path)

    def log_lines(self) -> list[LogLine]:
        return parse_log(self.log())

    def wait_log(self, pattern: str, timeout: float = 15.0, count: int = 1, path: Path | None = None) -> list[str]:
        """Wait until ``pattern`` (a regex searched in each line's message) matched ``count`` lines."""
        regex = re.compile(pattern)

        def found():
            text = read_text(path) if path else self.log()
            hits = [line.message for line in parse_log(text) if regex.search(line.message)]
            return hits if len(hits) >= count else None

        try:
            return wait_until(found, timeout, f"{count} log line(s) matching {pattern!r}")
        except AssertionError as error:
            raise AssertionError(f"{error}; log:\n{self.log()[-4000:]}\noutput: {self.output[-2000:]}") from None

    def session_pids(self) -> list[int]:
        """The pid of every ``[sessions][finished]`` line (one per session with milter-test-client)."""
        return [line.pid for line in self.log_lines() if FINISHED.match(line.message)]

    # ------------------------------------------------------------ stopping

    def signal(self, number: int) -> None:
        os.kill(self.master_pid, number)

    def wait_exit(self, timeout: float = 15.0) -> int:
        """The exit status of the (non-daemon) master."""
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"the server did not exit within {timeout} s; log:\n{self.log()[-3000:]}") from None
        self._reader.join(5)
        return code

    def wait_gone(self, pid: int | None = None, timeout: float = 15.0) -> None:
        """Wait until ``pid`` (default: the master) no longer runs (for daemons, which are not our children)."""
        process = self.known.get(pid or self.master_pid)

        def gone() -> bool:
            if process is None:
                return True
            try:
                return not process.is_running() or process.status() == psutil.STATUS_ZOMBIE
            except psutil.NoSuchProcess:
                return True

        wait_until(gone, timeout, f"process {pid or self.master_pid} to exit")

    def kill_all(self) -> None:
        """Teardown: SIGKILL the master, every worker we saw and any descendant; never raises."""
        processes = dict(self.known)
        for process in list(processes.values()):
            try:
                for child in process.children(recursive=True):
                    processes.setdefault(child.pid, child)
            except psutil.Error:
                pass
        for process in processes.values():
            try:
                if process.is_running():
                    process.kill()  # psutil refuses if the pid was reused by another process
            except psutil.Error:
                pass
        if not self.daemon:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except OSError:
                pass
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            pass

        def all_gone() -> bool:
            for process in processes.values():
                try:
                    if process.is_running() and process.status() != psutil.STATUS_ZOMBIE:
                        return False
                except psutil.Error:
                    pass
            return True

        try:
            wait_until(all_gone, 5, "the server's processes to die")
        except AssertionError:
            pass
        self._reader.join(5)


# ------------------------------------------------------------------------------------------ the MTA side


def driver_argv(spec: str, *args: str) -> list[str]:
    return [PYTHON, "-m", "milterman.cli.test_server", "-s", spec, *args]


def run_driver(spec: str, *args: str, timeout: float = 60, env: dict[str, str] | None = None
                    ) -> subprocess.CompletedProcess:
    return subprocess.run(driver_argv(spec, *args), capture_output=True, text=True, timeout=timeout,
                          env=env or clean_env(), cwd=RUN_DIR)


class Load:
    """milter-test-server in load mode (``--report=json``), run in the background."""

    def __init__(self, spec: str, n_sessions: int, concurrency: int, *extra: str) -> None:
        self.proc = subprocess.Popen(driver_argv(spec, "--n-sessions", str(n_sessions), "--concurrency",
                                                      str(concurrency), "--report=json", *extra),
                                     stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     env=clean_env(), cwd=RUN_DIR, start_new_session=True)
        self.n_sessions = n_sessions

    def running(self) -> bool:
        return self.proc.poll() is None

    def result(self, timeout: float = 60) -> dict:
        try:
            out, err = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"the load driver did not finish within {timeout} s") from None
        assert out.strip(), f"no report from milter-test-server (exit {self.proc.returncode}): {err.decode()!r}"
        report = json.loads(out)
        assert report["totals"]["sessions"] == self.n_sessions, report["totals"]
        return report

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        try:
            self.proc.communicate(timeout=5)
        except (subprocess.TimeoutExpired, ValueError):
            pass


def load(spec: str, n_sessions: int, concurrency: int, *extra: str, timeout: float = 60) -> dict:
    """Run a load to the end and return its JSON report."""
    return Load(spec, n_sessions, concurrency, *extra).result(timeout)


def failures(report: dict) -> list[dict]:
    """Sessions that did not pass (the milters under test answer continue to everything)."""
    return [session for session in report["sessions"] if session["status"] != "pass"]


def x_config_values(output: str) -> list[str]:
    """``X-Config`` values added by config_app, from milter-test-server --output-message blocks."""
    return re.findall(r"^\+ X-Config: (.*)$", output, re.MULTILINE)
