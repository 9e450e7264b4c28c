"""The milter-manager command: start-up errors, --check-config, --show-config, --version (A11, D-8)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from milterman.config import load, load_string

ROOT = Path(__file__).resolve().parents[2]


def manager(*args: str, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "milterman.cli.manager", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT)


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
