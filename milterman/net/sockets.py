"""Listening and connecting sockets for milter traffic (D-13, design: net owns the socket details).

:func:`bind_listener` uses the standard library only so the pre-fork master can
call it before gevent exists in any process; the worker wraps the result with
gevent. Every TCP socket gets TCP_NODELAY (D-13). A spec naming a host is looked up
here, when it is bound or connected to (the configuration holds it unresolved).
"""

from __future__ import annotations

import errno
import grp
import os
import socket
import stat
import time

from .spec import ConnectionSpec, SpecError, resolve

DEFAULT_BACKLOG = 1024


class ListenError(OSError):
    """Binding the listening socket failed; the message names the spec and the reason."""

    def __str__(self) -> str:
        # the message alone, without OSError's "[Errno N] " prefix: it is what the tools print
        return self.strerror or super().__str__()


def set_nodelay(sock: socket.socket) -> None:
    """Turn Nagle's algorithm off on a TCP socket (D-13); a no-op for unix sockets."""
    if sock.family in (socket.AF_INET, socket.AF_INET6):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def remove_stale_unix_socket(path: str) -> None:
    """Remove ``path`` only if it is a socket: never delete a regular file by mistake."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(info.st_mode):
        raise ListenError(errno.EEXIST, f"failed to listen on unix:{path}: the path exists and is not a socket")
    os.unlink(path)


def resolve_group(group: str | int) -> int:
    """A group name or numeric id → gid, with an error naming the value."""
    if isinstance(group, int) or str(group).isdigit():
        return int(group)
    try:
        return grp.getgrnam(group).gr_gid
    except KeyError:
        raise ListenError(errno.EINVAL, f"unknown group: <{group}>") from None


def bind_listener(spec: ConnectionSpec, *, backlog: int = DEFAULT_BACKLOG, unix_mode: int = 0o660,
                  unix_group: str | int | None = None, remove_stale: bool = True,
                  setting: str = "remove_unix_socket_on_create") -> socket.socket:
    """Create, bind and listen on a standard-library socket for ``spec``.

    A unix socket is created with ``unix_mode`` and ``unix_group``; a stale socket
    file is removed first (only if it is a socket) unless ``remove_stale`` is false,
    and then binding fails with a message naming ``setting``. Errors raise
    :class:`ListenError` with the spec in the message (port in use, no permission, a host
    name that does not resolve).
    """
    try:
        spec = resolve(spec)
    except SpecError as error:
        raise ListenError(errno.EINVAL, f"failed to listen on {spec}: {error}") from None
    sock = socket.socket(spec.socket_family, socket.SOCK_STREAM)
    try:
        if spec.family == "unix":
            if remove_stale:
                remove_stale_unix_socket(spec.path)
            elif os.path.lexists(spec.path):
                raise ListenError(errno.EADDRINUSE, f"failed to listen on {spec}: the path exists and {setting} "
                                  f"is false: remove the old socket, or set {setting} = true")
            old_umask = os.umask(0o777 & ~unix_mode)
            try:
                sock.bind(spec.path)
            finally:
                os.umask(old_umask)
            os.chmod(spec.path, unix_mode)
            if unix_group is not None:
                os.chown(spec.path, -1, resolve_group(unix_group))
        else:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if spec.family == "inet6":
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            set_nodelay(sock)
            sock.bind(spec.sockaddr)
        sock.listen(backlog)
    except ListenError:
        sock.close()
        raise
    except OSError as error:
        sock.close()
        raise ListenError(error.errno, f"failed to listen on {spec}: {error.strerror or error}") from None
    return sock


def remove_unix_socket(spec: ConnectionSpec) -> str | None:
    """Remove our unix socket file at shutdown (only if it still is a socket).

    Returns why it could not be removed (naming the path and the error), or None when it
    is gone. After the privilege drop the directory may no longer be writable (EACCES):
    the caller logs the reason, so a socket left behind is never a silent surprise.
    """
    if spec.family != "unix":
        return None
    try:
        if not stat.S_ISSOCK(os.lstat(spec.path).st_mode):
            return f"{spec.path} is no longer a socket; left in place"
        os.unlink(spec.path)
    except FileNotFoundError:
        return None
    except OSError as error:
        return f"cannot remove the unix socket {spec.path}: {error.strerror or error}"
    return None


def send_all(sock, data: bytes) -> None:
    """``sendall`` with a fast path: a small packet is nearly always taken whole by one ``send``
    (gevent's sendall adds a getsockopt and chunking per call, measurable per packet)."""
    sent = sock.send(data)
    if sent < len(data):
        sock.sendall(memoryview(data)[sent:])


def connect(spec: ConnectionSpec, timeout: float | None = None) -> socket.socket:
    """Open a plain non-blocking system socket to ``spec`` within ``timeout`` seconds, TCP_NODELAY set
    on TCP (D-13). The socket stays non-blocking (``gettimeout()`` is 0.0): its user reads and
    writes without waiting and waits on the descriptor itself (:class:`milterman.net.MtaClient`).

    A host name is looked up now, through gevent's resolver (the serving process goes on
    meanwhile); a name that does not resolve is an ``OSError`` naming it, like a refused connect.

    Few system calls and no gevent wrapper (a connection per child per session when it cannot be
    kept; a gevent socket costs an ioctl, two watchers and their two fcntl checks): ``socket()``
    makes the socket non-blocking and close-on-exec itself, TCP_NODELAY is set before the connect,
    and a connect that completes at once (a unix socket, nearly always) is neither waited for nor
    checked again. One in progress (TCP) is waited for once in the calling greenlet, then its
    result read once (``SO_ERROR``). A unix connection costs ``socket`` and ``connect``.
    """
    if spec.needs_lookup:
        import gevent
        from gevent import socket as gsocket

        try:
            with gevent.Timeout(timeout, TimeoutError):
                spec = resolve(spec, gsocket.getaddrinfo)
        except SpecError as error:
            raise OSError(errno.EHOSTUNREACH, str(error)) from None
    family = spec.socket_family
    sock = socket.socket(family, _NONBLOCKING_STREAM)
    try:
        if family != socket.AF_UNIX:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            sock.connect(spec.sockaddr)
        except BlockingIOError as error:
            if error.errno != errno.EINPROGRESS:
                _connect_when_room(sock, spec.sockaddr, timeout)
            else:
                from gevent import socket as gsocket

                gsocket.wait_write(sock.fileno(), timeout, TimeoutError("timed out"))
                result = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if result:
                    raise OSError(result, os.strerror(result)) from None
    except BaseException:
        sock.close()
        raise
    return sock


def _connect_when_room(sock, address, timeout: float | None) -> None:
    """A unix listener's backlog is full (EAGAIN): nothing signals when it has room again, so the
    connect is tried again after short, growing pauses until ``timeout`` (``TimeoutError``)."""
    import gevent

    deadline = None if timeout is None else time.monotonic() + timeout
    pause = 0.001
    while True:
        if deadline is not None and time.monotonic() + pause > deadline:
            raise TimeoutError("timed out")
        gevent.sleep(pause)
        pause = min(pause * 2, 0.05)
        try:
            sock.connect(address)
            return
        except BlockingIOError:
            continue


#: a socket born non-blocking and close-on-exec (``socket()`` sets both; Python then makes no call of its own)
_NONBLOCKING_STREAM = socket.SOCK_STREAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC


def peer_state(sock) -> str | None:
    """None when the peer of an idle connection is connected and silent (one non-blocking peek);
    else what is wrong: ``closed``, ``sending unexpected data`` or the socket error."""
    timeout = sock.gettimeout()
    if timeout != 0.0:  # a plain non-blocking socket (a child's) needs no switch, and so no ioctl either way
        sock.settimeout(0.0)
    try:
        data = sock.recv(1, socket.MSG_PEEK)
    except BlockingIOError:
        return None
    except OSError as error:
        return f"broken ({error.strerror or error})"
    finally:
        if timeout != 0.0:
            sock.settimeout(timeout)
    return "sending unexpected data" if data else "closed"
