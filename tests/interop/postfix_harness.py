"""Private Postfix instances for the interop tests.

Standard library only.  A :class:`PostfixInstance` is a complete Postfix (config, queue, data
directory and log file) inside a directory of its own, listening for SMTP only on
127.0.0.1:<free port>, relaying every mail to ``[127.0.0.1]:relay_port`` (an
:class:`~smtp_sink.SmtpSink`), with ``smtpd_milters`` pointing at the milter(s) under test.
Several instances can run one after the other or at the same time: nothing is shared with the
system's Postfix (which may not even be configured) but the binaries and ``/etc/postfix``'s
read-only ``postfix-files``.

    with SmtpSink() as sink, PostfixInstance(tmp, "inet:127.0.0.1:10025", sink.port) as mta:
        result = mta.send("a@example.org", ["b@example.net"], b"Subject: hi\\r\\n\\r\\nbody\\r\\n")
        assert result.accepted
        sink.wait_for(1)

Postfix must run as root here (it starts as root and drops to ``mail_owner``).  Its daemons
run as the ``postfix`` user, so a milter's unix socket must be reachable by that user: every
directory above it searchable (:meth:`PostfixInstance.make_reachable` does that for a
directory; the instance calls it for its own) and the socket itself writable by others
(``os.chmod(path, 0o666)``) when the milter was started as root.
"""

from __future__ import annotations

import atexit
import dataclasses
import grp
import os
import pwd
import re
import shutil
import signal
import smtplib
import socket
import subprocess
import time
import weakref
from pathlib import Path
from collections.abc import Iterable, Mapping

__all__ = [
    "POSTFIX",
    "PostfixError",
    "PostfixInstance",
    "SendResult",
    "SwaksResult",
    "free_port",
    "postfix_available",
    "postfix_usable",
    "postfix_version",
    "require_real",
    "swaks_available",
]

POSTFIX = "/usr/sbin/postfix"
POSTCONF = "/usr/sbin/postconf"
SWAKS = "/usr/bin/swaks"

#: The host name every instance uses for itself (myhostname); {j} in milter macros.
MYHOSTNAME = "mta.milterman.test"


def postfix_available() -> bool:
    """True when Postfix's ``postfix`` command is installed (and we can run it)."""
    return os.path.isfile(POSTFIX) and os.access(POSTFIX, os.X_OK)


def postfix_usable() -> tuple[bool, str]:
    """Whether a private instance can run here, and if not, why: Postfix must be
    installed and we must be root (the master starts as root and drops privileges)."""
    if not postfix_available():
        return False, f"{POSTFIX} is not installed (Debian package postfix, see .ci/system-packages)"
    if os.geteuid() != 0:
        return False, "a private Postfix instance must be started as root"
    try:
        pwd.getpwnam("postfix")
        grp.getgrnam("postdrop")
    except KeyError:
        return False, "the postfix user or the postdrop group is missing"
    return True, ""


def require_real(component: str, available: bool, reason: str = "") -> None:
    """Skip the calling test when a real ``component`` (Postfix, a milter, ...) is missing,
    but fail it under CI (environment variable CI=true), where everything must be there.

    The only function of this module that needs pytest (imported here, lazily).
    """
    if available:
        return
    import pytest

    why = f"{component} is not available" + (f": {reason}" if reason else "")
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"CI=true but {why}", pytrace=False)
    pytest.skip(why)


def swaks_available() -> bool:
    """True when swaks is installed."""
    return shutil.which("swaks") is not None or os.access(SWAKS, os.X_OK)


def postfix_version() -> str | None:
    """Postfix's mail_version ("3.7.11"), or None when Postfix is not installed."""
    if not os.access(POSTCONF, os.X_OK):
        return None
    proc = subprocess.run(
        [POSTCONF, "-d", "-h", "mail_version"], capture_output=True, text=True, timeout=30, check=False
    )
    return proc.stdout.strip() or None


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port on ``host`` that was free a moment ago (the kernel's choice)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


#: Instances started and not yet stopped, stopped at interpreter exit as a last resort.
_RUNNING: "weakref.WeakSet[PostfixInstance]" = weakref.WeakSet()


@atexit.register
def _stop_all() -> None:
    for instance in list(_RUNNING):
        try:
            instance.stop()
        except Exception:  # noqa: BLE001 - best effort at exit
            pass


class PostfixError(RuntimeError):
    """Postfix could not be started or stopped; the message holds its output and log."""


@dataclasses.dataclass
class SendResult:
    """What the SMTP server answered at each step of :meth:`PostfixInstance.send`.

    Each reply is ``(code, text)``; ``None`` where the step was not reached.  Nothing is
    raised for rejections: they are data to assert on.
    """

    banner: tuple[int, str] | None = None
    ehlo: tuple[int, str] | None = None
    mail: tuple[int, str] | None = None
    rcpts: dict[str, tuple[int, str]] = dataclasses.field(default_factory=dict)
    data: tuple[int, str] | None = None
    """The reply after the message's final "." (or to DATA itself if that failed)."""
    error: str | None = None
    """A connection-level failure (refused, disconnected, timed out), else None."""

    @property
    def accepted(self) -> bool:
        """True when the server took the message (2xx after the final ".")."""
        return self.data is not None and 200 <= self.data[0] < 300

    @property
    def queue_id(self) -> str | None:
        """The queue id from "250 2.0.0 Ok: queued as ID", if any."""
        if self.data is None:
            return None
        match = re.search(r"queued as ([0-9A-Za-z]+)", self.data[1])
        return match.group(1) if match else None

    @property
    def final(self) -> tuple[int, str] | None:
        """The last reply received: the one that decided the transaction's fate."""
        if self.data is not None:
            return self.data
        if self.rcpts:
            return list(self.rcpts.values())[-1]
        return self.mail or self.ehlo or self.banner

    @property
    def accepted_rcpts(self) -> list[str]:
        return [rcpt for rcpt, (code, _) in self.rcpts.items() if 200 <= code < 300]


@dataclasses.dataclass
class SwaksResult:
    """swaks' exit status and its full transcript (stdout and stderr, in order)."""

    returncode: int
    transcript: str

    @property
    def server_lines(self) -> list[str]:
        """The lines the server sent ("<-  250 ..."; "<** 451 ..." for errors)."""
        return [line for line in self.transcript.splitlines() if line.startswith(("<-", "<**", "<~"))]


def _reply(code: int, msg: bytes | str) -> tuple[int, str]:
    if isinstance(msg, bytes):
        msg = msg.decode("utf-8", "replace")
    return (int(code), msg)


def _read_proc_session(pid: int) -> int | None:
    """The session id of process ``pid`` (from /proc), or None if it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # "pid (comm) state ppid pgrp session ..."; comm may hold spaces and parentheses.
    fields = stat[stat.rfind(")") + 2 :].split()
    try:
        return int(fields[3])
    except (IndexError, ValueError):
        return None


def _pid_alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return state[state.rfind(")") + 2 :][:1] not in ("Z", "X", "")


def _listening(host: str, port: int) -> bool:
    """True when some socket listens on IPv4 ``host``:``port`` (from /proc/net/tcp)."""
    want = "{:08X}:{:04X}".format(int.from_bytes(socket.inet_aton(host), "little"), port)
    try:
        with open("/proc/net/tcp") as table:
            next(table, None)
            for line in table:
                fields = line.split()
                if len(fields) > 3 and fields[3] == "0A" and fields[1] in (want, f"00000000:{port:04X}"):
                    return True
    except OSError:
        # no /proc: fall back to connecting (this one connection reaches smtpd)
        try:
            with socket.create_connection((host, port), timeout=1):
                return True
        except OSError:
            return False
    return False


class PostfixInstance:
    """A private Postfix instance inside ``tmpdir``.

    Parameters:
      tmpdir: the directory to build the instance in (created if missing).  It holds
        ``etc/`` (config_directory: main.cf, master.cf), ``spool/`` (queue_directory),
        ``data/`` (data_directory) and ``maillog`` (maillog_file).
      milters: the milter spec(s) for ``smtpd_milters`` in Postfix's syntax
        (``"inet:127.0.0.1:PORT"``, ``"unix:/path"``, optionally with Postfix's
        ``{ inet:... , default_action=accept }`` form), a list of them, or ""/[] for none.
      relay_port: where every mail is relayed: ``relayhost = [127.0.0.1]:relay_port``.
      milter_default_action: ``accept``, ``reject``, ``tempfail`` or ``quarantine``.
      extra_main_cf: more main.cf settings (they win over the harness's).
      milter_protocol: Postfix's ``milter_protocol`` (2..6).
      non_smtpd: also set ``non_smtpd_milters`` to the same milters (for mail sent with
        :meth:`submit`).
      smtp_port: the SMTP port to listen on (default: a free one).
      milter_timeouts: ``(connect, command, content)`` timeouts for the milter client,
        in seconds (Postfix's defaults are 30s, 30s, 300s: far too long for tests).

    Use :meth:`start`/:meth:`stop` or ``with``.  The configuration is written by the
    constructor, so :meth:`postconf` works before :meth:`start`.
    """

    def __init__(
        self,
        tmpdir: str | os.PathLike[str],
        milters: list[str] | tuple[str, ...] | str,
        relay_port: int,
        *,
        milter_default_action: str = "tempfail",
        extra_main_cf: Mapping[str, str | int] | None = None,
        milter_protocol: int = 6,
        non_smtpd: bool = False,
        smtp_port: int | None = None,
        milter_timeouts: tuple[float, float, float] = (5, 10, 20),
    ) -> None:
        self.root = Path(tmpdir).resolve()
        if isinstance(milters, str):
            milters = [milters] if milters.strip() else []
        self.milters = [m.strip() for m in milters if m.strip()]
        self.relay_port = int(relay_port)
        self.milter_default_action = milter_default_action
        self.milter_protocol = int(milter_protocol)
        self.non_smtpd = non_smtpd
        self.extra_main_cf = dict(extra_main_cf or {})
        self.milter_timeouts = milter_timeouts
        self.host = "127.0.0.1"
        self.port = int(smtp_port) if smtp_port else free_port(self.host)
        self._fixed_port = smtp_port is not None
        self.config_dir = self.root / "etc"
        self.queue_dir = self.root / "spool"
        self.data_dir = self.root / "data"
        self.maillog_path = self.root / "maillog"
        self.master_pid: int | None = None
        self.started = False
        self.start_seconds: float | None = None
        """How long the last :meth:`start` took (for reports)."""
        self.stop_seconds: float | None = None
        self.write_config()

    # -- configuration ---------------------------------------------------------------------

    @property
    def smtp_address(self) -> tuple[str, int]:
        return (self.host, self.port)

    @property
    def milter_spec(self) -> str:
        """The value written to ``smtpd_milters``."""
        return ", ".join(self.milters)

    def main_cf(self) -> dict[str, str]:
        """The main.cf settings this instance uses (harness defaults updated by extra_main_cf)."""
        connect, command, content = self.milter_timeouts
        settings: dict[str, str] = {
            "compatibility_level": "3.6",
            # where everything lives: all inside self.root
            "config_directory": str(self.config_dir),
            "queue_directory": str(self.queue_dir),
            "data_directory": str(self.data_dir),
            "maillog_file": str(self.maillog_path),
            "maillog_file_prefixes": str(self.root),
            # identity and privileges (we run as root; daemons drop to mail_owner)
            "myhostname": MYHOSTNAME,
            "mydomain": "milterman.test",
            "myorigin": "$myhostname",
            "mail_owner": "postfix",
            "setgid_group": "postdrop",
            # network: loopback IPv4 only
            "inet_interfaces": "127.0.0.1",
            "inet_protocols": "ipv4",
            "mynetworks_style": "host",
            "mynetworks": "127.0.0.0/8",
            "smtp_bind_address": "127.0.0.1",
            # no local delivery: every domain is relayed to the sink
            "mydestination": "",
            "relay_domains": "",
            "local_recipient_maps": "",
            "alias_maps": "",
            "alias_database": "",
            "local_transport": "error:5.1.1 local delivery is disabled",
            "relayhost": f"[127.0.0.1]:{self.relay_port}",
            "default_transport": "smtp",
            "relay_transport": "smtp",
            "smtpd_relay_restrictions": "permit_mynetworks, reject_unauth_destination",
            "smtpd_recipient_restrictions": "permit_mynetworks, reject",
            "append_dot_mydomain": "no",
            "biff": "no",
            # nothing looks anything up in the DNS
            "smtp_dns_support_level": "disabled",
            "lmtp_dns_support_level": "disabled",
            "smtp_host_lookup": "native",
            "smtpd_peername_lookup": "no",
            "smtp_address_preference": "ipv4",
            # no TLS, no SASL
            "smtpd_tls_security_level": "none",
            "smtp_tls_security_level": "none",
            "smtpd_sasl_auth_enable": "no",
            "smtpd_banner": "$myhostname ESMTP $mail_name",
            # the milters under test
            "smtpd_milters": self.milter_spec,
            "non_smtpd_milters": self.milter_spec if self.non_smtpd else "",
            "milter_default_action": self.milter_default_action,
            "milter_protocol": str(self.milter_protocol),
            "milter_connect_timeout": f"{connect:g}s",
            "milter_command_timeout": f"{command:g}s",
            "milter_content_timeout": f"{content:g}s",
            # short timeouts and no sleeping: tests wait for nothing
            "smtpd_error_sleep_time": "0",
            "smtpd_soft_error_limit": "100",
            "smtpd_hard_error_limit": "200",
            "smtpd_timeout": "30s",
            "smtpd_client_connection_count_limit": "0",
            "smtpd_client_connection_rate_limit": "0",
            "in_flow_delay": "0",
            "smtp_connect_timeout": "5s",
            "smtp_helo_timeout": "10s",
            "smtp_data_done_timeout": "30s",
            "queue_run_delay": "1s",
            "minimal_backoff_time": "1s",
            "maximal_backoff_time": "2s",
            "maximal_queue_lifetime": "1h",
            "bounce_queue_lifetime": "1h",
            "delay_warning_time": "0h",
            "daemon_timeout": "120s",
            "ipc_timeout": "30s",
            "max_idle": "10s",
            "default_process_limit": "20",
            "smtp_destination_concurrency_limit": "4",
            "mailbox_size_limit": "0",
            "notify_classes": "",
            "smtputf8_enable": "yes",
            "show_user_unknown_table_name": "no",
        }
        for key, value in self.extra_main_cf.items():
            settings[str(key)] = str(value)
        return settings

    def master_cf(self) -> str:
        """The master.cf of this instance: no chroot, smtpd only on 127.0.0.1:port."""
        # service type private unpriv chroot wakeup maxproc command
        rows = [
            (f"127.0.0.1:{self.port}", "inet", "n", "-", "n", "-", "-", "smtpd"),
            ("pickup", "unix", "n", "-", "n", "60", "1", "pickup"),
            ("cleanup", "unix", "n", "-", "n", "-", "0", "cleanup"),
            ("qmgr", "unix", "n", "-", "n", "300", "1", "qmgr"),
            ("tlsmgr", "unix", "-", "-", "n", "1000?", "1", "tlsmgr"),
            ("rewrite", "unix", "-", "-", "n", "-", "-", "trivial-rewrite"),
            ("bounce", "unix", "-", "-", "n", "-", "0", "bounce"),
            ("defer", "unix", "-", "-", "n", "-", "0", "bounce"),
            ("trace", "unix", "-", "-", "n", "-", "0", "bounce"),
            ("verify", "unix", "-", "-", "n", "-", "1", "verify"),
            ("flush", "unix", "n", "-", "n", "1000?", "0", "flush"),
            ("proxymap", "unix", "-", "-", "n", "-", "-", "proxymap"),
            ("proxywrite", "unix", "-", "-", "n", "-", "1", "proxymap"),
            ("smtp", "unix", "-", "-", "n", "-", "-", "smtp"),
            ("relay", "unix", "-", "-", "n", "-", "-", "smtp"),
            ("showq", "unix", "n", "-", "n", "-", "-", "showq"),
            ("error", "unix", "-", "-", "n", "-", "-", "error"),
            ("retry", "unix", "-", "-", "n", "-", "-", "error"),
            ("discard", "unix", "-", "-", "n", "-", "-", "discard"),
            ("local", "unix", "-", "n", "n", "-", "-", "local"),
            ("virtual", "unix", "-", "n", "n", "-", "-", "virtual"),
            ("lmtp", "unix", "-", "-", "n", "-", "-", "lmtp"),
            ("anvil", "unix", "-", "-", "n", "-", "1", "anvil"),
            ("scache", "unix", "-", "-", "n", "-", "1", "scache"),
            ("postlog", "unix-dgram", "n", "-", "n", "-", "1", "postlogd"),
        ]
        lines = ["# master.cf written by tests/interop/postfix_harness.py"]
        for row in rows:
            lines.append("{:<22} {:<10} {:<7} {:<7} {:<7} {:<7} {:<7} {}".format(*row))
        return "\n".join(lines) + "\n"

    def write_config(self) -> None:
        """(Re)write main.cf and master.cf and create the directories."""
        self.root.mkdir(parents=True, exist_ok=True)
        for directory in (self.config_dir, self.queue_dir, self.data_dir):
            directory.mkdir(parents=True, exist_ok=True)
            os.chmod(directory, 0o755)
        if os.geteuid() == 0:
            # Postfix wants its directories owned by root; the data directory by mail_owner
            # (post-install fixes that on start).
            for directory in (self.config_dir, self.queue_dir):
                os.chown(directory, 0, 0)
            owner = pwd.getpwnam(self.main_cf()["mail_owner"])
            os.chown(self.data_dir, owner.pw_uid, owner.pw_gid)
        lines = ["# main.cf written by tests/interop/postfix_harness.py"]
        for key, value in self.main_cf().items():
            lines.append(f"{key} = {value}" if value != "" else f"{key} =")
        self._write(self.config_dir / "main.cf", "\n".join(lines) + "\n")
        self._write(self.config_dir / "master.cf", self.master_cf())
        self.maillog_path.touch(exist_ok=True)
        self.make_reachable(self.root)

    @staticmethod
    def _write(path: Path, text: str) -> None:
        path.write_text(text)
        os.chmod(path, 0o644)

    @staticmethod
    def make_reachable(path: str | os.PathLike[str]) -> None:
        """Let Postfix's unprivileged daemons reach ``path``: add search permission (x, not r)
        for group and others to ``path`` and to each directory above it that lacks it and
        belongs to us.

        pytest's ``tmp_path`` lies under ``/tmp/pytest-of-root/pytest-N/`` (mode 0700), which the
        ``postfix`` user cannot cross: the master could not open its lock file in
        data_directory, and smtpd could not connect to a milter's unix socket in tmp_path.
        Adding only ``x`` lets nobody list those directories.  (pytest sets its own
        directories back to 0700 at its next run.)
        """
        current = Path(path).resolve()
        euid = os.geteuid()
        for directory in [current, *current.parents]:
            if directory == directory.parent:  # "/"
                break
            try:
                info = directory.stat()
            except OSError:
                continue
            if info.st_uid != euid or not directory.is_dir():
                continue
            if (info.st_mode & 0o011) != 0o011:
                try:
                    os.chmod(directory, (info.st_mode & 0o7777) | 0o011)
                except OSError:
                    pass

    def postconf(self, *names: str) -> dict[str, str]:
        """The effective values of main.cf parameters ``names`` (all when none given)."""
        proc = self._run([POSTCONF, "-c", str(self.config_dir), *names], check=True)
        values: dict[str, str] = {}
        for line in proc.stdout.splitlines():
            key, sep, value = line.partition(" = ")
            if sep:
                values[key] = value
            elif line.endswith(" ="):
                values[line[:-2]] = ""
        return values

    # -- running ---------------------------------------------------------------------------

    def _run(self, argv: list[str], *, check: bool = False, timeout: float = 60) -> subprocess.CompletedProcess:
        env = dict(os.environ)
        env["MAIL_CONFIG"] = str(self.config_dir)
        env.pop("MAIL_DEBUG", None)
        proc = subprocess.run(
            argv,
            capture_output=True,
            text=True,
            timeout=timeout,
            env=env,
            stdin=subprocess.DEVNULL,
            check=False,
        )
        if check and proc.returncode != 0:
            raise PostfixError(
                f"{' '.join(argv)} exited {proc.returncode}\n{proc.stdout}{proc.stderr}\n"
                f"--- maillog ---\n{self.maillog()[-4000:]}"
            )
        return proc

    def start(self, timeout: float = 30.0) -> "PostfixInstance":
        """Start the instance (``postfix -c DIR start``) and wait until it listens for SMTP.

        Retries with a new port (up to 3 times) when the chosen one was taken meanwhile.
        Raises :class:`PostfixError` with Postfix's output and log when it does not come up.
        """
        if not postfix_available():
            raise PostfixError(f"{POSTFIX} is not installed")
        if self.started:
            return self
        began = time.monotonic()
        for attempt in range(3):
            self.write_config()
            proc = self._run([POSTFIX, "-c", str(self.config_dir), "start"], timeout=timeout)
            if proc.returncode != 0:
                self._kill_leftovers()
                raise PostfixError(
                    f"postfix start exited {proc.returncode}\n{proc.stdout}{proc.stderr}\n"
                    f"--- maillog ---\n{self.maillog()[-4000:]}"
                )
            self.started = True
            _RUNNING.add(self)
            self.master_pid = self._wait_master_pid(began + timeout)
            if self._wait_smtp(began + timeout):
                self.start_seconds = time.monotonic() - began
                return self
            log = self.maillog()
            self.stop()
            if "Address already in use" in log and not self._fixed_port and attempt < 2:
                self.port = free_port(self.host)
                continue
            raise PostfixError(
                f"postfix on 127.0.0.1:{self.port} did not answer within {timeout:g}s\n"
                f"--- maillog ---\n{log[-4000:]}"
            )
        raise PostfixError("unreachable")  # pragma: no cover

    def _wait_master_pid(self, deadline: float) -> int | None:
        pid_file = self.queue_dir / "pid" / "master.pid"
        while time.monotonic() < deadline:
            try:
                pid = int(pid_file.read_text().split()[0])
            except (OSError, ValueError, IndexError):
                pid = 0
            if pid > 0 and _pid_alive(pid):
                return pid
            time.sleep(0.05)
        return None

    def _wait_smtp(self, deadline: float) -> bool:
        """Wait until the master listens on the SMTP port.

        This looks at the kernel's socket table instead of connecting: a probe connection
        would make smtpd connect to the milters under test, which would then see a session
        the test did not make.  (``postfix start`` runs ``master -w``, which returns once
        the master has initialized, so this is normally true at once.)
        """
        while time.monotonic() < deadline:
            if self.master_pid is not None and not _pid_alive(self.master_pid):
                return False
            if _listening(self.host, self.port):
                return True
            time.sleep(0.05)
        return False

    def is_running(self) -> bool:
        """True while this instance's master process is alive."""
        return self.master_pid is not None and _pid_alive(self.master_pid)

    def processes(self) -> list[int]:
        """The pids of this instance's processes: its master and everything in its session.

        Postfix's master calls setsid(), so its daemons share its session id; the system's
        or another instance's Postfix has a different master and so a different session.
        """
        if self.master_pid is None:
            return []
        pids = []
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                pid = int(entry)
                if pid == self.master_pid or _read_proc_session(pid) == self.master_pid:
                    if _pid_alive(pid):
                        pids.append(pid)
        return sorted(pids)

    def stop(self, timeout: float = 20.0) -> None:
        """Stop the instance (``postfix -c DIR stop``), then kill whatever of it is left.

        Only this instance's master and the processes of its session are ever signalled.
        Safe to call twice, or after a failed start.
        """
        if not self.started:
            return
        began = time.monotonic()
        try:
            self._run([POSTFIX, "-c", str(self.config_dir), "stop"], timeout=timeout)
        except subprocess.TimeoutExpired:
            pass
        deadline = time.monotonic() + timeout
        while self.is_running() and time.monotonic() < deadline:
            time.sleep(0.05)
        self._kill_leftovers()
        self.started = False
        _RUNNING.discard(self)
        self.stop_seconds = time.monotonic() - began

    def _kill_leftovers(self) -> None:
        if self.master_pid is None:
            self.master_pid = self._wait_master_pid(time.monotonic() + 0.5)
        for sig in (signal.SIGTERM, signal.SIGKILL):
            pids = self.processes()
            if not pids:
                return
            for pid in pids:
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
            deadline = time.monotonic() + 3
            while self.processes() and time.monotonic() < deadline:
                time.sleep(0.05)

    def __enter__(self) -> "PostfixInstance":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "running" if self.is_running() else "stopped"
        return f"<PostfixInstance {self.root} smtp=127.0.0.1:{self.port} milters={self.milter_spec!r} {state}>"

    # -- logs and queue --------------------------------------------------------------------

    def maillog(self) -> str:
        """Everything Postfix logged so far (the maillog_file)."""
        try:
            return self.maillog_path.read_text(errors="replace")
        except OSError:
            return ""

    def wait_for_log(self, pattern: str | re.Pattern[str], timeout: float = 10.0) -> re.Match[str]:
        """Wait until the log has a match for the regular expression ``pattern``; return it.

        Raises TimeoutError with the end of the log.  (Postfix logs asynchronously through
        postlogd, so a line may appear a little after the SMTP reply that caused it.)
        """
        regex = re.compile(pattern) if isinstance(pattern, str) else pattern
        deadline = time.monotonic() + timeout
        while True:
            log = self.maillog()
            match = regex.search(log)
            if match:
                return match
            if time.monotonic() >= deadline:
                raise TimeoutError(f"{regex.pattern!r} not in the maillog after {timeout:g}s:\n{log[-3000:]}")
            time.sleep(0.05)

    def queue_ids(self) -> list[str]:
        """The ids of the messages still in the queue (``postqueue -j``; [] when empty)."""
        proc = self._run(["/usr/sbin/postqueue", "-c", str(self.config_dir), "-j"])
        return re.findall(r'"queue_id": *"([0-9A-Za-z]+)"', proc.stdout)

    def wait_queue_empty(self, timeout: float = 10.0) -> bool:
        """Wait until nothing is left in the queue; False if something still is."""
        deadline = time.monotonic() + timeout
        while True:
            if not self.queue_ids():
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.1)

    def flush(self) -> None:
        """Ask Postfix to retry deferred mail now (``postqueue -f``)."""
        self._run(["/usr/sbin/postqueue", "-c", str(self.config_dir), "-f"])

    # -- sending ---------------------------------------------------------------------------

    def send(
        self,
        mail_from: str,
        rcpts: Iterable[str] | str,
        message: bytes | str,
        *,
        helo: str = "client.milterman.test",
        timeout: float = 30.0,
        mail_options: Iterable[str] = (),
        source_address: str | None = None,
    ) -> SendResult:
        """Send one message over SMTP (smtplib) and return every reply.

        Rejections (4xx/5xx at any step) and connection failures are recorded in the
        result, not raised.  DATA is sent only if at least one recipient was accepted.
        ``source_address``: the client's own address (the milters see it as the client).
        """
        if isinstance(rcpts, str):
            rcpts = [rcpts]
        if isinstance(message, str):
            message = message.encode("utf-8")
        result = SendResult()
        client = smtplib.SMTP(timeout=timeout, source_address=(source_address, 0) if source_address else None)
        try:
            code, msg = client.connect(self.host, self.port)
            result.banner = _reply(code, msg)
            if code != 220:
                return result
            code, msg = client.ehlo(helo)
            result.ehlo = _reply(code, msg)
            if code != 250:
                return result
            code, msg = client.mail(mail_from, list(mail_options))
            result.mail = _reply(code, msg)
            if code != 250:
                client.rset()
                return result
            for rcpt in rcpts:
                code, msg = client.rcpt(rcpt)
                result.rcpts[rcpt] = _reply(code, msg)
            if not result.accepted_rcpts:
                client.rset()
                return result
            try:
                code, msg = client.data(message)
                result.data = _reply(code, msg)
            except smtplib.SMTPDataError as exc:
                result.data = _reply(exc.smtp_code, exc.smtp_error)
        except smtplib.SMTPServerDisconnected as exc:
            result.error = f"disconnected: {exc}"
        except smtplib.SMTPResponseException as exc:
            result.error = f"{exc.smtp_code} {exc.smtp_error!r}"
        except (OSError, smtplib.SMTPException) as exc:
            result.error = f"{type(exc).__name__}: {exc}"
        finally:
            try:
                client.quit()
            except (OSError, smtplib.SMTPException):
                pass
            client.close()
        return result

    def submit(
        self,
        mail_from: str,
        rcpts: Iterable[str] | str,
        message: bytes | str,
        *,
        timeout: float = 30.0,
    ) -> subprocess.CompletedProcess:
        """Submit a message locally with Postfix's ``sendmail -C <config_dir>`` (pickup path:
        ``non_smtpd_milters`` apply, ``smtpd_milters`` do not).  Returns the finished process
        (``returncode`` 0 when the message was queued; ``stderr`` holds the complaints)."""
        if isinstance(rcpts, str):
            rcpts = [rcpts]
        if isinstance(message, str):
            message = message.encode("utf-8")
        argv = ["/usr/sbin/sendmail", "-C", str(self.config_dir), "-i", "-f", mail_from, "--", *rcpts]
        env = dict(os.environ)
        env["MAIL_CONFIG"] = str(self.config_dir)
        return subprocess.run(
            argv,
            input=message.replace(b"\r\n", b"\n"),
            capture_output=True,
            timeout=timeout,
            env=env,
            check=False,
        )

    def swaks_send(
        self,
        mail_from: str,
        rcpts: Iterable[str] | str,
        message: bytes | str | None = None,
        *,
        helo: str = "client.milterman.test",
        extra_args: Iterable[str] = (),
        timeout: float = 60.0,
    ) -> SwaksResult:
        """Send one message with swaks and return its exit status and transcript.

        ``message`` is the whole message (header and body); None lets swaks make one up.
        Raises FileNotFoundError when swaks is not installed.
        """
        swaks = shutil.which("swaks") or SWAKS
        if not os.access(swaks, os.X_OK):
            raise FileNotFoundError("swaks is not installed")
        if isinstance(rcpts, str):
            rcpts = [rcpts]
        argv = [
            swaks,
            "--server", self.host,
            "--port", str(self.port),
            "--helo", helo,
            "--from", mail_from,
            "--to", ",".join(rcpts),
            "--timeout", f"{int(timeout)}",
        ]
        if message is not None:
            if isinstance(message, str):
                message = message.encode("utf-8")
            # swaks wants LF line ends in its input and sends CRLF
            argv += ["--data", "-"]
            stdin = message.replace(b"\r\n", b"\n")
        else:
            stdin = b""
        argv += list(extra_args)
        proc = subprocess.run(
            argv, input=stdin, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=timeout + 10, check=False
        )
        return SwaksResult(proc.returncode, proc.stdout.decode("utf-8", "replace"))
