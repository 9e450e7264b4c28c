"""The metrics endpoint (``[controller] metrics_spec``): Prometheus' text format at /metrics, served by the master.

Real ``milter-manager`` processes with scripted children; the page is read over HTTP (unix
socket or loopback) with the Munin plugins' own reader and checked against what the MTA side
did, and against the controller's ``status`` (one source: both come from the same answer).
Prometheus' own linter and server read it in tests/interop/test_metrics_prometheus_munin.py.
"""

from __future__ import annotations

import json
import os
import signal
import time

import pytest
from manager_harness import letters, wait_until

from milterman.net import parse_spec
from milterman.protocol import Reject
from milterman.server.control import request
from milterman.tools.munin import fetch, parse, value
from scripted_milter import Script


def free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def scrape(url: str) -> tuple[str, list]:
    text = fetch(url)
    return text, parse(text)


def controller_status(env) -> dict:
    command, payload = request(parse_spec(f"unix:{env.dir}/controller.sock"), "status")
    assert command == "status"
    return json.loads(payload)


def test_metrics_count_sessions_replies_fallbacks_timeouts_and_child_state(env):
    """One process: two sessions; c2 times out reading at RCPT (fallback accept), c3 cannot be reached."""
    for name in ("c1", "c2"):
        env.milter(name)
    recipients = []

    def second_rejected(session, command):
        recipients.append(command)
        return Reject() if len(recipients) == 2 else None

    env.milters["c1"].script = Script(replies={"R": second_rejected})
    env.milters["c2"].script = Script(hang="R")
    metrics = env.dir / "metrics.sock"
    env.start([{"name": "c1"}, {"name": "c2", "reading_timeout": 0.3},
               {"name": "c3", "connection_spec": f"unix:{env.dir}/nobody.sock", "fallback_status": "accept"}],
              extra=f'\n[controller]\nconnection_spec = "unix:{env.dir}/controller.sock"\n'
                    f'metrics_spec = "unix:{metrics}"\nunix_socket_mode = 0o600\n')
    wait_until(metrics.exists, 10, "the endpoint's socket")  # bound after the manager's own socket
    assert os.stat(metrics).st_mode & 0o777 == 0o600  # the controller's mode applies to the endpoint's socket
    rcpt = []
    for _ in range(2):
        mta = env.mta()
        mta.session_start()
        assert letters(mta.mail()) == ["c"]
        rcpt.append(letters(mta.rcpt()))
        mta.quit()
        mta.close()
    assert rcpt == [["c"], ["r"]]
    wait_until(lambda: value(scrape(f"unix:{metrics}")[1], "milter_manager_sessions_finished_total") == 2, 10,
               "both sessions finished")
    text, samples = scrape(f"unix:{metrics}")

    assert value(samples, "milter_manager_sessions_started_total") == 2
    assert value(samples, "milter_manager_sessions_finished_total") == 2
    assert value(samples, "milter_manager_session_duration_seconds_count") == 2
    assert value(samples, "milter_manager_sessions_in_flight") == 0
    # c1 answered negotiate is not a reply; connect, helo, mail, rcpt are: 4 per session, one of them reject
    assert value(samples, "milter_manager_child_replies_total", child="c1", status="reject") == 1
    assert value(samples, "milter_manager_child_replies_total", child="c1") == 8
    assert value(samples, "milter_manager_child_stage_duration_seconds_count", child="c1", stage="connect") == 2
    assert value(samples, "milter_manager_child_stage_duration_seconds_count", child="c1", stage="negotiate") == 2
    assert value(samples, "milter_manager_child_stage_duration_seconds_bucket", child="c1", stage="connect",
                 le="+Inf") == 2
    assert value(samples, "milter_manager_child_timeouts_total", child="c2", kind="reading") == 2
    assert value(samples, "milter_manager_child_timeouts_total", child="c1") == 0
    assert value(samples, "milter_manager_child_fallbacks_total", child="c2") == 2
    assert value(samples, "milter_manager_child_fallbacks_total", child="c3") == 2
    assert value(samples, "milter_manager_child_fallbacks_total", child="c1") == 0
    assert value(samples, "milter_manager_child_up", child="c1") == 1
    assert value(samples, "milter_manager_child_up", child="c3") == 0
    assert value(samples, "milter_manager_child_sessions_total", child="c3", status="error") == 2
    assert value(samples, "milter_manager_workers") == 0
    assert value(samples, "milter_manager_process_resident_memory_bytes", role="master") > 1_000_000
    assert value(samples, "milter_manager_process_open_fds", role="master") > 3
    assert value(samples, "milter_manager_process_max_fds", role="master") >= 64
    assert 'milter_manager_build_info{version="' in text

    # one source: the controller's status says the same
    status = controller_status(env)
    counters = status["totals"]["counters"]
    assert counters["sessions_started"] == 2
    assert counters["children"]["c2"]["timeouts"] == {"reading": 2}
    assert status["children"]["c3"]["state"] == "down"
    assert status["master"]["process"]["open_fds"] > 3


def test_metrics_with_workers_survive_restarts_and_count_reloads(env):
    """Two workers over loopback HTTP: sums over the workers; a killed worker's counts stay; reloads counted."""
    env.milter("c1")
    port = free_port()
    url = f"http://127.0.0.1:{port}/metrics"
    env.start([{"name": "c1"}], n_workers=2,
              extra=f'\n[controller]\nconnection_spec = "unix:{env.dir}/controller.sock"\n'
                    f'metrics_spec = "inet:{port}@[127.0.0.1]"\n')
    for _ in range(6):
        mta = env.mta()
        mta.session_start()
        mta.quit()
        mta.close()

    def started() -> float:
        return value(scrape(url)[1], "milter_manager_sessions_started_total")

    wait_until(lambda: started() == 6, 10, "6 sessions in the metrics")  # published with each heartbeat
    _, samples = scrape(url)
    assert value(samples, "milter_manager_workers") == 2
    workers = [labels["pid"] for name, labels, _ in samples
               if name == "milter_manager_process_resident_memory_bytes" and labels["role"] == "worker"]
    assert len(workers) == 2
    assert value(samples, "milter_manager_child_up", child="c1") == 1

    os.kill(int(workers[0]), signal.SIGKILL)
    env.manager.wait_output("starting a new one")
    wait_until(lambda: value(scrape(url)[1], "milter_manager_worker_restarts_total") == 1, 10, "the restart")
    assert started() == 6  # the killed worker's sessions are kept by the master

    config = env.dir / "milter-manager.toml"
    original = config.read_text()
    config.write_text(original.replace(f"inet:{port}@", f"inet:{free_port()}@"))
    env.manager.proc.send_signal(signal.SIGHUP)
    env.manager.wait_output("[server][reload] configuration reloaded")
    assert "controller.metrics_spec changed to inet:" in env.manager.output  # the endpoint stays until a restart
    config.write_text(original + "\n[manager\n")
    env.manager.proc.send_signal(signal.SIGHUP)
    env.manager.wait_output("[server][reload][error]")
    config.write_text(original)
    _, samples = scrape(url)
    assert value(samples, "milter_manager_reloads_total", result="success") == 1
    assert value(samples, "milter_manager_reloads_total", result="failure") == 1
    assert value(samples, "milter_manager_last_reload_success") == 0
    assert abs(value(samples, "milter_manager_last_reload_timestamp_seconds") - time.time()) < 60
    # the old generation finished gracefully and published its last counts: nothing is lost
    wait_until(lambda: len(env.manager.remember_children()) >= 2, 10, "the new workers")
    assert started() == 6
    assert value(scrape(url)[1], "milter_manager_session_duration_seconds_count") == 6

    status = controller_status(env)
    assert status["master"]["worker_restarts"] == 1
    assert status["master"]["reloads"] == {"success": 1, "failure": 1}
    assert status["totals"]["counters"]["sessions_started"] == 6


def test_metrics_endpoint_answers_404_elsewhere(env):
    env.milter("c1")
    port = free_port()
    env.start([{"name": "c1"}], extra=f'\n[controller]\nmetrics_spec = "inet:{port}@[127.0.0.1]"\n')
    import urllib.error
    import urllib.request

    def listening() -> bool:
        import socket

        with socket.socket() as probe:
            return probe.connect_ex(("127.0.0.1", port)) == 0

    wait_until(listening, 10, "the endpoint")  # bound after the manager's own socket

    with pytest.raises(urllib.error.HTTPError) as error:
        urllib.request.urlopen(f"http://127.0.0.1:{port}/other", timeout=10)
    assert error.value.code == 404
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as answer:
        assert answer.headers["Content-Type"].startswith("text/plain; version=0.0.4")


def test_metrics_spec_is_off_by_default():
    from milterman.config import load_string
    from milterman.manager.app import ManagerApplication

    configuration = load_string("version = 1\n")
    assert configuration.controller.metrics_spec is None
    assert ManagerApplication(None, {}).metrics_settings(configuration) is None
