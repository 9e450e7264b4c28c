"""max_connections (D-6, M-ACC-1, V14), the memory lines (M-MNT-1, D-12) and systemd readiness."""

from __future__ import annotations

import re
import signal
import socket
from collections import Counter, defaultdict

import pytest

from milterman.protocol import Action, Negotiate, Quit, Step, encode

from server_support import FINISHED, clean_env, failures, load, wait_until

NEGOTIATE = encode(Negotiate(6, int(Action.ALL), int(Step.ALL)))
QUIT = encode(Quit())


def connect(path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(5)
    sock.connect(str(path))
    return sock


def negotiation_reply(sock: socket.socket, timeout: float) -> bytes | None:
    """The first bytes the milter answers to our negotiation, or None if nothing came within ``timeout``."""
    sock.settimeout(timeout)
    try:
        return sock.recv(4096)
    except TimeoutError:
        return None


@pytest.mark.parametrize("n_workers", [0, 1])
def test_max_connections_one_second_connection_waits_in_the_backlog(start_client, n_workers):
    server = start_client("--max-connections", "1", n_workers=n_workers)
    first = connect(server.socket_path)
    second = None
    try:
        first.sendall(NEGOTIATE)
        reply = negotiation_reply(first, 5)
        assert reply and reply[4:5] == b"O", reply
        # the second MTA connection is accepted by the kernel (backlog) but not served
        second = connect(server.socket_path)
        second.sendall(NEGOTIATE)
        assert negotiation_reply(second, 1.0) is None, "served while the first session was still open"
        # the first session goes on normally meanwhile (the process is not frozen: M-ACC-1a)
        first.sendall(QUIT)
        first.close()
        reply = negotiation_reply(second, 10)
        assert reply and reply[4:5] == b"O", reply
        second.sendall(QUIT)
    finally:
        first.close()
        if second is not None:
            second.close()
    lines = wait_until(lambda: (found := [line for line in server.log_lines() if FINISHED.match(line.message)])
                       and len(found) >= 2 and found, 10, "both sessions to finish")
    # neither session ever saw another one in progress: PROCESSING is 0 after each
    assert [FINISHED.match(line.message).group(3) for line in lines] == ["0", "0"]
    assert failures(load(server.spec, 20, 5)) == []  # later sessions, queued behind each other, all pass


MEMORY = re.compile(r"^\[session\]\[memory\]\((\d+)\) rss=(\d+)KB vms=(\d+)KB"
                    r"(?: uss=(\d+)KB pss=(\d+)KB swap=(\d+)KB)?$")
MAINTAIN = re.compile(r"^\[maintain\]\[memory\] \((\d+)KB\) total:(\d+)$")


@pytest.mark.parametrize("n_workers, detailed", [(0, False), (2, True)])
def test_memory_profile_lines(start_client, n_workers, detailed):
    env = clean_env(MILTER_MEMORY_PROFILE="yes") if detailed else None
    server = start_client("--report-memory-profile", "--maintenance-interval", "5", n_workers=n_workers, env=env)
    sessions = 12
    assert failures(load(server.spec, sessions, 2)) == []
    wait_until(lambda: sum(1 for line in server.log_lines() if MEMORY.match(line.message)) >= sessions, 10,
               "one memory line per session")

    def maintenance_logged() -> bool:
        """A process logs its maintenance line after the session's own lines: wait for those too."""
        lines = server.log_lines()
        finished = Counter(line.pid for line in lines if FINISHED.match(line.message))
        maintained = Counter(line.pid for line in lines if MAINTAIN.match(line.message))
        return sum(finished.values()) >= sessions and all(maintained[pid] >= count // 5
                                                          for pid, count in finished.items())

    try:
        wait_until(maintenance_logged, 10, "the maintenance lines")
    except AssertionError:
        pass  # the assertions below say what is missing
    lines = server.log_lines()
    memory = [(line.pid, MEMORY.match(line.message)) for line in lines if MEMORY.match(line.message)]
    finished = [line.pid for line in lines if FINISHED.match(line.message)]
    assert len(memory) == len(finished) == sessions
    ids = set()
    for pid, match in memory:
        ids.add((pid, match.group(1)))
        rss, vms = int(match.group(2)), int(match.group(3))
        assert 5 * 1024 <= rss <= 500 * 1024, match.group(0)
        assert vms >= rss, match.group(0)
        if detailed:
            assert match.group(4) is not None, f"uss/pss/swap expected: {match.group(0)}"
            uss, pss = int(match.group(4)), int(match.group(5))
            assert 0 < uss <= rss and 0 < pss <= rss, match.group(0)
        else:
            assert match.group(4) is None, match.group(0)
    assert len(ids) == sessions, "one line per session id"
    # maintenance every 5 sessions, counted per process (D-12, M-MNT-1)
    per_process: dict[int | None, int] = defaultdict(int)
    for pid in finished:
        per_process[pid] += 1
    maintained: dict[int | None, list[int]] = defaultdict(list)
    for line in lines:
        match = MAINTAIN.match(line.message)
        if match:
            assert 5 * 1024 <= int(match.group(1)) <= 500 * 1024, line.message
            maintained[line.pid].append(int(match.group(2)))
    for pid, count in per_process.items():
        assert maintained.get(pid, []) == list(range(5, count + 1, 5)), (pid, count, dict(maintained))
    assert set(maintained) <= set(per_process)


@pytest.mark.parametrize("n_workers", [0, 2])
def test_systemd_notify_ready_and_stopping(start_client, workdir, n_workers):
    path = workdir / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify:
        notify.bind(str(path))
        notify.settimeout(15)
        server = start_client(n_workers=n_workers, env=clean_env(NOTIFY_SOCKET=str(path)), ready=False)
        message = notify.recv(4096).decode()
        assert "READY=1" in message.split("\n") and f"MAINPID={server.master_pid}" in message.split("\n")
        # ready means listening: a connection succeeds at once, no retry
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            probe.settimeout(5)
            probe.connect(str(server.socket_path))
        if n_workers:
            server.wait_workers(n_workers)
        assert failures(load(server.spec, 10, 2)) == []
        server.signal(signal.SIGHUP)  # with or without workers: RELOADING=1, then READY=1
        assert notify.recv(4096).decode() == "RELOADING=1"
        assert notify.recv(4096).decode() == "READY=1"
        server.signal(signal.SIGTERM)
        assert notify.recv(4096).decode() == "STOPPING=1"
        assert server.wait_exit(15) == 0
