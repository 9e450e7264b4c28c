"""MilterSession.start: a session waiting for its MTA is a loop watcher, not a paused greenlet (issue 15).

In this process's own hub, on gevent socket pairs: the greenlets are counted with the collector,
the idle limit of a waiting session ends it from a runner (logged as with ``run``), and the session's
end is told once to ``on_end``.
"""

from __future__ import annotations

import gc
import io

from greenlet import greenlet

from milterman.log import Logger
from milterman.net import MilterHandler, MilterSession
from milterman.protocol import NegotiateReply

from test_net_milter_session import CONNECT, HELO, MAIL, OFFER, _read_packet


def count_greenlets() -> int:
    return sum(1 for item in gc.get_objects() if isinstance(item, greenlet))


class Ended:
    def __init__(self) -> None:
        self.calls: list[tuple[MilterSession, bool]] = []

    def __call__(self, session: MilterSession, counts: bool) -> None:
        self.calls.append((session, counts))


def started(sock, handler=MilterHandler, **kwargs) -> tuple[MilterSession, Ended]:
    """A session started in a greenlet of its own, which is over once the session first waits."""
    import gevent

    kwargs.setdefault("logger", Logger(stream=io.StringIO()))
    session = MilterSession(sock, handler, **kwargs)
    ended = Ended()
    first = gevent.spawn(session.start)
    result = first.get(timeout=5)
    assert result is session  # waiting for the MTA, not over
    session.on_end = ended
    return session, ended


def test_waiting_sessions_hold_no_greenlet():
    import gevent
    from gevent import socket as gsocket

    pairs = [gsocket.socketpair() for _ in range(50)]
    gc.collect()
    before = count_greenlets()
    sessions = []
    try:
        for ours, theirs in pairs:
            session, ended = started(theirs)
            sessions.append((session, ended))
            ours.sendall(OFFER + CONNECT + HELO + MAIL)
        for ours, _theirs in pairs:
            assert isinstance(NegotiateReply.from_payload(_read_packet(ours)[1:]), NegotiateReply)
            assert [_read_packet(ours) for _ in range(3)] == [b"c"] * 3
        gevent.sleep(0.05)
        gc.collect()
        assert count_greenlets() - before < 10  # 50 sessions wait at MAIL FROM
        for ours, _theirs in pairs:
            ours.close()  # EOF: each session ends in a runner
        deadline = gevent.get_hub().loop.now() + 5
        while any(not ended.calls for _session, ended in sessions) and gevent.get_hub().loop.now() < deadline:
            gevent.sleep(0.01)
        assert [ended.calls for _session, ended in sessions] == [[(session, True)] for session, _ended in sessions]
        assert all(session.closed for session, _ended in sessions)
    finally:
        for ours, theirs in pairs:
            ours.close()
            theirs.close()


def test_idle_limit_of_a_waiting_session_ends_it():
    """The idle limit counts only the waits for the MTA; a waiting session that reaches it is finished
    (handler closed, socket closed, the log line of ``run``) and ``on_end`` is told."""
    import gevent
    from gevent import socket as gsocket

    closed: list[str] = []

    class SlowConnect(MilterHandler):
        def connect(self, command):
            gevent.sleep(0.5)  # longer than the limit, but the session is working, not waiting

        def close(self) -> None:
            closed.append("close")

    ours, theirs = gsocket.socketpair()
    stream = io.StringIO()
    try:
        session, ended = started(theirs, SlowConnect, idle_timeout=0.3, logger=Logger(stream=stream))
        ours.sendall(OFFER)
        assert isinstance(NegotiateReply.from_payload(_read_packet(ours)[1:]), NegotiateReply)
        ours.sendall(CONNECT)
        assert _read_packet(ours) == b"c"  # answered after 0.5 s: no timeout while the handler worked
        begun = gevent.get_hub().loop.now()
        ours.settimeout(5)
        assert ours.recv(16) == b""  # the session closed its socket
        waited = gevent.get_hub().loop.now() - begun
        assert 0.25 <= waited < 2, waited
        assert ended.calls == [(session, True)]
        assert closed == ["close"]
        assert "[milter][error][timeout] no command for 0.3 s" in stream.getvalue()
    finally:
        ours.close()
        theirs.close()


def test_stop_finishes_a_waiting_session():
    """``stop`` (the server stopping) finishes a waiting session: the handler's abort and close run."""
    import gevent
    from gevent import socket as gsocket

    calls: list[str] = []

    class Recording(MilterHandler):
        def abort(self) -> None:
            calls.append("abort")

        def close(self) -> None:
            calls.append("close")

    ours, theirs = gsocket.socketpair()
    try:
        session, ended = started(theirs, Recording)
        ours.sendall(OFFER + CONNECT + HELO + MAIL)
        assert isinstance(NegotiateReply.from_payload(_read_packet(ours)[1:]), NegotiateReply)
        assert [_read_packet(ours) for _ in range(3)] == [b"c"] * 3
        session.stop()
        ours.settimeout(5)
        assert ours.recv(16) == b""
        gevent.sleep(0.01)
        assert calls == ["abort", "close"]
        assert ended.calls == [(session, True)]
    finally:
        ours.close()
        theirs.close()


def test_an_interrupt_that_reaches_an_idle_runner_is_dropped():
    """A throw meant for a wait that is over can land on a runner that went idle meanwhile: the runner stays
    idle and usable, and nothing reaches the hub."""
    import gevent

    from milterman.net import runners

    done: list[str] = []

    def step(name: str) -> None:
        done.append(name)

    hub = gevent.get_hub()
    hub.loop.run_callback(runners.run, step, "first")
    gevent.sleep(0.01)
    assert done == ["first"] and runners._idle
    idle = runners._idle[-1]
    hub.loop.run_callback(idle.throw, TimeoutError("stale"))
    gevent.sleep(0.01)
    assert not idle.dead and idle in runners._idle
    hub.loop.run_callback(runners.run, step, "second")
    gevent.sleep(0.01)
    assert done == ["first", "second"]
