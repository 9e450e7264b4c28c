"""The milter-manager command: start-up errors, --check-config, --show-config, --version (A11, D-8)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from milterman.config import load, load_string

#: subprocesses start outside the checkout, so they import the installed package (issue 8)
RUN_DIR = "/"


def manager(*args: str, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "milterman.cli.manager", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=RUN_DIR)


def test_broken_file_at_start_exits_1_naming_file_and_key(tmp_path):
    config = tmp_path / "milter-manager.toml"
    config.write_text('version = 1\n[manager]\nconnection_spec = "unix:/tmp/x.sock"\nn_workers = 5000\n')
    run = manager("-c", str(tmp_path), "--no-detect")
    assert run.returncode == 1
    assert f"{config}: manager.n_workers: " in run.stdout and "5000" in run.stdout


def test_unknown_key_in_a_milter_is_named_with_the_milters_name(tmp_path):
    (tmp_path / "milter-manager.toml").write_text(
        'version = 1\n[[milter]]\nname = "a"\nconnection_spec = "unix:/tmp/a.sock"\nfalback_status = "reject"\n')
    run = manager("-c", str(tmp_path), "--no-detect", "--check-config")
    assert run.returncode == 1
    assert 'milter "a": falback_status: unknown key "falback_status" (did you mean "fallback_status"?)' in run.stdout


def test_check_config_and_show_config_round_trip_D_8(tmp_path):
    (tmp_path / "milter-manager.toml").write_text("""version = 1
[manager]
connection_spec = "inet:10025@[127.0.0.1]"
fallback_status = "temporary-failure"
[[milter]]
name = "a"
connection_spec = "unix:/tmp/a.sock"
evaluation_mode = true
""")
    check = manager("-c", str(tmp_path), "--no-detect", "--check-config")
    assert check.returncode == 0 and check.stdout.startswith("configuration OK: ")
    shown = manager("-c", str(tmp_path), "--no-detect", "--show-config")
    assert shown.returncode == 0
    assert load_string(shown.stdout) == load(tmp_path)


def test_command_line_overrides_the_files_A11(tmp_path):
    (tmp_path / "milter-manager.toml").write_text('version = 1\n[manager]\nn_workers = 1\n')
    shown = manager("-c", str(tmp_path), "--no-detect", "--show-config", "--n-workers", "3",
                    "--connection-spec", "unix:/tmp/other.sock")
    configuration = load_string(shown.stdout)
    assert configuration.manager.n_workers == 3
    assert configuration.manager.connection_spec == "unix:/tmp/other.sock"


def test_bad_option_value_and_port_in_use_exit_1(tmp_path):
    (tmp_path / "milter-manager.toml").write_text('version = 1\n')
    run = manager("-c", str(tmp_path), "--no-detect", "--n-workers", "many")
    assert run.returncode == 1 and "--n-workers" in run.stdout and "many" in run.stdout
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        run = manager("-c", str(tmp_path), "--no-detect", "--connection-spec", f"inet:{port}@[127.0.0.1]")
    assert run.returncode == 1 and f"inet:{port}@[127.0.0.1]" in run.stdout


def test_version_and_help():
    assert manager("--version").stdout.strip().startswith("milter-manager ")
    helped = manager("--help")
    assert helped.returncode == 0 and "--check-config" in helped.stdout and "--show-config" in helped.stdout


# -- issue 8: --check-config checks what start-up would refuse, naming the option as typed ------------------

def check(tmp_path, toml: str = "", *args: str) -> subprocess.CompletedProcess:
    (tmp_path / "milter-manager.toml").write_text("version = 1\n" + toml)
    return manager("-c", str(tmp_path), "--no-detect", "--check-config", *args)


def test_check_config_unknown_users_and_groups_named_as_typed(tmp_path):
    run = check(tmp_path, "", "-u", "nosuchuser-mm", "-g", "nosuchgroup-mm")
    assert run.returncode == 1, run
    assert run.stdout.splitlines() == ["command line: -u: unknown user: <nosuchuser-mm>",
                                       "command line: -g: unknown group: <nosuchgroup-mm>"]
    run = check(tmp_path, "", "--user-name=nosuchuser-mm")
    assert run.stdout.splitlines() == ["command line: --user-name: unknown user: <nosuchuser-mm>"], run


def test_check_config_unknown_users_and_groups_from_the_file(tmp_path):
    config = tmp_path / "milter-manager.toml"
    run = check(tmp_path, '[security]\neffective_user = "nosuchuser-mm"\neffective_group = "nosuchgroup-mm"\n'
                '[manager]\nunix_socket_group = "nosuchgroup-s"\n'
                '[controller]\nconnection_spec = "unix:/tmp/c.sock"\nunix_socket_group = "nosuchgroup-c"\n'
                '[[milter]]\nname = "a"\nconnection_spec = "unix:/tmp/a.sock"\ncommand = "/bin/true"\n'
                'user_name = "nosuchuser-a"\n')
    assert run.returncode == 1, run
    assert run.stdout.splitlines() == [
        f"{config}: security.effective_user: unknown user: <nosuchuser-mm>",
        f"{config}: security.effective_group: unknown group: <nosuchgroup-mm>",
        f"{config}: manager.unix_socket_group: unknown group: <nosuchgroup-s>",
        f"{config}: controller.unix_socket_group: unknown group: <nosuchgroup-c>",
        f'{config}: milter "a": user_name: unknown user: <nosuchuser-a>']


def test_check_config_missing_directories(tmp_path):
    config = tmp_path / "milter-manager.toml"
    missing = tmp_path / "missing"
    run = check(tmp_path, f'[manager]\npid_file = "{missing}/m.pid"\n', "-s", f"unix:{missing}/m.sock")
    assert run.returncode == 1, run
    assert run.stdout.splitlines() == [
        f"command line: -s: the directory of unix:{missing}/m.sock does not exist: {missing}",
        f"{config}: manager.pid_file: the directory of {missing}/m.pid does not exist: {missing}"]


def test_unknown_user_at_start_is_named_as_typed(tmp_path):
    (tmp_path / "milter-manager.toml").write_text("version = 1\n")
    run = manager("-c", str(tmp_path), "--no-detect", "-s", f"unix:{tmp_path}/m.sock", "-u", "nosuchuser-mm")
    assert run.returncode == 1 and run.stdout == "command line: -u: unknown user: <nosuchuser-mm>\n", run
    assert not (tmp_path / "m.sock").exists()


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root: checks what the user after the privilege drop may write")
def test_check_config_directories_the_dropped_user_cannot_write(tmp_path):
    base = Path(tempfile.mkdtemp(prefix="milterman-check-", dir="/tmp"))
    try:
        base.chmod(0o755)
        private = base / "private"
        private.mkdir(mode=0o700)
        config = tmp_path / "milter-manager.toml"
        run = check(tmp_path, f'[security]\neffective_user = "nobody"\n[controller]\n'
                    f'connection_spec = "unix:{private}/c.sock"\n[manager]\npid_file = "{private}/m.pid"\n',
                    "-s", f"unix:{private}/m.sock")
        assert run.returncode == 1, run
        assert run.stdout.splitlines() == [
            f"{config}: controller.connection_spec: user nobody (after the privilege drop) cannot create "
            f"unix:{private}/c.sock: {private} is not writable for it",
            f"warning: command line: -s: user nobody (after the privilege drop) cannot remove unix:{private}/m.sock "
            f"at stop: {private} is not writable for it",
            f"warning: {config}: manager.pid_file: user nobody (after the privilege drop) cannot remove "
            f"{private}/m.pid at stop: {private} is not writable for it"]
        private.chmod(0o777)
        run = check(tmp_path, '[security]\neffective_user = "nobody"\n', "-s", f"unix:{private}/m.sock")
        assert run.returncode == 0 and run.stdout.startswith("configuration OK: "), run
    finally:
        shutil.rmtree(base)
