"""Listening and connecting sockets: unix socket mode/group, stale files, port in use, TCP_NODELAY (D-13)."""

from __future__ import annotations

import grp
import os
import socket
import stat
import tempfile
import threading
from pathlib import Path

import pytest

from milterman.net import ListenError, bind_listener, connect, parse_spec, remove_unix_socket


@pytest.fixture
def sock_dir(tmp_path):
    """``tmp_path``, or a short directory when unix socket paths would get too long."""
    if len(str(tmp_path)) < 80:
        return tmp_path
    return Path(tempfile.mkdtemp(prefix="mn-", dir="/tmp"))


def listen_unix(path, **kwargs) -> socket.socket:
    return bind_listener(parse_spec(f"unix:{path}"), **kwargs)


@pytest.mark.parametrize("mode", [0o660, 0o600, 0o666])
def test_unix_socket_mode(sock_dir, mode):
    path = sock_dir / "mode.sock"
    kwargs = {} if mode == 0o660 else {"unix_mode": mode}  # 0660 is the default
    listener = listen_unix(path, **kwargs)
    try:
        info = os.stat(path)
        assert stat.S_ISSOCK(info.st_mode)
        assert stat.S_IMODE(info.st_mode) == mode
    finally:
        listener.close()


def other_group() -> int:
    """A group the socket may be given: another one when we are root, else one of ours."""
    mine = os.getgid()
    if os.geteuid() == 0:
        for entry in grp.getgrall():
            if entry.gr_gid != mine:
                return entry.gr_gid
    for gid in os.getgroups():
        if gid != mine:
            return gid
    return mine


@pytest.mark.parametrize("by_name", [False, True], ids=["gid", "name"])
def test_unix_socket_group(sock_dir, by_name):
    gid = other_group()
    group = grp.getgrgid(gid).gr_name if by_name else gid
    path = sock_dir / "group.sock"
    listener = listen_unix(path, unix_group=group)
    try:
        assert os.stat(path).st_gid == gid
    finally:
        listener.close()


def test_unix_socket_unknown_group(sock_dir):
    path = sock_dir / "nogroup.sock"
    with pytest.raises(ListenError) as raised:
        listen_unix(path, unix_group="no-such-group-milterman")
    assert str(raised.value) == "unknown group: <no-such-group-milterman>"


def test_stale_socket_is_removed(sock_dir):
    path = sock_dir / "stale.sock"
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(path))
    stale.close()
    assert path.is_socket()  # left behind, nobody listening
    listener = listen_unix(path)
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
            client.settimeout(5)
            client.connect(str(path))
    finally:
        listener.close()
    remove_unix_socket(parse_spec(f"unix:{path}"))
    assert not path.exists()


def test_regular_file_in_the_way_is_kept(sock_dir):
    path = sock_dir / "precious.txt"
    path.write_text("do not delete\n")
    with pytest.raises(ListenError) as raised:
        listen_unix(path)
    assert str(path) in str(raised.value)
    assert str(raised.value) == f"failed to listen on unix:{path}: the path exists and is not a socket"
    assert path.read_text() == "do not delete\n"
    remove_unix_socket(parse_spec(f"unix:{path}"))  # shutdown clean-up never removes a regular file either
    assert path.exists()


def test_port_in_use(sock_dir):
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        with pytest.raises(ListenError) as raised:
            bind_listener(parse_spec(f"inet:{port}@[127.0.0.1]"))
    assert str(raised.value) == f"failed to listen on inet:{port}@[127.0.0.1]: Address already in use"


def nodelay(sock) -> int:
    return sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)


def test_D13_tcp_nodelay_on_listener_and_accepted_sockets():
    listener = bind_listener(parse_spec("inet:0@[127.0.0.1]"))
    try:
        assert nodelay(listener)
        port = listener.getsockname()[1]
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            accepted, _ = listener.accept()
            with accepted:
                assert nodelay(accepted)  # the milter side of a TCP connection (towards the MTA)
    finally:
        listener.close()


def in_own_hub(function) -> dict[str, object]:
    """Run ``function`` in a thread with its own gevent hub; its result or error."""
    result: dict[str, object] = {}

    def run() -> None:
        import gevent

        try:
            result["value"] = function()
        except BaseException as error:
            result["error"] = error
        finally:
            gevent.get_hub().destroy(destroy_loop=True)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(20)
    assert not thread.is_alive()
    return result


def test_D13_tcp_nodelay_on_connected_sockets():
    """milterman.net.connect (test server, manager children) sets TCP_NODELAY; run in a thread with its own hub."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    port = listener.getsockname()[1]

    def run() -> bool:
        sock = connect(parse_spec(f"inet:{port}@[127.0.0.1]"), timeout=5)
        try:
            return nodelay(sock)
        finally:
            sock.close()

    result = in_own_hub(run)
    listener.close()
    assert "error" not in result, result
    assert result["value"]


def test_D13_unix_connect_has_no_tcp_options(sock_dir):
    """set_nodelay is a no-op on unix sockets (connect to a unix listener must not fail)."""
    path = sock_dir / "plain.sock"
    listener = listen_unix(path)

    def run() -> int:
        sock = connect(parse_spec(f"unix:{path}"), timeout=5)
        try:
            return sock.family
        finally:
            sock.close()

    result = in_own_hub(run)
    listener.close()
    assert "error" not in result, result
    assert result["value"] == socket.AF_UNIX


@pytest.mark.parametrize("family", ["unix", "inet"])
def test_connected_socket_is_born_non_blocking_and_close_on_exec(sock_dir, family):
    """connect: one socket() call makes the socket non-blocking and close-on-exec; a child's connection
    never leaks into a launched command (M-LAU-1); the connection works both ways. It is a plain system
    socket left non-blocking (timeout 0.0; the timeout given bounds the connect only): its user waits on
    the descriptor itself, with no gevent wrapper and its watchers made per connection."""
    import fcntl

    if family == "unix":
        listener = listen_unix(sock_dir / "flags.sock")
        spec = parse_spec(f"unix:{sock_dir / 'flags.sock'}")
    else:
        listener = bind_listener(parse_spec("inet:0@[127.0.0.1]"))
        spec = parse_spec(f"inet:{listener.getsockname()[1]}@[127.0.0.1]")

    def check():
        sock = connect(spec, timeout=5)
        try:
            peer, _ = listener.accept()
            with peer:
                sock.sendall(b"ping")
                data = peer.recv(4)
            return (data, bool(fcntl.fcntl(sock.fileno(), fcntl.F_GETFD) & fcntl.FD_CLOEXEC),
                    bool(fcntl.fcntl(sock.fileno(), fcntl.F_GETFL) & os.O_NONBLOCK), sock.gettimeout(), type(sock))
        finally:
            sock.close()

    try:
        result = in_own_hub(check)
    finally:
        listener.close()
    assert "error" not in result, result
    assert result["value"] == (b"ping", True, True, 0.0, socket.socket)

