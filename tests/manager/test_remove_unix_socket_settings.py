"""``remove_unix_socket_on_create`` / ``_on_close`` of the manager and the controller (M-DAE-1, D-17).

true (the default): a stale socket file is removed before binding, ours is removed at exit.
false: a stale socket makes the start fail with a message naming the key, and the socket file
stays after exit.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time

import pytest

from manager_harness import RUN_DIR, clean_env, configuration_text, toml_table


def listening(path, timeout: float = 10.0) -> bool:
    """Whether ``path`` accepts a connection within ``timeout``: the controller binds after the
    manager's own socket is listening, so a first refusal may only mean "not yet"."""
    deadline = time.monotonic() + timeout
    while True:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            probe.settimeout(5)
            try:
                probe.connect(str(path))
                return True
            except (ConnectionRefusedError, FileNotFoundError):
                if time.monotonic() > deadline:
                    return False
        time.sleep(0.05)


def stale_socket(path) -> None:
    """A socket file nobody listens on (what a crashed manager leaves)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(path))
    sock.close()
    assert path.is_socket()


def write_configuration(env, manager: dict | None = None, controller: dict | None = None) -> None:
    extra = "\n".join(["", *toml_table("[controller]", controller)]) if controller else ""
    text = configuration_text({"connection_spec": f"unix:{env.socket_path}", **(manager or {})}, [], extra=extra)
    (env.dir / "milter-manager.toml").write_text(text)


def check_start(env) -> subprocess.CompletedProcess:
    """Start with --daemon off and stop at once: the start-up result (a failing start exits 1 at once)."""
    return subprocess.run([sys.executable, "-m", "milterman.cli.manager", "-c", str(env.dir), "--no-detect"],
                          capture_output=True, text=True, timeout=15, cwd=RUN_DIR, env=clean_env())


@pytest.mark.parametrize("table", ["manager", "controller"])
def test_remove_unix_socket_on_create_false_refuses_a_stale_socket(env, table):
    path = env.socket_path if table == "manager" else env.dir / "controller.sock"
    stale_socket(path)
    if table == "manager":
        write_configuration(env, manager={"remove_unix_socket_on_create": False})
    else:
        write_configuration(env, controller={"connection_spec": f"unix:{path}", "remove_unix_socket_on_create": False})
    run = check_start(env)
    assert run.returncode == 1
    assert f"failed to listen on unix:{path}: the path exists and {table}.remove_unix_socket_on_create is false" \
        in run.stdout, run.stdout + run.stderr
    assert path.is_socket()  # left alone


@pytest.mark.parametrize("table", ["manager", "controller"])
@pytest.mark.parametrize("remove", [True, False])
def test_remove_unix_socket_on_create_true_and_on_close(env, table, remove):
    """A stale socket is replaced (on_create true); at exit the socket is removed only when on_close is true."""
    controller_path = env.dir / "controller.sock"
    path = env.socket_path if table == "manager" else controller_path
    stale_socket(path)
    settings = {"remove_unix_socket_on_create": True, "remove_unix_socket_on_close": remove}
    if table == "manager":
        env.start([], manager=settings)
    else:
        env.start([], extra=f'\n[controller]\nconnection_spec = "unix:{controller_path}"\n'
                            f"remove_unix_socket_on_close = {'true' if remove else 'false'}\n")
    assert listening(path), f"{path} never accepted: the stale file was not replaced"
    assert env.manager.stop() == 0
    assert path.exists() is (not remove)
