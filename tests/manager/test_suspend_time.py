"""``manager.suspend_time_on_unacceptable`` (M-ACC-2, D-17): how long accepting pauses when the
process is out of descriptors. The sessions in progress go on meanwhile."""

from __future__ import annotations

import socket
import time

import pytest

from manager_harness import OFFER


def negotiated_within(path, timeout: float) -> float:
    """Seconds until a new MTA connection gets the negotiation reply."""
    started = time.monotonic()
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(str(path))
        sock.sendall(OFFER.encode())
        assert sock.recv(5)[4:5] == b"O"
    return time.monotonic() - started


@pytest.mark.parametrize("suspend", [0, 3])
def test_suspend_time_on_unacceptable_is_the_accept_pause_M_ACC_2(env, suspend):
    env.milter("c1")
    env.start([{"name": "c1"}], manager={"max_file_descriptors": 40, "suspend_time_on_unacceptable": suspend})
    held = []
    try:
        for _ in range(80):  # more than the process has descriptors left
            connection = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            connection.connect(str(env.socket_path))
            held.append(connection)
        env.manager.wait_output("[server][accept][backoff]")
        time.sleep(0.3)
    finally:
        for connection in held:
            connection.close()
    waited = negotiated_within(env.socket_path, 20)
    expected = "0.01" if suspend == 0 else str(suspend)
    assert f"accepting pauses for {expected} s at a time" in env.manager.output
    if suspend:
        assert waited >= 1.5, f"served {waited:.2f} s after the descriptors were free: the pause is {suspend} s"
    else:
        assert waited < 1.0, f"served only {waited:.2f} s after the descriptors were free"
