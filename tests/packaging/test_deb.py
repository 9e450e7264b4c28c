"""The Debian package, tested as a mail administrator uses it (issue: installed, not checked out).

One test, in order:

1. ``make deb`` in a copy of the checkout's files (dpkg-buildpackage writes nothing here);
2. ``apt-get install ./milterman_*.deb`` (Debian's python3-* modules come from the archive);
3. ``systemd-analyze verify`` on the INSTALLED unit;
4. the unit's ``ExecStart`` run the way systemd documents it (no systemd runs here):
   ``User=``/``Group=``, ``RuntimeDirectory=`` with its mode and owner, ``Environment=``,
   ``WorkingDirectory=/``, a new session, and ``NOTIFY_SOCKET`` (a datagram socket this test
   reads: ``READY=1`` must arrive, as ``Type=notify`` needs);
5. a child milter from the installed code (``python3 -m milterman.tools.example_milters
   header``, with ``/usr/share/milterman`` on the path) registered through the conffile's
   ``conf.d/``; a Postfix instance with Debian's STOCK ``master.cf`` (smtpd chrooted in the
   queue directory, prepared by Debian's own ``configure-instance.sh``) and the ``postconf -e``
   lines of ``README.Debian``; one mail with swaks arrives with the child's header; with the
   metrics endpoint switched on there, the packaged Munin plugins (``/usr/share/munin/plugins``)
   run by ``munin-run`` (as Munin's user nobody) count that session;
6. SIGTERM: exit status 0, the stop is logged, the port is closed;
7. ``apt-get purge``; the ``milter-manager`` user stays (Debian policy).

Needs root, Postfix, swaks and Debian's packaging tools: skipped with the reason locally,
failed under ``CI=true`` (``require_real``).
"""

from __future__ import annotations

import grp
import os
import pwd
import re
import shlex
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests" / "interop"))

from postfix_harness import PostfixInstance, free_port, postfix_usable, require_real  # noqa: E402
from smtp_sink import SmtpSink  # noqa: E402

pytestmark = pytest.mark.interop

PACKAGE = "milterman"
UNIT = Path("/lib/systemd/system/milter-manager.service")
CONFFILE = Path("/etc/milter-manager/milter-manager.toml")
TEST_INCLUDE = Path("/etc/milter-manager/conf.d/zz-packaging-test.toml")
README_DEBIAN = REPO / "debian" / "README.Debian"
APP_DIR = "/usr/share/milterman"
#: the PATH systemd gives system services
SYSTEMD_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin"
TOOLS = ("dpkg-buildpackage", "dh", "dh_python3", "pandoc", "apt-get", "swaks", "systemd-analyze", "man",
         "logrotate", "munin-run")
MUNIN_PLUGINS = Path("/usr/share/munin/plugins")


# ------------------------------------------------------------------------------- helpers


def run(argv: list[str], *, timeout: float = 300, check: bool = True, **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL,
                            **kwargs)
    if check and result.returncode != 0:
        raise AssertionError(f"{shlex.join(argv)} exited {result.returncode}:\n{result.stdout}\n{result.stderr}")
    return result


def apt(*args: str, timeout: float = 600, cwd: str | Path = "/") -> subprocess.CompletedProcess:
    """apt-get, serialised with other users of apt on this machine (flock), never interactive."""
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    lock = ["flock", "/tmp/apt.lock"] if shutil.which("flock") else []
    return run([*lock, "apt-get", "-y", "-q", "-o", "Dpkg::Use-Pty=0", *args], env=env, timeout=timeout,
               check=False, cwd=cwd)


def installed(package: str) -> bool:
    result = run(["dpkg-query", "-W", "-f=${db:Status-Status}", package], check=False)
    return result.stdout.strip() == "installed"


def copy_checkout(destination: Path) -> None:
    """The files git tracks (and new ones not ignored), as a fresh clone would have them."""
    listing = run(["git", "-C", str(REPO), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                  check=False)
    names = [name for name in listing.stdout.split("\0") if name] if listing.returncode == 0 else []
    if not names:  # not a git checkout: everything but build products
        shutil.copytree(REPO, destination, dirs_exist_ok=True, ignore=shutil.ignore_patterns(
            ".git", ".venv", "build", "dist", "*.deb", "__pycache__", ".pytest_cache", ".hypothesis"))
        return
    for name in names:
        source = REPO / name
        if source.is_file():
            target = destination / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)


def parse_unit(text: str) -> dict[str, dict[str, list[str]]]:
    """A unit file as systemd reads it: sections, keys with every value, continuation lines."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    logical: list[str] = []
    lines: list[str] = []
    for raw in text.splitlines():
        if logical or not raw.lstrip().startswith(("#", ";")):
            if raw.endswith("\\"):
                logical.append(raw[:-1])
                continue
            lines.append(" ".join([*logical, raw]))
            logical = []
    for line in lines:
        line = line.strip()
        if not line:
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        key, _, value = line.partition("=")
        assert current is not None, f"a key outside a section: {line!r}"
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def environment_of(service: dict[str, list[str]]) -> dict[str, str]:
    """``Environment=`` assignments (quoted words allowed); a later one wins."""
    env: dict[str, str] = {}
    for value in service.get("Environment", []):
        for word in shlex.split(value):
            name, _, setting = word.partition("=")
            env[name] = setting
    return env


def exec_argv(line: str, env: dict[str, str]) -> list[str]:
    """An ``Exec*=`` line → argv: the special prefixes dropped, ``$VAR``/``${VAR}`` replaced."""
    line = line.lstrip("@-:+!")
    words = []
    for word in shlex.split(line):
        word = re.sub(r"\$\{(\w+)\}", lambda match: env.get(match.group(1), ""), word)
        if re.fullmatch(r"\$(\w+)", word):
            word = env.get(word[1:], "")
        words.append(word)
    return words


def read_postconf_lines(readme: str) -> list[list[str]]:
    """The ``postconf -e '...'`` commands of README.Debian's Postfix section, in order."""
    section = readme.split("\nPostfix\n", 1)[1].split("\nA unix socket", 1)[0]
    return [shlex.split(line.strip()) for line in section.splitlines() if line.strip().startswith("postconf -e")]


def wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(0.05)


def accepts(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


class StockChrootPostfix(PostfixInstance):
    """A private Postfix whose master.cf is Debian's stock one (smtpd chrooted), whose main.cf
    gets README.Debian's ``postconf -e`` lines, and whose queue directory (the chroot) is
    prepared by Debian's own ``/usr/lib/postfix/configure-instance.sh``."""

    def __init__(self, *args, postconf_lines: list[list[str]], **kwargs) -> None:
        self.postconf_lines = postconf_lines
        super().__init__(*args, **kwargs)

    def master_cf(self) -> str:
        stock = Path("/usr/share/postfix/master.cf.dist").read_text()
        # only the SMTP service's address changes (a free port on 127.0.0.1 instead of :25)
        lines, replaced = [], 0
        for line in stock.splitlines():
            fields = line.split()
            if fields[:2] == ["smtp", "inet"]:
                assert fields[4] in ("y", "-"), f"smtpd is not chrooted in Debian's master.cf: {line!r}"
                line = line.replace("smtp", f"127.0.0.1:{self.port}", 1)
                replaced += 1
            lines.append(line)
        assert replaced == 1, "Debian's master.cf has no 'smtp inet' service"
        return "\n".join(lines) + "\n"

    def write_config(self) -> None:
        super().write_config()
        for argv in self.postconf_lines:
            assert argv[:2] == ["postconf", "-e"], argv
            run(["/usr/sbin/postconf", "-c", str(self.config_dir), *argv[1:]])
        env = {**os.environ, "MAIL_CONFIG": str(self.config_dir)}
        run(["/bin/sh", "/usr/lib/postfix/configure-instance.sh", "-"], env=env, cwd="/")


class UnitProcess:
    """The unit's ExecStart, started as systemd starts a Type=notify service."""

    def __init__(self, unit: dict[str, dict[str, list[str]]], workdir: Path) -> None:
        service = unit["Service"]
        self.service = service
        self.env = {"PATH": SYSTEMD_PATH, "LANG": "C.UTF-8", **environment_of(service)}
        user = service.get("User", [None])[-1]
        group = service.get("Group", [None])[-1]
        self.user, self.group, self.extra_groups = user, group, None
        if user is not None:
            entry = pwd.getpwnam(user)
            self.group = group or grp.getgrgid(entry.pw_gid).gr_name
            self.extra_groups = os.getgrouplist(user, entry.pw_gid)
            self.env.update(USER=user, LOGNAME=user, HOME=entry.pw_dir, SHELL=entry.pw_shell)
        # RuntimeDirectory=: /run/NAME, mode RuntimeDirectoryMode= (0755), owned by User=/Group=
        self.runtime_dirs = []
        mode = int(service.get("RuntimeDirectoryMode", ["0755"])[-1], 8)
        for value in service.get("RuntimeDirectory", []):
            for name in value.split():
                path = Path("/run") / name
                path.mkdir(parents=True, exist_ok=True)
                os.chmod(path, mode)
                os.chown(path, pwd.getpwnam(self.user).pw_uid if self.user else 0,
                         grp.getgrnam(self.group).gr_gid if self.group else 0)
                self.runtime_dirs.append(path)
        if self.runtime_dirs:
            self.env["RUNTIME_DIRECTORY"] = ":".join(str(path) for path in self.runtime_dirs)
        # NOTIFY_SOCKET: a datagram socket anyone may send to, as systemd's own
        self.notify_path = workdir / "notify"
        self.notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.notify.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)  # the sender's pid, as systemd reads it
        self.notify.bind(str(self.notify_path))
        self.notify_access = service.get("NotifyAccess", ["none"])[-1]
        self.ignored: list[tuple[int, str]] = []
        os.chmod(self.notify_path, 0o777)
        self.env["NOTIFY_SOCKET"] = str(self.notify_path)
        (self.argv,) = [exec_argv(line, self.env) for line in service["ExecStart"] if line]
        self.output_path = workdir / "journal"
        self.notifications: list[str] = []
        with open(self.output_path, "wb") as output:
            self.proc = subprocess.Popen(self.argv, env=self.env, cwd=service.get("WorkingDirectory", ["/"])[-1],
                                         stdin=subprocess.DEVNULL, stdout=output, stderr=subprocess.STDOUT,
                                         start_new_session=True, user=self.user, group=self.group,
                                         extra_groups=self.extra_groups, umask=0o022)

    def wait_notification(self, wanted: str, timeout: float) -> str:
        """Read sd_notify messages until one has the line ``wanted``; return that message."""
        deadline = time.monotonic() + timeout
        while True:
            for message in self.notifications:
                if wanted in message.splitlines():
                    return message
            exited = self.proc.poll() is not None  # what it sent before exiting is still queued
            if time.monotonic() >= deadline:
                break
            self.notify.settimeout(0 if exited else 0.2)
            try:
                self._receive()
            except (TimeoutError, BlockingIOError):
                if exited:
                    break
        raise AssertionError(f"no {wanted} from {self.argv} (exit status {self.proc.poll()}); got "
                             f"{self.notifications} (ignored: {self.ignored}); output:\n{self.output_path.read_text()}")

    def _receive(self) -> None:
        """One datagram; with NotifyAccess=main, systemd ignores what other processes send."""
        data, ancillary, _, _ = self.notify.recvmsg(4096, socket.CMSG_SPACE(12))
        sender = None
        for level, kind, payload in ancillary:
            if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                sender = struct.unpack("3i", payload[:12])[0]
        message = data.decode()
        if self.notify_access == "main" and sender != self.proc.pid:
            self.ignored.append((sender, message))
        else:
            self.notifications.append(message)

    def stop(self, timeout: float) -> int:
        os.kill(self.proc.pid, signal.SIGTERM)
        return self.proc.wait(timeout)

    def close(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        self.notify.close()
        for path in self.runtime_dirs:  # systemd removes RuntimeDirectory= at stop
            shutil.rmtree(path, ignore_errors=True)


# ------------------------------------------------------------------------------- fixtures


@pytest.fixture
def workdir() -> Iterator[Path]:
    """Outside pytest's 0700 tree: the service user and Postfix's daemons must reach it."""
    path = Path(tempfile.mkdtemp(prefix="milterman-deb-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def real_environment() -> None:
    require_real("root", os.geteuid() == 0, "building and installing a Debian package needs root")
    usable, reason = postfix_usable()
    require_real("postfix", usable, reason)
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    require_real("Debian's packaging tools", not missing, f"missing {', '.join(missing)} (.ci/system-packages)")
    require_real("Debian's master.cf", Path("/usr/share/postfix/master.cf.dist").exists(),
                 "/usr/share/postfix/master.cf.dist is missing")


# ------------------------------------------------------------------------------- the test


def test_debian_package_serves_postfix_as_installed(real_environment, workdir):
    began = time.monotonic()
    # 1. make deb, from a copy of the checkout
    source = workdir / "source"
    copy_checkout(source)
    build = run(["make", "deb", f"DEB_PIP={sys.executable} -m pip"], cwd=source, timeout=600, check=False)
    assert build.returncode == 0, f"make deb failed:\n{build.stdout}\n{build.stderr}"
    (deb,) = sorted(source.glob(f"{PACKAGE}_*_all.deb"))
    assert not (REPO / "debian" / PACKAGE).exists(), "the build wrote into the checkout"

    # 2. a fresh install
    if installed(PACKAGE):
        apt("purge", PACKAGE)
    result = apt("install", "--no-install-recommends", f"./{deb.name}", timeout=900, cwd=source)
    if result.returncode != 0:  # stale package lists: once more after an update
        apt("update", "-qq")
        result = apt("install", "--no-install-recommends", f"./{deb.name}", timeout=900, cwd=source)
    assert result.returncode == 0, f"apt-get install failed:\n{result.stdout}\n{result.stderr}"
    child = unit_process = None
    try:
        assert installed(PACKAGE)
        pwd.getpwnam("milter-manager"), grp.getgrnam("milter-manager")
        for group in ("opendkim", "opendmarc", "dkimpy-milter", "clamav"):  # their sockets' directories
            if _group_exists(group):
                assert "milter-manager" in grp.getgrnam(group).gr_mem, f"milter-manager is not in {group}"
        for command in ("/usr/sbin/milter-manager", "/usr/bin/milter-test-server", "/usr/bin/milter-test-client",
                        "/usr/bin/milter-performance-check", "/usr/bin/milter-manager-log-analyzer",
                        "/usr/bin/milter-report-statistics", "/usr/bin/milter-manager-convert-config",
                        "/usr/bin/milter-run"):
            version = run([command, "--version"], env={"PATH": SYSTEMD_PATH}, cwd="/")
            assert deb.name.split("_")[1] in version.stdout, (command, version.stdout)
        assert run(["man", "-w", "8", "milter-manager"]).stdout.strip()
        assert run(["man", "-w", "1", "milter-manager-convert-config"]).stdout.strip()
        assert run(["man", "-w", "1", "milter-run"]).stdout.strip()

        # 3. systemd-analyze verify accepts the installed unit
        verify = run(["systemd-analyze", "verify", str(UNIT)], check=False)
        assert verify.returncode == 0 and verify.stdout + verify.stderr == "", verify
        unit = parse_unit(UNIT.read_text())
        assert unit["Service"]["Type"] == ["notify"]
        assert len(unit["Service"]["ExecReload"]) == 2 and "--check-config" in unit["Service"]["ExecReload"][0]

        # 5a. a child milter from the installed code, registered through conf.d/
        configuration = tomllib.loads(CONFFILE.read_text())
        spec = configuration["manager"]["connection_spec"]
        port = int(re.fullmatch(r"inet:(\d+)@\[127\.0\.0\.1\]", spec).group(1))
        assert not accepts("127.0.0.1", port), f"something already listens on {spec}"
        log_path = Path(configuration["log"]["path"])
        child_port = free_port()
        child = subprocess.Popen(["/usr/bin/python3", "-m", "milterman.tools.example_milters", "header",
                                  f"inet:{child_port}@[127.0.0.1]", "packaged-child"],
                                 env={"PATH": SYSTEMD_PATH, "PYTHONPATH": APP_DIR}, cwd="/",
                                 stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                 start_new_session=True)
        wait_for(lambda: accepts("127.0.0.1", child_port), 20, "the child milter")
        metrics_port = free_port()
        TEST_INCLUDE.write_text(f'[[milter]]\nname = "packaged-child"\n'
                                f'connection_spec = "inet:{child_port}@[127.0.0.1]"\n'
                                f'[controller]\nmetrics_spec = "inet:{metrics_port}@[127.0.0.1]"\n')
        check = run(exec_argv(unit["Service"]["ExecReload"][0], {}), env={"PATH": SYSTEMD_PATH}, cwd="/")
        assert "configuration OK" in check.stdout

        # 4. ExecStart as systemd runs it
        unit_process = UnitProcess(unit, workdir)
        ready = unit_process.wait_notification("READY=1", timeout=30)
        assert f"MAINPID={unit_process.proc.pid}" in ready.splitlines()
        assert accepts("127.0.0.1", port)
        workers = wait_for(lambda: [p for p in _session_processes(unit_process.proc.pid)
                                    if _uid(p) == pwd.getpwnam("milter-manager").pw_uid], 10,
                           "a process running as milter-manager")
        assert workers

        # 5b. stock chrooted Postfix with README.Debian's lines, one mail through the manager
        postconf_lines = read_postconf_lines(README_DEBIAN.read_text())
        assert any("smtpd_milters" in " ".join(line) for line in postconf_lines), postconf_lines
        postfix_dir = workdir / "postfix"
        with SmtpSink() as sink, StockChrootPostfix(postfix_dir, "", sink.port,
                                                    postconf_lines=postconf_lines) as mta:
            assert mta.postconf("smtpd_milters")["smtpd_milters"] == f"inet:127.0.0.1:{port}"
            chroot = run(["/usr/sbin/postconf", "-c", str(mta.config_dir), "-M", "smtp/inet"]).stdout
            assert f"127.0.0.1:{mta.port}" not in chroot  # the listen address is ours, the row Debian's
            smtpd_row = run(["/usr/sbin/postconf", "-c", str(mta.config_dir), "-M"]).stdout.splitlines()[0].split()
            assert smtpd_row[1] == "inet" and smtpd_row[4] == "y", smtpd_row
            assert (mta.queue_dir / "etc" / "services").exists(), "configure-instance.sh prepared the chroot"
            sent = mta.swaks_send("sender@example.org", ["receiver@example.net"],
                                  b"From: sender@example.org\r\nTo: receiver@example.net\r\n"
                                  b"Subject: through the package\r\n\r\nhello\r\n")
            assert sent.returncode == 0, sent.transcript
            (message,) = sink.wait_for(1, timeout=60)
            assert message.header("X-Milterman-Example") == "checked by packaged-child", message.headers
            smtpd = [pid for pid in mta.processes() if Path(f"/proc/{pid}/comm").read_text().strip() == "smtpd"]
            assert smtpd and all(os.readlink(f"/proc/{pid}/root") == str(mta.queue_dir) for pid in smtpd), \
                "smtpd runs chrooted in the queue directory"
        log = log_path.read_text()
        assert "[session][end]" in log, log
        assert "Permission denied" not in log, log  # e.g. a detected opendkim's socket directory

        # 5c. the packaged Munin plugins read the metrics endpoint, run by munin-run as Munin's user nobody
        plugin_conf = workdir / "munin-plugin-conf.d"
        plugin_conf.mkdir()
        (plugin_conf / "milterman").write_text(f"[milter_manager_*]\nenv.url http://127.0.0.1:{metrics_port}/metrics\n")
        for plugin in ("milter_manager_sessions", "milter_manager_children", "milter_manager_memory"):
            assert os.access(MUNIN_PLUGINS / plugin, os.X_OK), plugin
            for argument in ("config", None):
                output = run(["munin-run", "--servicedir", str(MUNIN_PLUGINS), "--sconfdir", str(plugin_conf), plugin,
                              *([argument] if argument else [])], cwd="/").stdout
                assert ("graph_title" in output) if argument else (".value " in output), (plugin, output)
        wait_for(lambda: "packaged_child_sessions.value 1" in run(
            ["munin-run", "--servicedir", str(MUNIN_PLUGINS), "--sconfdir", str(plugin_conf),
             "milter_manager_children"], cwd="/").stdout, 10, "the session in the children plugin")

        # ExecReload as systemd runs it (MAINPID set): the check, then SIGHUP
        reload_env = {"PATH": SYSTEMD_PATH, "MAINPID": str(unit_process.proc.pid)}
        for line in unit["Service"]["ExecReload"]:
            run(exec_argv(line, reload_env), env=reload_env, cwd="/")
        unit_process.wait_notification("RELOADING=1", timeout=20)
        unit_process.notifications.clear()
        unit_process.wait_notification("READY=1", timeout=20)
        wait_for(lambda: "[server][reload] configuration reloaded" in log_path.read_text(), 20, "the reload")
        # logrotate accepts the packaged rules (a dry run: no systemd here for its postrotate)
        rotate = run(["logrotate", "--debug", "/etc/logrotate.d/milterman"], check=False)
        assert rotate.returncode == 0 and "error" not in (rotate.stdout + rotate.stderr).lower(), rotate

        # 6. SIGTERM: exit 0, the stop logged, the port closed
        assert unit_process.stop(timeout=45) == 0, unit_process.output_path.read_text()
        unit_process.wait_notification("STOPPING=1", timeout=1)
        log = log_path.read_text()
        assert "[server][stop]" in log, log
        assert "[warning]" not in log.split("[server][listen]", 1)[1], log
        assert not accepts("127.0.0.1", port)
    finally:
        if unit_process is not None:
            unit_process.close()
        if child is not None:
            child.terminate()
            child.wait(10)
        TEST_INCLUDE.unlink(missing_ok=True)
        purge = apt("purge", PACKAGE)
    # 7. purge: the package and its conffiles go, the user stays
    assert purge.returncode == 0, purge.stdout + purge.stderr
    assert not installed(PACKAGE) and not CONFFILE.exists() and not Path("/var/log/milter-manager").exists()
    pwd.getpwnam("milter-manager")
    elapsed = time.monotonic() - began
    print(f"packaged test: {elapsed:.1f} s")
    assert elapsed < 240, f"the packaged test took {elapsed:.0f} s"


def _session_processes(leader: int) -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat[stat.rfind(")") + 2:].split()[3]) == leader:
                pids.append(int(entry))
    return pids


def _uid(pid: int) -> int | None:
    try:
        return os.stat(f"/proc/{pid}").st_uid
    except OSError:
        return None


def _group_exists(name: str) -> bool:
    try:
        grp.getgrnam(name)
    except KeyError:
        return False
    return True
