"""Starting child milters on demand (M-LAU-1, D-10, M-CON-1/2/5).

When a child with a ``command`` cannot be reached, the leader asks the launcher to
start it, waits ``retry_delay`` and tries once more. The launcher is a process of its
own, forked by the master before privileges are dropped, so in privilege mode it can
start each command as that milter's ``user_name``; without privilege mode it runs as
the manager's user and starts commands as that user. Commands never go through a
shell. A command it started that is still running is not started twice ("already
launched"); one that exited is started again at the next request (D-10).

Wire format (M-LAU-1): each message is a 4-byte big-endian length, then NUL-separated
fields: ``launch\\0COMMAND LINE\\0USER`` → ``success\\0`` or ``error\\0MESSAGE``.
"""

from __future__ import annotations

import os
import pwd
import shlex
import signal
import socket
import subprocess

from ..log import Logger
from ..net.framing import encode_fields, read_fields
from ..log import logger as default_logger

MAX_MESSAGE = 65536


class LaunchError(Exception):
    """The launcher could not start a command; the message says why."""


def command_line(command: str, options: str | tuple[str, ...] | None) -> str:
    """``command`` + " " + ``command_options`` (a list is shell-escaped and joined, M-LAU-1)."""
    if options is None or options == ():
        return command
    if isinstance(options, str):
        return f"{command} {options}"
    return " ".join([command, *(shlex.quote(option) for option in options)])


def _send(sock: socket.socket, *fields: str) -> None:
    sock.sendall(encode_fields(*fields))


def _receive(sock: socket.socket) -> list[str] | None:
    return read_fields(sock, MAX_MESSAGE)


class Launcher:
    """The launcher process's loop: one request at a time, answers each (runs as a forked child)."""

    def __init__(self, sock: socket.socket, logger: Logger = default_logger) -> None:
        self.sock = sock
        self.logger = logger
        self.running: dict[str, subprocess.Popen] = {}

    def serve(self) -> None:
        while True:
            try:
                request = _receive(self.sock)
            except OSError:
                return
            if request is None:
                return  # the master and every worker closed their ends
            self._reap()
            if len(request) < 2 or request[0] != "launch":
                _send(self.sock, "error", f"unknown request: {request[0]!r}")
                continue
            line = request[1]
            user = request[2] if len(request) > 2 and request[2] else None
            try:
                self.launch(line, user)
                _send(self.sock, "success", "")
            except LaunchError as error:
                self.logger.error(f"[launcher][error] {error}")
                _send(self.sock, "error", str(error))

    def _reap(self) -> None:
        for line, process in list(self.running.items()):
            if process.poll() is not None:
                self.logger.info(f"[launcher][exit] <{line}> {process.returncode}")
                del self.running[line]

    def launch(self, line: str, user: str | None) -> None:
        """Start ``line`` (split shell-like, no shell) as ``user``; refuse a duplicate that still runs."""
        process = self.running.get(line)
        if process is not None and process.poll() is None:
            raise LaunchError(f"already launched: <{line}>")
        try:
            argv = shlex.split(line)
        except ValueError as error:
            raise LaunchError(f"cannot split <{line}>: {error}") from None
        if not argv:
            raise LaunchError("empty command line")
        switch = None
        if user:
            try:
                entry = pwd.getpwnam(user)
            except KeyError:
                raise LaunchError(f"unknown user <{user}> for <{line}>") from None
            if os.geteuid() != 0 and entry.pw_uid != os.geteuid():
                raise LaunchError(f"cannot start <{line}> as <{user}>: the launcher does not run as root")

            def switch() -> None:
                os.setgid(entry.pw_gid)
                os.initgroups(entry.pw_name, entry.pw_gid)
                os.setuid(entry.pw_uid)

        try:
            self.running[line] = subprocess.Popen(argv, preexec_fn=switch, stdin=subprocess.DEVNULL,
                                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                                  start_new_session=True)
        except OSError as error:
            raise LaunchError(f"cannot start <{line}>: {error.strerror or error}") from None
        self.logger.message(f"[launcher][launch] <{line}> as <{user or pwd.getpwuid(os.geteuid()).pw_name}>")


def start_launcher(logger: Logger = default_logger, drop_to: tuple | None = None) -> socket.socket:
    """Fork the launcher; return the manager's end of the socket (inherited by the workers).

    ``drop_to`` = (user, group): without privilege mode the launcher runs as the manager's user.
    """
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    pid = os.fork()
    if pid == 0:
        status = 0
        try:
            ours.close()
            if drop_to is not None:
                from ..server.process import drop_privileges

                drop_privileges(*drop_to)
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            signal.signal(signal.SIGHUP, signal.SIG_IGN)
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            try:
                import setproctitle

                setproctitle.setproctitle("milter-manager: launcher")
            except ImportError:
                pass
            Launcher(theirs, logger).serve()
        except BaseException:
            status = 1
        finally:
            os._exit(status)
    theirs.close()
    ours.set_inheritable(True)
    return ours


class LaunchClient:
    """A worker's handle on the launcher: one request at a time (the socket is shared by greenlets)."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._lock = None

    def launch(self, line: str, user: str | None) -> None:
        """Ask for ``line`` to be started; raises :class:`LaunchError` with the launcher's answer."""
        from gevent import socket as gsocket
        from gevent.lock import Semaphore

        if self._lock is None:
            self._lock = Semaphore()
            self._sock = gsocket.socket(fileno=os.dup(self._sock.fileno()))
        with self._lock:
            self._sock.settimeout(10.0)
            try:
                _send(self._sock, "launch", line, user or "")
                answer = _receive(self._sock)
            except OSError as error:
                raise LaunchError(f"launcher unreachable: {error}") from None
        if answer is None:
            raise LaunchError("launcher closed the connection")
        if answer[0] != "success":
            raise LaunchError(answer[1] if len(answer) > 1 else "launch failed")
