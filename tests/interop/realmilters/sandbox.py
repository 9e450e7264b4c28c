"""A private network namespace with a local DNS server, for the real-milter interop suite.

Why this shape (one namespace per test session, the test process joining it):

* A *holder* process, ``unshare --net --mount -- sh -c '...; exec cat'``, makes a new network
  namespace (only ``lo``, brought up, plus the documentation address ``192.0.2.10`` on it for the
  test's SMTP client) and a new mount namespace in which ``/etc/resolv.conf`` is a bind mount of a
  file saying ``nameserver 127.0.0.1``.  It then waits on its standard input; when the test
  process closes the pipe (or dies), the holder exits, and the namespaces go with their last
  process.  Nothing is mounted or changed outside.
* The test process's **main thread** joins the holder's *network* namespace with ``setns(2)``
  (:meth:`Sandbox.enter`) and goes back to its own at the end (:meth:`Sandbox.leave`).  Every
  socket the test opens and every process it starts from then on (Postfix, the manager, the SMTP
  sink, each milter) lives in the private network: nothing can leave the machine and any DNS
  query can only reach 127.0.0.1:53.  (A network namespace is per thread; threads started later
  inherit it.  A mount namespace cannot be joined by a threaded process, hence the next point.)
* Programs that resolve names (the SPF, DKIM and DMARC milters, rspamd, spamd, dkimverify) are
  started through ``nsenter --mount=/proc/HOLDER/ns/mnt --`` (:meth:`Sandbox.command`), so they
  read the overlaid ``resolv.conf``.  nsenter execs the program in place (no PID namespace), so the
  pid the test holds is the program's and stopping it is an ordinary signal.
* dnsmasq (Debian package dnsmasq-base) on 127.0.0.1:53 answers the test zones' TXT records (SPF,
  DKIM keys, DMARC policies) and A records, and NXDOMAIN for every other name; it never forwards.
  Its query log (``dns.log``) shows what the milters asked.

Standard library only; needs root (unshare, setns, port 53).
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import time
from collections.abc import Iterable, Mapping
from pathlib import Path

CLONE_NEWNET = 0x40000000
#: The address the test's SMTP client sends from (TEST-NET-1): not loopback, so the milters
#: treat the mail as coming from outside, as they would in production.
CLIENT_ADDRESS = "192.0.2.10"
DNSMASQ = "/usr/sbin/dnsmasq"
UNSHARE = "/usr/bin/unshare"
NSENTER = "/usr/bin/nsenter"

_libc = ctypes.CDLL(None, use_errno=True)


def _setns(fd: int, nstype: int) -> None:
    if _libc.setns(fd, nstype) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


def sandbox_usable() -> tuple[bool, str]:
    """Whether a namespace with dnsmasq can be made here, and if not, why."""
    if os.geteuid() != 0:
        return False, "the network namespace and port 53 need root"
    for program, package in ((UNSHARE, "util-linux"), (NSENTER, "util-linux"), (DNSMASQ, "dnsmasq-base"),
                             ("/usr/sbin/ip", "iproute2")):
        if not os.access(program, os.X_OK):
            return False, f"{program} is missing (Debian package {package}, see .ci/system-packages)"
    return True, ""


def _txt_strings(value: str) -> list[str]:
    """dnsmasq's --txt-record splits strings at commas and keeps quotes: ≤ 250-byte pieces."""
    if "," in value or '"' in value:
        raise ValueError(f"a TXT value for dnsmasq must not hold commas or quotes: {value!r}")
    return [value[i:i + 250] for i in range(0, len(value), 250)] or [""]


class Sandbox:
    """The namespace holder and dnsmasq.  ``Sandbox(directory, txt, hosts)`` then :meth:`start`.

    ``txt`` maps a DNS name to its TXT strings' concatenated value (each record one entry; a
    list gives several records); ``hosts`` maps a name to an IPv4 address.
    """

    def __init__(self, directory: Path, txt: Mapping[str, str | list[str]],
                 hosts: Mapping[str, str] | None = None) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.txt = dict(txt)
        self.hosts = dict(hosts or {})
        self.holder: subprocess.Popen | None = None
        self.dnsmasq: subprocess.Popen | None = None
        self.dns_log = self.directory / "dns.log"
        self._own_netns: int | None = None

    # -- life cycle --------------------------------------------------------------------------

    def start(self) -> "Sandbox":
        resolv = self.directory / "resolv.conf"
        resolv.write_text("nameserver 127.0.0.1\noptions timeout:2 attempts:1\n")
        os.chmod(self.directory, 0o755)
        script = (
            "set -e; ip link set lo up; "
            f"ip addr add {CLIENT_ADDRESS}/32 dev lo; "
            f"mount --bind {resolv} /etc/resolv.conf; "
            "echo ready; exec cat >/dev/null"
        )
        self.holder = subprocess.Popen([UNSHARE, "--net", "--mount", "--", "/bin/sh", "-c", script],
                                       stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        line = self.holder.stdout.readline() if self.holder.stdout else b""
        if line.strip() != b"ready":
            error = self.holder.stderr.read().decode(errors="replace") if self.holder.stderr else ""
            self.stop()
            raise RuntimeError(f"the namespace holder did not start: {line!r} {error}")
        self.enter()
        try:
            self._start_dnsmasq()
        except BaseException:
            self.stop()
            raise
        return self

    def enter(self) -> None:
        """Move the calling (main) thread into the private network namespace."""
        assert self.holder is not None
        self._own_netns = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
        target = os.open(f"/proc/{self.holder.pid}/ns/net", os.O_RDONLY)
        try:
            _setns(target, CLONE_NEWNET)
        finally:
            os.close(target)

    def leave(self) -> None:
        """Back to the network namespace the thread had before :meth:`enter`."""
        if self._own_netns is not None:
            try:
                _setns(self._own_netns, CLONE_NEWNET)
            finally:
                os.close(self._own_netns)
                self._own_netns = None

    def stop(self) -> None:
        if self.dnsmasq is not None and self.dnsmasq.poll() is None:
            self.dnsmasq.terminate()
            try:
                self.dnsmasq.wait(10)
            except subprocess.TimeoutExpired:
                self.dnsmasq.kill()
                self.dnsmasq.wait(5)
        self.leave()
        if self.holder is not None and self.holder.poll() is None:
            if self.holder.stdin:
                self.holder.stdin.close()
            try:
                self.holder.wait(10)
            except subprocess.TimeoutExpired:
                self.holder.kill()
                self.holder.wait(5)

    def __enter__(self) -> "Sandbox":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- inside ------------------------------------------------------------------------------

    def command(self, argv: Iterable[str]) -> list[str]:
        """``argv`` run in the holder's mount namespace (where resolv.conf says 127.0.0.1)."""
        assert self.holder is not None
        return [NSENTER, f"--mount=/proc/{self.holder.pid}/ns/mnt", "--", *argv]

    def in_namespace(self) -> bool:
        """True when the calling thread's network namespace is the sandbox's."""
        if self.holder is None or self.holder.poll() is not None:
            return False
        return os.readlink("/proc/thread-self/ns/net") == os.readlink(f"/proc/{self.holder.pid}/ns/net")

    def _start_dnsmasq(self) -> None:
        argv = [DNSMASQ, "--keep-in-foreground", "--no-resolv", "--no-hosts", "--no-poll",
                "--listen-address=127.0.0.1", "--bind-interfaces", "--port=53", "--pid-file",
                "--user=root", "--log-queries", f"--log-facility={self.dns_log}", "--address=/#/",
                "--cache-size=0"]
        for name, values in self.txt.items():
            for value in ([values] if isinstance(values, str) else values):
                argv.append("--txt-record=" + ",".join([name, *_txt_strings(value)]))
        for name, address in self.hosts.items():
            argv.append(f"--host-record={name},{address}")
        output = open(self.directory / "dnsmasq.out", "wb")
        self.dnsmasq = subprocess.Popen(argv, stdout=output, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        output.close()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.dnsmasq.poll() is not None:
                raise RuntimeError("dnsmasq exited: " + (self.directory / "dnsmasq.out").read_text(errors="replace"))
            if self.dns_log.exists() and "started" in self.dns_log.read_text(errors="replace"):
                return
            time.sleep(0.05)
        raise RuntimeError("dnsmasq did not start within 10 s")

    def resolve_txt(self, name: str) -> str:
        """``dig``-free check: a TXT look-up from inside, through the Debian python's dnspython
        if present, else an empty string (used by the suite's own sanity test)."""
        probe = subprocess.run(self.command(["/usr/bin/python3", "-c",
                                             "import dns.resolver,sys;"
                                             "print(''.join(b.decode() for r in dns.resolver.resolve(sys.argv[1],'TXT')"
                                             " for b in r.strings))", name]),
                               capture_output=True, text=True, timeout=30)
        return probe.stdout.strip()


def kill_group(process: subprocess.Popen, timeout: float = 10.0) -> None:
    """SIGTERM the process (started with ``start_new_session``) and its process group, wait,
    then SIGKILL what is left of the group."""
    if process.poll() is None:
        try:
            os.killpg(process.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    if process.poll() is None:
        process.wait(5)

