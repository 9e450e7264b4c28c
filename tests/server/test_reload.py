"""Reload (SIGHUP) and graceful stop (SIGTERM) with a configuration file: tests/server/config_app.py (D-5, M-SIG-*).

config_app adds ``X-Config: <milter.header_value>`` at end of message and logs
``[ID] [config-app][end-of-message] value=<V> delay=D`` (with ``[PID]`` when n_workers > 0),
so both the MTA side (``--output-message``) and the log show which configuration served a session.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess

import pytest

from server_support import (CONFIG_APP, PYTHON, RUN_DIR, Load, clean_env, failures, parse_log, run_driver, signal_mask,
                            wait_until, x_config_values)

END_OF_MESSAGE = re.compile(r"^\[(\d+)\] \[config-app\]\[end-of-message\] value=<([^>]*)>")


def header_values(spec: str, sessions: int = 3) -> list[str]:
    """What ``sessions`` new sessions see (milter-test-server --threads N --output-message)."""
    result = run_driver(spec, "--threads", str(sessions), "--output-message")
    assert result.returncode == 0, result.stdout + result.stderr
    values = x_config_values(result.stdout)
    assert len(values) == sessions, result.stdout
    return values


def served(app) -> list[tuple[int | None, int, str]]:
    """(pid, session id, value) of every end-of-message the application logged, in log order."""
    out = []
    for line in app.log_lines():
        match = END_OF_MESSAGE.match(line.message)
        if match:
            out.append((line.pid, int(match.group(1)), match.group(2)))
    return out


@pytest.mark.parametrize("n_workers", [2, 0])
def test_sighup_under_load_valid_then_broken_configuration(start_app, servers, n_workers):
    app = start_app(n_workers=n_workers, milter={"header_value": "v1", "delay": 0.02})
    old_workers = app.workers()
    assert header_values(app.spec) == ["v1"] * 3

    # ---- a valid change, under load: no session fails, new sessions see it
    driver = Load(app.spec, 400, 10)
    try:
        wait_until(lambda: len(served(app)) >= 3 + 30, 20, "the load to get going")
        servers.write_config(app.config_path, app.server_table, {"header_value": "v2", "delay": 0.02})
        app.signal(signal.SIGHUP)
        app.wait_log(r"^\[server\]\[reload\] configuration reloaded$")
        assert driver.running(), "the load ended before the reload: make it longer"
        if n_workers:
            new_workers = wait_until(lambda: (pids := app.workers()) and len(pids) == n_workers
                                     and not set(pids) & set(old_workers) and pids, 20,
                                     "the old workers to finish and the new ones to serve")
        report = driver.result(60)
    finally:
        driver.kill()
    assert failures(report) == [], report["totals"]
    assert header_values(app.spec) == ["v2"] * 3
    sessions = served(app)
    assert {value for _, _, value in sessions} == {"v1", "v2"}
    if n_workers:
        # the old generation served only v1 (and finished its sessions), the new one only v2
        for pid, _, value in sessions:
            assert value == ("v1" if pid in old_workers else "v2"), (pid, value, old_workers)
            assert pid in old_workers or pid in new_workers
    else:
        # one process: sessions (ids in accept order) up to the reload saw v1, every later one v2
        values = [value for _, _, value in sorted(sessions, key=lambda item: item[1])]
        first_v2 = values.index("v2")
        assert set(values[first_v2:]) == {"v2"}, values
    workers = app.workers()

    # ---- a broken file, under load: the error names the file and the key, nothing changes
    driver = Load(app.spec, 300, 10)
    try:
        before = len(served(app))
        wait_until(lambda: len(served(app)) >= before + 30, 20, "the second load to get going")
        app.config_path.write_text(app.config_path.read_text().replace('header_value = "v2"', "header_value = 42"))
        app.signal(signal.SIGHUP)
        errors = app.wait_log(r"^\[server\]\[reload\]\[error\] ")
        assert driver.running(), "the load ended before the failed reload: make it longer"
        report = driver.result(60)
    finally:
        driver.kill()
    assert errors == [f"[server][reload][error] {app.config_path}: milter.header_value: must be a string, got 42; "
                      f"the previous configuration stays in use"]
    assert failures(report) == [], report["totals"]
    assert app.workers() == workers, "a failed reload starts no new workers"
    assert header_values(app.spec) == ["v2"] * 3
    assert app.proc.poll() is None


@pytest.mark.parametrize("n_workers", [0, 2])
def test_sigterm_lets_sessions_in_flight_finish(start_app, workdir, n_workers):
    pid_file = workdir / "app.pid"
    app = start_app(n_workers=n_workers, milter={"header_value": "v1", "delay": 1.0},
                    server={"pid_file": str(pid_file)})
    assert pid_file.read_text().strip() == str(app.master_pid)
    driver = Load(app.spec, 4, 4, "--output-message")
    try:
        # all four sessions are inside end_of_message, sleeping
        app.wait_log(r"\[config-app\]\[end-of-message\]", count=4)
        app.signal(signal.SIGTERM)
        code = app.wait_exit(20)
        report = driver.result(20)
    finally:
        driver.kill()
    assert code == 0, app.output
    assert report["totals"]["statuses"] == {"pass": 4}, report
    assert len([line for line in app.log_lines() if "[config-app][session][finished]" in line.message]) == 4
    assert not app.socket_path.exists(), "the unix socket is removed at exit"
    assert not pid_file.exists(), "the pid file is removed at exit"


def test_sigterm_cuts_sessions_after_the_graceful_timeout(start_app):
    app = start_app(n_workers=2, milter={"header_value": "v1", "delay": 30.0}, server={"graceful_timeout": 1.0})
    driver = Load(app.spec, 2, 2)
    try:
        app.wait_log(r"\[config-app\]\[end-of-message\]", count=2)
        app.signal(signal.SIGTERM)
        code = app.wait_exit(15)  # bounded by graceful_timeout (+1 s before the master kills), not by the delay
        report = driver.result(15)
    finally:
        driver.kill()
    assert code == 0
    assert report["totals"]["errors"] == 2, report
    assert not app.socket_path.exists()


def test_invalid_configuration_at_start_names_file_and_key(workdir):
    config = workdir / "bad.toml"
    config.write_text(f'[server]\nspec = "unix:{workdir}/bad.sock"\nn_workers = "two"\n')
    result = subprocess.run([PYTHON, str(CONFIG_APP), str(config)], capture_output=True, text=True, timeout=30,
                            env=clean_env(), cwd=RUN_DIR)
    assert result.returncode == 1
    assert result.stdout.strip() == f"{config}: server.n_workers: must be an integer, got 'two'"
    assert not (workdir / "bad.sock").exists()


def test_master_loads_configuration_without_gevent(start_app, servers, workdir):
    """D-5: load() runs in the master at start and on every SIGHUP, and gevent is never imported there."""
    record = workdir / "loads.jsonl"
    app = start_app(n_workers=2, extra_args=("--record-load", str(record)))
    for value in ("v2", "v3"):
        servers.write_config(app.config_path, app.server_table, {"header_value": value})
        app.signal(signal.SIGHUP)
        app.wait_log(r"^\[server\]\[reload\] configuration reloaded$", count=int(value[1]) - 1)
    # the old generation may still accept a session or two while it is retired
    wait_until(lambda: header_values(app.spec, 2) == ["v3", "v3"], 20, "the v3 workers alone to serve")
    app.config_path.write_text("[milter]\nunknown = 1\n")
    app.signal(signal.SIGHUP)
    app.wait_log(r"^\[server\]\[reload\]\[error\] .*: milter\.unknown: unknown key")
    assert header_values(app.spec, 2) == ["v3", "v3"]
    loads = [json.loads(line) for line in record.read_text().splitlines()]
    assert len(loads) == 4
    assert all(entry == {"pid": app.master_pid, "gevent": False, "greenlet": False} for entry in loads), loads
    assert app.master_pid not in {line.pid for line in parse_log(app.log())
                                  if "[config-app][end-of-message]" in line.message}


def test_d5_reload_cuts_no_session_the_old_worker_accepts_while_it_stops(start_app, servers, workdir):
    """D-5: no session is cut during a reload, also one the old worker accepts in the loop turn of its SIGTERM.

    The old worker handles its SIGTERM, its last session's end and a connection waiting in the backlog in
    one turn of its loop: it is frozen (SIGSTOP) while a session quits, connections wait in the backlog and
    the master's SIGTERM arrives, so all three are there at once when it goes on. The first new worker
    cannot start (boot plan "F"), so no other process takes those connections before it. Every one of
    them must be served to its end, by whichever worker accepts it.
    """
    import gevent

    from milterman.net import MtaClient, Timeouts, parse_spec
    from milterman.testing.engine import ServerSettings, build_transaction, make_offer
    from milterman.testing.transaction import play_transaction

    app = start_app(n_workers=1, milter={"header_value": "v1"})
    [old_worker] = app.workers()
    spec = parse_spec(app.spec)
    timeouts = Timeouts(connection=10, writing=10, reading=10, end_of_message=10)
    offer = make_offer(6)
    last = MtaClient.open(spec, offer, timeouts=timeouts)
    last.negotiate()  # a session in progress in the old worker
    waiting = []
    os.kill(old_worker, signal.SIGSTOP)
    try:
        # first the connections, then the QUIT: the loop handles the events of one turn latest first
        waiting = [MtaClient.open(spec, offer, timeouts=timeouts) for _ in range(3)]  # in the backlog
        last.close()  # QUIT: the old worker's last session ends
        servers.write_config(app.config_path, app.server_table,
                             {"header_value": "v2", "boot_plan": "F", "boot_count_file": str(workdir / "boots")})
        app.signal(signal.SIGHUP)
        term = 1 << (signal.SIGTERM - 1)
        wait_until(lambda: (signal_mask(old_worker, "ShdPnd") | signal_mask(old_worker, "SigPnd")) & term, 15,
                   "the master's SIGTERM to the old worker")
    finally:
        os.kill(old_worker, signal.SIGCONT)
    transaction = build_transaction(ServerSettings(spec=spec))
    try:
        results = [job.get(timeout=30) for job in [gevent.spawn(play_transaction, client, transaction)
                                                   for client in waiting]]
    finally:
        for client in waiting:
            client.close(send_quit=False)
    assert [(result.status, result.error) for result in results] == [("pass", None)] * 3
    app.wait_log(r"\[server\]\[worker\]\[boot-error\] .*boot plan: boot 1 fails")
