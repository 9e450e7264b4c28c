#!/usr/bin/env python3
"""make bench: milter-test-server load against our milter-test-client and a libmilter C milter.

Both milters are measured in the same run with the same driver, on 127.0.0.1:
sessions/s, latency percentiles, the milter's CPU time per session and its peak
RSS (VmHWM). The ratio line compares ours with the C peer. Everything talks to
loopback only and every wait is bounded.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import psutil

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_for_port(port: int, process: subprocess.Popen, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"milter exited early with status {process.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"milter did not listen on port {port} within {timeout} s")


def build_c_milter() -> str:
    """Compile bench/cmilter.c (needs Debian's libmilter-dev)."""
    binary = os.path.join(HERE, "cmilter")
    if not os.path.exists("/usr/include/libmilter/mfapi.h"):
        raise SystemExit("bench: libmilter-dev is not installed; run `.ci/install-system-packages` (as root) first")
    result = subprocess.run(["make", "-s", "-C", HERE], capture_output=True, text=True)
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


def measure(label: str, command: list[str], port: int, sessions: int, concurrency: int) -> dict:
    """Start a milter, drive it with milter-test-server, return the figures."""
    milter = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_port(port, milter)
        process = psutil.Process(milter.pid)
        warm = subprocess.run(driver_command(port, 50, 10), capture_output=True, text=True, timeout=120)
        if warm.returncode != 0:
            raise RuntimeError(f"warm-up against {label} failed: {warm.stdout}{warm.stderr}")
        cpu_before = sum(process.cpu_times()[:2])
        run = subprocess.run(driver_command(port, sessions, concurrency), capture_output=True, text=True,
                             timeout=600)
        cpu_after = sum(process.cpu_times()[:2])
        if run.returncode != 0:
            raise RuntimeError(f"load against {label} failed: {run.stdout}{run.stderr}")
        report = json.loads(run.stdout.strip().splitlines()[-1])
        totals = report["totals"]
        return {"label": label, "sessions": totals["sessions"], "statuses": totals["statuses"],
                "errors": totals["errors"], "sessions_per_second": totals["sessions_per_second"],
                "latency": totals["latency"], "cpu_ms_per_session": 1000 * (cpu_after - cpu_before) / sessions,
                "peak_rss_kb": peak_rss_kb(milter.pid)}
    finally:
        milter.send_signal(signal.SIGTERM)
        try:
            milter.wait(timeout=10)
        except subprocess.TimeoutExpired:
            milter.kill()
            milter.wait(timeout=5)


def driver_command(port: int, sessions: int, concurrency: int) -> list[str]:
    return [sys.executable, "-m", "milterman.cli.test_server", "-s", f"inet:{port}@[127.0.0.1]",
            "--n-sessions", str(sessions), "--concurrency", str(concurrency), "--report=json"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--json", action="store_true", help="print the figures as JSON as well")
    options = parser.parse_args()
    os.chdir(ROOT)
    cmilter = build_c_milter()
    results = []
    port = free_port()
    results.append(measure("milter-test-client --no-report-request",
                           [sys.executable, "-m", "milterman.cli.test_client", "--no-report-request", "-q",
                            "-s", f"inet:{port}@[127.0.0.1]"], port, options.sessions, options.concurrency))
    port = free_port()
    results.append(measure("libmilter C milter (bench/cmilter)", [cmilter, "-p", f"inet:{port}@127.0.0.1"], port,
                           options.sessions, options.concurrency))
    print(f"milter-test-server --n-sessions {options.sessions} --concurrency {options.concurrency}, "
          f"{os.cpu_count()} cores, Python {sys.version.split()[0]}")
    print(f"{'milter':42} {'sessions/s':>10} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8} {'cpu ms/sess':>11} "
          f"{'peak RSS':>10} errors")
    for result in results:
        latency = result["latency"]
        print(f"{result['label']:42} {result['sessions_per_second']:10.1f} {1000 * latency['p50']:8.2f} "
              f"{1000 * latency['p90']:8.2f} {1000 * latency['p99']:8.2f} {result['cpu_ms_per_session']:11.3f} "
              f"{result['peak_rss_kb'] / 1024:8.1f} MB {result['errors']}")
    ours, peer = results
    if peer["sessions_per_second"]:
        print(f"ratio ours/C: sessions/s {ours['sessions_per_second'] / peer['sessions_per_second']:.2f}, "
              f"cpu per session {ours['cpu_ms_per_session'] / max(peer['cpu_ms_per_session'], 1e-9):.2f}")
    if options.json:
        print(json.dumps(results))
    failed = [result["label"] for result in results if result["errors"] or set(result["statuses"]) != {"pass"}]
    if failed:
        print(f"bench: sessions failed against: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    if shutil.which("make") is None:
        raise SystemExit("bench: make is needed to build the C milter")
    sys.exit(main())
