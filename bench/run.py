#!/usr/bin/env python3
"""make bench: milter-test-server load against our milters, a libmilter C milter and milter-manager.

Everything is measured in the same run with the same driver, over unix sockets in a
temporary directory: sessions/s, latency percentiles, the measured process tree's CPU
time per session and its peak RSS (VmHWM). The direct part compares
milter-test-client with a libmilter C milter (ratio line); the manager part runs
milter-manager with 1 and 3 milter-test-client children, n_workers 0 and 2; the metrics
part runs the manager (3 children, n_workers 2) with its metrics endpoint off and on
(scraped every second), alternated, and compares the medians. Every wait is bounded.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import time

import psutil

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


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


def measure(label: str, command: list[str], target: str, sessions: int, concurrency: int,
            ready: callable, helpers: list[subprocess.Popen] | None = None, loaded: callable = None) -> dict:
    """Start a milter (or the manager), drive it with milter-test-server, return the figures.

    CPU and peak RSS are those of the measured process tree only (not the children of the manager,
    which run as separate milter-test-client processes); ``helpers`` are processes whose CPU time
    is reported as well (``helper_cpu_ms_per_session``: a child milter served on its own socket).
    """
    milter = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        ready(milter)
        warm = subprocess.run(driver_command(target, 50, 10), capture_output=True, text=True, timeout=120)
        if warm.returncode != 0:
            raise RuntimeError(f"warm-up against {label} failed: {warm.stdout}{warm.stderr}")
        tree = process_tree(milter.pid)
        helper_tree = [process for helper in helpers or () for process in process_tree(helper.pid)]
        cpu_before, helper_before = cpu_seconds(tree), cpu_seconds(helper_tree)
        driver_before = resource.getrusage(resource.RUSAGE_CHILDREN)  # the driver is the only child reaped here
        run = subprocess.run(driver_command(target, sessions, concurrency), capture_output=True, text=True,
                             timeout=900)
        driver_after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu_after, helper_after = cpu_seconds(tree), cpu_seconds(helper_tree)
        if loaded is not None:
            loaded()  # before the measured process is stopped
        if run.returncode != 0:
            raise RuntimeError(f"load against {label} failed: {run.stdout}{run.stderr}")
        report = json.loads(run.stdout.strip().splitlines()[-1])
        totals = report["totals"]
        return {"label": label, "sessions": totals["sessions"], "statuses": totals["statuses"],
                "errors": totals["errors"], "sessions_per_second": totals["sessions_per_second"],
                "latency": totals["latency"], "cpu_ms_per_session": 1000 * (cpu_after - cpu_before) / sessions,
                "helper_cpu_ms_per_session": 1000 * (helper_after - helper_before) / sessions,
                "driver_cpu_ms_per_session": 1000 * (driver_after.ru_utime + driver_after.ru_stime
                                                     - driver_before.ru_utime - driver_before.ru_stime) / sessions,
                "peak_rss_kb": sum(peak_rss_kb(process.pid) for process in tree)}
    finally:
        milter.send_signal(signal.SIGTERM)
        try:
            milter.wait(timeout=20)
        except subprocess.TimeoutExpired:
            milter.kill()
            milter.wait(timeout=5)


def driver_command(target: str, sessions: int, concurrency: int) -> list[str]:
    return [sys.executable, "-m", "milterman.cli.test_server", "-s", target,
            "--n-sessions", str(sessions), "--concurrency", str(concurrency), "--report=json"]


def wait_for_path(path: str, process: subprocess.Popen, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{process.args[0]} exited early with status {process.returncode}")
        if os.path.exists(path):
            return
        time.sleep(0.05)
    raise RuntimeError(f"{path} did not appear within {timeout} s")


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


def free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def measure_manager(directory: str, n_children: int, n_workers: int, sessions: int, concurrency: int,
                    metrics: bool | None = None, run: int = 0) -> dict:
    """milter-manager with n milter-test-client children, all on unix sockets in ``directory``.

    ``metrics``: None leaves the endpoint out of the label; True switches it on and scrapes it
    every second during the measured load; False measures the same set-up with it off.
    """
    children = []
    config = os.path.join(directory, f"manager-{n_children}-{n_workers}-{metrics}-{run}")
    os.makedirs(config, exist_ok=True)
    lines = ["version = 1", "[manager]", f'connection_spec = "unix:{config}/manager.sock"',
             f"n_workers = {n_workers}", "[log]", "use_syslog = false", 'level = "error"']
    port = free_port()
    if metrics:
        lines += ["[controller]", f'metrics_spec = "inet:{port}@[127.0.0.1]"']
    try:
        for number in range(n_children):
            path = f"{config}/child{number}.sock"
            child = subprocess.Popen([sys.executable, "-m", "milterman.cli.test_client", "--no-report-request", "-q",
                                      "-s", f"unix:{path}"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            children.append(child)
            wait_for_path(path, child)
            lines += ["[[milter]]", f'name = "child{number}"', f'connection_spec = "unix:{path}"']
        with open(f"{config}/milter-manager.toml", "w") as handle:
            handle.write("\n".join(lines) + "\n")
        label = f"milter-manager, {n_children} child{'ren' if n_children > 1 else ''}, n_workers {n_workers}"
        if metrics is not None:
            label += f", metrics {'on' if metrics else 'off'}"
        scrapers: list[Scraper] = []

        def ready(process: subprocess.Popen) -> None:
            wait_for_path(f"{config}/manager.sock", process)
            if metrics:  # the endpoint is bound before the workers start
                scrapers.append(Scraper(f"http://127.0.0.1:{port}/metrics"))

        try:
            result = measure(label, [sys.executable, "-m", "milterman.cli.manager", "-c", config, "--no-detect"],
                             f"unix:{config}/manager.sock", sessions, concurrency, ready,
                             loaded=lambda: [scraper.stop() for scraper in scrapers])
        finally:
            for scraper in scrapers:
                scraper.stop()
        for scraper in scrapers:
            result["scrapes"] = scraper.scrapes
            if scraper.failures or not scraper.scrapes:
                result["errors"] += 1
                print(f"bench: {scraper.failures} of {scraper.scrapes + scraper.failures} scrapes failed",
                      file=sys.stderr)
        return result
    finally:
        for child in children:
            child.send_signal(signal.SIGTERM)
        for child in children:
            try:
                child.wait(timeout=10)
            except subprocess.TimeoutExpired:
                child.kill()


#: the examples/ milters the Python-child part runs: RCPT and end of message; header, body and end of message
PYTHON_CHILDREN = ("recipient_policy:RecipientPolicy", "footer:Footer")


def measure_python_child(directory: str, reference: str, in_process: bool, sessions: int, concurrency: int) -> dict:
    """milter-manager (n_workers 0) with one Python child from examples/: run in the manager (``python =``) or
    served by milter-run on a unix socket (``connection_spec =``)."""
    config = os.path.join(directory, f"python-child-{reference.partition(':')[0]}-{'in' if in_process else 'socket'}")
    os.makedirs(config, exist_ok=True)
    lines = ["version = 1", "[manager]", f'connection_spec = "unix:{config}/manager.sock"', "n_workers = 0",
             "[log]", "use_syslog = false", 'level = "error"', "[[milter]]", 'name = "policy"']
    environment = dict(os.environ, PYTHONPATH=os.path.join(ROOT, "examples"))
    helpers = []
    try:
        if in_process:
            lines.append(f'python = "{reference}"')
        else:
            path = f"{config}/child.sock"
            helpers.append(subprocess.Popen([sys.executable, "-m", "milterman.cli.milter_run", reference, "-q",
                                             "-s", f"unix:{path}"], stdout=subprocess.DEVNULL,
                                            stderr=subprocess.DEVNULL, env=environment))
            wait_for_path(path, helpers[0])
            lines.append(f'connection_spec = "unix:{path}"')
        with open(f"{config}/milter-manager.toml", "w") as handle:
            handle.write("\n".join(lines) + "\n")
        label = f"manager, {reference.partition(':')[0]} {'in process' if in_process else 'over a unix socket'}"
        previous = os.environ.get("PYTHONPATH")
        os.environ["PYTHONPATH"] = environment["PYTHONPATH"]  # the manager imports the in-process child
        try:
            return measure(label, [sys.executable, "-m", "milterman.cli.manager", "-c", config, "--no-detect"],
                           f"unix:{config}/manager.sock", sessions, concurrency,
                           lambda process: wait_for_path(f"{config}/manager.sock", process), helpers)
        finally:
            if previous is None:
                os.environ.pop("PYTHONPATH", None)
            else:
                os.environ["PYTHONPATH"] = previous
    finally:
        for helper in helpers:
            helper.send_signal(signal.SIGTERM)
            try:
                helper.wait(timeout=10)
            except subprocess.TimeoutExpired:
                helper.kill()


def python_child_part(directory: str, reference: str, options) -> list[dict]:
    """The in-process and socket rows of one example milter, alternating over ``--rounds`` (on a shared machine
    one pair can be skewed by other load); each round's ratios and their median."""
    pairs = [[measure_python_child(directory, reference, in_process, options.manager_sessions, options.concurrency)
              for in_process in (True, False)] for _ in range(options.rounds)]
    rows = [row for pair in pairs for row in pair]
    print_table(f"\nOne Python child ({reference}), in process vs over a unix socket, {options.rounds} rounds: "
                f"--n-sessions {options.manager_sessions} --concurrency {options.concurrency}", rows)
    speeds, cpus = [], []
    for inside, socket_row in pairs:
        total = socket_row["cpu_ms_per_session"] + socket_row["helper_cpu_ms_per_session"]
        speeds.append(inside["sessions_per_second"] / max(socket_row["sessions_per_second"], 1e-9))
        cpus.append(inside["cpu_ms_per_session"] / max(total, 1e-9))
        print(f"  round: sessions/s ratio {speeds[-1]:.2f}; CPU ms/session in process "
              f"{inside['cpu_ms_per_session']:.3f}, socket manager {socket_row['cpu_ms_per_session']:.3f} "
              f"+ child {socket_row['helper_cpu_ms_per_session']:.3f} = {total:.3f}; driver "
              f"{inside['driver_cpu_ms_per_session']:.3f} / {socket_row['driver_cpu_ms_per_session']:.3f}")
    median_speed, median_cpu = sorted(speeds)[len(speeds) // 2], sorted(cpus)[len(cpus) // 2]
    print(f"  ratio in process / socket (median of {len(pairs)}): sessions/s {median_speed:.2f} (target >= 1.5); "
          f"CPU per session {median_cpu:.2f} of manager + child")
    return rows


def print_table(title: str, results: list[dict]) -> None:
    print(title)
    print(f"  {'measured':52} {'sessions/s':>10} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8} {'cpu ms/sess':>11} "
          f"{'peak RSS':>11} errors")
    for result in results:
        latency = result["latency"]
        print(f"  {result['label']:52} {result['sessions_per_second']:10.1f} {1000 * latency['p50']:8.2f} "
              f"{1000 * latency['p90']:8.2f} {1000 * latency['p99']:8.2f} {result['cpu_ms_per_session']:11.3f} "
              f"{result['peak_rss_kb'] / 1024:8.1f} MB {result['errors']}")


def measure_metrics(directory: str, options) -> list[dict]:
    """The metrics endpoint's cost: 3 children, 2 workers, with it off and on (scraped every second),
    in alternating rounds of the same run; the medians are compared (target: under 2 % of sessions/s)."""
    import statistics

    rounds = []
    for number in range(options.metrics_rounds):
        for metrics in (False, True):
            rounds.append(measure_manager(directory, 3, 2, options.manager_sessions, options.concurrency,
                                          metrics=metrics, run=number))
    print_table(f"\nMetrics endpoint off and on (scraped every second), alternated {options.metrics_rounds} times: "
                f"--n-sessions {options.manager_sessions} --concurrency {options.concurrency}", rounds)
    off = statistics.median(result["sessions_per_second"] for result in rounds if "metrics off" in result["label"])
    on = statistics.median(result["sessions_per_second"] for result in rounds if "metrics on" in result["label"])
    cpu_off = statistics.median(result["cpu_ms_per_session"] for result in rounds if "metrics off" in result["label"])
    cpu_on = statistics.median(result["cpu_ms_per_session"] for result in rounds if "metrics on" in result["label"])
    print(f"  metrics endpoint: median sessions/s off {off:.1f}, on {on:.1f} ({100 * (off - on) / off:+.1f} % cost; "
          f"target < 2 %); manager CPU ms/session off {cpu_off:.3f}, on {cpu_on:.3f}")
    recording, scrape = metrics_cpu_costs()
    print(f"  CPU of the counters on every session's path (always on: status uses them too): {recording:.1f} us per "
          f"session of 3 children ({100 * recording / 1000 / cpu_off:.2f} % of the manager's CPU per session); one "
          f"scrape of 2 workers in the master: {scrape:.2f} ms")
    return rounds


def metrics_cpu_costs() -> tuple[float, float]:
    """CPU time (process time, insensitive to other load) of the metrics' two parts, measured in this process.

    Recording: what a session of 3 children adds (11 stages each: a reply with its latency and one
    negotiation, the child's end, the session's end). Scrape: the master's status of 2 workers
    rendered as the page, from counters as large as after such sessions.
    """
    from milterman.manager.context import ManagerContext
    from milterman.manager.metrics import Recorder
    from milterman.protocol import CONTINUE
    from milterman.server.app import Application
    from milterman.server.metrics import ServerRecord, metrics_text, process_facts

    recorder = Recorder()
    context = ManagerContext(recorder=recorder)
    children = [recorder.child(f"child{number}") for number in range(3)]
    letters = "CHMRTLLNBE"
    sessions = 20000
    begin = time.process_time()
    for _ in range(sessions):
        context.session_started()
        for record in children:
            started = time.monotonic()
            record.observe("O", time.monotonic() - started)
            for letter in letters:
                started = time.monotonic()
                record.replied(letter, CONTINUE, time.monotonic() - started)
        for number in range(3):
            context.child_ended(f"child{number}", "pass")
        context.sessions_processing -= 1
        recorder.session_finished("pass", 0.01)
    recording = (time.process_time() - begin) / sessions * 1e6

    from milterman.manager.app import ManagerApplication

    app: Application = ManagerApplication(None, {})
    published = context.statistics()
    workers = [{"pid": pid, "process": process_facts(), **published} for pid in (2, 3)]
    status = {"master": {"pid": 1, "uptime": 1.0, "n_workers": 2}, "workers": workers}
    ServerRecord().decorate(status)
    scrapes = 200
    begin = time.process_time()
    for _ in range(scrapes):
        copy = {"master": dict(status["master"]), "workers": status["workers"]}
        copy.update(app.summarize(copy["workers"]))
        metrics_text(copy, app)
    scrape = (time.process_time() - begin) / scrapes * 1e3
    return recording, scrape


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=2000, help="sessions per direct run")
    parser.add_argument("--manager-sessions", type=int, default=3000, help="sessions per manager run")
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--only", choices=("direct", "manager", "metrics", "python-child"), help="run one part only")
    parser.add_argument("--metrics-rounds", type=int, default=3,
                        help="metrics endpoint off/on pairs, alternated (the median of each is compared)")
    parser.add_argument("--rounds", type=int, default=3, help="in-process/socket pairs of the Python-child part")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON as well")
    options = parser.parse_args()
    os.chdir(ROOT)
    import tempfile

    print(f"{os.cpu_count()} cores, Python {sys.version.split()[0]}; driver: milter-test-server in one process")
    results = []
    failed = []
    with tempfile.TemporaryDirectory(prefix="milterman-bench-") as directory:
        if options.only in (None, "direct"):
            cmilter = build_c_milter()
            direct = []
            path = f"{directory}/client.sock"
            direct.append(measure("milter-test-client --no-report-request",
                                  [sys.executable, "-m", "milterman.cli.test_client", "--no-report-request", "-q",
                                   "-s", f"unix:{path}"], f"unix:{path}", options.sessions, options.concurrency,
                                  lambda process: wait_for_path(path, process)))
            path = f"{directory}/cmilter.sock"
            direct.append(measure("libmilter C milter (bench/cmilter)", [cmilter, "-p", f"unix:{path}"],
                                  f"unix:{path}", options.sessions, options.concurrency,
                                  lambda process: wait_for_path(path, process)))
            print_table(f"\nDirect: --n-sessions {options.sessions} --concurrency {options.concurrency}", direct)
            ours, peer = direct
            if peer["sessions_per_second"]:
                print(f"  ratio ours/C: sessions/s {ours['sessions_per_second'] / peer['sessions_per_second']:.2f}, "
                      f"cpu per session {ours['cpu_ms_per_session'] / max(peer['cpu_ms_per_session'], 1e-9):.2f}")
            results += direct
        if options.only in (None, "metrics"):
            results += measure_metrics(directory, options)
        if options.only in (None, "python-child"):
            for reference in PYTHON_CHILDREN:
                results += python_child_part(directory, reference, options)
        if options.only in (None, "manager"):
            managed = []
            for n_children in (1, 3):
                for n_workers in (0, 2):
                    managed.append(measure_manager(directory, n_children, n_workers, options.manager_sessions,
                                                   options.concurrency))
            print_table(f"\nThrough milter-manager (milter-test-client children): --n-sessions "
                        f"{options.manager_sessions} --concurrency {options.concurrency}", managed)
            best = max((result for result in managed if "3 children" in result["label"]),
                       key=lambda result: result["sessions_per_second"])
            print(f"  3 children: best {best['sessions_per_second']:.1f} sessions/s ({best['label']}); "
                  f"target 270 (1.5x the C milter manager's 175-185 on this machine); manager CPU "
                  f"{best['cpu_ms_per_session']:.2f} ms/session (target <= 3.5)")
            results += managed
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
