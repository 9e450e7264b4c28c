#!/usr/bin/env python3
"""make bench: milter-test-server load against our milters, a libmilter C milter and milter-manager.

Everything is measured in the same run with the same driver (milter-test-server), over unix sockets
in a temporary directory: sessions/s, latency percentiles, the measured process tree's CPU time per
session and its peak RSS (VmHWM). The parts (``--only``, repeatable; all by default):

- direct: milter-test-client alone vs the libmilter C milter (bench/cmilter.c), 50 concurrent;
- manager: 3 children, small mail, 50 concurrent: the manager with 3 libmilter C children and with
  3 milter-test-client children (n_workers 0 and 2) vs the C milter alone; 1 child once;
- latency: 1 C child, one session at a time: the manager's median latency minus the child's alone;
- body: 3 C children, 100 KB bodies, 50 concurrent, vs the C milter alone with the same bodies;
- metrics: the metrics endpoint off and on (scraped every second);
- python-child: a Python child in the manager's process vs over a unix socket.

Where a ratio is printed the two set-ups are measured in alternating rounds (``--rounds``) and the
medians are compared. The manager and latency parts also measure the floor relay (bench/floor_relay.py:
the same packets to the same children with no logic at all), the least a manager in Python on gevent
can cost on this machine, so that the targets can be read against it. The summary at the end
prints each row of the performance issue's table with its target and whether it is met; ``--json``
prints every figure as one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence

from floor_relay import measure_floor
from harness import (ROOT, Scraper, build_c_milter, child_command, measure, median_result, start_milter, stop,
                     wait_for_path)

# the other measuring helpers, which this module defined before bench/harness.py: parts may use them from here
from harness import cpu_seconds, driver_command, peak_rss_kb, process_tree  # noqa: F401


def free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


CHILD_NAMES = {"client": "milter-test-client", "c": "libmilter C"}


def measure_manager(directory: str, n_children: int, n_workers: int, sessions: int, concurrency: int,
                    metrics: bool | None = None, children_kind: str = "client",
                    driver_options: Sequence[str] = (), tag: str = "", reuse: bool = False) -> dict:
    """milter-manager with n children (milter-test-client or the C milter), all on unix sockets in ``directory``.

    ``metrics``: None leaves the endpoint out of the label; True switches it on and scrapes it
    every second during the measured load; False measures the same set-up with it off. The children's
    CPU time is reported as ``helper_cpu_ms_per_session`` (all of them together). ``reuse``: every child with
    ``reuse_connection = true`` (kept across sessions with K).
    """
    children = []
    config = tempfile.mkdtemp(prefix=f"manager-{children_kind}{n_children}-{n_workers}-", dir=directory)
    lines = ["version = 1", "[manager]", f'connection_spec = "unix:{config}/manager.sock"',
             f"n_workers = {n_workers}", "[log]", "use_syslog = false", 'level = "error"']
    port = free_port()
    if metrics:
        lines += ["[controller]", f'metrics_spec = "inet:{port}@[127.0.0.1]"']
    try:
        for number in range(n_children):
            path = f"{config}/child{number}.sock"
            children.append(start_milter(child_command(children_kind, path), path))
            lines += ["[[milter]]", f'name = "child{number}"', f'connection_spec = "unix:{path}"']
            if reuse:
                lines.append("reuse_connection = true")
        with open(f"{config}/milter-manager.toml", "w") as handle:
            handle.write("\n".join(lines) + "\n")
        label = (f"manager, {n_children} {CHILD_NAMES[children_kind]} child{'ren' if n_children > 1 else ''}, "
                 f"n_workers {n_workers}")
        if metrics is not None:
            label += f", metrics {'on' if metrics else 'off'}"
        if reuse:
            label += ", reuse_connection"
        if tag:
            label += f", {tag}"
        scrapers: list[Scraper] = []

        def ready(process: subprocess.Popen) -> None:
            wait_for_path(f"{config}/manager.sock", process)
            if metrics:  # the endpoint is bound before the workers start
                scrapers.append(Scraper(f"http://127.0.0.1:{port}/metrics"))

        try:
            result = measure(label, [sys.executable, "-m", "milterman.cli.manager", "-c", config, "--no-detect"],
                             f"unix:{config}/manager.sock", sessions, concurrency, ready, helpers=children,
                             loaded=lambda: [scraper.stop() for scraper in scrapers], driver_options=driver_options)
        finally:
            for scraper in scrapers:
                scraper.stop()
        for scraper in scrapers:
            result["scrapes"] = scraper.scrapes
            if scraper.failures or not scraper.scrapes:
                result["errors"] += 1
                print(f"bench: {scraper.failures} of {scraper.scrapes + scraper.failures} scrapes failed",
                      file=sys.stderr)
        result["children"] = n_children
        return result
    finally:
        for child in children:
            stop(child, timeout=10)


#: the examples/ milters the Python-child part runs: RCPT and end of message; header, body and end of message
PYTHON_CHILDREN = ("recipient_policy:RecipientPolicy", "footer:Footer")


def measure_python_child(directory: str, reference: str, in_process: bool, sessions: int, concurrency: int) -> dict:
    """milter-manager (n_workers 0) with one Python child from examples/: run in the manager (``python =``) or
    served by milter-run on a unix socket (``connection_spec =``)."""
    config = tempfile.mkdtemp(prefix=f"python-child-{'in' if in_process else 'socket'}-", dir=directory)
    lines = ["version = 1", "[manager]", f'connection_spec = "unix:{config}/manager.sock"', "n_workers = 0",
             "[log]", "use_syslog = false", 'level = "error"', "[[milter]]", 'name = "policy"']
    environment = dict(os.environ, PYTHONPATH=os.path.join(ROOT, "examples"))
    helpers = []
    try:
        if in_process:
            lines.append(f'python = "{reference}"')
        else:
            path = f"{config}/child.sock"
            helpers.append(start_milter([sys.executable, "-m", "milterman.cli.milter_run", reference, "-q",
                                         "-s", f"unix:{path}"], path, environment))
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
            stop(helper, timeout=10)


def python_child_part(directory: str, reference: str, options) -> list[dict]:
    """The in-process and socket rows of one example milter over ``--python-child-rounds`` rounds, the order
    reversed every other round (on a shared machine one pair can be skewed by other load); each round's ratios
    and their median."""
    pairs, rows = [], []  # rows: in the order they ran
    for number in range(options.python_child_rounds):
        pair = {}
        for in_process in ((True, False) if number % 2 == 0 else (False, True)):
            row = pair[in_process] = measure_python_child(directory, reference, in_process,
                                                          options.manager_sessions, options.concurrency)
            row["round"] = number
            rows.append(row)
        pairs.append([pair[True], pair[False]])
    print_table(f"\nOne Python child ({reference}), in process vs over a unix socket, {options.python_child_rounds} "
                f"rounds: --n-sessions {options.manager_sessions} --concurrency {options.concurrency}", rows)
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
    width = max([52, *(len(result["label"]) for result in results)])
    print(title)
    print(f"  {'measured':{width}} {'sessions/s':>10} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8} {'cpu ms/sess':>11} "
          f"{'peak RSS':>11} errors")
    for result in results:
        latency = result["latency"]
        print(f"  {result['label']:{width}} {result['sessions_per_second']:10.1f} {1000 * latency['p50']:8.2f} "
              f"{1000 * latency['p90']:8.2f} {1000 * latency['p99']:8.2f} {result['cpu_ms_per_session']:11.3f} "
              f"{result['peak_rss_kb'] / 1024:8.1f} MB {result['errors']}")


def measure_metrics(directory: str, options) -> list[dict]:
    """The metrics endpoint's cost: 3 children, 2 workers, with it off and on (scraped every second),
    in alternating rounds of the same run; the medians are compared (target: under 2 % of sessions/s)."""
    rounds = []
    for _ in range(options.metrics_rounds):
        for metrics in (False, True):
            rounds.append(measure_manager(directory, 3, 2, options.manager_sessions, options.concurrency,
                                          metrics=metrics))
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


# ------------------------------------------------------------------------------------- the issue's rows


class Bench:
    """One run: its options, its temporary directory, the measurements and the rows of the issue's table."""

    def __init__(self, options: argparse.Namespace, directory: str) -> None:
        self.options = options
        self.directory = directory
        self.measurements: list[dict] = []
        self.rows: list[dict] = []
        self._cmilter: str | None = None

    def need_c_milter(self) -> str:
        """bench/cmilter, built once per run."""
        if self._cmilter is None:
            self._cmilter = build_c_milter()
        return self._cmilter

    def add_row(self, group: str, variant: str, *, ours: dict | None, peer: dict | None = None,
                ratios: dict[str, float | None] | None = None, figure: str, value: float | None,
                unit: str = "ms", target: float | None = None, target_text: str = "", before: str = "",
                notes: Sequence[str] = ()) -> dict:
        """One line of the summary: ``group`` is a key of ISSUE_ROWS; ``value`` is compared with ``target``
        (at most); ``before`` quotes the issue's figures."""
        row = {"group": group, "variant": variant, "ours": ours, "peer": peer, "ratios": ratios or {},
               "figure": figure, "value": value, "unit": unit, "target": target, "target_text": target_text,
               "met": None if target is None or value is None else value <= target, "before": before,
               "notes": list(notes)}
        self.rows.append(row)
        return row

    def alternate(self, setups: dict[str, Callable[[], dict]]) -> dict[str, list[dict]]:
        """Each set-up once per round for ``--rounds`` rounds, the order reversed every other round (A B, B A, …)
        so that a drift of the machine's load weighs on both alike: ``{name: [result of each round]}``."""
        results: dict[str, list[dict]] = {name: [] for name in setups}
        names = list(setups)
        for number in range(self.options.rounds):
            for name in (names if number % 2 == 0 else names[::-1]):
                result = setups[name]()
                result["round"] = number
                results[name].append(result)
                self.measurements.append(result)
        return results


#: the rows of the performance issue's table, in its order: group key → title (the part that measures it)
ISSUE_ROWS = {
    "small": "3 children, small mail, 50 concurrent (manager)",
    "latency": "1 child, one session at a time: latency added over the child alone (latency)",
    "body": "3 children, 100 KB bodies, 50 concurrent (body)",
    "memory": "memory per concurrent session, 1000 held open, 3 children (memory)",
    "client": "milter-test-client alone, 50 concurrent (direct)",
}
C_MILTER = "libmilter C milter (bench/cmilter)"
RATIO_NAMES = {"sessions_per_second": "sessions/s", "cpu_ms_per_session": "CPU per session", "p50": "p50 latency"}


def measure_alone(bench: Bench, kind: str, sessions: int, concurrency: int,
                  driver_options: Sequence[str] = ()) -> dict:
    """One milter served on its own (``c``: the libmilter C milter; ``client``: milter-test-client)."""
    if kind == "c":
        bench.need_c_milter()
    path = os.path.join(tempfile.mkdtemp(prefix=f"alone-{kind}-", dir=bench.directory), "milter.sock")
    label = C_MILTER if kind == "c" else "milter-test-client --no-report-request"
    return measure(label, child_command(kind, path), f"unix:{path}", sessions, concurrency,
                   lambda process: wait_for_path(path, process), driver_options=driver_options)


def ratio(numerators: Sequence[float], denominators: Sequence[float]) -> float | None:
    """Median of the rounds' ratios (pairs of the same round); None when the peer's figure was 0 in every round
    (a CPU time below the clock tick: too few sessions)."""
    ratios = [mine / theirs for mine, theirs in zip(numerators, denominators, strict=True) if theirs > 0]
    return statistics.median(ratios) if ratios else None


def round_ratios(ours: list[dict], peer: list[dict]) -> dict[str, float | None]:
    """ours/peer for sessions/s and CPU per session, medians over the rounds."""
    return {figure: ratio([result[figure] for result in ours], [result[figure] for result in peer])
            for figure in ("sessions_per_second", "cpu_ms_per_session")}


def children_note(result: dict, alone: dict) -> str:
    """What each child costs behind the manager, against the same milter alone."""
    each = result["helper_cpu_ms_per_session"] / result["children"]
    compared = (f"{each / alone['cpu_ms_per_session']:.2f}x the C milter alone" if alone["cpu_ms_per_session"]
                else "the C milter alone: below the clock tick")
    return f"children behind the manager: {each:.3f} ms CPU per session each ({compared})"


def floor_note(ours: list[dict], floor: list[dict], figure: str, name: str) -> str:
    """Ours against the floor relay (bench/floor_relay.py: the same packets with no logic) in the same rounds."""
    value = statistics.median(result[figure] for result in floor)
    return (f"floor relay (no logic, same children): {value:.3f} ms {name}; "
            f"ours/floor {number(ratio([result[figure] for result in ours], [result[figure] for result in floor]))}")


def body_options(kilobytes: int) -> list[str]:
    """``--body`` options for a body of ``kilobytes`` KiB in chunks of at most 65535 bytes (the protocol's)."""
    size = kilobytes * 1024
    line = "x" * 74 + "\r\n"
    text = (line * (size // len(line) + 1))[:size]
    count = -(-size // 65535)
    step = -(-size // count)
    return [f"--body={text[start:start + step]}" for start in range(0, size, step)]


def direct_part(bench: Bench) -> None:
    options = bench.options
    rounds = bench.alternate({
        "client": lambda: measure_alone(bench, "client", options.sessions, options.concurrency),
        "c": lambda: measure_alone(bench, "c", options.sessions, options.concurrency)})
    print_table(f"\nDirect, alternated {options.rounds} times: --n-sessions {options.sessions} "
                f"--concurrency {options.concurrency}", rounds["client"] + rounds["c"])
    ratios = round_ratios(rounds["client"], rounds["c"])
    print(f"  ratio ours/C (median of {options.rounds} rounds): sessions/s {number(ratios['sessions_per_second'])}, "
          f"cpu per session {number(ratios['cpu_ms_per_session'])}")
    bench.add_row("client", "milter-test-client vs the C milter", ours=median_result(rounds["client"]),
                  peer=median_result(rounds["c"]), ratios=ratios, figure="CPU per session, ours/C",
                  value=ratios["cpu_ms_per_session"], unit="x", target=1.0,
                  target_text="milter-test-client CPU per session <= the C milter's",
                  before="1837/s, 0.46 ms vs the C milter's 2104/s, 0.38 ms")


def manager_part(bench: Bench) -> None:
    options = bench.options
    sessions, concurrency = options.manager_sessions, options.concurrency
    bench.need_c_milter()
    setups = {"alone": lambda: measure_alone(bench, "c", options.sessions, concurrency)}
    for kind in ("c", "client"):
        for n_workers in (0, 2):
            setups[f"{kind}{n_workers}"] = (lambda kind=kind, n_workers=n_workers: measure_manager(
                bench.directory, 3, n_workers, sessions, concurrency, children_kind=kind))
    setups["c0reuse"] = lambda: measure_manager(bench.directory, 3, 0, sessions, concurrency, children_kind="c",
                                                reuse=True)
    setups["floor"] = lambda: measure_floor(bench.directory, 3, sessions, concurrency)
    rounds = bench.alternate(setups)
    once = [measure_manager(bench.directory, 1, n_workers, sessions, concurrency) for n_workers in (0, 2)]
    bench.measurements += once
    print_table(f"\n3 children, small mail, alternated {options.rounds} times: --n-sessions {sessions} "
                f"--concurrency {concurrency} (the C milter alone: --n-sessions {options.sessions}); "
                f"1 child once", [result for results in rounds.values() for result in results] + once)
    alone = median_result(rounds["alone"])
    for name in setups:
        if name in ("alone", "floor"):
            continue
        ours = median_result(rounds[name])
        ratios = round_ratios(rounds[name], rounds["alone"])
        if name.startswith("c") and name[1:2].isdigit():  # C children, as the floor relay has
            notes = [children_note(ours, alone),
                     floor_note(rounds[name], rounds["floor"], "cpu_ms_per_session", "CPU per session")]
        else:
            notes = [f"children: {ours['helper_cpu_ms_per_session'] / 3:.3f} ms CPU per session each"]
        bench.add_row("small", ours["label"], ours=ours, peer=alone, ratios=ratios,
                      figure="manager CPU per session", value=ours["cpu_ms_per_session"], target=0.8,
                      target_text="manager CPU per session <= 0.8 ms", notes=notes,
                      before="329-353/s, 2.15 ms (C milter manager 2.3.2: 230-286/s, 4.07 ms)"
                      if name == "c0" else "")


def latency_part(bench: Bench) -> None:
    options = bench.options
    sessions = options.latency_sessions
    rounds = bench.alternate({
        "alone": lambda: measure_alone(bench, "c", sessions, 1),
        "manager": lambda: measure_manager(bench.directory, 1, 0, sessions, 1, children_kind="c"),
        "reuse": lambda: measure_manager(bench.directory, 1, 0, sessions, 1, children_kind="c", reuse=True),
        "floor": lambda: measure_floor(bench.directory, 1, sessions, 1)})
    print_table(f"\n1 child, one session at a time, alternated {options.rounds} times: --n-sessions {sessions} "
                "--concurrency 1", rounds["alone"] + rounds["manager"] + rounds["reuse"] + rounds["floor"])
    alone = median_result(rounds["alone"])
    def added(name: str) -> list[float]:
        """The median latency ``name`` adds over the child alone, ms, per round."""
        return [1000 * (mine["latency"]["p50"] - theirs["latency"]["p50"])
                for mine, theirs in zip(rounds[name], rounds["alone"], strict=True)]

    floor_added = statistics.median(added("floor"))
    print(f"  floor relay: added median latency {floor_added:.3f} ms (median of {options.rounds} rounds)")
    for name in ("manager", "reuse"):
        per_round = added(name)
        print(f"  {name}: added median latency per round: " + ", ".join(f"{value:.3f} ms" for value in per_round))
        ours = median_result(rounds[name])
        ratios = round_ratios(rounds[name], rounds["alone"])
        ratios["p50"] = ratio([result["latency"]["p50"] for result in rounds[name]],
                              [result["latency"]["p50"] for result in rounds["alone"]])
        bench.add_row("latency", ours["label"], ours=ours, peer=alone, ratios=ratios,
                      figure="added median latency", value=statistics.median(per_round), target=1.0,
                      target_text="added median latency <= 1.0 ms",
                      notes=[children_note(ours, alone),
                             f"the floor relay (no logic, 1 C child) adds {floor_added:.3f} ms"],
                      before="+2.7 ms (C milter manager 2.3.2: +10.9 ms)" if name == "manager" else "")


def body_part(bench: Bench) -> None:
    options = bench.options
    sessions, driver = options.body_sessions, body_options(options.body_kb)
    rounds = bench.alternate({
        "alone": lambda: measure_alone(bench, "c", sessions, options.concurrency, driver),
        "manager": lambda: measure_manager(bench.directory, 3, 0, sessions, options.concurrency, children_kind="c",
                                           driver_options=driver, tag=f"{options.body_kb} KiB bodies")})
    print_table(f"\n3 children, {options.body_kb} KiB bodies ({len(driver)} body chunks), alternated {options.rounds} "
                f"times: --n-sessions {sessions} --concurrency {options.concurrency}",
                rounds["alone"] + rounds["manager"])
    ours, alone = median_result(rounds["manager"]), median_result(rounds["alone"])
    bench.add_row("body", ours["label"], ours=ours, peer=alone, ratios=round_ratios(rounds["manager"], rounds["alone"]),
                  figure="manager CPU per session", value=ours["cpu_ms_per_session"],
                  target_text="no target in the issue", notes=[children_note(ours, alone)],
                  before="305/s, 2.14 ms (C milter manager 2.3.2: 124/s, 5.22 ms)")


def metrics_part(bench: Bench) -> None:
    bench.measurements += measure_metrics(bench.directory, bench.options)


def memory_bench_part(bench: Bench) -> None:
    """Sessions held open at once through the manager (bench/memory.py): KiB per session, RSS after the burst."""
    from memory import memory_part

    for result in memory_part(bench.directory):
        bench.add_row("memory", result["label"], ours=None, figure="KiB per concurrent session",
                      value=result["kib_per_session"], unit="KiB", target=16.0, target_text="target <= 16 KiB",
                      before="24 KiB (C milter manager 2.3.2: 67-70 KiB)",
                      notes=[f"RSS after the burst / idle: {result['after_over_idle']:.2f} (serving processes "
                             f"{result['serving_after_over_idle']:.2f}; target <= 1.20)"])


def python_children_part(bench: Bench) -> None:
    for reference in PYTHON_CHILDREN:
        bench.measurements += python_child_part(bench.directory, reference, bench.options)


#: ``--only`` choices, run in this order; a part measures and adds its rows with ``bench.add_row(group, …)``.
PARTS: dict[str, Callable[[Bench], None]] = {
    "direct": direct_part,
    "manager": manager_part,
    "latency": latency_part,
    "body": body_part,
    "memory": memory_bench_part,
    "metrics": metrics_part,
    "python-child": python_children_part,
}


def number(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def describe(result: dict) -> str:
    latency = result["latency"]
    return (f"{result['sessions_per_second']:8.1f} sessions/s, p50/p90/p99 {1000 * latency['p50']:.2f}/"
            f"{1000 * latency['p90']:.2f}/{1000 * latency['p99']:.2f} ms, CPU {result['cpu_ms_per_session']:.3f} "
            f"ms/session, peak RSS {result['peak_rss_kb'] / 1024:.1f} MB")


def print_summary(bench: Bench) -> None:
    """Each row of the issue's table: the figures of ours and of the peer, the ratios, the target and the verdict."""
    print(f"\nThe performance issue's table (medians of {bench.options.rounds} alternated rounds; "
          "peer: the same load against the libmilter C milter alone)")
    for group, title in ISSUE_ROWS.items():
        print(f"\n{title}")
        rows = [row for row in bench.rows if row["group"] == group]
        if not rows:
            print("  not measured in this run")
        for row in rows:
            print(f"  {row['variant']}")
            if row["ours"] is not None:
                print(f"    ours: {describe(row['ours'])}")
            if row["peer"] is not None:
                print(f"    peer: {describe(row['peer'])} ({row['peer']['label']})")
            if row["ratios"]:
                print("    ours/peer: " + ", ".join(f"{RATIO_NAMES[name]} {number(value)}"
                                                    for name, value in row["ratios"].items()))
            for note in row["notes"]:
                print(f"    {note}")
            verdict = "no target" if row["met"] is None else ("met" if row["met"] else "NOT met")
            value = "n/a" if row["value"] is None else f"{row['value']:.3f} {row['unit']}"
            line = f"    {row['figure']} {value}: {row['target_text']}: {verdict}"
            print(line + (f" (the starting point: {row['before']})" if row["before"] else ""))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", action="append", choices=list(PARTS),
                        help="run this part (repeatable); all parts by default")
    parser.add_argument("--rounds", type=int, default=3, help="alternated rounds where a ratio is printed")
    parser.add_argument("--sessions", type=int, default=2000, help="sessions per run of a milter alone")
    parser.add_argument("--manager-sessions", type=int, default=1500, help="sessions per manager run")
    parser.add_argument("--latency-sessions", type=int, default=500, help="sessions per run of the latency part")
    parser.add_argument("--body-sessions", type=int, default=1000, help="sessions per run of the body part")
    parser.add_argument("--body-kb", type=int, default=100, help="body size of the body part, KiB")
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--python-child-rounds", type=int, default=7,
                        help="alternated rounds of the Python-child part (short runs: more rounds steady its median)")
    parser.add_argument("--metrics-rounds", type=int, default=3,
                        help="metrics endpoint off/on pairs, alternated (the median of each is compared)")
    parser.add_argument("--json", action="store_true", help="print every figure as one JSON object at the end")
    options = parser.parse_args()
    os.chdir(ROOT)
    started = time.monotonic()
    print(f"{os.cpu_count()} cores, Python {sys.version.split()[0]}; driver: milter-test-server in one process")
    with tempfile.TemporaryDirectory(prefix="milterman-bench-") as directory:
        bench = Bench(options, directory)
        for name, part in PARTS.items():
            if options.only is None or name in options.only:
                part(bench)
    print_summary(bench)
    elapsed = time.monotonic() - started
    print(f"\nbench: {len(bench.measurements)} measurements in {elapsed:.0f} s")
    if options.json:
        print(json.dumps({"cores": os.cpu_count(), "python": sys.version.split()[0], "options": vars(options),
                          "elapsed_s": round(elapsed, 1), "rows": bench.rows, "measurements": bench.measurements}))
    failed = sorted({result["label"] for result in bench.measurements
                     if result["errors"] or set(result["statuses"]) != {"pass"}})
    if failed:
        print(f"bench: sessions failed against: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    if shutil.which("make") is None:
        raise SystemExit("bench: make is needed to build the C milter")
    sys.exit(main())
