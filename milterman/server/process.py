"""Process plumbing of the master, standard library only (D-5, M-DAE-1, M-FD-1).

Privileges, daemonizing, the pid file, RLIMIT_NOFILE, systemd readiness and
socket activation. Every failure raises :class:`StartupError` with a message
that names the option and the value, so the command can print it and exit 1.
"""

from __future__ import annotations

import errno
import os
import pwd
import resource
import socket
import stat

from ..accounts import UnknownAccount, group_id, user_entry

LISTEN_FDS_START = 3


class StartupError(Exception):
    """The server cannot start; the message names the bad value and where it came from."""


def ensure_standard_fds() -> None:
    """Open /dev/null on any of fds 0–2 that is closed, so no socket can take those numbers."""
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            null = os.open(os.devnull, os.O_RDWR)
            if null != fd:
                os.dup2(null, fd)
                os.close(null)


def close_quietly(*fds: int) -> None:
    """Close each descriptor that is open (>= 0); one already closed is no error at clean-up."""
    for fd in fds:
        if fd >= 0:
            try:
                os.close(fd)
            except OSError:
                pass


def resolve_user(option: str, value: str | int) -> pwd.struct_passwd:
    """A user name or id → its passwd entry; unknown users are named in the error."""
    try:
        return user_entry(value)
    except UnknownAccount as error:
        raise StartupError(f"{option}: {error}") from None


def resolve_group(option: str, value: str | int) -> int:
    """A group name or id → gid; unknown groups are named in the error."""
    try:
        return group_id(value)
    except UnknownAccount as error:
        raise StartupError(f"{option}: {error}") from None


def drop_privileges(user: str | int | None, group: str | int | None) -> None:
    """Switch group, supplementary groups, then user (D-5); root is needed for either.

    With only a user, the group is the user's primary group; with only a group,
    only the group changes.
    """
    if user is None and group is None:
        return
    entry = resolve_user("--user-name", user) if user is not None else None
    gid = resolve_group("--group-name", group) if group is not None else (entry.pw_gid if entry else None)
    if os.geteuid() != 0:
        what = f"user <{user}>" if user is not None else f"group <{group}>"
        raise StartupError(f"cannot switch to {what}: only root may change user or group "
                           f"(running as uid {os.geteuid()})")
    try:
        if gid is not None:
            os.setgid(gid)
        if entry is not None:
            os.initgroups(entry.pw_name, gid if gid is not None else entry.pw_gid)
            os.setuid(entry.pw_uid)
        elif gid is not None:
            os.setgroups([gid])
    except OSError as error:
        raise StartupError(f"cannot drop privileges to user <{user}> group <{group}>: {error.strerror}") from None


def set_file_descriptor_limit(limit: int) -> None:
    """RLIMIT_NOFILE soft = hard = ``limit`` (M-FD-1); 0 keeps the system default."""
    if limit <= 0:
        return
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))
    except (OSError, ValueError) as error:
        raise StartupError(f"max_file_descriptors: cannot set the limit to <{limit}>: {error}") from None


class PidFile:
    """The pid file: opened (and so checked) early, written once the final pid is known, removed at exit."""

    def __init__(self, path: str | None) -> None:
        self.path = path
        self._fd: int | None = None
        self._written_pid: int | None = None
        if path:
            try:
                self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            except OSError as error:
                raise StartupError(f"--pid-file: cannot write <{path}>: {error.strerror}") from None

    def write(self, pid: int | None = None) -> None:
        if self._fd is None:
            return
        pid = pid or os.getpid()
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, f"{pid}\n".encode(), 0)
        os.close(self._fd)
        self._fd = None
        self._written_pid = pid

    def remove(self) -> None:
        """Remove the file if it still holds our pid (never another process's)."""
        if self._fd is not None:
            # opened (created or emptied) but start-up failed before the pid was written: no empty file stays
            os.close(self._fd)
            self._fd = None
            try:
                os.unlink(self.path)
            except OSError:
                pass
            return
        if not self.path or self._written_pid is None:
            return
        try:
            with open(self.path) as handle:
                if handle.read().strip() != str(self._written_pid):
                    return
            os.unlink(self.path)
        except OSError:
            pass


def daemonize() -> None:
    """Detach: fork, setsid, fork again, chdir /, standard fds to /dev/null (D-5).

    The original process exits 0 here: by now the socket is bound, so "it started listening".
    """
    if os.fork() > 0:
        os._exit(0)
    os.setsid()
    if os.fork() > 0:
        os._exit(0)
    os.chdir("/")
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    if null > 2:
        os.close(null)


def systemd_notify(message: str) -> bool:
    """Send ``message`` (``READY=1`` …) to $NOTIFY_SOCKET for ``Type=notify`` units; False if none."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.connect(address)
            sock.sendall(message.encode())
        return True
    except OSError:
        return False


def activated_sockets() -> list[socket.socket]:
    """Listening sockets handed over by systemd socket activation ($LISTEN_FDS for our pid)."""
    if os.environ.get("LISTEN_PID") != str(os.getpid()):
        return []
    try:
        count = int(os.environ.get("LISTEN_FDS", "0"))
    except ValueError:
        return []
    sockets = []
    for fd in range(LISTEN_FDS_START, LISTEN_FDS_START + count):
        try:
            mode = os.fstat(fd).st_mode
        except OSError as error:
            if error.errno == errno.EBADF:
                continue
            raise
        if stat.S_ISSOCK(mode):
            os.set_inheritable(fd, True)
            sockets.append(socket.socket(fileno=fd))
    for name in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
        os.environ.pop(name, None)
    return sockets


def set_process_title(title: str) -> None:
    """Name the process for ps and top (master/worker and the listening spec); setproctitle is a dependency."""
    import setproctitle

    setproctitle.setproctitle(title)
