"""A private network namespace with its own name server, for tests that need DNS (nothing leaves the machine).

``NameSandbox(dir)`` starts ``unshare --net --mount``: only ``lo`` up, ``/etc/resolv.conf``
overlaid with ``nameserver 127.0.0.1`` (one try, ``timeout`` seconds), and dnsmasq on
127.0.0.1 that answers the ``records`` it is given (``name.test`` → 127.0.0.1), forwards
``slow.test`` to a socket that never answers (a name server that delays until the
resolver gives up) and answers NXDOMAIN for every other name, never forwarding.
``wrap(argv)`` runs a program inside it (``nsenter`` execs the program, so its pid is the
program's); ``close()`` stops the name servers. Unix sockets in the test's directory are
reachable from both sides.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

#: the name whose look-up waits until the resolver's timeout
SLOW_NAME = "slow.test"

_SCRIPT = """set -e
ip link set lo up
mount --bind "$DIR/resolv.conf" /etc/resolv.conf
"$PYTHON" -c 'import os, socket, time
silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
silent.bind(("127.0.0.1", 5353))
open(os.environ["DIR"] + "/silent.pid", "w").write(str(os.getpid()))
time.sleep(600)' &
exec dnsmasq --keep-in-foreground --no-resolv --no-hosts --listen-address=127.0.0.1 --bind-interfaces \\
  --address=/#/ --server=/slow.test/127.0.0.1#5353 --user=root --pid-file= --log-queries \\
  --log-facility="$DIR/dnsmasq.log" $RECORDS
"""


def missing_tools() -> list[str]:
    """The programs the sandbox needs that this machine lacks (and whether we may create namespaces)."""
    missing = [tool for tool in ("unshare", "nsenter", "ip", "dnsmasq") if shutil.which(tool) is None
               and not os.path.exists(f"/usr/sbin/{tool}")]
    if os.geteuid() != 0:
        missing.append("root (to create a network namespace)")
    return missing


class NameSandbox:
    def __init__(self, directory: Path, records: dict[str, str] | None = None, timeout: int = 2) -> None:
        self.dir = directory
        (directory / "resolv.conf").write_text(f"nameserver 127.0.0.1\noptions timeout:{timeout} attempts:1\n")
        record_options = " ".join(f"--host-record={name},{address}" for name, address in (records or {}).items())
        env = {**os.environ, "DIR": str(directory), "PYTHON": sys.executable, "RECORDS": record_options,
               "PATH": os.environ.get("PATH", "") + ":/usr/sbin:/sbin"}
        self.proc = subprocess.Popen(["unshare", "--net", "--mount", "sh", "-c", _SCRIPT], env=env, cwd="/",
                                     stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 10
        log = directory / "dnsmasq.log"
        while not (log.exists() and "started" in log.read_text() and (directory / "silent.pid").exists()):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                output = self.proc.stdout.read().decode() if self.proc.poll() is not None else ""
                self.close()
                raise AssertionError(f"the name sandbox did not start: {output}")
            time.sleep(0.05)

    def wrap(self, argv: list[str]) -> list[str]:
        """``argv`` run inside the sandbox's network and mount namespaces."""
        return ["nsenter", f"--target={self.proc.pid}", "--net", "--mount", "--", *argv]

    def queries(self) -> str:
        """dnsmasq's query log (what was asked)."""
        return (self.dir / "dnsmasq.log").read_text()

    def close(self) -> None:
        try:
            os.kill(int((self.dir / "silent.pid").read_text()), signal.SIGKILL)
        except (OSError, ValueError):
            pass
        if self.proc.poll() is None:
            self.proc.terminate()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        self.proc.stdout.close()
