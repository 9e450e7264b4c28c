"""milter-run's socket and privilege options: --unix-socket-group, --unix-socket-mode, --user-name, --group-name.

Serving as ``nobody``/``nogroup`` runs Debian's interpreter of this Python version with the virtualenv's
packages (:func:`python_for_nobody`): the virtualenv's own interpreter may live where a process that dropped its
privileges cannot read (here under /root).
"""

from __future__ import annotations

import grp
import os
import pwd
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import psutil
import pytest

from milterman.testing import run_milter
from test_milter_run import wait_for, wait_listening

TAG = Path(__file__).resolve().parents[1] / "support" / "tag.py"


@pytest.mark.skipif(os.geteuid() != 0, reason="giving the socket a group needs root")
def test_the_socket_gets_its_group_and_mode(tmp_path):
    shutil.copy(TAG, tmp_path / "tag.py")
    socket_path = tmp_path / "m.sock"
    process = subprocess.Popen([sys.executable, "-m", "milterman.cli.milter_run", "tag:Tag",
                                "-s", f"unix:{socket_path}", "--n-workers", "1", "--unix-socket-group", "mail",
                                "--unix-socket-mode", "0660"],
                               cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_listening(socket_path, process)
        info = os.stat(socket_path)
        assert stat.S_IMODE(info.st_mode) == 0o660 and info.st_gid == grp.getgrnam("mail").gr_gid
        assert run_milter(f"unix:{socket_path}", recipients=["carol@example.test"]).status == "reject"
    finally:
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=30)
    assert process.returncode == 0, output


@pytest.mark.skipif(os.geteuid() != 0, reason="changing user needs root")
@pytest.mark.parametrize("option", ["--user-name", "--group-name"])
def test_an_unknown_user_or_group_is_refused_at_start(tmp_path, option):
    shutil.copy(TAG, tmp_path / "tag.py")
    run = subprocess.run([sys.executable, "-m", "milterman.cli.milter_run", "tag:Tag", "-s", f"unix:{tmp_path}/m.sock",
                          option, "no-such-name-here"], cwd=tmp_path, capture_output=True, text=True, timeout=30)
    assert run.returncode == 1 and "no-such-name-here" in run.stdout, run


def python_for_nobody() -> tuple[str, dict[str, str]]:
    """An interpreter (and environment) with which ``nobody`` can import milter-run; skipped (failed under
    CI=true) when there is none."""
    site_packages = next(Path(sys.prefix, "lib").glob("python3*/site-packages"))
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    tried = []
    for python, extra in ((sys.executable, {}), (f"/usr/bin/{version}", {"PYTHONPATH": str(site_packages)})):
        env = {key: value for key, value in os.environ.items() if not key.startswith(("MILTER_", "PYTHON"))}
        env.update(extra)
        try:
            probe = subprocess.run([python, "-c", "import gevent, milterman.cli.milter_run"], user="nobody",
                                   group="nogroup", extra_groups=[], env=env, cwd="/", capture_output=True,
                                   text=True, timeout=30)
        except OSError as error:
            tried.append(f"{python}: {error}")
            continue
        if probe.returncode == 0:
            return python, env
        tried.append(f"{python}: {probe.stderr.strip().splitlines()[-1:]}")
    message = f"no interpreter nobody can run milter-run with: {tried}"
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


def status_ids(pid: int) -> tuple[list[int], list[int], list[int]]:
    """Real, effective, saved and file-system uids and gids, and the supplementary groups, from /proc."""
    fields = {}
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            name, _, value = line.partition(":")
            fields[name] = [int(number) for number in value.split()] if name in ("Uid", "Gid", "Groups") else None
    return fields["Uid"], fields["Gid"], fields["Groups"]


@pytest.mark.skipif(os.geteuid() != 0, reason="changing user needs root")
def test_a_daemon_serves_as_the_user_and_group_it_was_given():
    """--daemon --user-name nobody --group-name nogroup: the master and its worker run as nobody/nogroup (every
    uid and gid, no supplementary group of root's), the socket serves the milter, and at SIGTERM the daemon
    removes its socket and pid file from its own directory."""
    python, env = python_for_nobody()
    uid, gid = pwd.getpwnam("nobody").pw_uid, grp.getgrnam("nogroup").gr_gid
    directory = Path(tempfile.mkdtemp(prefix="milter-run-", dir="/tmp"))  # outside pytest's 0700 tree
    try:
        os.chmod(directory, 0o755)
        os.chown(directory, uid, gid)  # the service user's run-time directory, as /run/NAME would be
        shutil.copy(TAG, directory / "tag.py")
        os.chmod(directory / "tag.py", 0o644)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, (env.get("PYTHONPATH"), str(directory))))
        socket_path, pid_file = directory / "tag.sock", directory / "tag.pid"
        started = subprocess.run(
            [python, "-m", "milterman.cli.milter_run", "tag:Tag", "-s", f"unix:{socket_path}", "--daemon",
             "--user-name", "nobody", "--group-name", "nogroup", "--n-workers", "1", "--pid-file", str(pid_file),
             "--log-path", str(directory / "tag.log")], cwd=directory, env=env, capture_output=True, text=True,
            timeout=30)
        assert started.returncode == 0, started
        wait_for(lambda: pid_file.exists() and pid_file.read_text().strip(), 20, "the pid file")
        master = psutil.Process(int(pid_file.read_text()))
        try:
            wait_for(lambda: master.children(), 20, "the worker")

            def listening() -> bool:
                with socket.socket(socket.AF_UNIX) as probe:
                    return probe.connect_ex(str(socket_path)) == 0

            wait_for(listening, 20, f"{socket_path} to listen")
            for process in (master, *master.children()):
                uids, gids, groups = status_ids(process.pid)
                assert uids == [uid] * 4 and gids == [gid] * 4, (process, uids, gids)
                assert groups in ([], [gid]), (process, groups)
            outcome = run_milter(f"unix:{socket_path}", recipients=["alice@example.test", "carol@example.test"])
            assert outcome.rejected_recipients == ["<carol@example.test>"]
            assert outcome.added_headers == [("X-Tagged", "yes")]
        finally:
            master.send_signal(signal.SIGTERM)
            master.wait(timeout=20)
        assert not socket_path.exists() and not pid_file.exists()
    finally:
        shutil.rmtree(directory, ignore_errors=True)
