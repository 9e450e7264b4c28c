"""What every part of make bench shares: start a milter, drive it with milter-test-server, read its CPU and memory.

The driver is milter-test-server in load mode (one process, gevent), over unix sockets in a temporary
directory. CPU time is user + system of the measured process tree from /proc (psutil), peak RSS its VmHWM;
both are read around the measured load only (after a short warm-up). Every wait is bounded.
"""

from __future__ import annotations

import json
import os
import resource
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence

import psutil

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
#: the longest a driver run may take before the bench gives up on it
DRIVER_TIMEOUT = 900
#: figures of a measurement that are medians of rounds when rounds are combined
FIGURES = ("sessions_per_second", "cpu_ms_per_session", "helper_cpu_ms_per_session", "peak_rss_kb")
LATENCIES = ("p50", "p90", "p99", "max")


def build_c_milter() -> str:
    """Compile bench/cmilter.c (needs Debian's libmilter-dev)."""
    binary = os.path.join(HERE, "cmilter")
    if not os.path.exists("/usr/include/libmilter/mfapi.h"):
        raise SystemExit("bench: libmilter-dev is not installed; run `.ci/install-system-packages` (as root) first")
    result = subprocess.run(["make", "-s", "-C", HERE], capture_output=True, text=True, timeout=120)
    if result.returncode != 0:
        raise SystemExit(f"bench: building the C milter failed:\n{result.stdout}{result.stderr}")
    return binary


def peak_rss_kb(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def process_tree(pid: int) -> list[psutil.Process]:
    """The process and its children (a manager's master, workers and launcher)."""
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.Error:
        return []


def cpu_seconds(processes: list[psutil.Process]) -> float:
    total = 0.0
    for process in processes:
        try:
            times = process.cpu_times()
            total += times.user + times.system
        except psutil.Error:
            pass
    return total


def driver_command(target: str, sessions: int, concurrency: int, extra: Sequence[str] = ()) -> list[str]:
    """milter-test-server in load mode; ``extra``: more options (``--body`` chunks)."""
    return [sys.executable, "-m", "milterman.cli.test_server", "-s", target, "--all-timeouts=60",
            "--n-sessions", str(sessions), "--concurrency", str(concurrency), "--report=json", *extra]


def child_command(kind: str, path: str) -> list[str]:
    """A child milter serving ``unix:path``: milter-test-client (``client``) or the libmilter C milter (``c``)."""
    if kind == "c":
        return [os.path.join(HERE, "cmilter"), "-p", f"unix:{path}"]
    return [sys.executable, "-m", "milterman.cli.test_client", "--no-report-request", "-q", "-s", f"unix:{path}"]


def wait_for_path(path: str, process: subprocess.Popen, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{process.args[0]} exited early with status {process.returncode}")
        if os.path.exists(path):
            return
        time.sleep(0.05)
    raise RuntimeError(f"{path} did not appear within {timeout} s")


def stop(process: subprocess.Popen, timeout: float = 20.0) -> None:
    """SIGTERM, then SIGKILL after ``timeout`` seconds; always reaped.

    The C milter gets SIGKILL at once: it keeps nothing, and libmilter notices SIGTERM only at its
    listener's next poll, up to 5 seconds later (which would cost minutes over a whole bench).
    """
    if process.poll() is None:
        process.send_signal(signal.SIGKILL if os.path.basename(process.args[0]) == "cmilter" else signal.SIGTERM)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=5)


def start_milter(command: list[str], socket_path: str, environment: dict | None = None) -> subprocess.Popen:
    """A milter (ours or the C one) serving ``socket_path``, waited for until the socket exists."""
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=environment)
    try:
        wait_for_path(socket_path, process)
    except BaseException:
        stop(process)
        raise
    return process


def measure(label: str, command: list[str], target: str, sessions: int, concurrency: int,
            ready: Callable[[subprocess.Popen], None], helpers: Sequence[subprocess.Popen] | None = (),
            loaded: Callable[[], object] | None = None, driver_options: Sequence[str] = ()) -> dict:
    """Start a milter (or the manager), drive it with milter-test-server, return the figures.

    CPU and peak RSS are those of the measured process tree only (not the children of the manager,
    which run as separate processes); ``helpers`` are processes whose CPU time is reported as well
    (``helper_cpu_ms_per_session``: the manager's child milters, each served on its own socket).
    """
    milter = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        ready(milter)
        warm = subprocess.run(driver_command(target, 50, 10, driver_options), capture_output=True, text=True,
                              timeout=120)
        if warm.returncode != 0:
            raise RuntimeError(f"warm-up against {label} failed: {warm.stdout}{warm.stderr}")
        tree = process_tree(milter.pid)
        helper_tree = [process for helper in helpers or () for process in process_tree(helper.pid)]
        cpu_before, helper_before = cpu_seconds(tree), cpu_seconds(helper_tree)
        driver_before = resource.getrusage(resource.RUSAGE_CHILDREN)  # the driver is the only child reaped here
        run = subprocess.run(driver_command(target, sessions, concurrency, driver_options), capture_output=True,
                             text=True, timeout=DRIVER_TIMEOUT)
        driver_after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu_after, helper_after = cpu_seconds(tree), cpu_seconds(helper_tree)
        if loaded is not None:
            loaded()  # before the measured process is stopped
        if run.returncode != 0:
            raise RuntimeError(f"load against {label} failed: {run.stdout}{run.stderr}")
        report = json.loads(run.stdout.strip().splitlines()[-1])
        totals = report["totals"]
        return {"label": label, "sessions": totals["sessions"], "concurrency": concurrency,
                "statuses": totals["statuses"], "errors": totals["errors"],
                "sessions_per_second": totals["sessions_per_second"], "latency": totals["latency"],
                "cpu_ms_per_session": 1000 * (cpu_after - cpu_before) / sessions,
                "helper_cpu_ms_per_session": 1000 * (helper_after - helper_before) / sessions,
                "driver_cpu_ms_per_session": 1000 * (driver_after.ru_utime + driver_after.ru_stime
                                                     - driver_before.ru_utime - driver_before.ru_stime) / sessions,
                "peak_rss_kb": sum(peak_rss_kb(process.pid) for process in tree)}
    finally:
        stop(milter)


def median_result(results: Sequence[dict]) -> dict:
    """One measurement from several rounds of the same set-up: the median of each figure, errors summed."""
    combined = {key: value for key, value in results[0].items() if key in ("label", "concurrency", "children")}
    combined["rounds"] = len(results)
    combined["sessions"] = sum(result["sessions"] for result in results)
    combined["errors"] = sum(result["errors"] for result in results)
    combined["statuses"] = {}
    for result in results:
        for status, count in result["statuses"].items():
            combined["statuses"][status] = combined["statuses"].get(status, 0) + count
    for figure in FIGURES:
        combined[figure] = statistics.median(result[figure] for result in results)
    combined["latency"] = {name: statistics.median(result["latency"][name] for result in results)
                           for name in LATENCIES}
    return combined


class Scraper:
    """Reads the metrics endpoint every ``interval`` seconds in a thread, as Prometheus would."""

    def __init__(self, url: str, interval: float = 1.0) -> None:
        import threading

        self.url = url
        self.interval = interval
        self.scrapes = 0
        self.failures = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        import urllib.request

        while not self._stop.wait(self.interval):
            try:
                with urllib.request.urlopen(self.url, timeout=5) as answer:
                    answer.read()
                self.scrapes += 1
            except OSError:
                self.failures += 1

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)
