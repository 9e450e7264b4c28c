"""Processes for the milter-manager interop tests: the manager itself, OpenDKIM, a stalling child.

Everything here is a real process started with bounded waits and stopped by its own pid:

* :class:`ManagerProcess` writes a ``milter-manager.toml`` and runs
  ``python -m milterman.cli.manager -c DIR --no-detect --n-workers N`` on a free loopback port.
* :class:`DkimKey` makes an RSA key with ``opendkim-genkey`` (Debian package opendkim-tools) and
  answers dkimpy's DNS look-ups from the generated ``.txt`` record (no DNS).
* :class:`OpenDkimProcess` runs ``opendkim -f -x CONF`` (Debian package opendkim) in signing mode
  on a loopback port with a configuration written here.
* :class:`StallingMilterProcess` runs ``milters/pymilter_stall_eom.py`` under Debian's python3
  (python3-milter): it never answers the end of message.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping
from pathlib import Path

from milter_processes import DEBIAN_PYTHON, RUN_DIR, free_port, stop
from postfix_harness import _listening

STALL_SCRIPT = Path(__file__).resolve().parent / "milters" / "pymilter_stall_eom.py"
OPENDKIM = "/usr/sbin/opendkim"
OPENDKIM_GENKEY = "/usr/sbin/opendkim-genkey"


def wait_listening_quietly(port: int, process: subprocess.Popen, timeout: float = 15.0,
                           describe: str = "process", output: Path | None = None) -> None:
    """Wait until something listens on 127.0.0.1:port, without connecting to it.

    (A probe connection would open a milter session the test did not make.)
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            text = output.read_text(errors="replace")[-4000:] if output and output.exists() else ""
            raise RuntimeError(f"{describe} exited early with status {process.returncode}\n{text}")
        if _listening("127.0.0.1", port):
            return
        time.sleep(0.05)
    text = output.read_text(errors="replace")[-4000:] if output and output.exists() else ""
    raise RuntimeError(f"{describe}: nothing listened on 127.0.0.1:{port} within {timeout} s\n{text}")


# -- TOML ----------------------------------------------------------------------------------------


def toml_value(value: object) -> str:
    """A TOML literal for a str, bool, int, float or list of them."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(item) for item in value) + "]"
    raise TypeError(f"no TOML for {value!r}")


def milter_table(settings: Mapping[str, object]) -> str:
    return "[[milter]]\n" + "".join(f"{key} = {toml_value(value)}\n" for key, value in settings.items())


# -- milter-manager ------------------------------------------------------------------------------


class ManagerProcess:
    """milter-manager (this repository's) on 127.0.0.1:<free port>, its output in ``manager.log``.

    ``milters`` are ``[[milter]]`` tables as dicts (name, connection_spec, fallback_status, ...),
    in processing order; ``extra_toml`` is appended to the file as written (conditions, rules).
    The log level is ``all`` so a failing test shows every packet decision of the manager.
    """

    def __init__(self, directory: Path, milters: Iterable[Mapping[str, object]], *, n_workers: int = 0,
                 extra_toml: str = "", log_level: str = "all", manager_fallback: str = "accept",
                 manager_toml: str = "", detect: bool = False) -> None:
        """``detect``: start without ``--no-detect``, as a site would (the configuration decides, D-9)."""
        self.port = free_port()
        self.n_workers = n_workers
        self.config_dir = Path(directory) / f"manager-{self.port}"
        self.config_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = self.config_dir / "manager.log"
        text = (
            "version = 1\n\n"
            "[log]\n"
            "use_syslog = false\n"
            f"level = {toml_value(log_level)}\n\n"
            "[manager]\n"
            f'connection_spec = "inet:{self.port}@[127.0.0.1]"\n'
            f"fallback_status = {toml_value(manager_fallback)}\n"
            "graceful_timeout = 5.0\n"
            + manager_toml + "\n"
            + "\n".join(milter_table(m) for m in milters)
            + "\n" + extra_toml
        )
        self.config_path = self.config_dir / "milter-manager.toml"
        self.config_path.write_text(text)
        self._output = open(self.log_path, "wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "milterman.cli.manager", "-c", str(self.config_dir),
             *([] if detect else ["--no-detect"]), "--n-workers", str(n_workers)],
            stdout=self._output, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=RUN_DIR)
        try:
            wait_listening_quietly(self.port, self.process, 20.0, "milter-manager", self.log_path)
        except BaseException:
            self.stop()
            raise

    @property
    def postfix_spec(self) -> str:
        return f"inet:127.0.0.1:{self.port}"

    def log(self) -> str:
        try:
            return self.log_path.read_bytes().decode("utf-8", "replace")
        except OSError:
            return ""

    def config(self) -> str:
        return self.config_path.read_text()

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self) -> int | None:
        """SIGTERM (sessions get ``graceful_timeout`` = 5 s), then SIGKILL after 15 s."""
        status = stop(self.process, signal.SIGTERM, timeout=15)
        self._output.close()
        return status

    def describe(self) -> str:
        """The configuration and the end of the log, for assertion messages."""
        return f"--- {self.config_path} ---\n{self.config()}\n--- manager log (end) ---\n{self.log()[-6000:]}"


# -- DKIM key and OpenDKIM -------------------------------------------------------------------------


def opendkim_usable() -> tuple[bool, str]:
    for program, package in ((OPENDKIM, "opendkim"), (OPENDKIM_GENKEY, "opendkim-tools")):
        if not os.access(program, os.X_OK):
            return False, f"{program} is missing (Debian package {package}, see .ci/system-packages)"
    return True, ""


class DkimKey:
    """An RSA key for ``selector._domainkey.domain`` made by opendkim-genkey in ``directory``."""

    def __init__(self, directory: Path, domain: str = "example.org", selector: str = "milterman") -> None:
        self.domain = domain
        self.selector = selector
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        subprocess.run([shutil.which("opendkim-genkey") or OPENDKIM_GENKEY, "-b", "2048",
                        "-d", domain, "-s", selector, "-D", str(self.directory)],
                       check=True, capture_output=True, timeout=60)
        self.private_path = self.directory / f"{selector}.private"
        self.txt_path = self.directory / f"{selector}.txt"

    @property
    def record_name(self) -> str:
        return f"{self.selector}._domainkey.{self.domain}"

    def txt_record(self) -> bytes:
        """The TXT record's value: the quoted strings of the zone file line, concatenated."""
        text = self.txt_path.read_text()
        # 'sel._domainkey IN TXT ( "v=DKIM1; ..." "p=..." )  ; ----- DKIM key ...': drop the comment
        zone_data = text[: text.rfind(")")] if ")" in text else text
        return "".join(re.findall(r'"([^"]*)"', zone_data)).encode("ascii")

    def dnsfunc(self, name: bytes | str, timeout: float = 5) -> bytes | None:
        """For ``dkim.verify(..., dnsfunc=key.dnsfunc)``: our record, and nothing else exists."""
        if isinstance(name, bytes):
            name = name.decode("ascii")
        if name.rstrip(".").lower() == self.record_name.lower():
            return self.txt_record()
        return None


class OpenDkimProcess:
    """``opendkim -f -x CONF``, signing for ``key.domain`` on 127.0.0.1:<free port>."""

    def __init__(self, directory: Path, key: DkimKey, *, canonicalization: str = "relaxed/simple") -> None:
        self.port = free_port()
        self.key = key
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.config_path = self.directory / f"opendkim-{self.port}.conf"
        self.output_path = self.directory / f"opendkim-{self.port}.out"
        # RequireSafeKeys no: the key lives under /tmp, which opendkim calls unsafe (mode 1777)
        self.config_path.write_text(
            "Mode s\n"
            f"Domain {key.domain}\n"
            f"Selector {key.selector}\n"
            f"KeyFile {key.private_path}\n"
            f"Socket inet:{self.port}@127.0.0.1\n"
            f"Canonicalization {canonicalization}\n"
            "SignatureAlgorithm rsa-sha256\n"
            "RequireSafeKeys no\n"
            "Syslog no\n"
            "LogWhy no\n"
            "UMask 002\n"
        )
        self._output = open(self.output_path, "wb")
        self.process = subprocess.Popen([OPENDKIM, "-f", "-x", str(self.config_path)], stdout=self._output,
                                        stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        try:
            wait_listening_quietly(self.port, self.process, 15.0, "opendkim", self.output_path)
        except BaseException:
            self.stop()
            raise

    @property
    def spec(self) -> str:
        return f"inet:{self.port}@[127.0.0.1]"

    def stop(self) -> int | None:
        status = stop(self.process, signal.SIGTERM, timeout=10)
        self._output.close()
        return status


# -- a child that never answers the end of message ----------------------------------------------------


class StallingMilterProcess:
    """milters/pymilter_stall_eom.py under Debian's python3: sleeps for good at end of message."""

    def __init__(self, directory: Path) -> None:
        self.port = free_port()
        self.log_path = Path(directory) / f"stall-{self.port}.log"
        env = dict(os.environ, PYMILTER_LOG=str(self.log_path))
        self.process = subprocess.Popen([DEBIAN_PYTHON, str(STALL_SCRIPT), f"inet:{self.port}@127.0.0.1"],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                        stdin=subprocess.DEVNULL, env=env)
        try:
            wait_listening_quietly(self.port, self.process, 15.0, "pymilter_stall_eom.py")
        except BaseException:
            self.stop()
            raise

    @property
    def spec(self) -> str:
        return f"inet:{self.port}@[127.0.0.1]"

    def log(self) -> str:
        try:
            return self.log_path.read_text()
        except OSError:
            return ""

    def wait_log(self, word: str, timeout: float = 30.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.log()
            if re.search(rf"^{re.escape(word)}\b", text, re.M):
                return text
            time.sleep(0.02)
        raise AssertionError(f"{word!r} not logged by the stalling milter within {timeout} s:\n{self.log()}")

    def kill(self) -> None:
        """SIGKILL, as when the OOM killer or an admin takes the child down mid-message."""
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(timeout=10)

    def stop(self) -> int | None:
        # a libmilter thread sleeps in the eom callback and libmilter takes seconds to leave on
        # SIGTERM: this test-only milter has nothing to flush, so it is killed
        return stop(self.process, signal.SIGKILL, timeout=5)
