"""Private Sendmail instances for the interop tests.

Standard library only.  Debian's Sendmail cannot be installed beside Postfix (both provide
``mail-transport-agent``), so :func:`sendmail_tree` unpacks ``sendmail-bin`` and ``sendmail-cf``
(fetched with ``apt-get download``, unpacked with ``dpkg-deb -x``) into a cache directory once and
runs the binary from there.  It needs ``libwrap0`` and ``m4`` installed (``.ci/system-packages``).

A :class:`SendmailInstance` is one Sendmail daemon in the foreground (``sendmail -bD``) with a
configuration built by m4 from Debian's ``sendmail-cf`` in a directory of its own: SMTP on
127.0.0.1:<free port>, every mail relayed to ``[127.0.0.1]:relay_port`` (an
:class:`~smtp_sink.SmtpSink`), ``INPUT_MAIL_FILTER`` for each milter under test, in order.

    with SmtpSink() as sink, SendmailInstance(tmp, ["inet:10025@127.0.0.1"], sink.port) as mta:
        result = mta.send("a@example.org", ["b@example.net"], b"Subject: hi\\r\\n\\r\\nbody\\r\\n")
        assert result.accepted
        sink.wait_for(1)

Sendmail's quirks met here (and handled):

* it canonicalises its own host name at start through the resolver, which waits for a name
  server that cannot be reached: the daemon runs in a private mount and UTS namespace
  (``unshare --mount --uts``, so root is needed) with the host name ``mta.milterman.test``, an
  ``/etc/hosts`` that knows it and an ``/etc/resolv.conf`` naming 127.0.0.1 (fails at once);
  ``FEATURE(nocanonify)`` and ``accept_unresolvable_domains`` keep it from asking DNS later;
* 127.0.0.1 is one of its own addresses (class ``w``), so a plain ``SMART_HOST([127.0.0.1])``
  would be "local": the smart host is written ``relay:[127.0.0.1]`` (mailer named first);
* it refuses a unix milter socket below a group- or world-writable directory (``/tmp`` and any
  directory below it): use ``inet:PORT@127.0.0.1`` milters, or a socket directory elsewhere;
* it rejects bare LF in SMTP DATA (``421 4.5.0 Bare linefeed (LF) not allowed``, Debian 12's fix
  against SMTP smuggling): test mails need CRLF line ends;
* it logs only to syslog, which does not run here: ``output()`` holds what the daemon printed
  (debug output when ``debug`` flags are given, e.g. ``("64.5",)`` for the milter client).
"""

from __future__ import annotations

import atexit
import fcntl
import os
import shlex
import shutil
import signal
import subprocess
import tempfile
import time
import weakref
from collections.abc import Iterable, Sequence
from pathlib import Path

from postfix_harness import PostfixInstance, SendResult, _listening, _pid_alive, _read_proc_session, free_port

__all__ = [
    "MYHOSTNAME",
    "SENDMAIL_PACKAGES",
    "SendmailError",
    "SendmailInstance",
    "sendmail_tree",
    "sendmail_usable",
]

#: Sendmail's own host name ($j) in every instance.
MYHOSTNAME = "mta.milterman.test"
#: The Debian packages unpacked (not installed) for the binary and the m4 configuration kit.
SENDMAIL_PACKAGES = ("sendmail-bin", "sendmail-cf")
#: Where the unpacked tree is kept between runs (MILTERMAN_SENDMAIL_ROOT overrides it).
DEFAULT_CACHE = Path("/var/cache/milterman-tests/sendmail")
BINARY = "usr/libexec/sendmail/sendmail"
CF_DIR = "usr/share/sendmail/cf"
APT_LOCK = "/tmp/apt.lock"


class SendmailError(RuntimeError):
    """Sendmail could not be unpacked, configured or started; the message says why."""


def _cache_root() -> Path:
    return Path(os.environ.get("MILTERMAN_SENDMAIL_ROOT") or DEFAULT_CACHE)


def _run(argv: Sequence[str], cwd: str | os.PathLike[str] = "/", timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(list(argv), cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False,
                          stdin=subprocess.DEVNULL)


def sendmail_tree() -> Path:
    """The unpacked ``sendmail-bin`` + ``sendmail-cf`` tree, fetched and unpacked on first use.

    Cached in ``/var/cache/milterman-tests/sendmail`` (or ``$MILTERMAN_SENDMAIL_ROOT``); a lock
    file keeps two test processes from unpacking at once, and apt runs under ``/tmp/apt.lock``
    like every other apt call of the project.  Raises :class:`SendmailError` when apt cannot
    fetch the packages.
    """
    root = _cache_root()
    if (root / BINARY).is_file() and (root / CF_DIR / "m4" / "cf.m4").is_file():
        return root
    root.parent.mkdir(parents=True, exist_ok=True)
    with open(f"{root}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (root / BINARY).is_file() and (root / CF_DIR / "m4" / "cf.m4").is_file():
            return root
        with tempfile.TemporaryDirectory(prefix="sendmail-debs-", dir=root.parent) as download:
            os.chmod(download, 0o755)
            fetch = ["apt-get", "download", "-q", "-o", "APT::Sandbox::User=root", *SENDMAIL_PACKAGES]
            with open(APT_LOCK, "w") as apt_lock:
                fcntl.flock(apt_lock, fcntl.LOCK_EX)
                proc = _run(fetch, cwd=download)
                if proc.returncode != 0:  # the package lists may be older than the archive
                    _run(["apt-get", "update", "-qq"])
                    proc = _run(fetch, cwd=download)
            if proc.returncode != 0:
                raise SendmailError(f"apt-get download {' '.join(SENDMAIL_PACKAGES)} failed:\n"
                                    f"{proc.stdout}{proc.stderr}")
            staging = Path(tempfile.mkdtemp(prefix="sendmail-tree-", dir=root.parent))
            for deb in sorted(Path(download).glob("*.deb")):
                proc = _run(["dpkg-deb", "-x", str(deb), str(staging)])
                if proc.returncode != 0:
                    shutil.rmtree(staging, ignore_errors=True)
                    raise SendmailError(f"dpkg-deb -x {deb.name} failed:\n{proc.stderr}")
            shutil.rmtree(root, ignore_errors=True)
            staging.rename(root)
    return root


def sendmail_usable() -> tuple[bool, str]:
    """Whether a private Sendmail can run here, and if not, why (the tree is unpacked on demand)."""
    if os.geteuid() != 0:
        return False, "a private Sendmail must be started as root (it runs in its own mount namespace)"
    for tool in ("unshare", "m4", "dpkg-deb"):
        if shutil.which(tool) is None:
            return False, f"{tool} is not installed"
    try:
        root = sendmail_tree()
    except (SendmailError, OSError, subprocess.TimeoutExpired) as error:
        return False, f"cannot unpack Sendmail: {error}"
    proc = _run(["ldd", str(root / BINARY)])
    if "not found" in proc.stdout:
        missing = [line.split()[0] for line in proc.stdout.splitlines() if "not found" in line]
        return False, f"Sendmail's libraries are missing: {', '.join(missing)} (libwrap0, see .ci/system-packages)"
    return True, ""


#: Instances started and not yet stopped, stopped at interpreter exit as a last resort.
_RUNNING: "weakref.WeakSet[SendmailInstance]" = weakref.WeakSet()


@atexit.register
def _stop_all() -> None:
    for instance in list(_RUNNING):
        try:
            instance.stop()
        except Exception:  # noqa: BLE001 - best effort at exit
            pass


class SendmailInstance:
    """A private Sendmail daemon inside ``directory``.

    Parameters:
      directory: where its configuration (``sendmail.mc``, ``sendmail.cf``), queue (``mqueue``),
        pid file, hosts file and output go (created if missing).
      milters: the milter sockets in libmilter's syntax (``inet:PORT@127.0.0.1``), in the order
        Sendmail calls them (``INPUT_MAIL_FILTER``, ``confINPUT_MAIL_FILTERS``); ``F=T``: an
        unreachable milter tempfails, like Postfix's harness default.
      relay_port: every mail goes to ``[127.0.0.1]:relay_port``.
      milter_timeouts: ``(connect, send, read, end)`` seconds (Sendmail's ``T=C:..;S:..;R:..;E:..``).
      milter_macros: ``{"CONNECT": "j, _, {v}", ...}``: replaces Sendmail's default macro list
        for that stage (confMILTER_MACROS_<stage>).
      extra_mc: more m4 lines appended before ``MAILER(smtp)``.
      debug: Sendmail debug flags (``-d`` arguments), printed to :meth:`output`.
    """

    def __init__(self, directory: str | os.PathLike[str], milters: Iterable[str] | str, relay_port: int, *,
                 milter_timeouts: tuple[float, float, float, float] = (5, 10, 10, 20),
                 milter_macros: dict[str, str] | None = None, extra_mc: str = "",
                 debug: Sequence[str] = (), smtp_port: int | None = None) -> None:
        self.root = Path(directory).resolve()
        if isinstance(milters, str):
            milters = [milters] if milters.strip() else []
        self.milters = [spec.strip() for spec in milters if spec.strip()]
        self.relay_port = int(relay_port)
        self.milter_timeouts = milter_timeouts
        self.milter_macros = dict(milter_macros or {})
        self.extra_mc = extra_mc
        self.debug = tuple(debug)
        self.host = "127.0.0.1"
        self.port = int(smtp_port) if smtp_port else free_port(self.host)
        self.queue_dir = self.root / "mqueue"
        self.cf_path = self.root / "sendmail.cf"
        self.pid_path = self.root / "sendmail.pid"
        self.output_path = self.root / "sendmail.out"
        self.process: subprocess.Popen | None = None
        self.started = False
        self.start_seconds: float | None = None
        self._output = None

    # -- configuration ---------------------------------------------------------------------

    def milter_lines(self) -> list[str]:
        """One ``INPUT_MAIL_FILTER`` per milter, named ``m1``, ``m2``, ... in order."""
        connect, send, read, end = self.milter_timeouts
        timeouts = f"C:{connect:g}s;S:{send:g}s;R:{read:g}s;E:{end:g}s"
        return [f"INPUT_MAIL_FILTER(`m{number}', `S={spec}, F=T, T={timeouts}')dnl"
                for number, spec in enumerate(self.milters, 1)]

    def mc(self) -> str:
        """The m4 source of this instance's sendmail.cf."""
        root = self.root
        lines = [
            "divert(-1)",
            "# sendmail.mc written by tests/interop/sendmail_harness.py",
            "divert(0)dnl",
            "VERSIONID(`milterman interop test')dnl",
            "OSTYPE(`linux')dnl",
            f"define(`confDOMAIN_NAME', `{MYHOSTNAME}')dnl",
            f"define(`QUEUE_DIR', `{self.queue_dir}')dnl",
            f"define(`STATUS_FILE', `{root / 'statistics'}')dnl",
            f"define(`confPID_FILE', `{self.pid_path}')dnl",
            "define(`ALIAS_FILE', `')dnl",
            "define(`HELP_FILE', `')dnl",
            "define(`confDONT_PROBE_INTERFACES', `True')dnl",
            "define(`confDONT_BLAME_SENDMAIL', `GroupWritableDirPathSafe')dnl",
            "define(`confTO_IDENT', `0s')dnl",
            "define(`confTO_CONNECT', `10s')dnl",
            "define(`confTO_INITIAL', `10s')dnl",
            "define(`confQUEUE_LA', `100')dnl",
            "define(`confREFUSE_LA', `200')dnl",
            "define(`confMIN_FREE_BLOCKS', `0')dnl",
            "define(`confPRIVACY_FLAGS', `authwarnings,noexpn,novrfy')dnl",
            "define(`SMART_HOST', `relay:[127.0.0.1]')dnl",
            f"define(`RELAY_MAILER_ARGS', `TCP $h {self.relay_port}')dnl",
            "FEATURE(`nocanonify')dnl",
            "FEATURE(`accept_unresolvable_domains')dnl",
            "FEATURE(`no_default_msa')dnl",
            f"DAEMON_OPTIONS(`Port={self.port}, Addr=127.0.0.1, Name=MTA')dnl",
        ]
        for stage, names in self.milter_macros.items():
            lines.append(f"define(`confMILTER_MACROS_{stage.upper()}', `{names}')dnl")
        lines += self.milter_lines()
        if self.extra_mc:
            lines.append(self.extra_mc.rstrip("\n"))
        lines.append("MAILER(`smtp')dnl")
        return "\n".join(lines) + "\n"

    def write_config(self) -> None:
        """Write sendmail.mc, build sendmail.cf with m4, make the queue and the name files."""
        tree = sendmail_tree()
        self.root.mkdir(parents=True, exist_ok=True)
        self.queue_dir.mkdir(mode=0o700, exist_ok=True)
        (self.root / "statistics").touch()
        (self.root / "sendmail.mc").write_text(self.mc())
        (self.root / "hosts").write_text(f"127.0.0.1\t{MYHOSTNAME} mta localhost\n::1\tlocalhost\n")
        (self.root / "resolv.conf").write_text("nameserver 127.0.0.1\noptions timeout:1 attempts:1\n")
        cf_dir = tree / CF_DIR
        proc = _run(["m4", f"-D_CF_DIR_={cf_dir}/", str(cf_dir / "m4" / "cf.m4"), str(self.root / "sendmail.mc")])
        if proc.returncode != 0 or proc.stderr.strip():
            raise SendmailError(f"m4 could not build sendmail.cf:\n{proc.stderr}")
        self.cf_path.write_text(proc.stdout)
        os.chmod(self.cf_path, 0o644)

    # -- running ---------------------------------------------------------------------------

    def command(self) -> list[str]:
        """The daemon's command line: a private mount/UTS namespace, then ``sendmail -bD``."""
        binary = sendmail_tree() / BINARY
        debug = "".join(f" -d{shlex.quote(flag)}" for flag in self.debug)
        script = (f"mount --bind {shlex.quote(str(self.root / 'hosts'))} /etc/hosts && "
                  f"mount --bind {shlex.quote(str(self.root / 'resolv.conf'))} /etc/resolv.conf && "
                  f"hostname {MYHOSTNAME} && "
                  f"exec {shlex.quote(str(binary))} -C {shlex.quote(str(self.cf_path))} -bD -q5s{debug}")
        return ["unshare", "--mount", "--uts", "--propagation", "private", "sh", "-c", script]

    def start(self, timeout: float = 30.0) -> "SendmailInstance":
        """Start the daemon and wait until it listens for SMTP (without connecting to it:
        a probe would reach the milters under test)."""
        if self.started:
            return self
        began = time.monotonic()
        self.write_config()
        self._output = open(self.output_path, "ab")
        self.process = subprocess.Popen(self.command(), cwd=str(self.root), stdin=subprocess.DEVNULL,
                                        stdout=self._output, stderr=subprocess.STDOUT, start_new_session=True)
        self.started = True
        _RUNNING.add(self)
        deadline = began + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                output = self.output()
                self.stop()
                raise SendmailError(f"sendmail exited with status {self.process.returncode}:\n{output[-4000:]}")
            if _listening(self.host, self.port):
                self.start_seconds = time.monotonic() - began
                return self
            time.sleep(0.05)
        output = self.output()
        self.stop()
        raise SendmailError(f"sendmail did not listen on 127.0.0.1:{self.port} within {timeout:g}s:\n{output[-4000:]}")

    def processes(self) -> list[int]:
        """The daemon and every process of its session (connection and delivery children)."""
        if self.process is None:
            return []
        leader = self.process.pid
        pids = []
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                pid = int(entry)
                if (pid == leader or _read_proc_session(pid) == leader) and _pid_alive(pid):
                    pids.append(pid)
        return sorted(pids)

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the daemon and its children (SIGTERM, then SIGKILL); safe to call twice."""
        if not self.started or self.process is None:
            return
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for pid in self.processes():
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
            deadline = time.monotonic() + timeout
            while self.processes() and time.monotonic() < deadline:
                if self.process.poll() is None:
                    time.sleep(0.05)
                else:
                    time.sleep(0.02)
            if not self.processes():
                break
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
        if self._output is not None:
            self._output.close()
            self._output = None
        self.started = False
        _RUNNING.discard(self)

    def is_running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def __enter__(self) -> "SendmailInstance":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "running" if self.is_running() else "stopped"
        return f"<SendmailInstance {self.root} smtp=127.0.0.1:{self.port} milters={self.milters!r} {state}>"

    # -- output and queue ------------------------------------------------------------------

    def output(self) -> str:
        """What the daemon printed (errors at start, debug output)."""
        try:
            return self.output_path.read_text(errors="replace")
        except OSError:
            return ""

    def queue_files(self) -> list[str]:
        """The names of the control files (``qf*``) still in the queue."""
        return sorted(path.name for path in self.queue_dir.glob("qf*"))

    # -- sending: the same SMTP client as the Postfix harness (replies are data, not errors)

    send = PostfixInstance.send  # uses only self.host and self.port


__all__ += ["SendResult"]
