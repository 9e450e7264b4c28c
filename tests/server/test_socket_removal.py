"""Stopping removes the unix sockets, or logs why it could not (M-DAE-1, D-5, D-7).

The server binds as root and then drops to ``nobody``; the removal at stop runs as
``nobody``. In a directory only root may write (0755, root's), the unlink fails with
EACCES: one warning names the path and the reason instead of leaving the socket behind
silently. In a directory that belongs to the service user (as systemd's
``RuntimeDirectory=`` would), the sockets go. See the ``unprivileged_python`` fixture for
why a system interpreter runs these servers.
"""

from __future__ import annotations

import grp
import os
import pwd
import signal
from pathlib import Path

from server_support import ServerProcess


def nobody_ids() -> tuple[int, int]:
    return pwd.getpwnam("nobody").pw_uid, grp.getgrnam("nogroup").gr_gid


def start_client(servers, python: str, env: dict[str, str], directory: Path) -> ServerProcess:
    socket_path, log_path = directory / "client.sock", directory / "client.log"
    server = servers.adopt(ServerProcess(
        [python, "-m", "milterman.cli.test_client", "-s", f"unix:{socket_path}", "--user-name", "nobody",
         "--group-name", "nogroup", "--n-workers", "1", "--log-path", str(log_path), "--no-report-request"],
        log_path=log_path, socket_path=socket_path, env=env))
    server.wait_listening()
    server.wait_workers(1)
    return server


def start_manager(servers, python: str, env: dict[str, str], directory: Path,
                  controller_directory: Path) -> ServerProcess:
    """milter-manager with no child: its MTA socket in ``directory``, its controller's in the other.

    The controller binds after the privilege drop (M-CTL-1), so its directory must be
    writable by ``nobody`` at start.
    """
    socket_path, log_path = directory / "manager.sock", directory / "manager.log"
    (directory / "milter-manager.toml").write_text(
        "version = 1\n"
        f'[manager]\nconnection_spec = "unix:{socket_path}"\n'
        f'[controller]\nconnection_spec = "unix:{controller_directory / "controller.sock"}"\n'
        '[log]\nuse_syslog = false\n')
    server = servers.adopt(ServerProcess(
        [python, "-m", "milterman.cli.manager", "--config-dir", str(directory), "--no-detect",
         "--user-name", "nobody", "--group-name", "nogroup", "--log-path", str(log_path)],
        log_path=log_path, socket_path=socket_path, env=env))
    server.wait_listening()
    server.wait_log(r"\[server\]\[listen\]")
    assert (controller_directory / "controller.sock").is_socket()
    return server


def nobodys_directory(parent: Path, name: str) -> Path:
    """A directory the service user owns, like systemd's ``RuntimeDirectory=`` with ``User=``."""
    directory = parent / name
    directory.mkdir()
    os.chown(directory, *nobody_ids())
    return directory


def stop(server: ServerProcess) -> str:
    server.signal(signal.SIGTERM)
    assert server.wait_exit(30) == 0, server.output
    return server.log()


def test_client_in_a_root_owned_directory_logs_why_the_socket_stays(public_dir, servers, unprivileged_python):
    python, env = unprivileged_python
    server = start_client(servers, python, env, public_dir)
    log = stop(server)
    path = public_dir / "client.sock"
    assert path.is_socket(), "nobody cannot unlink in root's 0755 directory"
    expected = f"[server][stop][warning] cannot remove the unix socket {path}: Permission denied"
    assert log.count(expected) == 1, log


def test_manager_in_a_root_owned_directory_names_both_sockets(public_dir, servers, unprivileged_python):
    python, env = unprivileged_python
    controller_directory = nobodys_directory(public_dir, "control")
    server = start_manager(servers, python, env, public_dir, controller_directory)
    os.chown(controller_directory, 0, 0)  # taken back by root while running: the removal will fail too
    log = stop(server)
    assert "[server][stop]" in log, log
    for prefix, path in (("[server]", public_dir / "manager.sock"),
                         ("[controller]", controller_directory / "controller.sock")):
        assert path.is_socket()
        expected = f"{prefix}[stop][warning] cannot remove the unix socket {path}: Permission denied"
        assert log.count(expected) == 1, log


def test_sockets_in_the_service_users_directory_are_removed(public_dir, servers, unprivileged_python):
    python, env = unprivileged_python
    sockets = nobodys_directory(public_dir, "run")
    client_log = stop(start_client(servers, python, env, sockets))
    manager_log = stop(start_manager(servers, python, env, sockets, sockets))
    assert [path.name for path in sockets.iterdir() if path.is_socket()] == []
    assert "[warning]" not in client_log + manager_log, client_log + manager_log
    assert "[server][stop]" in client_log and "[server][stop]" in manager_log
