"""The metrics endpoint's text format and the master's sums (server/metrics.py, server/app.py).

The rendered page is checked by Prometheus' own linter (``promtool check metrics``, Debian package
prometheus): skipped without it, failed under CI=true.
"""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from milterman.manager.metrics import LATENCY_BOUNDS, Recorder, metric_families
from milterman.protocol import CONTINUE, Reject
from milterman.server.app import MetricFamily, add_counters
from milterman.server.metrics import ServerRecord, process_facts, render, server_families
from milterman.tools.munin import parse, value


def promtool_check(text: str) -> None:
    if shutil.which("promtool") is None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("CI=true but promtool (Debian package prometheus) is not installed", pytrace=False)
        pytest.skip("promtool (Debian package prometheus) is not installed")
    run = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, text=True, timeout=30)
    assert run.returncode == 0, run.stdout + run.stderr


def test_render_escapes_labels_and_makes_cumulative_buckets():
    text = render([
        MetricFamily("x_total", "counter", "Things.", [({"child": 'a"b\\c\nd'}, 3)]),
        MetricFamily("x_seconds", "histogram", "Latency.", [({"stage": "connect"}, {"buckets": [1, 2, 0, 4],
                                                                                    "sum": 1.5})], (0.1, 0.5, 1.0)),
        MetricFamily("x_empty_total", "counter", "Never seen: left out.", []),
    ])
    assert 'x_total{child="a\\"b\\\\c\\nd"} 3' in text
    assert 'x_seconds_bucket{stage="connect",le="0.1"} 1' in text
    assert 'x_seconds_bucket{stage="connect",le="0.5"} 3' in text
    assert 'x_seconds_bucket{stage="connect",le="1.0"} 3' in text
    assert 'x_seconds_bucket{stage="connect",le="+Inf"} 7' in text
    assert 'x_seconds_count{stage="connect"} 7' in text
    assert 'x_seconds_sum{stage="connect"} 1.5' in text
    assert "x_empty_total" not in text
    assert parse(text)[0] == ("x_total", {"child": 'a"b\\c\nd'}, 3.0)  # the plugins' reader reads it back


def test_add_counters_sums_numbers_dicts_and_bucket_lists():
    total: dict = {}
    add_counters(total, {"n": 1, "by": {"pass": 2}, "h": {"buckets": [1, 0], "sum": 0.5}, "flag": True})
    add_counters(total, {"n": 2, "by": {"pass": 1, "reject": 1}, "h": {"buckets": [0, 3], "sum": 1.0}})
    assert total == {"n": 3, "by": {"pass": 3, "reject": 1}, "h": {"buckets": [1, 3], "sum": 1.5}}


def test_server_record_keeps_exited_workers_counters_and_counts_restarts():
    record = ServerRecord()
    record.worker_exited({"counters": {"sessions_started": 4}}, expected=True)
    record.worker_exited({"counters": {"sessions_started": 2}}, expected=False)
    record.worker_exited({}, expected=False)  # killed before its first heartbeat
    record.reloaded(True)
    record.reloaded(False)
    status = {"master": {"pid": 1, "uptime": 5.0}, "workers": []}
    record.decorate(status)
    assert status["retired"] == {"sessions_started": 6}
    assert status["master"]["worker_restarts"] == 2
    assert status["master"]["reloads"] == {"success": 1, "failure": 1}
    assert status["master"]["last_reload"]["success"] is False
    assert status["master"]["process"]["pid"] == os.getpid()


def test_process_facts_of_this_process():
    facts = process_facts()
    assert facts["rss_bytes"] > 1_000_000
    assert 3 <= facts["open_fds"] < facts.get("max_fds", 1 << 30)


def test_a_whole_page_passes_prometheus_linter():
    recorder = Recorder()
    recorder.started = 3
    for seconds in (0.002, 0.03, 7.0):
        recorder.session_finished("pass", seconds)
    child = recorder.child("opendkim")
    child.replied("C", CONTINUE, 0.0004)
    child.replied("R", Reject(), 0.2)
    child.failed("end-of-message timeout")
    child.failed("closed")
    child.fallbacks = 1
    child.ended["error"] = 1
    counters = recorder.snapshot()
    status = {"master": {"pid": 1, "uptime": 2.0}, "workers": [{"pid": 2, "process": process_facts()}],
              "totals": {"counters": counters, "sessions_processing": 0},
              "children": {"opendkim": {"state": "down", "workers": {"up": 0, "down": 1, "unknown": 0}}}}
    ServerRecord().decorate(status)
    text = render(server_families("milter_manager", status) + metric_families(status))
    samples = parse(text)
    assert value(samples, "milter_manager_session_duration_seconds_count") == 3
    assert value(samples, "milter_manager_session_duration_seconds_bucket", le="0.005") == 1
    assert value(samples, "milter_manager_session_duration_seconds_bucket", le=repr(LATENCY_BOUNDS[-1])) == 3
    assert value(samples, "milter_manager_child_replies_total", child="opendkim", status="reject") == 1
    assert value(samples, "milter_manager_child_timeouts_total", child="opendkim", kind="end-of-message") == 1
    assert value(samples, "milter_manager_child_timeouts_total", child="opendkim") == 1  # "closed" is no timeout
    assert value(samples, "milter_manager_child_up", child="opendkim") == 0
    assert value(samples, "milter_manager_child_stage_duration_seconds_count", child="opendkim",
                 stage="envelope-recipient") == 1
    promtool_check(text)
