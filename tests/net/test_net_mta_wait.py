"""MtaClient and collect_all: several milters waited for together in one greenlet, each held to its own
deadline (M-ERR-2, P-SM-12); no-reply commands leave with the next answered one (D-2, P-SM-1); one
encoding shared by every milter of a stage.

The milter ends are real sockets (gevent socket pairs) served by small greenlets that read the
commands and answer on a schedule.
"""

from __future__ import annotations

import time

import gevent
import pytest
from gevent import socket as gsocket

from milterman.net import MilterIOError, MtaClient, Timeouts
from milterman.net.mta import collect_all
from milterman.protocol import (ABORT, CONTINUE, END_OF_HEADER, END_OF_MESSAGE, PROGRESS, QUIT, AddHeader, Body,
                                CommandDecoder, Connect, Continue, Family, Header, Mail, Negotiate, NegotiateReply)
from milterman.protocol.flags import Step

OFFER = Negotiate(6, 0x1FF, 0x1FFFFF)
CONNECT = Connect("client.example", Family.INET, 25, "192.0.2.1")


class Peer:
    """The milter end of one socket pair: negotiates, then records what arrives and answers by script."""

    def __init__(self, sock, protocol: int = 0) -> None:
        self.sock = sock
        self.decoder = CommandDecoder()
        self.received: list = []
        self.reads: list[bytes] = []
        sock.sendall(NegotiateReply(6, 0x1FF, protocol).encode())

    def read_commands(self, count: int) -> list:
        """Block until ``count`` more commands have arrived (the offer included)."""
        commands = []
        while len(commands) < count:
            message = self.decoder.next_message()
            if message is None:
                data = self.sock.recv(262144)
                assert data, "the client closed"
                self.reads.append(data)
                self.decoder.feed(data)
                continue
            commands.append(message)
        self.received += commands
        return commands

    def answer(self, schedule: list[tuple[float, object]]) -> None:
        """Send each packet after its delay (seconds since the previous one)."""
        for delay, reply in schedule:
            gevent.sleep(delay)
            self.sock.sendall(reply.encode())


def negotiated(timeouts: Timeouts, protocol: int = 0) -> tuple[MtaClient, Peer]:
    ours, theirs = gsocket.socketpair()
    client = MtaClient(ours, OFFER, timeouts=timeouts)
    peer = Peer(theirs, protocol)
    client.negotiate()
    peer.read_commands(1)
    return client, peer


def answered(client: MtaClient, peer: Peer, *commands) -> None:
    """Each command sent, read by the milter end and answered continue."""
    for command in commands:
        assert client.begin(command)
        peer.read_commands(1)
        peer.answer([(0, CONTINUE)])
        assert isinstance(client.collect(command.LETTER).final, Continue)


def assert_nothing_sent(peer: Peer) -> None:
    peer.sock.settimeout(0.0)
    try:
        with pytest.raises(BlockingIOError):
            peer.sock.recv(1)
    finally:
        peer.sock.settimeout(None)


def close(*pairs) -> None:
    for client, peer in pairs:
        client.close(send_quit=False)
        peer.sock.close()


def test_M_ERR_2_one_wait_for_all_in_order_each_with_its_own_deadline():
    """Replies arriving in any order land at their client's place; the silent one times out at its own
    deadline, within the same wait as the others (no greenlet per child)."""
    pairs = [negotiated(Timeouts(reading=timeout)) for timeout in (2.0, 2.0, 0.3)]
    for client, _ in pairs:
        assert client.begin(CONNECT)
    jobs = [gevent.spawn(pairs[0][1].answer, [(0.2, CONTINUE)]), gevent.spawn(pairs[1][1].answer, [(0.05, CONTINUE)])]
    started = time.monotonic()
    before = gevent.getcurrent()
    results = collect_all([client for client, _ in pairs], "C")
    elapsed = time.monotonic() - started
    assert gevent.getcurrent() is before
    assert isinstance(results[0].final, Continue) and isinstance(results[1].final, Continue)
    assert isinstance(results[2], MilterIOError) and results[2].kind == "reading timeout"
    assert 0.25 <= elapsed < 1.0
    gevent.joinall(jobs, timeout=2)
    for client, _ in pairs:
        assert not client._readable.active  # every watcher stopped after the wait
    close(*pairs)


def test_M_ERR_2_a_reply_already_in_the_socket_is_taken_after_the_deadline():
    client, peer = negotiated(Timeouts(reading=0.1))
    assert client.begin(CONNECT)
    peer.sock.sendall(CONTINUE.encode())
    gevent.sleep(0.25)  # the session was busy elsewhere past this child's deadline
    result = collect_all([client], "C")[0]
    assert isinstance(result.final, Continue)
    close((client, peer))


def test_P_SM_12_progress_restarts_only_its_own_deadline_in_a_shared_wait():
    slow, slow_peer = negotiated(Timeouts(end_of_message=0.3))
    silent, silent_peer = negotiated(Timeouts(end_of_message=0.3))
    for client, peer in ((slow, slow_peer), (silent, silent_peer)):
        answered(client, peer, CONNECT, Mail("<a@example.org>"))
    for client in (slow, silent):
        assert client.begin(END_OF_MESSAGE)
    job = gevent.spawn(slow_peer.answer, [(0.2, PROGRESS), (0.2, PROGRESS), (0.2, AddHeader("X-A", "1")),
                                          (0, CONTINUE)])
    relayed = []
    slow.on_progress = lambda: relayed.append(time.monotonic())
    started = time.monotonic()
    first, second = collect_all([slow, silent], "E")
    elapsed = time.monotonic() - started
    assert first.progress == 2 and len(relayed) == 2 and first.modifications == [AddHeader("X-A", "1")]
    assert isinstance(second, MilterIOError) and second.kind == "end-of-message timeout"
    assert 0.55 <= elapsed < 1.5  # past the 0.3 s timeout thanks to PROGRESS (P-SM-12)
    assert silent.waited >= 0.25
    job.join(timeout=2)
    close((slow, slow_peer), (silent, silent_peer))


def test_a_closed_milter_fails_alone_in_a_shared_wait():
    alive, alive_peer = negotiated(Timeouts(reading=2.0))
    gone, gone_peer = negotiated(Timeouts(reading=2.0))
    for client in (alive, gone):
        client.begin(CONNECT)
    job = gevent.spawn(alive_peer.answer, [(0.1, CONTINUE)])
    gone_peer.read_commands(1)
    gone_peer.sock.close()
    first, second = collect_all([alive, gone], "C")
    assert isinstance(first.final, Continue)
    assert isinstance(second, MilterIOError) and second.kind == "closed"
    job.join(timeout=2)
    alive.close(send_quit=False)
    gone.close(send_quit=False)
    alive_peer.sock.close()


def test_M_ERR_8_an_interrupted_wait_leaves_no_watcher_behind():
    """The disconnect check throws into the waiting greenlet: the wait ends, its watchers are stopped and
    the client can be waited on again."""
    client, peer = negotiated(Timeouts(reading=5.0))
    client.begin(CONNECT)

    class Interrupted(BaseException):
        pass

    waiter = gevent.spawn(collect_all, [client], "C")
    gevent.sleep(0.05)
    waiter.kill(Interrupted, block=True, timeout=2)
    assert waiter.dead and isinstance(waiter.exception, Interrupted)
    assert not client._readable.active
    peer.sock.sendall(CONTINUE.encode())
    assert isinstance(collect_all([client], "C")[0].final, Continue)
    close((client, peer))


def test_D_2_a_command_without_reply_leaves_with_the_next_answered_one():
    client, peer = negotiated(Timeouts(reading=2.0), protocol=int(Step.NO_REPLY_HEADER))
    answered(client, peer, CONNECT, Mail("<a@example.org>"))
    reads = len(peer.reads)
    assert client.begin(Header("Subject", "one")) is False
    assert client.begin(Header("To", "two")) is False
    assert_nothing_sent(peer)
    assert client.begin(END_OF_HEADER) is True
    assert [type(command).__name__ for command in peer.read_commands(3)] == ["Header", "Header", "EndOfHeader"]
    assert len(peer.reads) == reads + 1  # one write carried all three
    peer.answer([(0, CONTINUE)])
    client.collect("N")
    close((client, peer))


def test_P_SM_4_abort_waits_for_the_next_command_and_quit_takes_it_along():
    client, peer = negotiated(Timeouts(reading=2.0))
    answered(client, peer, CONNECT, Mail("<a@example.org>"))
    client.begin(ABORT)
    assert_nothing_sent(peer)
    client.begin(QUIT)  # QUIT never waits: nothing would carry it
    assert [command.LETTER for command in peer.read_commands(2)] == ["A", "Q"]
    close((client, peer))


def test_one_encoding_for_every_milter_and_a_relayed_body_chunk_intact():
    first, first_peer = negotiated(Timeouts(reading=2.0))
    second, second_peer = negotiated(Timeouts(reading=2.0))
    packet = CONNECT.encode()
    for client in (first, second):
        assert client.begin(CONNECT, packet)
    for peer in (first_peer, second_peer):
        assert peer.read_commands(1) == [CONNECT]
        peer.answer([(0, CONTINUE)])
    collect_all([first, second], "C")
    chunk = bytes(range(256)) * 400  # 100 KiB: written as header + chunk, without a joined copy
    first_peer.read_commands(0)
    answered(first, first_peer, Mail("<a@example.org>"), Header("Subject", "x"), END_OF_HEADER)
    reader = gevent.spawn(first_peer.read_commands, 1)
    assert first.begin(Body(memoryview(chunk)))
    assert reader.get(timeout=5) == [Body(chunk)]
    first_peer.answer([(0, CONTINUE)])
    assert isinstance(first.collect("B").final, Continue)
    close((first, first_peer), (second, second_peer))


def test_P_SM_12_collect_waiting_waits_before_reading_with_collects_deadlines_and_outcome():
    """The test server's collect (no read tried before the wait): the reply, its PROGRESS and
    modifications as collect gives them; PROGRESS restarts the deadline; a silent milter times out.
    ``negotiate(wait_first=True)`` collects the negotiation reply so (P-NEG-9)."""
    ours, theirs = gsocket.socketpair()
    client = MtaClient(ours, OFFER, timeouts=Timeouts(reading=0.3, end_of_message=0.3))
    peer = Peer(theirs, protocol=int(Step.NO_REPLY_HEADER))
    assert client.negotiate(wait_first=True).protocol_bits == int(Step.NO_REPLY_HEADER)
    peer.read_commands(1)
    answered(client, peer, CONNECT, Mail("<a@example.org>"))
    assert client.begin(END_OF_MESSAGE)
    job = gevent.spawn(peer.answer, [(0.2, PROGRESS), (0.2, AddHeader("X-A", "1")), (0, CONTINUE)])
    started = time.monotonic()
    response = client.collect_waiting("E")
    assert 0.35 <= time.monotonic() - started < 1.5  # past the 0.3 s timeout thanks to PROGRESS
    assert isinstance(response.final, Continue) and response.progress == 1
    assert response.modifications == [AddHeader("X-A", "1")]
    assert not client._readable.active
    job.join(timeout=2)
    assert client.begin(Mail("<b@example.org>"))
    with pytest.raises(MilterIOError) as failure:
        client.collect_waiting("M")
    assert failure.value.kind == "reading timeout" and not client._readable.active
    close((client, peer))


def test_M_ERR_8_an_interrupted_collect_waiting_leaves_no_watcher_behind():
    client, peer = negotiated(Timeouts(reading=5.0))
    client.begin(CONNECT)

    class Interrupted(BaseException):
        pass

    waiter = gevent.spawn(client.collect_waiting, "C")
    gevent.sleep(0.05)
    waiter.kill(Interrupted, block=True, timeout=2)
    assert waiter.dead and isinstance(waiter.exception, Interrupted)
    assert not client._readable.active
    peer.sock.sendall(CONTINUE.encode())
    assert isinstance(client.collect_waiting("C").final, Continue)
    close((client, peer))
