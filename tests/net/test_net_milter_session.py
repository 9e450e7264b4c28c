"""MilterSession on bad input (P-SM-11, P-BAD-*): close without a reply, never raise, keep serving.

A real MilterSession is served from a background thread (own gevent hub); the
tests play the MTA with a plain blocking socket.
"""

from __future__ import annotations

import io
import socket
import struct
import threading

import pytest

from milterman.log import Logger
from milterman.net import MilterHandler, MilterSession
from milterman.protocol import (Action, Connect, Family, Helo, Mail, Negotiate, NegotiateReply, Rcpt, Step)

OFFER = Negotiate(6, int(Action.ALL), int(Step.ALL)).encode()
CONNECT = Connect("mta.example.net", Family.INET, 25, "10.0.0.1").encode()
HELO = Helo("client.example.net").encode()
MAIL = Mail("<a@example.com>").encode()


def packet(letter: bytes, data: bytes = b"") -> bytes:
    return struct.pack(">I", len(data) + 1) + letter + data


BAD_INPUT = [
    # (id, valid prefix packets, replies expected to them, bad bytes, message still open?)
    pytest.param((), 0, b"\0\0\0\0", False, id="P-BAD-1-length-zero"),
    pytest.param((), 0, b"\x80\0\0\0O", False, id="P-BAD-2-huge-length"),
    pytest.param((), 0, struct.pack(">I", 0x200001) + b"B", False, id="P-BAD-3-above-cap"),
    pytest.param((), 0, packet(b"Z", b"x"), False, id="P-BAD-5-unknown-letter"),
    pytest.param((), 0, packet(b"O", b"\0\0\0\x06"), False, id="P-BAD-6-short-optneg"),
    pytest.param((), 0, Negotiate(1, int(Action.ALL), int(Step.ALL)).encode(), False, id="P-BAD-7-version-1"),
    pytest.param((OFFER,), 1, OFFER, False, id="P-BAD-9-second-optneg"),
    pytest.param((OFFER, CONNECT), 2, packet(b"H"), False, id="P-BAD-10-helo-without-data"),
    pytest.param((OFFER, CONNECT), 2, packet(b"H", b"no-nul"), False, id="P-BAD-11-helo-without-nul"),
    pytest.param((OFFER, CONNECT, HELO), 3, packet(b"M", b"<a@example.com>"), False,
                 id="P-BAD-12-mail-without-nul"),
    pytest.param((OFFER, CONNECT, HELO, MAIL), 4, packet(b"L", b"Subject\0"), True, id="P-BAD-14-header-one-string"),
    pytest.param((OFFER,), 1, packet(b"C", b"host\0X\0\x19addr\0"), False, id="P-BAD-16-connect-family"),
    pytest.param((OFFER, CONNECT, HELO), 3, Rcpt("<b@example.org>").encode(), False, id="P-BAD-21-rcpt-before-mail"),
    pytest.param((OFFER, CONNECT, HELO, MAIL), 4, packet(b"B", b"body")[:7], True, id="P-BAD-4-eof-inside-packet"),
]


@pytest.mark.parametrize("prefix, replies, bad, in_message", BAD_INPUT)
def test_P_SM_11_bad_input_closes_without_reply(session_server, raw_mta, prefix, replies, bad, in_message):
    mta = raw_mta()
    for data in prefix:
        mta.send(data)
        reply = mta.reply()
        assert reply is not None
        if data is OFFER:
            assert isinstance(reply, NegotiateReply)
        else:
            assert reply.LETTER == "c"
    mta.send(bad)
    mta.sock.shutdown(socket.SHUT_WR)  # P-BAD-4 needs the EOF; harmless for the others
    assert mta.read_to_eof() == b""   # closed, and not one byte of reply to the bad packet
    session_server.wait_finished(1)
    assert session_server.raised == []  # run() returned normally
    handler = session_server.handlers[0]
    assert handler.calls[-1] == "close"
    assert handler.calls.count("close") == 1
    assert ("abort" in handler.calls) == in_message  # an open message is aborted first (P-BAD-4)
    assert "[milter][error][protocol]" in session_server.log.getvalue()


def test_P_SM_11_next_connection_served_after_bad_input(session_server, raw_mta):
    bad = raw_mta()
    bad.send(b"\0\0\0\0")
    assert bad.read_to_eof() == b""
    good = raw_mta()
    good.send(OFFER)
    assert isinstance(good.reply(), NegotiateReply)
    good.send(CONNECT)
    assert good.reply().LETTER == "c"


@pytest.mark.parametrize("stage", ["negotiate", "helo", "close"])
def test_handler_exception_does_not_kill_the_server(session_server, raw_mta, stage):
    session_server.fail_at = stage
    mta = raw_mta()
    mta.send(OFFER)
    if stage == "negotiate":
        assert mta.read_to_eof() == b""
    else:
        assert isinstance(mta.reply(), NegotiateReply)
        mta.send(CONNECT)
        assert mta.reply().LETTER == "c"
        mta.send(HELO)
        if stage == "helo":
            assert mta.read_to_eof() == b""  # the failing stage gets no reply; the connection is closed
        else:
            assert mta.reply().LETTER == "c"
            mta.sock.shutdown(socket.SHUT_WR)
            assert mta.read_to_eof() == b""
    session_server.wait_finished(1)
    assert session_server.raised == []
    first = session_server.handlers[0]
    assert first.calls[-1] == "close"  # close() still runs (and may itself fail without harm)
    assert "RuntimeError" in session_server.log.getvalue()
    # the serving thread is alive: the next connection is served normally
    session_server.fail_at = None
    again = raw_mta()
    again.send(OFFER)
    assert isinstance(again.reply(), NegotiateReply)
    again.send(CONNECT)
    assert again.reply().LETTER == "c"
    again.send(HELO)
    assert again.reply().LETTER == "c"


class ExplodingHandler(MilterHandler):
    def negotiate(self, offer):
        raise RuntimeError("boom in negotiate")

    def close(self):
        raise RuntimeError("boom in close")


@pytest.mark.parametrize("data", [b"\0\0\0\0", OFFER, packet(b"Z"), b"\0\0"], ids=["zero", "offer", "letter", "short"])
def test_run_never_raises(data):
    """MilterSession.run() on a plain socket pair: whatever arrives, it returns and closes its socket."""
    ours, theirs = socket.socketpair()
    log = Logger(stream=io.StringIO())
    session = MilterSession(theirs, ExplodingHandler, logger=log, idle_timeout=5)
    outcome: dict[str, object] = {}

    def serve() -> None:
        try:
            session.run()
            outcome["returned"] = True
        except BaseException as error:
            outcome["raised"] = error

    thread = threading.Thread(target=serve)
    thread.start()
    ours.settimeout(5)
    ours.sendall(data)
    ours.shutdown(socket.SHUT_WR)
    received = b""
    while True:
        chunk = ours.recv(4096)
        if not chunk:
            break
        received += chunk
    thread.join(10)
    ours.close()
    assert not thread.is_alive()
    assert outcome == {"returned": True}
    assert received == b""
    assert session.closed
    assert theirs.fileno() == -1  # the session closed its socket


def test_idle_limit_is_one_timer_per_session_and_counts_only_waits_for_the_mta():
    """On a gevent socket the idle limit is one session timer (no Timeout per read): a handler busy longer than
    the limit is not cut off; a wait for the next command longer than the limit ends the session with the log line."""
    import gevent
    from gevent import socket as gsocket

    class SlowConnect(MilterHandler):
        def connect(self, command):
            gevent.sleep(0.5)  # longer than the limit, but the session is working, not waiting

    ours, theirs = gsocket.socketpair()
    stream = io.StringIO()
    session = MilterSession(theirs, SlowConnect, logger=Logger(stream=stream), idle_timeout=0.3)
    runner = gevent.spawn(session.run)
    try:
        ours.sendall(OFFER)
        assert isinstance(NegotiateReply.from_payload(_read_packet(ours)[1:]), NegotiateReply)
        ours.sendall(CONNECT)
        assert _read_packet(ours) == b"c"  # answered after 0.5 s: no timeout while the handler worked
        started = gevent.get_hub().loop.now()
        assert runner.join(timeout=5) is None and runner.ready()
        waited = gevent.get_hub().loop.now() - started
        assert 0.25 <= waited < 2, waited
        assert "[milter][error][timeout] no command for 0.3 s" in stream.getvalue()
        assert ours.recv(16) == b""  # the session closed its socket
    finally:
        runner.kill()
        ours.close()


def _read_packet(sock) -> bytes:
    header = b""
    while len(header) < 4:
        header += sock.recv(4 - len(header))
    length = struct.unpack(">I", header)[0]
    data = b""
    while len(data) < length:
        data += sock.recv(length - len(data))
    return data
