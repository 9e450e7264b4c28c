"""The controller socket (D-7, M-CTL-1): status, reload, get-configuration; set-configuration refused."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from milterman.config import load_string
from milterman.net import parse_spec
from milterman.server.control import encode, read_message, request

#: subprocesses start outside the checkout, so they import the installed package (issue 8)
RUN_DIR = "/"


def wait_for(predicate, timeout: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def start(tmp_path: Path, n_workers: int, extra: str = ""):
    (tmp_path / "milter-manager.toml").write_text(f"""version = 1
[manager]
connection_spec = "unix:{tmp_path}/manager.sock"
n_workers = {n_workers}
[log]
use_syslog = false
[controller]
connection_spec = "unix:{tmp_path}/controller.sock"
unix_socket_mode = 0o600
{extra}
[[milter]]
name = "client"
connection_spec = "unix:{tmp_path}/client.sock"
""")
    client = subprocess.Popen([sys.executable, "-m", "milterman.cli.test_client", "-s", f"unix:{tmp_path}/client.sock",
                               "--no-report-request", "-q"], cwd=RUN_DIR)
    manager = subprocess.Popen([sys.executable, "-m", "milterman.cli.manager", "-c", str(tmp_path), "--no-detect"],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=RUN_DIR)
    assert wait_for(lambda: (tmp_path / "controller.sock").exists() and (tmp_path / "client.sock").exists())
    return client, manager


def stop(*processes) -> str:
    output = ""
    for process in processes:
        process.send_signal(signal.SIGTERM)
    for process in processes:
        out, _ = process.communicate(timeout=30)
        output += out or ""
    return output


def drive(tmp_path: Path, sessions: int) -> None:
    run = subprocess.run([sys.executable, "-m", "milterman.cli.test_server", "-s", f"unix:{tmp_path}/manager.sock",
                          "--n-sessions", str(sessions), "--concurrency", "2"], capture_output=True, text=True,
                         timeout=120, cwd=RUN_DIR)
    assert f"sessions: {sessions} (pass: {sessions})" in run.stdout, run.stdout


@pytest.mark.parametrize("n_workers", [0, 2])
def test_status_reports_workers_and_child_counters_D_7(tmp_path, n_workers):
    client, manager = start(tmp_path, n_workers)
    try:
        spec = parse_spec(f"unix:{tmp_path}/controller.sock")
        assert oct(os.stat(tmp_path / "controller.sock").st_mode & 0o777) == "0o600"
        drive(tmp_path, 6)
        time.sleep(1.5)  # workers publish their counters with each heartbeat
        command, payload = request(spec, "status")
        assert command == "status"
        status = json.loads(payload)
        assert status["master"]["pid"] == manager.pid
        assert status["master"]["n_workers"] == n_workers
        if n_workers:
            assert len(status["workers"]) == n_workers
            finished = sum(worker.get("sessions_finished", 0) for worker in status["workers"])
            ended = sum(worker.get("children", {}).get("client", {}).get("pass", 0) for worker in status["workers"])
        else:
            assert status["workers"] == []
            finished = status["process"]["sessions_finished"]
            ended = status["process"]["children"]["client"]["pass"]
        assert finished == 6
        assert ended == 6
    finally:
        stop(manager, client)
    assert not (tmp_path / "controller.sock").exists()


def test_get_configuration_loads_back_and_set_configuration_is_refused_D_7(tmp_path):
    client, manager = start(tmp_path, 0)
    try:
        spec = parse_spec(f"unix:{tmp_path}/controller.sock")
        command, text = request(spec, "get-configuration")
        assert command == "configuration"
        assert load_string(text).milter("client").connection_spec == f"unix:{tmp_path}/client.sock"
        command, message = request(spec, "set-configuration", "[[milter]]")
        assert command == "error" and "not offered" in message
        command, message = request(spec, "no-such-command")
        assert command == "error" and "no-such-command" in message
    finally:
        stop(manager, client)


def test_reload_through_the_controller_takes_a_valid_file_and_refuses_a_broken_one_D_7(tmp_path):
    client, manager = start(tmp_path, 2)
    try:
        spec = parse_spec(f"unix:{tmp_path}/controller.sock")
        config = tmp_path / "milter-manager.toml"
        config.write_text(config.read_text().replace("n_workers = 2", "n_workers = 3"))
        assert request(spec, "reload") == ("success", "")
        assert wait_for(lambda: json.loads(request(spec, "status")[1])["master"]["n_workers"] == 3)
        config.write_text("version = 1\n[manager]\nn_workers = -1\n")
        assert request(spec, "reload") == ("success", "")  # the request was taken; the log says the result
        time.sleep(1.0)
        assert json.loads(request(spec, "status")[1])["master"]["n_workers"] == 3
        drive(tmp_path, 3)
    finally:
        output = stop(manager, client)
    assert "manager.n_workers" in output and "previous configuration stays in use" in output


def test_framing_several_requests_on_one_connection_M_CTL_1(tmp_path):
    import socket

    client, manager = start(tmp_path, 0)
    try:
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(10)
            sock.connect(str(tmp_path / "controller.sock"))
            sock.sendall(encode("status") + encode("get-configuration"))
            assert read_message(sock)[0] == "status"
            assert read_message(sock)[0] == "configuration"
    finally:
        stop(manager, client)
