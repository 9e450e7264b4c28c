"""The launcher (M-LAU-1, D-10, M-CON-1/5): commands started without a shell, once, as their user."""

from __future__ import annotations

import json
import os
import pwd
import signal
import socket
import subprocess
import sys
import time

import pytest

from milterman.manager.launcher import Launcher, LaunchError, command_line

#: subprocesses start outside the checkout, so they import the installed package (issue 8)
RUN_DIR = "/"


def wait_for(predicate, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def test_command_line_joins_a_list_shell_escaped_M_LAU_1():
    assert command_line("/usr/sbin/milter", None) == "/usr/sbin/milter"
    assert command_line("/usr/sbin/milter", "-p inet:1@x") == "/usr/sbin/milter -p inet:1@x"
    assert command_line("/usr/sbin/milter", ("-c", "a b.conf")) == "/usr/sbin/milter -c 'a b.conf'"


def test_launch_runs_without_a_shell_D_10(tmp_path):
    marker = tmp_path / "marker"
    launcher = Launcher(socket.socketpair()[0])
    # With a shell, ';' would run touch; without one it is just an argument to sleep, which then fails.
    launcher.launch(f"sleep 0.1 ; touch {marker}", None)
    process = next(iter(launcher.running.values()))
    process.wait(timeout=10)
    assert not marker.exists()


def test_duplicate_refused_while_running_and_restarted_after_exit_D_10(tmp_path):
    launcher = Launcher(socket.socketpair()[0])
    launcher.launch("sleep 30", None)
    with pytest.raises(LaunchError, match="already launched"):
        launcher.launch("sleep 30", None)
    first = launcher.running["sleep 30"]
    first.kill()
    first.wait(timeout=10)
    launcher.launch("sleep 30", None)  # a launched milter that exited is started again
    second = launcher.running["sleep 30"]
    assert second.pid != first.pid
    second.kill()
    second.wait(timeout=10)


@pytest.mark.skipif(os.geteuid() != 0, reason="switching users needs root")
def test_command_started_as_its_user_name_M_LAU_1(tmp_path):
    launcher = Launcher(socket.socketpair()[0])
    launcher.launch("sleep 30", "nobody")
    process = launcher.running["sleep 30"]
    try:
        assert wait_for(lambda: os.stat(f"/proc/{process.pid}").st_uid == pwd.getpwnam("nobody").pw_uid)
    finally:
        process.kill()
        process.wait(timeout=10)


def test_unknown_user_is_named_in_the_error():
    launcher = Launcher(socket.socketpair()[0])
    with pytest.raises(LaunchError, match="no-such-user-here"):
        launcher.launch("sleep 1", "no-such-user-here")


def read_until(stream, text: str, timeout: float = 30.0) -> str:
    """Lines of ``stream`` up to and including the first containing ``text`` (bounded by a timer)."""
    import threading

    seen: list[str] = []
    found = threading.Event()

    def read() -> None:
        for line in iter(stream.readline, ""):
            seen.append(line)
            if text in line:
                found.set()
                return

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    assert found.wait(timeout), f"{text!r} not seen within {timeout} s:\n{''.join(seen)}"
    return "".join(seen)


def test_manager_launches_an_unreachable_child_in_the_background_M_CON_1(tmp_path):
    """A child with a command that is down at the first session: that session gets the fallback at once,
    the command is started once in the background and the child is used as soon as it is back."""
    child_socket = tmp_path / "child.sock"
    config = tmp_path / "milter-manager.toml"
    command = f'"{sys.executable}"'
    config.write_text(f"""version = 1
[manager]
connection_spec = "unix:{tmp_path}/manager.sock"
[log]
use_syslog = false
[[milter]]
name = "launched"
connection_spec = "unix:{child_socket}"
command = {command}
command_options = ["-m", "milterman.cli.test_client", "-s", "unix:{child_socket}", "--no-report-request", "-q",
                   "--pid-file", "{tmp_path}/child.pid"]
retry_delay = 1.0
""")
    manager = subprocess.Popen([sys.executable, "-m", "milterman.cli.manager", "-c", str(tmp_path), "--no-detect"],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=RUN_DIR, text=True)
    output = ""
    try:
        assert wait_for(lambda: (tmp_path / "manager.sock").exists())
        started = time.monotonic()
        run = subprocess.run([sys.executable, "-m", "milterman.cli.test_server", "-s", f"unix:{tmp_path}/manager.sock"],
                             capture_output=True, text=True, timeout=60, cwd=RUN_DIR)
        # the child is absent (fallback accept, D-14): no child left, the manager's fallback answers at once
        assert run.stdout.splitlines()[0] == "status: accept", run.stdout
        assert float(run.stdout.splitlines()[1].split()[1]) < 0.9  # no wait for the launch (retry_delay is 1 s)
        output += read_until(manager.stdout, "[manager][child][up] [launched]")
        assert time.monotonic() - started < 20
        assert (tmp_path / "child.pid").exists()
        launched_pid = int((tmp_path / "child.pid").read_text())
        for _ in range(2):
            run = subprocess.run([sys.executable, "-m", "milterman.cli.test_server", "-s",
                                  f"unix:{tmp_path}/manager.sock"], capture_output=True, text=True, timeout=60,
                                 cwd=RUN_DIR)
            assert run.stdout.splitlines()[0] == "status: pass", run.stdout
        assert int((tmp_path / "child.pid").read_text()) == launched_pid  # not started twice
    finally:
        manager.send_signal(signal.SIGTERM)
        rest, _ = manager.communicate(timeout=20)
        output += rest
        if (tmp_path / "child.pid").exists():
            try:
                os.kill(int((tmp_path / "child.pid").read_text()), signal.SIGTERM)
            except (ProcessLookupError, ValueError):
                pass
    assert manager.returncode == 0
    assert output.count("[launcher][launch]") == 1, output
    assert output.count("[manager][child][down] [launched]") == 1, output


WORKER_SCRIPT = r"""
import json, os, socket, sys, time
from gevent import spawn, joinall
from milterman.manager.launcher import LaunchClient, LaunchError

fd, worker, count, start_at = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
client = LaunchClient(socket.socket(fileno=fd))
results = {"answers": 0, "crossed": 0, "errors": []}

def ask(first):
    for index in range(first, count, 5):
        line = f"/bin/true worker-{worker} request-{index}"
        try:
            answer = client.request("launch", line, "")
        except LaunchError as error:
            if "answered about" in str(error):
                results["crossed"] += 1
            else:
                results["errors"].append(str(error))
            continue
        results["answers"] += 1
        if answer[1] != line or answer[0] != "success":
            results["crossed"] += 1

while time.time() < start_at:  # every worker starts at the same moment
    time.sleep(0.001)
joinall([spawn(ask, first) for first in range(5)])  # five greenlets of this worker share its channel
print(json.dumps(results))
"""


def test_every_reply_reaches_the_worker_that_asked_4_workers_1000_launches_M_LAU_1(tmp_path):
    """4 worker processes × 250 launch requests (5 greenlets each), all at once: zero crossed replies."""
    from milterman.log import DEFAULT, Logger
    from milterman.manager.launcher import start_launcher

    log = open(tmp_path / "launcher.log", "w")
    registration = start_launcher(Logger(DEFAULT, stream=log))
    start_at = time.time() + 2.0
    workers = [subprocess.Popen([sys.executable, "-c", WORKER_SCRIPT, str(registration.fileno()), str(worker),
                                 "250", str(start_at)], pass_fds=[registration.fileno()], cwd=RUN_DIR,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
               for worker in range(4)]
    results = []
    for worker in workers:
        out, err = worker.communicate(timeout=300)
        assert worker.returncode == 0, err
        results.append(json.loads(out))
    registration.close()  # the launcher exits once every holder has closed the registration socket
    answers = sum(result["answers"] for result in results)
    crossed = sum(result["crossed"] for result in results)
    print(f"launcher: {answers} replies, {crossed} crossed, over {4 * 250} launches from 4 workers")
    assert [result["errors"] for result in results] == [[], [], [], []]
    assert crossed == 0
    assert answers == 1000
    log.close()
    assert (tmp_path / "launcher.log").read_text().count("[launcher][launch] </bin/true worker-") == 1000


def test_the_launcher_reports_how_a_command_ended_with_its_stderr_tail(tmp_path):
    script = tmp_path / "fails"
    script.write_text("#!/bin/sh\necho 'first line' >&2\necho 'no configuration file' >&2\nexit 7\n")
    script.chmod(0o755)
    launcher = Launcher(socket.socketpair()[0])
    assert launcher.answer(["status", str(script)]) == ("unknown", str(script))
    assert launcher.answer(["launch", str(script), ""]) == ("success", str(script))
    assert wait_for(lambda: launcher.answer(["status", str(script)])[0] == "exited")
    answer = launcher.answer(["status", str(script)])
    assert answer[:3] == ("exited", str(script), "exited with status 7")
    assert answer[3] == "first line\nno configuration file"
    assert launcher.answer(["launch", "/nonexistent/milter", ""])[0] == "error"


def test_the_launcher_holds_no_listening_socket(tmp_path):
    """The launcher is forked after the MTA socket is bound; it closes it, so a stop closes the port at once."""
    import psutil

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    (tmp_path / "milter-manager.toml").write_text(f"""version = 1
[manager]
connection_spec = "inet:{port}@[127.0.0.1]"
n_workers = 2
[log]
use_syslog = false
[[milter]]
name = "launchable"
connection_spec = "unix:{tmp_path}/child.sock"
command = "/bin/true"
""")
    manager = subprocess.Popen([sys.executable, "-m", "milterman.cli.manager", "-c", str(tmp_path), "--no-detect"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=RUN_DIR)
    try:
        master = psutil.Process(manager.pid)

        def launcher():
            for child in master.children():
                try:
                    if "launcher" in " ".join(child.cmdline()):
                        return child
                except psutil.Error:
                    pass
            return None

        def listening(process) -> bool:
            return any(connection.status == psutil.CONN_LISTEN and connection.laddr.port == port
                       for connection in process.net_connections(kind="inet"))

        assert wait_for(lambda: launcher() is not None and listening(master))
        assert not listening(launcher())
    finally:
        manager.send_signal(signal.SIGTERM)
        manager.wait(20)
    assert manager.returncode == 0


def test_a_launched_command_does_not_inherit_the_service_notify_socket_M_LAU_1(tmp_path, monkeypatch):
    """systemd's NOTIFY_SOCKET and LISTEN_* address milter-manager's service, not the milters it starts."""
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "notify"))
    monkeypatch.setenv("LISTEN_FDS", "1")
    monkeypatch.setenv("MILTERMAN_TEST_KEPT", "yes")
    out = tmp_path / "environment.json"
    launcher = Launcher(socket.socketpair()[0])
    script = 'import json, os, sys; json.dump(dict(os.environ), open(sys.argv[1], \"w\"))'
    launcher.launch(f"{sys.executable} -c '{script}' {out}", None)
    next(iter(launcher.running.values())).wait(timeout=30)
    environment = json.loads(out.read_text())
    assert "NOTIFY_SOCKET" not in environment and "LISTEN_FDS" not in environment
    assert environment["MILTERMAN_TEST_KEPT"] == "yes"
