"""The master's structure (D-5): signals dispatched to ``handle_<name>``, a bounded signal queue, a halt when
workers cannot boot, and the single-process regime (``n_workers = 0``).

Real processes and real signals: ``config_app.py`` (tests/server) is the served program;
``load_delay`` makes its configuration loading slow, ``boot_plan`` makes chosen worker boots
fail (its ``make_handler`` raises).
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import textwrap
import time

import psutil
import pytest

from server_support import PYTHON, RUN_DIR, clean_env, failures, load, wait_until

from milterman.server.master import Master
from milterman.server.signals import QUEUED_SIGNALS, handler_name
from milterman.server.supervision import BOOT_ATTEMPTS, HALT_STATUS

RELOADED = r"^\[server\]\[reload\] configuration reloaded$"


def run_python(code: str, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run([PYTHON, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=timeout,
                          env=clean_env(), cwd=RUN_DIR)


# ------------------------------------------------------------------------------------------ dispatch and the queue


def test_every_queued_signal_has_its_handle_method_on_the_master():
    names = {number: handler_name(number) for number in QUEUED_SIGNALS}
    assert names[signal.SIGHUP] == "handle_hup" and names[signal.SIGTTIN] == "handle_ttin"
    missing = [name for name in names.values() if not callable(getattr(Master, name, None))]
    assert missing == []


def test_signal_queue_dispatches_in_order_and_drops_repeats_in_a_real_process():
    """Signals raised in a real process: each is queued once (repeats dropped and counted), dispatch calls
    handle_<name> oldest first, and a queue at its limit drops newcomers."""
    result = run_python("""
        import json, signal
        from milterman.server.signals import SignalQueue

        class Owner:
            def __init__(self):
                self.calls = []
            def handle_usr1(self):
                self.calls.append("usr1")
            def handle_hup(self):
                self.calls.append("hup")
                signal.raise_signal(signal.SIGUSR2)  # queued meanwhile: handled in the same dispatch
            def handle_usr2(self):
                self.calls.append("usr2")

        queue = SignalQueue((signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2))
        queue.install()
        for number in (signal.SIGUSR1, signal.SIGHUP, signal.SIGUSR1, signal.SIGHUP, signal.SIGHUP):
            signal.raise_signal(number)
        waiting = len(queue)
        owner = Owner()
        queue.dispatch(owner)
        dropped = queue.take_dropped()

        small = SignalQueue((signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2), limit=2)
        small.install()
        for number in (signal.SIGUSR2, signal.SIGHUP, signal.SIGUSR1):
            signal.raise_signal(number)
        print(json.dumps({"waiting": waiting, "calls": owner.calls, "dropped": dropped,
                          "small": small.drain(), "small_dropped": small.take_dropped()}))
    """)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["waiting"] == 2
    assert report["calls"] == ["usr1", "hup", "usr2"]
    assert report["dropped"] == {str(int(signal.SIGUSR1)): 1, str(int(signal.SIGHUP)): 2}
    assert report["small"] == [signal.SIGUSR2, signal.SIGHUP]
    assert report["small_dropped"] == {str(int(signal.SIGUSR1)): 1}


def test_a_storm_of_sighups_during_a_slow_reload_means_one_more_reload(start_app, servers, workdir):
    """While the master is inside a 1.5 s reload, 15 more SIGHUPs arrive: one waits, the rest are dropped
    (and logged), so exactly two reloads happen, and the server serves the last configuration."""
    record = workdir / "loads.jsonl"
    app = start_app(n_workers=1, milter={"header_value": "v1", "load_delay": 1.5},
                    extra_args=("--record-load", str(record), "--log-level", "+info"))
    servers.write_config(app.config_path, app.server_table, {"header_value": "v2", "load_delay": 1.5})
    app.signal(signal.SIGHUP)
    wait_until(lambda: len(record.read_text().splitlines()) >= 2, 10, "the reload to start loading")
    for _ in range(15):
        app.signal(signal.SIGHUP)
        time.sleep(0.02)  # each signal arrives on its own (the kernel merges a pending one)
    app.wait_log(RELOADED, count=2, timeout=15)
    dropped = app.wait_log(r"^\[server\]\[signal\]\[dropped\] SIGHUP \(\d+ times\): ")
    # no third reload: wait longer than one reload takes, then count
    time.sleep(3.5)
    assert len(app.wait_log(RELOADED, count=2)) == 2
    assert len(record.read_text().splitlines()) == 3  # start-up and two reloads
    assert sum(int(line.split("(")[1].split()[0]) for line in dropped) >= 1
    app.wait_workers(1)
    assert failures(load(app.spec, 10, 2)) == []


# ------------------------------------------------------------------------------------------ workers that cannot boot


def test_master_halts_when_workers_cannot_boot(start_app, workdir):
    app = start_app(n_workers=2, ready=False,
                    milter={"boot_plan": "F" * 20, "boot_count_file": str(workdir / "boots")})
    assert app.wait_exit(30) == HALT_STATUS
    boots = len((workdir / "boots").read_text())
    assert BOOT_ATTEMPTS <= boots <= BOOT_ATTEMPTS + 1, "it halts instead of backing off forever"
    (halt,) = app.wait_log(r"^\[server\]\[halt\] ")
    # two workers boot at once, so the third failure is boot 3 or 4
    assert re.fullmatch(rf"\[server\]\[halt\] workers cannot start: ConfigurationError: boot plan: boot [34] fails "
                        rf"\({BOOT_ATTEMPTS} failures in a row\); stopping with exit status {HALT_STATUS}", halt), halt
    errors = app.wait_log(r"^\[server\]\[worker\]\[boot-error\] ", count=BOOT_ATTEMPTS - 1)
    assert all("ConfigurationError: boot plan: boot" in line for line in errors), errors
    assert "workers cannot start: ConfigurationError: boot plan: boot" in app.output
    assert not app.socket_path.exists(), "the halt cleans up like a stop"
    assert all(not process.is_running() or process.status() == psutil.STATUS_ZOMBIE
               for process in app.known.values())


def test_a_reload_whose_workers_cannot_boot_halts_after_the_old_workers_finish(start_app, servers, workdir):
    """The new configuration loads, but its workers fail at boot: the master halts instead of leaving the old
    generation serving beside a restart loop; the old workers get a graceful stop (status 3 for the master)."""
    app = start_app(n_workers=2, extra_args=("--log-level", "+info"))
    old = app.wait_workers(2)
    servers.write_config(app.config_path, app.server_table,
                         {"header_value": "v2", "boot_plan": "F" * 20, "boot_count_file": str(workdir / "boots")})
    app.signal(signal.SIGHUP)
    assert app.wait_exit(30) == HALT_STATUS
    assert app.wait_log(r"^\[server\]\[halt\] workers cannot start: ConfigurationError: boot plan: boot \d+ fails")
    stopped = app.wait_log(r"^\[server\]\[worker\]\[exit\] pid \d+ exited with status 0$", count=2)
    assert {int(line.split()[2]) for line in stopped} >= set(old), stopped


def test_boot_failures_below_the_limit_are_retried_and_a_ready_worker_resets_the_count(start_app, workdir):
    """Plan: two failures, a good boot, then (after the good worker is killed) two failures again and a good
    boot. Without the reset the fourth boot would be the third failure in a row and the master would halt."""
    boots = workdir / "boots"
    app = start_app(n_workers=1, ready=False, milter={"boot_plan": "FFOFF", "boot_count_file": str(boots)})
    (first,) = app.wait_workers(1, timeout=20)
    wait_until(lambda: len(boots.read_text()) == 3, 10, "three boots")
    app.wait_log(r"^\[server\]\[worker\]\[boot-error\] ", count=2)
    psutil.Process(first).kill()
    wait_until(lambda: (pids := app.workers()) and first not in pids and len(boots.read_text()) == 6, 30,
               "two more failed boots and a good one")
    app.wait_workers(1, timeout=20)
    errors = app.wait_log(r"^\[server\]\[worker\]\[boot-error\] ", count=4)
    assert [line.split(" could not start ")[1].split(":")[0] for line in errors] == [
        "(1 of 3 in a row)", "(2 of 3 in a row)", "(1 of 3 in a row)", "(2 of 3 in a row)"]
    assert "[server][halt]" not in app.log()
    assert app.proc.poll() is None
    assert failures(load(app.spec, 10, 2)) == []


# ------------------------------------------------------------------------------------------ signals during start-up


@pytest.mark.parametrize("n_workers", [0, 2])
def test_sigterm_during_start_up_is_handled_once_serving(start_app, workdir, n_workers):
    """The signal waits in the queue while the configuration loads; then the server starts and stops
    (the single process replays it to its serving loop, the supervisor dispatches it to handle_term)."""
    record = workdir / "loads.jsonl"
    app = start_app(n_workers=n_workers, ready=False, milter={"load_delay": 1.0},
                    extra_args=("--record-load", str(record)))
    wait_until(lambda: record.exists() and record.read_text(), 10, "the configuration to start loading")
    app.signal(signal.SIGTERM)
    app.signal(signal.SIGTTIN)  # without workers: ignored; with them: one more, then the stop
    assert app.wait_exit(20) == 0
    log = app.log()
    assert "[server][listen]" in log, log
    assert "[server][stop]" in log, log
    assert not app.socket_path.exists()


def test_single_process_ignores_ttin_and_reloads_in_its_own_process(start_app, servers):
    app = start_app(n_workers=0, milter={"header_value": "v1"})
    app.signal(signal.SIGTTIN)
    servers.write_config(app.config_path, app.server_table, {"header_value": "v2"})
    app.signal(signal.SIGHUP)
    app.wait_log(RELOADED)
    assert app.master.children() == [], "no worker process in the single-process regime"
    assert "[server][workers]" not in app.log()
    result = subprocess.run([PYTHON, "-m", "milterman.cli.test_server", "-s", app.spec, "--output-message"],
                            capture_output=True, text=True, timeout=60, env=clean_env(), cwd=RUN_DIR)
    assert "X-Config: v2" in result.stdout, result.stdout + result.stderr
