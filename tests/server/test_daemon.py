"""Daemonizing, privileges, the unix socket's mode and group, the pid file, start-up errors (D-5, M-DAE-1).

The server is started as root and drops to ``nobody``/``nogroup``. Its workers import
gevent after the drop, so the interpreter must be readable by nobody: see the
``unprivileged_python`` fixture (the virtualenv's interpreter lives under /root here).
"""

from __future__ import annotations

import grp
import os
import pwd
import signal
import socket
import stat
import subprocess
import time

import psutil

from server_support import PYTHON, RUN_DIR, ServerProcess, clean_env, failures, load, run_driver


def nobody_ids() -> tuple[int, int]:
    return pwd.getpwnam("nobody").pw_uid, grp.getgrnam("nogroup").gr_gid


def assert_runs_as_nobody(pid: int) -> None:
    uid, gid = nobody_ids()
    process = psutil.Process(pid)
    assert tuple(process.uids()) == (uid, uid, uid), f"pid {pid}: uids {process.uids()}"
    assert tuple(process.gids()) == (gid, gid, gid), f"pid {pid}: gids {process.gids()}"
    with open(f"/proc/{pid}/status") as handle:
        groups = next(line for line in handle if line.startswith("Groups:")).split()[1:]
    assert [int(group) for group in groups] in ([gid], []), f"pid {pid}: supplementary groups {groups}"


def test_daemon_drops_privileges_and_cleans_up(public_dir, servers, unprivileged_python):
    python, env = unprivileged_python
    uid, gid = nobody_ids()
    # the run-time directory belongs to the service user (as /run/milter-manager would), so the
    # unprivileged master can remove its socket and pid file at exit
    os.chown(public_dir, uid, gid)
    socket_path, pid_file, log_path = public_dir / "milter.sock", public_dir / "milter.pid", public_dir / "milter.log"
    server = servers.adopt(ServerProcess(
        [python, "-m", "milterman.cli.test_client", "-s", f"unix:{socket_path}", "--daemon",
         "--user-name", "nobody", "--group-name", "nogroup", "--unix-socket-group", "nogroup",
         "--pid-file", str(pid_file), "--n-workers", "2", "--log-path", str(log_path), "--no-report-request"],
        log_path=log_path, socket_path=socket_path, env=env, pid_file=pid_file, daemon=True))
    started = time.monotonic()
    code = server.wait_detached(timeout=20)
    assert code == 0, server.output
    assert time.monotonic() - started < 10, "the command returns once the daemon is detached"
    master = psutil.Process(server.master_pid)
    assert master.pid != server.proc.pid and master.ppid() != server.proc.pid
    # detached: its own session (created by setsid), no controlling terminal
    assert os.getsid(master.pid) != os.getsid(0)
    assert os.getpgid(master.pid) == os.getsid(master.pid)
    assert master.terminal() is None
    assert master.cwd() == "/"
    workers = server.wait_workers(2)
    # the pid file names the master (its process title says so), and the workers are its children
    assert master.cmdline()[0] == f"milter-test-client: master [unix:{socket_path}]"
    assert all(psutil.Process(pid).cmdline()[0] == f"milter-test-client: worker [unix:{socket_path}]"
               for pid in workers)
    for pid in (master.pid, *workers):
        assert_runs_as_nobody(pid)
    info = os.stat(socket_path)
    assert stat.S_ISSOCK(info.st_mode)
    assert stat.S_IMODE(info.st_mode) == 0o660
    assert info.st_gid == gid
    report = load(f"unix:{socket_path}", 20, 4)
    assert failures(report) == []

    server.signal(signal.SIGTERM)  # the pid from the pid file
    server.wait_gone(timeout=20)
    for pid in workers:
        server.wait_gone(pid, timeout=10)
    assert not socket_path.exists(), "the socket is removed at exit"
    assert not pid_file.exists(), "the pid file is removed at exit"


def test_unix_socket_mode_and_group_with_a_root_owned_directory(public_dir, servers, unprivileged_python):
    """--unix-socket-mode 0600; the directory is root's (0755), so after the drop the socket cannot be removed."""
    python, env = unprivileged_python
    uid, gid = nobody_ids()
    socket_path, log_path = public_dir / "milter.sock", public_dir / "milter.log"
    server = servers.adopt(ServerProcess(
        [python, "-m", "milterman.cli.test_client", "-s", f"unix:{socket_path}", "--user-name", "nobody",
         "--group-name", "nogroup", "--unix-socket-group", "nogroup", "--unix-socket-mode", "0600",
         "--n-workers", "1", "--log-path", str(log_path), "--no-report-request"],
        log_path=log_path, socket_path=socket_path, env=env))
    server.wait_listening()
    (worker,) = server.wait_workers(1)
    assert_runs_as_nobody(worker)
    info = os.stat(socket_path)
    assert stat.S_IMODE(info.st_mode) == 0o600 and info.st_gid == gid and info.st_uid == 0
    result = run_driver(f"unix:{socket_path}")  # root may connect whatever the mode
    assert result.returncode == 0 and "status: pass" in result.stdout, result.stdout
    server.signal(signal.SIGTERM)
    assert server.wait_exit(20) == 0
    # Removal is attempted as nobody and fails (EACCES) in root's directory; the log says so
    # (tests/server/test_socket_removal.py); the next start removes the stale socket before binding (M-DAE-1).
    assert socket_path.exists()
    assert f"cannot remove the unix socket {socket_path}: Permission denied" in server.log()
    servers.client(spec=f"unix:{socket_path}", n_workers=0)  # waits until it listens
    assert failures(load(f"unix:{socket_path}", 5, 1)) == []


def start_failure(*args: str, timeout: float = 30) -> subprocess.CompletedProcess:
    """milter-test-client that must fail to start: its exit status and output."""
    return subprocess.run([PYTHON, "-m", "milterman.cli.test_client", *args], capture_output=True, text=True,
                          timeout=timeout, env=clean_env(), cwd=RUN_DIR, stdin=subprocess.DEVNULL)


def test_start_up_errors_name_the_value(workdir):
    socket_path = workdir / "fail.sock"
    spec = f"unix:{socket_path}"

    result = start_failure("-s", spec, "--user-name", "nosuchuser")
    assert result.returncode != 0 and "nosuchuser" in result.stdout, result
    assert not socket_path.exists(), "a failed start removes the socket it created"

    pid_file = workdir / "fail.pid"
    result = start_failure("-s", spec, "--group-name", "nosuchgroup", "--pid-file", str(pid_file))
    assert result.returncode != 0 and "nosuchgroup" in result.stdout, result
    assert not socket_path.exists()
    assert not pid_file.exists(), "a failed start leaves no (empty) pid file"

    missing = workdir / "no-such-directory" / "milter.pid"
    result = start_failure("-s", spec, "--pid-file", str(missing))
    assert result.returncode != 0 and str(missing) in result.stdout, result
    assert not socket_path.exists()

    with socket.socket() as occupied:
        occupied.bind(("127.0.0.1", 0))
        occupied.listen()
        port = occupied.getsockname()[1]
        result = start_failure("-s", f"inet:{port}@[127.0.0.1]", "--n-workers", "2")
    assert result.returncode != 0, result
    assert f"inet:{port}@[127.0.0.1]" in result.stdout and "Address already in use" in result.stdout, result


def test_daemon_start_up_error_is_reported_before_detaching(workdir):
    """Errors found before daemonizing (here: an unknown user) reach the caller's terminal, exit 1."""
    result = start_failure("-s", f"unix:{workdir}/d.sock", "--daemon", "--user-name", "nosuchuser",
                           "--pid-file", str(workdir / "d.pid"))
    assert result.returncode == 1 and "nosuchuser" in result.stdout, result
    assert not (workdir / "d.pid").exists() and not (workdir / "d.sock").exists()
