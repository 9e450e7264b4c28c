"""Sessions waiting for their MTA hold no greenlet, through a real milter-manager (n_workers 0; issue 15).

A session between two MTA commands is a loop watcher on its socket; its steps run in a few runner
greenlets. What a session was owed before must hold with sessions waiting that way: graceful stop
lets them go on for ``graceful_timeout``, then closes them, their children getting QUIT (D-5); a fast
stop closes them at once; they count for ``max_connections`` (D-6, M-ACC-1).

The greenlets of the manager process are counted by a probe thread (``tests/support/greenlet_probe``,
loaded through PYTHONPATH): no debugging code in the manager itself.
"""

from __future__ import annotations

import signal
import socket
import time
from pathlib import Path

import pytest

from manager_harness import OFFER, clean_env, letters, wait_until

PROBE = Path(__file__).resolve().parents[1] / "support" / "greenlet_probe"
HELD = 200


def probed_env(directory: Path) -> dict[str, str]:
    return clean_env(PYTHONPATH=str(PROBE), MILTERMAN_TEST_PROBE=str(directory))


def greenlets(directory: Path) -> int:
    """The number of greenlets in the manager process now (those made before it started serving aside)."""
    answer = directory / "answer"
    answer.unlink(missing_ok=True)
    (directory / "ask").write_text("")
    return int(wait_until(lambda: answer.exists() and answer.read_text(), 10, "the greenlet probe's answer"))


def hold(env, count: int) -> list:
    """``count`` MTA connections taken past MAIL FROM and left waiting for the next command (P-SM-9)."""
    held = []
    for _ in range(count):
        mta = env.mta()
        mta.session_start()
        assert letters(mta.mail()) == ["c"]
        held.append(mta)
    return held


def closed_by_manager(mta, timeout: float = 10.0) -> bool:
    """The manager closed this MTA connection (EOF) without sending anything more."""
    mta.sock.settimeout(timeout)
    return mta.sock.recv(4096) == b""


@pytest.mark.parametrize("manager", [{}, {"connection_check_interval": 1, "connection_checkers": ["netstat"]}],
                         ids=["plain", "disconnect-check-M_ERR_8"])
def test_held_sessions_hold_no_greenlet(env, manager):
    """With the disconnect check on as well: between its checks a session holds a timer, no greenlet."""
    child = env.milter("c1")
    env.start([{"name": "c1"}], env=probed_env(env.dir), manager=manager)
    hold(env, 3)[0].quit()  # the first sessions made what lives as long as the process
    before = greenlets(env.dir)
    held = hold(env, HELD)
    during = greenlets(env.dir)
    assert during - before < 20, (before, during)  # one per held session would be HELD more
    for mta in held:  # every one goes on where it stopped
        assert letters(mta.rcpt()) == ["c"]
        mta.quit()
    wait_until(lambda: sum(1 for record in child.sessions if record.done.is_set()) >= HELD + 1, 20,
               "the child's sessions to end")
    assert greenlets(env.dir) - before < 20


def test_graceful_stop_waits_then_closes_parked_sessions(env):
    """SIGTERM: a waiting session may go on within graceful_timeout; then the rest are closed, children get QUIT."""
    child = env.milter("c1")
    manager = env.start([{"name": "c1"}], manager={"graceful_timeout": 1.5})
    going_on, *waiting = hold(env, 3)
    started = time.monotonic()
    manager.proc.send_signal(signal.SIGTERM)
    time.sleep(0.3)
    assert letters(going_on.rcpt()) == ["c"]  # not cut by the stop (D-5)
    going_on.quit()
    for mta in waiting:
        assert closed_by_manager(mta)
    assert time.monotonic() - started >= 1.2  # they were given the graceful time
    assert manager.proc.wait(10) == 0
    assert len(child.sessions) == 3
    for record in child.sessions:
        assert record.done.wait(5)
        assert record.letters[-1] == "Q", record.letters
    assert sum(1 for record in child.sessions if "R" in record.letters) == 1


def test_fast_stop_closes_parked_sessions_at_once(env):
    child = env.milter("c1")
    manager = env.start([{"name": "c1"}], manager={"graceful_timeout": 30.0})
    held = hold(env, 3)
    started = time.monotonic()
    manager.proc.send_signal(signal.SIGINT)
    for mta in held:
        assert closed_by_manager(mta)
    assert manager.proc.wait(10) == 0
    assert time.monotonic() - started < 10
    for record in child.sessions:
        assert record.done.wait(5)
        assert record.letters[-1] == "Q", record.letters


def test_max_connections_counts_parked_sessions(env):
    env.milter("c1")
    env.start([{"name": "c1"}], manager={"max_connections": 2})
    first, second = hold(env, 2)
    third = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        third.connect(str(env.socket_path))  # taken by the kernel's backlog, not served
        third.sendall(OFFER.encode())
        third.settimeout(1.0)
        try:
            early = third.recv(4096)
        except TimeoutError:
            early = None
        assert early is None, "served while two sessions waited at MAIL FROM"
        first.quit()
        third.settimeout(10)
        reply = third.recv(4096)
        assert reply[4:5] == b"O", reply
        assert letters(second.rcpt()) == ["c"]
        second.quit()
    finally:
        third.close()
