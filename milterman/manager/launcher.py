"""Starting child milters on demand (M-LAU-1, D-10, M-CON-1/2/5).

When a child with a ``command`` cannot be reached, the child's health keeper (see
:mod:`milterman.manager.health`) asks the launcher to start it, once per attempt to bring
the child back. The launcher is a process of its own, forked by the master before
privileges are dropped, so in privilege mode it can start each command as that milter's
``user_name``; without privilege mode it runs as the manager's user and starts commands
as that user. Commands never go through a shell. A command it started that is still
running is not started twice ("already launched"); one that exited is started again at
the next request (D-10).

Channels: every serving process (each worker, or the master serving alone) talks to the
launcher on a private socketpair of its own. The process makes the pair on its first
request and hands one end to the launcher over a shared ``SOCK_SEQPACKET`` socket
(``SCM_RIGHTS``); a sequenced packet arrives whole, so registrations from several
workers never mix, and from then on each reply can only reach the worker that asked.
This needs nothing from the master's fork path, so workers started later (reload,
SIGTTIN, replacements) get their channel the same way.

Wire format on a channel (M-LAU-1 framing: a 4-byte big-endian length, then
NUL-separated fields):

* ``launch\\0COMMAND LINE\\0USER`` → ``success\\0COMMAND LINE`` or ``error\\0COMMAND LINE\\0MESSAGE``;
* ``status\\0COMMAND LINE`` → ``running\\0COMMAND LINE``, ``exited\\0COMMAND LINE\\0HOW\\0STDERR TAIL``
  or ``unknown\\0COMMAND LINE``.

Each answer names the command line it is about, so a client can check it got its own.
"""

from __future__ import annotations

import array
import os
import pwd
import selectors
import shlex
import signal
import socket
import subprocess

from ..log import DEBUG, Logger
from ..log import logger as default_logger
from ..net.framing import encode_fields, read_fields

MAX_MESSAGE = 65536
#: how much of a command's standard error is kept for the "exited" answer
STDERR_TAIL = 2000
REGISTER = b"channel"


class LaunchError(Exception):
    """The launcher could not start a command; the message says why."""


def command_line(command: str, options: str | tuple[str, ...] | None) -> str:
    """``command`` + " " + ``command_options`` (a list is shell-escaped and joined, M-LAU-1)."""
    if options is None or options == ():
        return command
    if isinstance(options, str):
        return f"{command} {options}"
    return " ".join([command, *(shlex.quote(option) for option in options)])


def describe_exit(returncode: int) -> str:
    """How a launched command ended: an exit status or a signal name."""
    if returncode < 0:
        try:
            return f"killed by signal {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"exited with status {returncode}"


def _send(sock: socket.socket, *fields: str) -> None:
    sock.sendall(encode_fields(*fields))


def _receive(sock: socket.socket) -> list[str] | None:
    return read_fields(sock, MAX_MESSAGE)


class Launched:
    """One started command: the process and the tail of its standard error."""

    def __init__(self, process: subprocess.Popen) -> None:
        self.process = process
        self.stderr = b""

    def take(self, data: bytes) -> None:
        self.stderr = (self.stderr + data)[-STDERR_TAIL:]

    @property
    def tail(self) -> str:
        return self.stderr.decode("utf-8", "replace").strip()


class Launcher:
    """The launcher process's loop: every worker on its own channel, one request at a time (a forked child)."""

    def __init__(self, sock: socket.socket, logger: Logger = default_logger) -> None:
        #: the shared SOCK_SEQPACKET end on which workers register their channels
        self.sock = sock
        self.logger = logger
        self.running: dict[str, subprocess.Popen] = {}
        self._launched: dict[str, Launched] = {}
        #: command line → (how it ended, stderr tail) of its last run
        self.finished: dict[str, tuple[str, str]] = {}
        self._selector: selectors.BaseSelector | None = None

    def serve(self) -> None:
        """Until every holder of the registration socket (the master, each worker) has closed it."""
        selector = self._selector = selectors.DefaultSelector()
        selector.register(self.sock, selectors.EVENT_READ, ("register", None))
        while True:
            for key, _ in selector.select(timeout=0.5 if self.running else None):
                kind, data = key.data
                if kind == "register":
                    if not self._register():
                        return
                elif kind == "channel":
                    self._serve_channel(key.fileobj)
                else:
                    self._drain(key.fileobj, data)
            self._reap()

    def _register(self) -> bool:
        """A worker's new channel (its end passed as SCM_RIGHTS); False at EOF (everyone has gone)."""
        fds = array.array("i")
        try:
            message, ancillary, _flags, _ = self.sock.recvmsg(64, socket.CMSG_SPACE(4 * fds.itemsize))
        except OSError:
            return False
        for level, kind, data in ancillary:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fds.frombytes(data[:len(data) - len(data) % fds.itemsize])
        if not message and not fds:
            return False
        for fd in fds:
            channel = socket.socket(fileno=fd)
            if message == REGISTER:
                channel.setblocking(True)
                self._selector.register(channel, selectors.EVENT_READ, ("channel", None))
            else:
                channel.close()
        return True

    def _serve_channel(self, channel: socket.socket) -> None:
        try:
            request = _receive(channel)
        except OSError:
            request = None
        if request is None:  # that worker has gone
            self._selector.unregister(channel)
            channel.close()
            return
        try:
            _send(channel, *self.answer(request))
        except OSError:
            self._selector.unregister(channel)
            channel.close()

    def answer(self, request: list[str]) -> tuple[str, ...]:
        """The reply fields for one request (see the module's wire format)."""
        self._reap()
        if len(request) >= 2 and request[0] == "launch":
            line = request[1]
            user = request[2] if len(request) > 2 and request[2] else None
            try:
                self.launch(line, user)
            except LaunchError as error:
                self.logger.info(f"[launcher][error] {error}")
                return "error", line, str(error)
            return "success", line
        if len(request) >= 2 and request[0] == "status":
            line = request[1]
            if line in self.running:
                return "running", line
            if line in self.finished:
                how, tail = self.finished[line]
                return "exited", line, how, tail
            return "unknown", line
        return "error", "", f"unknown request: {request[0]!r}"

    def _drain(self, pipe, launched: Launched) -> None:
        if pipe.closed:  # already read to its end by _reap in this turn of the loop
            return
        try:
            data = os.read(pipe.fileno(), 65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            if self._selector is not None:
                try:
                    self._selector.unregister(pipe)
                except (KeyError, ValueError):
                    pass
            pipe.close()
            return
        launched.take(data)
        if self.logger.enabled(DEBUG):  # the command's own words (M-LAU-1)
            for text in data.decode("utf-8", "replace").splitlines():
                self.logger.debug(f"[launcher][stderr] {text}")

    def _reap(self) -> None:
        for line, process in list(self.running.items()):
            if process.poll() is None:
                continue
            launched = self._launched.pop(line, None)
            if launched is not None and process.stderr is not None and not process.stderr.closed:
                self._drain(process.stderr, launched)  # what it wrote just before it ended
            tail = launched.tail if launched is not None else ""
            how = describe_exit(process.returncode)
            self.finished[line] = (how, tail)
            self.logger.info(f"[launcher][exit] <{line}> {how}" + (f": {tail}" if tail else ""))
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
            process = subprocess.Popen(argv, preexec_fn=switch, stdin=subprocess.DEVNULL, env=child_environment(),
                                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
        except OSError as error:
            raise LaunchError(f"cannot start <{line}>: {error.strerror or error}") from None
        self.running[line] = process
        again = self.finished.pop(line, None) is not None
        level = self.logger.info if again else self.logger.message  # a command tried again: one notice is enough
        launched = self._launched[line] = Launched(process)
        os.set_blocking(process.stderr.fileno(), False)
        if self._selector is not None:
            self._selector.register(process.stderr, selectors.EVENT_READ, ("stderr", launched))
        level(f"[launcher][launch] <{line}> as <{user or pwd.getpwuid(os.geteuid()).pw_name}>")


#: what systemd hands the service itself: a launched milter must not report to systemd as the
#: manager (NotifyAccess) nor take the manager's passed sockets as its own
SERVICE_ONLY_VARIABLES = ("NOTIFY_SOCKET", "LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES", "WATCHDOG_USEC",
                          "WATCHDOG_PID")


def child_environment() -> dict[str, str]:
    """The launcher's environment less the variables that address the manager's own service."""
    return {name: value for name, value in os.environ.items() if name not in SERVICE_ONLY_VARIABLES}


def close_listeners(keep: set[int]) -> None:
    """Close every listening socket this process inherited (the MTA's, a socket systemd passed).

    The launcher outlives the master by a moment at a stop, and a listener it held would
    still accept connections then.
    """
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        if fd in keep or fd <= 2:
            continue
        try:
            probe = socket.socket(fileno=fd)
        except OSError:
            continue  # not a socket (or already closed: the directory's own descriptor)
        try:
            listening = probe.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
        except OSError:
            listening = 0
        if listening:
            probe.close()
        else:
            probe.detach()


def start_launcher(logger: Logger = default_logger, drop_to: tuple | None = None) -> socket.socket:
    """Fork the launcher; return the registration socket (inherited by the workers).

    ``drop_to`` = (user, group): without privilege mode the launcher runs as the manager's user.
    """
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    pid = os.fork()
    if pid == 0:
        status = 0
        try:
            ours.close()
            close_listeners(keep={theirs.fileno()})
            if drop_to is not None:
                from ..server.process import drop_privileges

                drop_privileges(*drop_to)
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            signal.signal(signal.SIGHUP, signal.SIG_IGN)
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            from ..server.process import set_process_title

            set_process_title("milter-manager: launcher")
            Launcher(theirs, logger).serve()
        except BaseException:
            status = 1
            try:
                import traceback

                logger.critical(f"[launcher][crash] {traceback.format_exc()}")
            except BaseException:
                pass
        finally:
            os._exit(status)
    theirs.close()
    ours.set_inheritable(True)
    return ours


def open_channel(registration: socket.socket) -> socket.socket:
    """This process's private channel to the launcher: one end of a new pair, the other sent over."""
    mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        registration.sendmsg([REGISTER], [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                                           array.array("i", [theirs.fileno()]))])
    except OSError:
        mine.close()
        raise
    finally:
        theirs.close()
    return mine


class LaunchClient:
    """A serving process's handle on the launcher: its own channel, one request at a time.

    Made in the serving process (after the fork); the channel is opened at the first request,
    and greenlets of the process take turns on it.
    """

    def __init__(self, registration: socket.socket, timeout: float = 10.0) -> None:
        self._registration = registration
        self._timeout = timeout
        self._sock = None
        self._lock = None
        self._pid = -1

    def _channel(self):
        from gevent import socket as gsocket

        if self._sock is None or self._pid != os.getpid():
            plain = open_channel(self._registration)
            self._sock = gsocket.socket(fileno=plain.detach())
            self._sock.settimeout(self._timeout)
            self._pid = os.getpid()
        return self._sock

    def request(self, *fields: str) -> list[str]:
        """Send one request and read its answer; raises :class:`LaunchError` when the launcher cannot answer."""
        from gevent.lock import Semaphore

        if self._lock is None:
            self._lock = Semaphore()
        with self._lock:
            try:
                sock = self._channel()
                _send(sock, *fields)
                answer = _receive(sock)
            except OSError as error:
                self._reset()
                raise LaunchError(f"launcher unreachable: {error}") from None
            if answer is None:
                self._reset()
                raise LaunchError("launcher closed the connection")
        if len(answer) < 2 or answer[1] != fields[1]:
            self._reset()  # never expected: each process has its own channel; fail loudly rather than misattribute
            raise LaunchError(f"launcher answered about <{answer[1] if len(answer) > 1 else ''}> "
                              f"for <{fields[1]}>")
        return answer

    def _reset(self) -> None:
        if self._sock is not None:
            try:
                self._sock.close()
            except OSError:
                pass
        self._sock = None

    def launch(self, line: str, user: str | None) -> None:
        """Ask for ``line`` to be started; raises :class:`LaunchError` with the launcher's answer."""
        answer = self.request("launch", line, user or "")
        if answer[0] != "success":
            raise LaunchError(answer[2] if len(answer) > 2 else "launch failed")

    def outcome(self, line: str) -> tuple[str, str] | None:
        """How ``line``'s last run ended ((how, stderr tail)), or None while it runs or was never started."""
        answer = self.request("status", line)
        if answer[0] == "exited" and len(answer) >= 4:
            return answer[2], answer[3]
        return None


class CommandLaunch:
    """A child's ``command`` as its health keeper uses it: start once per attempt, then ask how it ended."""

    def __init__(self, client: LaunchClient, line: str, user: str | None, name: str,
                 logger: Logger = default_logger) -> None:
        self.client = client
        self.line = line
        self.user = user
        self.name = name
        self.logger = logger
        self._reported: str | None = None

    def start(self) -> bool:
        """Ask the launcher to start the command; False (and an error line once per new reason) when it could not.

        "already launched" is no failure: another worker started it, or it is still starting.
        """
        try:
            self.client.launch(self.line, self.user)
        except LaunchError as error:
            text = str(error)
            if text.startswith("already launched"):
                return True
            if text != self._reported:
                self._reported = text
                self.logger.error(f"[manager][child][launch][error] [{self.name}] {text}")
            return False
        return True

    def outcome(self) -> tuple[str, str] | None:
        """(how it ended, stderr tail) once the started command has exited; None while it runs."""
        try:
            return self.client.outcome(self.line)
        except LaunchError:
            return None
