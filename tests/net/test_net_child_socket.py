"""A child's connection is a plain non-blocking system socket (D-13): MtaClient waits on its
descriptor itself, in the calling greenlet, and every child timeout still holds (M-ERR-2).

Real sockets (a unix listener); the milter end is a gevent socket served by a greenlet of the
test. A ticking greenlet shows that each wait is spent in the event loop, never blocking the
process; the loop's count of active watchers shows that a wait leaves none behind. An ``inet:``
child whose handshake is never answered is held to its connection timeout in
tests/manager/test_start_concurrency.py (two such children cost one timeout, not two).
"""

from __future__ import annotations

import socket
import tempfile
import time

import gevent
import pytest
from gevent import socket as gsocket

from milterman.net import MilterIOError, MtaClient, Timeouts, bind_listener, parse_spec
from milterman.protocol import CONTINUE, Connect, Continue, Family, Negotiate, NegotiateReply

OFFER = Negotiate(6, 0x1FF, 0x1FFFFF)


@pytest.fixture
def unix_child(tmp_path):
    """A unix listener for a child (its path short enough) and the spec to connect to it."""
    directory = tmp_path if len(str(tmp_path)) < 80 else tempfile.mkdtemp(prefix="mn-", dir="/tmp")
    spec = parse_spec(f"unix:{directory}/child.sock")
    listener = bind_listener(spec)
    yield listener, spec
    listener.close()


def accepted(listener: socket.socket) -> gsocket.socket:
    """The milter end of the connection just made (it is already in the backlog: accept does not wait)."""
    sock, _ = listener.accept()
    return gsocket.socket(sock.family, sock.type, sock.proto, fileno=sock.detach())


class Ticker:
    """A greenlet counting loop turns while the test waits: proof that the wait yields to the hub."""

    def __init__(self) -> None:
        self.ticks = 0
        self.greenlet = gevent.spawn(self._run)

    def _run(self) -> None:
        while True:
            gevent.sleep(0.01)
            self.ticks += 1

    def stop(self) -> int:
        self.greenlet.kill()
        return self.ticks


def test_D13_a_child_connection_is_a_plain_socket_with_a_read_watcher_only_once_a_read_waits(unix_child):
    listener, spec = unix_child
    client = MtaClient.open(spec, OFFER, timeouts=Timeouts(5, 5, 5, 5))
    peer = accepted(listener)
    try:
        assert type(client.sock) is socket.socket and client.sock.gettimeout() == 0.0
        peer.sendall(NegotiateReply(6, 0x1FF, 0).encode())  # the answer is there before it is read
        gevent.sleep(0.05)
        client.negotiate()
        assert client._readable is None  # nothing was waited for: no watcher made
        assert client.begin(Connect("client.example", Family.INET, 25, "192.0.2.1"))
        later = gevent.spawn_later(0.1, peer.sendall, CONTINUE.encode())
        assert isinstance(client.collect("C").final, Continue)
        later.get(timeout=5)
        assert client._readable is not None  # made for the wait, kept for the next one
        assert len(peer.recv(65536)) > 0
    finally:
        client.close(send_quit=False)
        peer.close()
    assert client._readable is None and client.sock.fileno() == -1


def test_M_ERR_2_a_child_that_reads_slowly_gets_the_whole_write_while_others_run(unix_child):
    listener, spec = unix_child
    client = MtaClient.open(spec, OFFER, timeouts=Timeouts(5, 5, 5, 5))
    peer = accepted(listener)
    data = bytes(range(256)) * (16 << 10)  # 4 MiB: far more than the socket buffers hold
    received = bytearray()

    def read_slowly() -> None:
        while len(received) < len(data):
            gevent.sleep(0.001)
            chunk = peer.recv(65536)
            assert chunk
            received.extend(chunk)

    reader = gevent.spawn(read_slowly)
    ticker = Ticker()
    active = gevent.get_hub().loop.activecnt
    try:
        gevent.spawn(client._write, data).get(timeout=20)
        reader.get(timeout=20)
    finally:
        ticks = ticker.stop()
        client.close(send_quit=False)
        peer.close()
    assert bytes(received) == data
    assert ticks > 0
    assert gevent.get_hub().loop.activecnt <= active  # the write watcher is gone


def test_M_ERR_2_writing_timeout_bounds_a_write_to_a_child_that_reads_nothing(unix_child):
    listener, spec = unix_child
    client = MtaClient.open(spec, OFFER, timeouts=Timeouts(5, 0.5, 5, 5))
    peer = accepted(listener)
    ticker = Ticker()
    active = gevent.get_hub().loop.activecnt
    started = time.monotonic()
    try:
        with pytest.raises(MilterIOError, match="writing timeout"):
            gevent.spawn(client._write, b"x" * (16 << 20)).get(timeout=10)
        elapsed = time.monotonic() - started
    finally:
        ticks = ticker.stop()
        client.close(send_quit=False)
        peer.close()
    assert 0.45 <= elapsed < 3, elapsed
    assert ticks >= 10  # the half second was spent in the event loop
    assert gevent.get_hub().loop.activecnt <= active

