"""Starting a session's children (M-SES-2, M-ERR-2, D-14): a child that hangs delays the others by nothing.

A unix socket connects or fails at once, so the manager opens those children one after another in
the session's greenlet; an ``inet:`` child may wait on its TCP handshake up to its connection
timeout, so those are opened concurrently. Real manager, real sockets: the hanging children are
TCP listeners on loopback whose accept queue is full (the kernel drops further handshakes).
"""

from __future__ import annotations

import socket
import time

from manager_harness import wait_until

from milterman.protocol import CONTINUE

TIMEOUT = 2.0


def full_listener() -> tuple[socket.socket, list[socket.socket]]:
    """A loopback TCP listener whose accept queue is full: a further connect waits, unanswered."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    queued = []
    for _ in range(2):  # backlog 0 holds one connection; one more to be sure it is full
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        try:
            sock.connect(listener.getsockname())
        except BlockingIOError:
            pass
        queued.append(sock)
    probe = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    probe.settimeout(0.5)
    try:
        probe.connect(listener.getsockname())
        hangs = False
    except TimeoutError:
        hangs = True
    finally:
        probe.close()
    assert hangs, "the kernel accepted a connection past a full accept queue"
    return listener, queued


def test_M_SES_2_M_ERR_2_two_hanging_inet_children_cost_one_connection_timeout_not_two(env):
    hanging = [full_listener() for _ in range(2)]
    try:
        env.milter("good")
        specs = [f"inet:{listener.getsockname()[1]}@127.0.0.1" for listener, _ in hanging]
        env.start([{"name": "good"},
                   {"name": "slow1", "connection_spec": specs[0], "connection_timeout": TIMEOUT},
                   {"name": "slow2", "connection_spec": specs[1], "connection_timeout": TIMEOUT}])
        mta = env.mta(timeout=4 * TIMEOUT)
        started = time.monotonic()
        mta.negotiate()  # the children are started here (M-SES-2), before the answer to the MTA
        elapsed = time.monotonic() - started
        assert mta.connect() == [CONTINUE]
        # one after another would take both timeouts (>= 4 s); concurrently, one
        assert TIMEOUT * 0.9 <= elapsed < TIMEOUT * 1.75, elapsed
        output = wait_until(lambda: env.manager.output.count("connection timeout") >= 2 and env.manager.output,
                            5, "both children's connection timeouts logged")
        assert "slow1" in output and "slow2" in output
        mta.quit()
        mta.close()
    finally:
        for listener, queued in hanging:
            for sock in queued:
                sock.close()
            listener.close()
