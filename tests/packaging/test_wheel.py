"""The sdist and the wheel as a user gets them (issue 8).

The sdist is built from this checkout and the wheel from the unpacked sdist, so a file missing
from either fails here. The wheel goes into a fresh virtual environment made with Debian's
``/usr/bin/python3`` (its dependencies from the package index, matplotlib not among them), and
every console script of that environment's ``bin/`` does its real job once, started outside the
checkout: the two test tools talk to each other, the manager answers for one child, the
performance check sends mails to a loopback SMTP sink, the log analyzer counts a log (first
without matplotlib: one line says what to install; then with ``milterman[graphs]``: graphs),
and milter-report-statistics watches a running manager.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import tarfile
import time
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
INTEROP = str(REPO / "tests" / "interop")
if INTEROP not in sys.path:
    sys.path.append(INTEROP)

from postfix_harness import require_real  # noqa: E402
from smtp_sink import SmtpSink  # noqa: E402

DEBIAN_PYTHON = "/usr/bin/python3"
COMMANDS = ("milter-test-server", "milter-test-client", "milter-manager", "milter-performance-check",
            "milter-manager-log-analyzer", "milter-report-statistics", "milter-manager-convert-config", "milter-run")
WORKED_EXAMPLE = REPO / "tests" / "tools" / "data" / "log_analyzer" / "worked-example.log"
#: files of the checkout that are no part of the sdist: git's own, and Debian's packaging (built from the checkout)
NOT_IN_SDIST = re.compile(r"^(\.gitignore|\.gitattributes|debian/.*)$")
VERSION = re.search(r'^__version__ = "([^"]+)"', (REPO / "milterman" / "__init__.py").read_text(), re.M)[1]


def run(argv: list[str], *, timeout: float = 60, **options) -> subprocess.CompletedProcess:
    """A command outside the checkout (cwd /), its output as text."""
    options.setdefault("cwd", "/")
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, **options)


def checked(argv: list[str], **options) -> subprocess.CompletedProcess:
    completed = run(argv, **options)
    assert completed.returncode == 0, f"{argv}: {completed.returncode}\n{completed.stdout}\n{completed.stderr}"
    return completed


@dataclass
class Dists:
    sdist: Path
    wheel: Path


@dataclass
class Venv:
    root: Path
    dists: Dists

    def bin(self, name: str) -> str:
        return str(self.root / "bin" / name)


@pytest.fixture(scope="session")
def dists(tmp_path_factory: pytest.TempPathFactory) -> Dists:
    """The sdist of this checkout and the wheel built from the unpacked sdist (pip wheel --no-deps)."""
    probe = run([sys.executable, "-c", "import setuptools.build_meta, wheel"])
    require_real("setuptools and wheel in the test interpreter", probe.returncode == 0, probe.stderr.strip())
    out = tmp_path_factory.mktemp("dist")
    built = checked([sys.executable, "-c", "import sys, setuptools.build_meta as b; print(b.build_sdist(sys.argv[1]))",
                     str(out)], cwd=REPO, timeout=120)
    sdist = out / built.stdout.strip().splitlines()[-1]
    unpacked = tmp_path_factory.mktemp("sdist")
    with tarfile.open(sdist) as archive:
        archive.extractall(unpacked, filter="data")
    [source] = unpacked.iterdir()
    wheels = out / "wheels"
    checked([sys.executable, "-m", "pip", "wheel", "-q", "--disable-pip-version-check", "--no-deps",
             "--no-build-isolation", "-w", str(wheels), str(source)], timeout=180)
    [wheel] = wheels.glob("milterman-*.whl")
    return Dists(sdist, wheel)


@pytest.fixture(scope="session")
def venv(dists: Dists, tmp_path_factory: pytest.TempPathFactory) -> Venv:
    """A fresh virtual environment of Debian's python3 with the wheel installed (no extra)."""
    require_real("Debian's python3 with venv (python3-venv)", os.access(DEBIAN_PYTHON, os.X_OK)
                 and run([DEBIAN_PYTHON, "-c", "import ensurepip, venv"]).returncode == 0)
    root = tmp_path_factory.mktemp("venv") / "venv"
    checked([DEBIAN_PYTHON, "-m", "venv", str(root)], timeout=120)
    checked([str(root / "bin" / "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check",
             str(dists.wheel)], timeout=600)
    return Venv(root, dists)


def short_dir(tmp_path: Path) -> Path:
    """A directory short enough for unix socket paths (sun_path is 108 bytes)."""
    if len(str(tmp_path)) < 70:
        return tmp_path
    import tempfile

    return Path(tempfile.mkdtemp(prefix="mw-", dir="/tmp"))


def wait_for_socket(path: Path, process: subprocess.Popen, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert process.poll() is None, f"{process.args} exited with {process.returncode}"
        assert time.monotonic() < deadline, f"no {path} after {timeout} s"
        time.sleep(0.05)


def stop(process: subprocess.Popen) -> int:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
    try:
        return process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        return process.wait(timeout=10)


# ---------------------------------------------------------------------------------------- contents

def test_sdist_holds_every_file_of_the_checkout(dists):
    listed = run(["git", "-C", str(REPO), "ls-files", "-z"])
    require_real("git and a git checkout", listed.returncode == 0, listed.stderr.strip())
    tracked = {name for name in listed.stdout.split("\0") if name and not NOT_IN_SDIST.match(name)
               and (REPO / name).exists()}
    with tarfile.open(dists.sdist) as archive:
        members = {member.name.partition("/")[2] for member in archive.getmembers() if member.isfile()}
    assert tracked - members == set()
    assert {"PKG-INFO", "MANIFEST.in", "README.md", "setup.cfg", "pyproject.toml", "milterman/tools/__init__.py",
            "milterman/data/milter-manager.toml", "doc/milter-manager.8.md"} <= members


def test_wheel_holds_every_package_module_and_data_file(dists):
    with zipfile.ZipFile(dists.wheel) as wheel:
        names = set(wheel.namelist())
        entry_points = wheel.read(f"milterman-{VERSION}.dist-info/entry_points.txt").decode()
        metadata = wheel.read(f"milterman-{VERSION}.dist-info/METADATA").decode()
    package = REPO / "milterman"
    files = {str(path.relative_to(REPO)) for path in package.rglob("*")
             if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc"}
    assert files - names == set()
    for directory in {path.parent for path in package.rglob("*.py")}:
        assert (directory / "__init__.py").exists(), f"{directory} is not a package: find: would leave it out"
    assert {"milterman/tools/__init__.py", "milterman/tools/log_analyzer.py",
            "milterman/data/milter-manager.toml"} <= names
    licenses = {name.rpartition("/")[2] for name in names if name.startswith(f"milterman-{VERSION}.dist-info/")}
    assert {"GPL-3", "LGPL-3", "GFDL-1.3"} <= licenses
    for command in COMMANDS:
        assert re.search(rf"^{command} = milterman\.cli\.\w+:main$", entry_points, re.M), command
    requires = re.findall(r"^Requires-Dist: (.*)$", metadata, re.M)
    assert [line for line in requires if line.startswith("matplotlib")] == [
        'matplotlib>=3.5; extra == "graphs"', 'matplotlib>=3.5; extra == "test"']
    assert "Provides-Extra: graphs" in metadata.splitlines()


# ------------------------------------------------------------------------------- the installed commands

def test_the_installed_package_is_the_wheel_in_site_packages(venv):
    where = checked([venv.bin("python"), "-c", "import milterman, milterman.tools; print(milterman.__file__)"])
    path = Path(where.stdout.strip())
    assert path.is_relative_to(venv.root) and "site-packages" in path.parts
    assert path.parent.joinpath("data", "milter-manager.toml").is_file()


@pytest.mark.parametrize("command", COMMANDS)
def test_version_is_name_and_version(venv, command):
    completed = checked([venv.bin(command), "--version"])
    assert completed.stdout == f"{command} {VERSION}\n"


def test_test_server_and_test_client_talk(venv, tmp_path):
    directory = short_dir(tmp_path)
    socket = directory / "client.sock"
    with open(tmp_path / "client.out", "wb") as output:
        client = subprocess.Popen([venv.bin("milter-test-client"), "-s", f"unix:{socket}"], stdout=output,
                                  stderr=subprocess.STDOUT, cwd="/")
    try:
        wait_for_socket(socket, client)
        server = checked([venv.bin("milter-test-server"), "-s", f"unix:{socket}", "--envelope-from",
                          "wheel@example.net", "--output-message"])
    finally:
        assert stop(client) == 0
    assert server.stdout.startswith("status: pass\n")
    assert "MAIL FROM:<wheel@example.net>" in server.stdout and "La de da de da 1." in server.stdout
    seen = (tmp_path / "client.out").read_text()
    for line in ("envelope-from: <<wheel@example.net>>", "envelope-recipient: <<receiver@example.org>>",
                 "header: <From: <wheel@example.net>>", "end-of-message"):
        assert line in seen.splitlines(), seen


def test_milter_run_serves_a_class_beside_the_user(venv, tmp_path):
    directory = short_dir(tmp_path)
    (directory / "tagger.py").write_text("from milterman.milter import Milter, CONTINUE\n\n"
                                         "class Tagger(Milter):\n    def end_of_message(self):\n"
                                         "        self.add_header('X-Wheel', 'yes')\n        return CONTINUE\n")
    socket = directory / "run.sock"
    with open(tmp_path / "run.out", "wb") as output:
        served = subprocess.Popen([venv.bin("milter-run"), "tagger:Tagger", "-s", f"unix:{socket}"], stdout=output,
                                  stderr=subprocess.STDOUT, cwd=directory)
    try:
        wait_for_socket(socket, served)
        server = checked([venv.bin("milter-test-server"), "-s", f"unix:{socket}", "--output-message"])
    finally:
        assert stop(served) == 0
    assert server.stdout.startswith("status: pass\n") and "+ X-Wheel: yes" in server.stdout, server.stdout


@pytest.fixture
def manager(venv: Venv, tmp_path: Path) -> Iterator[tuple[subprocess.Popen, Path, Path]]:
    """milter-manager (--no-detect) with one child, a milter-test-client; yields the manager, its socket and
    the child's output."""
    directory = short_dir(tmp_path)
    (tmp_path / "milter-manager.toml").write_text(f"""version = 1
[manager]
connection_spec = "unix:{directory}/manager.sock"
[log]
use_syslog = false
[[milter]]
name = "only-child"
connection_spec = "unix:{directory}/child.sock"
""")
    child_output = tmp_path / "child.out"
    with open(child_output, "wb") as output:
        child = subprocess.Popen([venv.bin("milter-test-client"), "-s", f"unix:{directory}/child.sock"],
                                 stdout=output, stderr=subprocess.STDOUT, cwd="/")
    with open(tmp_path / "manager.out", "wb") as output:
        process = subprocess.Popen([venv.bin("milter-manager"), "-c", str(tmp_path), "--no-detect"], stdout=output,
                                   stderr=subprocess.STDOUT, cwd="/")
    try:
        wait_for_socket(directory / "child.sock", child)
        wait_for_socket(directory / "manager.sock", process)
        yield process, directory / "manager.sock", child_output
    finally:
        manager_status, child_status = stop(process), stop(child)
    assert (manager_status, child_status) == (0, 0), (tmp_path / "manager.out").read_text()


def test_manager_answers_for_its_child(venv, manager):
    process, socket, child_output = manager
    server = checked([venv.bin("milter-test-server"), "-s", f"unix:{socket}", "--envelope-from",
                      "through-the-manager@example.net"])
    assert server.stdout.startswith("status: pass\n"), server.stdout
    seen = child_output.read_text().splitlines()
    assert "envelope-from: <<through-the-manager@example.net>>" in seen
    assert "end-of-message" in seen


def test_report_statistics_watches_the_running_manager(venv, manager):
    process, socket, _ = manager
    report = checked([venv.bin("milter-report-statistics"), "milter-manager", "--filter", str(socket.parent),
                      "--count", "2", "--interval", "0.3"])
    lines = report.stdout.splitlines()
    assert lines[0].split() == ["Time", "PID", "VSS", "RSS", "%CPU", "CPU", "time", "#FD", "command"]
    rows = [line.split() for line in lines[1:] if re.match(r"^\d\d:\d\d:\d\d ", line)]
    assert len(rows) == 2 and {int(row[1]) for row in rows} == {process.pid}, report.stdout  # n_workers = 0
    assert all(row[-1] == "milter-manager" or "milter-manager" in " ".join(row[8:]) for row in rows)


def test_performance_check_sends_to_a_loopback_smtp_sink(venv):
    with SmtpSink() as sink:
        host, port = sink.address
        completed = checked([venv.bin("milter-performance-check"), f"--smtp-server={host}", f"--smtp-port={port}",
                             "--n-mails=3", "--recipient=wheel@example.org"])
        messages = sink.wait_for(3, timeout=10)
    assert re.search(r"^ +N mails: +3$", completed.stdout, re.M), completed.stdout
    assert re.search(r"^ +Reject: +0 ", completed.stdout, re.M)
    assert len(messages) == 3 and all(message.rcpt_tos == ("wheel@example.org",) for message in messages)


def analyzer_counts(directory: Path) -> int:
    """Sessions the database holds for the manager."""
    with sqlite3.connect(directory / "milter-manager-log-analyzer.sqlite3") as database:
        [(total,)] = database.execute("select coalesce(sum(smtp), 0) from session where name = ''").fetchall()
    return total


def test_log_analyzer_without_matplotlib_counts_and_says_what_to_install(venv, tmp_path):
    probe = run([venv.bin("python"), "-c", "import matplotlib"])
    assert "No module named 'matplotlib'" in probe.stderr  # the premise: the wheel alone does not pull it
    log = tmp_path / "mail.log"
    shutil.copy(WORKED_EXAMPLE, log)
    output = tmp_path / "graphs"
    completed = run([venv.bin("milter-manager-log-analyzer"), f"--output-directory={output}", str(log)],
                    env={**os.environ, "TZ": "UTC"})
    assert completed.returncode == 2, completed.stdout + completed.stderr
    assert completed.stdout == ""
    assert completed.stderr == ("milter-manager-log-analyzer: counted the logs, but drew no graphs: "
                                "No module named 'matplotlib'; to draw them: pip install 'milterman[graphs]', "
                                "or on Debian: apt install python3-matplotlib\n")
    assert analyzer_counts(output) > 0
    assert list(output.glob("*.png")) == [] and not (output / "index.html").exists()


def test_log_analyzer_with_the_graphs_extra_draws(venv, tmp_path):
    """Runs last in this module: it adds matplotlib to the session's environment (milterman[graphs])."""
    checked([venv.bin("python"), "-m", "pip", "install", "-q", "--disable-pip-version-check",
             f"{venv.dists.wheel}[graphs]"], timeout=600)
    log = tmp_path / "mail.log"
    shutil.copy(WORKED_EXAMPLE, log)
    output = tmp_path / "graphs"
    completed = run([venv.bin("milter-manager-log-analyzer"), f"--output-directory={output}", str(log)],
                    env={**os.environ, "TZ": "UTC", "MPLCONFIGDIR": str(tmp_path / "mpl")}, timeout=120)
    assert (completed.returncode, completed.stdout, completed.stderr) == (0, "", "")
    assert analyzer_counts(output) > 0
    images = sorted(path.name for path in output.glob("*.png"))
    assert "milter-manager.status.day.png" in images and "milter.status.spamass-milter.year.png" in images
    assert all((output / name).read_bytes().startswith(b"\x89PNG\r\n\x1a\n") for name in images)
    assert "milter-manager.status.day.png" in (output / "index.html").read_text()
