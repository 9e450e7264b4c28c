"""make bench (bench/run.py): the performance issue's rows, each with its peer, ratio, target and verdict.

A smoke test with tiny counts, not a timed test: the figures are not judged, only that every row the
parts measure is printed and in the JSON, with the C milter as the peer measured in the same run, and
that the rounds alternate. The unit tests check the body chunks (at most 65535 bytes each, the
protocol's limit) and how rounds are combined.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"
sys.path.insert(0, str(ROOT / "tests" / "interop"))
from postfix_harness import require_real  # noqa: E402


def load_run():
    """bench/run.py as a module (it imports bench/harness.py from its own directory)."""
    if str(BENCH) not in sys.path:
        sys.path.insert(0, str(BENCH))
    spec = importlib.util.spec_from_file_location("bench_run", BENCH / "run.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_body_options_make_the_size_in_chunks_the_protocol_takes():
    run = load_run()
    chunks = [option.removeprefix("--body=") for option in run.body_options(100)]
    assert len(chunks) == 2
    assert all(len(chunk) <= 65535 for chunk in chunks)
    assert sum(len(chunk) for chunk in chunks) == 100 * 1024
    assert "".join(chunks).startswith("x" * 74 + "\r\n")


def test_median_result_takes_each_figure_median_and_sums_sessions_and_errors():
    import harness

    def result(speed: float, cpu: float, p50: float, errors: int = 0) -> dict:
        return {"label": "x", "concurrency": 50, "children": 3, "sessions": 10, "errors": errors,
                "statuses": {"pass": 10}, "sessions_per_second": speed, "cpu_ms_per_session": cpu,
                "helper_cpu_ms_per_session": 0.0, "peak_rss_kb": 100,
                "latency": {"p50": p50, "p90": p50, "p99": p50, "max": p50}}

    combined = harness.median_result([result(100, 3.0, 0.2), result(300, 1.0, 0.1, errors=1), result(200, 2.0, 0.9)])
    assert (combined["sessions_per_second"], combined["cpu_ms_per_session"]) == (200, 2.0)
    assert combined["latency"]["p50"] == 0.2
    assert (combined["sessions"], combined["errors"], combined["statuses"]) == (30, 1, {"pass": 30})
    assert (combined["children"], combined["rounds"]) == (3, 3)


def test_ratios_skip_rounds_where_the_peer_measured_zero():
    run = load_run()
    assert run.ratio([2.0, 3.0, 4.0], [1.0, 0.0, 1.0]) == 3.0
    assert run.ratio([2.0], [0.0]) is None


def test_make_bench_parts_print_every_row_with_peer_ratio_and_target(tmp_path):
    require_real("libmilter-dev (the C milter of bench/)", os.path.exists("/usr/include/libmilter/mfapi.h"),
                 "apt-get install libmilter-dev")
    run = subprocess.run([sys.executable, str(BENCH / "run.py"), "--only", "direct", "--only", "latency",
                          "--only", "body", "--rounds", "2", "--sessions", "100", "--latency-sessions", "10",
                          "--body-sessions", "10", "--body-kb", "100", "--json"],
                         capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert run.returncode == 0, run.stdout + run.stderr
    figures = json.loads(run.stdout.strip().splitlines()[-1])
    rows = {row["group"]: row for row in figures["rows"]}
    assert set(rows) == {"client", "latency", "body"}
    sessions = {"client": 100, "latency": 10, "body": 10}  # per run; two rounds each
    for group, row in rows.items():
        for side in ("ours", "peer"):
            assert (row[side]["sessions"], row[side]["rounds"]) == (2 * sessions[group], 2)
            assert row[side]["statuses"] == {"pass": row[side]["sessions"]}
            assert set(row[side]["latency"]) >= {"p50", "p90", "p99"}
            assert row[side]["peak_rss_kb"] > 0
        assert row["peer"]["label"] == "libmilter C milter (bench/cmilter)"
        assert row["ratios"]["sessions_per_second"] > 0
    assert rows["latency"]["ours"]["concurrency"] == 1 and rows["latency"]["met"] in (True, False)
    # the floor relay (bench/floor_relay.py) is measured in the same rounds, and every session passed through it
    floor = [measurement for measurement in figures["measurements"]
             if measurement["label"] == "floor relay (no logic), 1 libmilter C child"]
    assert [measurement["round"] for measurement in floor] == [0, 1]
    assert all(measurement["statuses"] == {"pass": 10} and measurement["helper_cpu_ms_per_session"] >= 0
               for measurement in floor)
    assert any(note.startswith("the floor relay (no logic, 1 C child) adds ") for note in rows["latency"]["notes"])
    assert "floor relay: added median latency" in run.stdout
    # a CPU ratio needs the peer's CPU time above the clock tick; with tiny counts it may be n/a (None)
    client = rows["client"]
    assert client["met"] == (None if client["value"] is None else client["value"] <= 1.0)
    assert rows["body"]["met"] is None and rows["body"]["target"] is None
    assert rows["body"]["ours"]["children"] == 3
    # alternated: A B in the first round, B A in the second
    labels = [(measurement["round"], measurement["label"]) for measurement in figures["measurements"]][:4]
    assert labels == [(0, "milter-test-client --no-report-request"), (0, "libmilter C milter (bench/cmilter)"),
                      (1, "libmilter C milter (bench/cmilter)"), (1, "milter-test-client --no-report-request")]
    summary = run.stdout.partition("The performance issue's table")[2]
    assert summary.count("not measured in this run") == 2  # the manager and memory rows: parts not run
    assert "added median latency" in summary and "<= 1.0 ms" in summary
    assert "milter-test-client CPU per session <= the C milter's" in summary


def test_python_child_part_alternates_its_rounds(tmp_path):
    """The in-process and socket runs of each example swap order every other round (issue 13's ratio)."""
    run = subprocess.run([sys.executable, str(BENCH / "run.py"), "--only", "python-child", "--python-child-rounds", "2",
                          "--manager-sessions", "20", "--json"],
                         capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert run.returncode == 0, run.stdout + run.stderr
    figures = json.loads(run.stdout.strip().splitlines()[-1])
    labels = [(measurement["round"], measurement["label"]) for measurement in figures["measurements"]]
    inside, over_socket = "manager, recipient_policy in process", "manager, recipient_policy over a unix socket"
    assert labels[:4] == [(0, inside), (0, over_socket), (1, over_socket), (1, inside)]
    assert all(measurement["statuses"] == {"pass": 20} for measurement in figures["measurements"])
    assert run.stdout.count("ratio in process / socket (median of 2)") == 2
