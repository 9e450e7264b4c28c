"""doc/performance.md: its tracemalloc hook and its sampler work as printed, and it stands for what make bench prints.

The hook example (a ``started`` and a ``maintained`` function in ``[hooks]``) is taken from the page,
run in a real manager with a real milter-test-client child, and must log the growth report at the
maintenance runs (every ``maintenance_interval`` sessions, 10 by default: M-MNT-1).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "doc" / "performance.md"
sys.path.insert(0, str(ROOT / "bench"))
from harness import stop, wait_for_path  # noqa: E402  (the bench's bounded waits)


def blocks(language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```", PAGE.read_text(encoding="utf-8"), re.M | re.S)


def test_the_tracemalloc_hook_of_the_page_reports_at_each_maintenance(tmp_path):
    [hook] = [block for block in blocks("python") if "tracemalloc" in block]
    [hooks_table] = [block for block in blocks("toml") if "[hooks]" in block]
    (tmp_path / "memwatch.py").write_text(hook)
    log = tmp_path / "manager.log"
    (tmp_path / "milter-manager.toml").write_text(
        f'version = 1\n[manager]\nconnection_spec = "unix:{tmp_path}/manager.sock"\nn_workers = 0\n'
        f'[log]\nuse_syslog = false\npath = "{log}"\n'
        f'[[milter]]\nname = "child"\nconnection_spec = "unix:{tmp_path}/child.sock"\n' + hooks_table)
    child = subprocess.Popen([sys.executable, "-m", "milterman.cli.test_client", "--no-report-request", "-q",
                              "-s", f"unix:{tmp_path}/child.sock"], cwd="/")
    manager = None
    try:
        wait_for_path(str(tmp_path / "child.sock"), child)
        manager = subprocess.Popen([sys.executable, "-m", "milterman.cli.manager", "-c", str(tmp_path), "--no-detect",
                                    "--no-daemon"], cwd="/", env=dict(os.environ, PYTHONPATH=str(tmp_path)))
        wait_for_path(str(tmp_path / "manager.sock"), manager)
        driven = subprocess.run([sys.executable, "-m", "milterman.cli.test_server", "-s",
                                 f"unix:{tmp_path}/manager.sock", "--n-sessions", "25", "--concurrency", "5"],
                                capture_output=True, text=True, timeout=120, cwd="/")
        assert driven.returncode == 0 and "pass: 25" in driven.stdout, driven.stdout + driven.stderr
    finally:
        if manager is not None:
            stop(manager)
        stop(child)
    text = log.read_text()
    assert "tracemalloc after 10 sessions:" in text and "tracemalloc after 20 sessions:" in text
    report = text.partition("tracemalloc after 20 sessions:\n")[2]
    assert re.search(r"size=[\d.]+ [KMG]?i?B \([+-]", report), report[:500]
    assert "tracemalloc.py" not in report.split("\n[", 1)[0]  # the page's filter leaves tracemalloc's own out


def test_the_sampler_of_the_page_reports_where_the_cpu_time_went(tmp_path):
    """The page's ``sample.py`` run as printed: started by SIGUSR2 after a warm-up, it writes the shares of
    the sampled Python functions at exit, and the manager's own code is among them."""
    [sampler] = [block for block in blocks("python") if "ITIMER_PROF" in block]
    (tmp_path / "sample.py").write_text(sampler)
    (tmp_path / "milter-manager.toml").write_text(
        f'version = 1\n[manager]\nconnection_spec = "unix:{tmp_path}/manager.sock"\n'
        f'[log]\nuse_syslog = false\nlevel = "error"\n'
        f'[[milter]]\nname = "child"\nconnection_spec = "unix:{tmp_path}/child.sock"\n')
    child = subprocess.Popen([sys.executable, "-m", "milterman.cli.test_client", "--no-report-request", "-q",
                              "-s", f"unix:{tmp_path}/child.sock"], cwd="/")
    manager = None
    try:
        wait_for_path(str(tmp_path / "child.sock"), child)
        manager = subprocess.Popen([sys.executable, str(tmp_path / "sample.py"), "-c", str(tmp_path), "--no-detect",
                                    "--n-workers", "0", "--no-daemon"], cwd="/", stderr=subprocess.PIPE, text=True)
        wait_for_path(str(tmp_path / "manager.sock"), manager)

        def drive(sessions: int) -> None:
            driven = subprocess.run([sys.executable, "-m", "milterman.cli.test_server", "-s",
                                     f"unix:{tmp_path}/manager.sock", "--n-sessions", str(sessions),
                                     "--concurrency", "10"], capture_output=True, text=True, timeout=120, cwd="/")
            assert driven.returncode == 0 and f"pass: {sessions}" in driven.stdout, driven.stdout + driven.stderr

        drive(20)
        manager.send_signal(signal.SIGUSR2)
        drive(300)
    finally:
        if manager is not None:
            stop(manager)
        stop(child)
    shares = re.findall(r"^ *([\d.]+) %  (\S+):(\S+)$", manager.stderr.read(), re.M)
    manager.stderr.close()
    # the top 40, each rounded to 0.1: their sum is at most 100 plus half a tenth per share
    total = sum(float(share) for share, _, _ in shares)
    assert 0 < len(shares) <= 40 and 0 < total <= 100 + 0.05 * len(shares) + 1e-9, shares
    assert any("/milterman/" in path for _, path, _ in shares), shares


def test_the_page_names_every_part_and_option_of_the_bench():
    text = PAGE.read_text(encoding="utf-8")
    bench = (ROOT / "bench" / "run.py").read_text(encoding="utf-8")
    parts = re.search(r"^PARTS: .*?^}", bench, re.M | re.S).group(0)
    for part in re.findall(r'^    "([a-z-]+)":', parts, re.M):
        assert f"| `{part}` |" in text, part
    for option in re.findall(r'add_argument\("(--[a-z-]+)"', bench):
        assert f"`{option}" in text, option
    assert "FIGURES" not in text and "WHERE" not in text and "SETTINGS" not in text
