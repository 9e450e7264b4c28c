"""The pre-forking master with milter-test-client: workers, supervision and signals (D-5, M-WRK-1, M-SIG-*).

milter-test-client logs ``[TIME] [PID]: [sessions][finished] TOTAL(+1) PROCESSING``
after each session (n_workers > 0), so the log tells which worker served a session.
"""

from __future__ import annotations

import os
import re
import signal
import time

import psutil

from server_support import FINISHED, Load, failures, load, mapped_files, parse_log, read_text, wait_until

#: enough body to keep a session on the wire for a few milliseconds
BODY = ["--body", "x" * 4000] * 4


def finished_pids(server, count: int, timeout: float = 20.0) -> list[int]:
    """Pids of the first ``count`` [sessions][finished] lines, once there are that many."""
    return wait_until(lambda: (pids := server.session_pids()) and len(pids) >= count and pids,
                      timeout, f"{count} [sessions][finished] lines")


def test_four_workers_serve_every_session(start_client):
    server = start_client(n_workers=4)
    workers = server.wait_workers(4)
    master = psutil.Process(server.master_pid)
    # five processes: the master and its four children, the workers
    assert len(workers) == 4 and server.master_pid not in workers
    assert sorted(child.pid for child in master.children(recursive=True)) == workers
    assert all(psutil.Process(pid).ppid() == server.master_pid for pid in workers)

    report = load(server.spec, 400, 20)
    assert report["totals"]["statuses"] == {"pass": 400}, report["totals"]
    assert report["totals"]["errors"] == 0

    pids = finished_pids(server, 400)
    assert len(pids) == 400, f"one finished line per session, got {len(pids)}"
    # every session was served by a worker, and all four workers took part (the kernel spreads accepts)
    assert set(pids) == set(workers), {pid: pids.count(pid) for pid in set(pids)}
    assert server.workers() == workers, "no worker was restarted"


def test_killed_worker_is_replaced_within_one_second(start_client):
    server = start_client(n_workers=4)
    workers = server.wait_workers(4)
    victim, survivors = workers[0], workers[1:]
    concurrency = 20
    driver = Load(server.spec, 3000, concurrency, *BODY)
    try:
        # kill the victim in the middle of the load, once it has been serving for a while
        wait_until(lambda: server.session_pids().count(victim) >= 20, 20, "the victim to serve 20 sessions")
        assert driver.running(), "the load ended before the kill: make it longer"
        os.kill(victim, signal.SIGKILL)
        killed_at = time.monotonic()
        replacement = wait_until(lambda: (now := server.workers()) and len(now) == 4 and victim not in now
                                 and [pid for pid in now if pid not in workers], 10, "a replacement worker")
        replaced_after = time.monotonic() - killed_at
        assert driver.running(), "the load ended before the replacement appeared: make it longer"
        report = driver.result(90)
    finally:
        driver.kill()
    print(f"replaced after {replaced_after:.3f} s; failed {len(failures(report))}")
    assert replaced_after <= 1.0, f"the replacement appeared {replaced_after:.3f} s after the kill"
    assert len(replacement) == 1 and psutil.Process(replacement[0]).ppid() == server.master_pid
    # sessions on the other workers were untouched: the survivors still run, and only sessions the
    # victim had in flight (at most the driver's concurrency) failed
    assert set(survivors) <= set(server.workers())
    failed = failures(report)
    assert len(failed) <= concurrency, failed[:5]
    assert all(session["status"] == "error" for session in failed), failed[:5]
    assert report["totals"]["statuses"].get("pass", 0) == 3000 - len(failed)
    log = server.log()
    assert re.search(rf"\[server\]\[worker\]\[exit\] pid {victim} killed by signal SIGKILL", log), log[-2000:]
    # the replacement serves
    server.wait_workers(4)
    before = len(server.session_pids())
    load(server.spec, 200, 20)
    served = finished_pids(server, before + 200)[before:]
    assert replacement[0] in served


def test_ttin_and_ttou_change_the_worker_count_by_one(start_client):
    server = start_client(n_workers=2)
    first = server.wait_workers(2)
    server.signal(signal.SIGTTIN)
    three = server.wait_workers(3)
    added = [pid for pid in three if pid not in first]
    assert len(added) == 1
    server.wait_log(r"^\[server\]\[workers\] 3 workers \(SIGTTIN\)$")

    server.signal(signal.SIGTTOU)
    assert server.wait_workers(2) == first, "SIGTTOU stops the newest worker"
    server.signal(signal.SIGTTOU)
    server.wait_log(r"^\[server\]\[workers\] 1 workers \(SIGTTOU\)$")
    (last,) = server.wait_workers(1)
    assert last in first
    server.signal(signal.SIGTTOU)  # never fewer than one worker
    server.wait_log(r"^\[server\]\[workers\] 1 workers \(SIGTTOU\)$", count=2)
    assert server.wait_workers(1) == [last]
    # the removed workers were stopped on purpose, not replaced as failures
    assert "starting a new one" not in server.log()
    assert failures(load(server.spec, 50, 5)) == []


def test_ttou_while_a_stopped_worker_still_drains_stops_another(start_client):
    """A second SIGTTOU must not pick the worker the first one is still stopping (it may be finishing
    long sessions); SIGSTOP keeps that worker from exiting for the length of the test."""
    server = start_client(n_workers=2)
    first = server.wait_workers(2)
    server.signal(signal.SIGTTIN)
    (added,) = [pid for pid in server.wait_workers(3) if pid not in first]
    os.kill(added, signal.SIGSTOP)
    try:
        server.signal(signal.SIGTTOU)
        server.wait_log(r"^\[server\]\[workers\] 2 workers \(SIGTTOU\)$")
        server.signal(signal.SIGTTOU)
        server.wait_log(r"^\[server\]\[workers\] 1 workers \(SIGTTOU\)$")
    finally:
        os.kill(added, signal.SIGCONT)
    (left,) = server.wait_workers(1)
    assert left in first and added not in server.workers()
    assert "starting a new one" not in server.log()
    assert failures(load(server.spec, 20, 5)) == []


def test_sigusr1_reopens_the_log_in_master_and_workers(start_client, workdir):
    server = start_client("--log-level", "+info", n_workers=2)
    workers = server.wait_workers(2)
    assert failures(load(server.spec, 20, 4)) == []
    finished_pids(server, 20)
    rotated = server.log_path.with_name(server.log_path.name + ".1")
    os.rename(server.log_path, rotated)
    server.signal(signal.SIGUSR1)
    # each process reopens: the "open" line of the master and of both workers lands in a new file at the path
    opened = wait_until(lambda: {line.pid for line in parse_log(read_text(server.log_path))
                                 if line.message == "[logger][reopen][open]"} >= {server.master_pid, *workers},
                        10, "the master and both workers to reopen the log")
    assert opened
    old_text = read_text(rotated)
    closed = {line.pid for line in parse_log(old_text) if line.message == "[logger][reopen][close]"}
    assert closed == {server.master_pid, *workers}

    assert failures(load(server.spec, 40, 4)) == []
    new_finished = wait_until(lambda: [line.pid for line in parse_log(read_text(server.log_path))
                                       if FINISHED.match(line.message)] or None, 10, "sessions in the new file")
    assert set(new_finished) <= set(workers)
    server.signal(signal.SIGTTIN)  # something the master logs
    server.wait_log(r"^\[server\]\[workers\] 3 workers \(SIGTTIN\)$")
    assert read_text(rotated) == old_text, "nothing more was written to the renamed file"


def test_sigusr1_while_workers_start_kills_no_worker(start_client):
    """Log rotation right after a reload: the new workers have not installed their handlers yet."""
    server = start_client(n_workers=2)
    old = server.wait_workers(2)
    server.signal(signal.SIGHUP)
    server.signal(signal.SIGUSR1)  # handled in the same loop turn as the reload, right after the fork
    new = wait_until(lambda: (pids := server.workers()) and len(pids) == 2 and not set(pids) & set(old) and pids,
                     15, "the new generation of workers")
    server.wait_workers(2)
    assert server.workers() == new
    assert "killed by signal" not in server.log(), server.log()[-2000:]
    assert failures(load(server.spec, 40, 4)) == []


def test_silent_worker_is_killed_and_replaced(start_client):
    server = start_client("--worker-timeout", "2", n_workers=2)
    workers = server.wait_workers(2)
    victim = workers[0]
    os.kill(victim, signal.SIGSTOP)  # no heartbeat any more
    try:
        server.wait_log(rf"^\[server\]\[worker\]\[timeout\] pid {victim} silent for", timeout=15)
        now = wait_until(lambda: (pids := server.workers()) and len(pids) == 2 and victim not in pids and pids,
                         10, "the replacement of the silent worker")
    finally:
        try:
            os.kill(victim, signal.SIGCONT)
        except ProcessLookupError:
            pass
    assert workers[1] in now
    assert not psutil.pid_exists(victim) or psutil.Process(victim).status() == psutil.STATUS_ZOMBIE
    server.wait_workers(2)
    assert failures(load(server.spec, 50, 5)) == []


def test_workers_exit_when_the_master_is_killed(start_client):
    server = start_client(n_workers=2)
    workers = server.wait_workers(2)
    processes = [psutil.Process(pid) for pid in workers]
    server.signal(signal.SIGKILL)
    assert server.wait_exit(10) == -signal.SIGKILL
    gone, alive = psutil.wait_procs(processes, timeout=10)
    # an orphan may stay a zombie if nothing reaps it in this container; it no longer runs either way
    alive = [process for process in alive if process.status() != psutil.STATUS_ZOMBIE]
    assert not alive, f"workers still running after the master died: {alive}"


def test_master_never_loads_gevent(start_client):
    """D-5: the master never imports gevent's hub.

    The evidence is /proc/PID/maps: importing gevent (or greenlet) maps their compiled
    extension modules into the process, so a master that imported either, even for a
    moment, shows their .so files. A worker of the same server is the positive control.
    This needs no cooperation from the application (config_app.py checks sys.modules too).
    """
    server = start_client("--report-memory-profile", n_workers=2)
    server.wait_workers(2)
    assert failures(load(server.spec, 40, 4)) == []
    for number in (signal.SIGHUP, signal.SIGUSR1, signal.SIGTTIN):
        server.signal(number)
    server.wait_log(r"^\[server\]\[workers\] 3 workers \(SIGTTIN\)$")
    workers = server.wait_workers(3)
    assert failures(load(server.spec, 40, 4)) == []

    def loaded(pid: int) -> list[str]:
        return sorted(path for path in mapped_files(pid) if re.search(r"/(gevent|greenlet)/", path))

    assert loaded(server.master_pid) == []
    assert any("/gevent/" in path for path in loaded(workers[0])), "positive control: a worker maps gevent"


def test_max_file_descriptors_sets_the_limit_in_every_process(start_client):
    server = start_client("--max-file-descriptors", "512", n_workers=2)
    workers = server.wait_workers(2)
    for pid in (server.master_pid, *workers):
        assert psutil.Process(pid).rlimit(psutil.RLIMIT_NOFILE) == (512, 512)
    assert failures(load(server.spec, 20, 4)) == []
