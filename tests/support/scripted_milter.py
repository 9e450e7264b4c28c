"""A scripted milter for behaviour tests, shared by tests/tools and tests/manager.

Built on our own :class:`milterman.net.MilterSession` and a
:class:`milterman.net.MilterHandler` subclass, served by a gevent ``StreamServer``
inside a background thread that runs its own hub (gevent hubs are per thread;
nothing is monkey-patched). It records every packet received (letter, decoded
command, the macros of that stage) and the raw bytes, per session. A
:class:`Script` decides what it answers, which steps it asks for in negotiation
and where it stops answering (or closes its socket).

Import it after putting this directory on ``sys.path`` (the conftest.py files of
the test directories that use it do so).
"""

from __future__ import annotations

import io
import os
import socket
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from milterman.log import Logger
from milterman.net import MilterHandler, MilterSession, Wanted, bind_listener, parse_spec
from milterman.protocol import (REPLY_TYPES, CommandDecoder, ConnectionFailure, LocalProtocolError, Macro, Reply,
                                ReplyCode, decode_one)

#: command letters that carry stage macros (tools.md §1.4)
STAGE_LETTERS = "CHMRTLNBEU"


def short_dir(tmp_path: Path) -> Path:
    """``tmp_path``, or a short directory when unix socket paths would get too long (sun_path is 108 bytes)."""
    if len(str(tmp_path)) < 80:
        return tmp_path
    return Path(tempfile.mkdtemp(prefix="mt-", dir="/tmp"))


class _Close:
    """Script value: close the socket instead of answering."""

    def __repr__(self) -> str:
        return "CLOSE"


#: use as a reply in :attr:`Script.replies`: the milter closes its socket without answering
CLOSE = _Close()


@dataclass
class Script:
    """What the scripted milter does.

    ``replies`` maps a command letter to a reply, a list of replies (one per
    occurrence, ``None`` = continue; occurrences past the end continue) or a
    callable ``(session, command) -> reply`` (end-of-message modifications go
    through ``session``); :data:`CLOSE` closes the socket instead of answering.
    ``hang`` is a letter (``O`` = negotiation) at which the milter never answers
    (until the fixture is torn down); ``hang_occurrence`` limits that to one
    occurrence of the letter (0 = the first; ``None`` = every occurrence).
    ``negotiate_reply`` may rewrite the negotiation reply sent on the wire.
    """

    protocol: int = 0
    actions: int | None = None
    macro_lists: tuple[tuple[int, str], ...] = ()
    replies: dict[str, object] = field(default_factory=dict)
    hang: str | None = None
    hang_occurrence: int | None = None
    #: rewrites the negotiation reply actually sent (``NegotiateReply -> NegotiateReply``), e.g. to ask for
    #: more than was offered; the session's own options stay those it computed
    negotiate_reply: Callable | None = None


@dataclass
class Received:
    """One packet the milter read: its letter, the decoded command and the macros of its stage."""

    letter: str
    command: object
    macros: dict[str, str] = field(default_factory=dict)


class SessionRecord:
    """Everything one milter session saw."""

    def __init__(self) -> None:
        self.received: list[Received] = []
        self.raw = bytearray()
        self.calls: list[str] = []          # handler callbacks: abort, close
        self.done = threading.Event()
        self.error: BaseException | None = None
        self.session: MilterSession | None = None

    def on_command(self, command) -> None:
        letter = command.LETTER
        macros = {}
        if letter in STAGE_LETTERS and self.session is not None:
            macros = dict(self.session.macros.stage(letter))
        self.received.append(Received(letter, command, macros))

    # ------------------------------------------------------------ queries used by the tests

    @property
    def letters(self) -> list[str]:
        """Command letters in arrival order, macro packets left out."""
        return [item.letter for item in self.received if item.letter != "D"]

    @property
    def letters_with_macros(self) -> list[str]:
        return [item.letter for item in self.received]

    def count(self, letter: str) -> int:
        return sum(1 for item in self.received if item.letter == letter)

    def commands(self, letter: str) -> list:
        return [item.command for item in self.received if item.letter == letter]

    def command(self, letter: str):
        found = self.commands(letter)
        assert len(found) == 1, f"expected one {letter!r}, got {len(found)}: {self.letters}"
        return found[0]

    def macros(self, letter: str, index: int = 0) -> dict[str, str]:
        """Macros of the ``index``-th command ``letter`` (brace-stripped names)."""
        return [item.macros for item in self.received if item.letter == letter][index]

    @property
    def macro_packets(self) -> list[Macro]:
        return [item.command for item in self.received if item.letter == "D"]


class RecordingDecoder(CommandDecoder):
    """The session's command decoder, recording raw bytes and every decoded packet."""

    __slots__ = ("record",)

    def __init__(self, record: SessionRecord, **kwargs) -> None:
        super().__init__(**kwargs)
        self.record = record

    def feed(self, data: bytes) -> None:
        self.record.raw += data
        super().feed(data)

    def next_message(self):
        command = super().next_message()
        if command is not None:
            # The previous packet (a macro packet included) was fully handled before the next is
            # asked for, so the stage macros of this command are already stored.
            self.record.on_command(command)
        return command


class ScriptedSession(MilterSession):
    """A MilterSession that records what it reads; it may send what a correct milter must not (a
    connection-failure reply, an invalid reply text, a rewritten negotiation reply) when scripted to."""

    def __init__(self, sock, handler_factory, record: SessionRecord, **kwargs) -> None:
        self.record = record
        super().__init__(sock, handler_factory, **kwargs)
        self.decoder = RecordingDecoder(record, max_data_size=self.decoder.max_data_size,
                                        strict=self.decoder.strict)
        record.session = self

    def queue(self, reply: Reply) -> None:
        if isinstance(reply, ConnectionFailure):
            # P-RPL-12 forbids a real milter to send `f`; the script sends it anyway to test the MTA side
            # (TS-REPLY-6, P-BAD-35), so the state check is bypassed for this one reply.
            self._queue_unchecked(reply)
            return
        try:
            super().queue(reply)
        except LocalProtocolError:
            if not isinstance(reply, ReplyCode):
                raise
            # an invalid reply text (P-BAD-40) sent on purpose: the peer's handling is under test (M-RC-2)
            self._queue_unchecked(reply)

    def _negotiate(self, offer) -> None:
        super()._negotiate(offer)
        rewrite = self.handler.script.negotiate_reply
        if rewrite is not None and self._outgoing:
            reply = decode_one(self._outgoing.pop(), REPLY_TYPES)
            self._outgoing.append(rewrite(reply).encode())

    def _queue_unchecked(self, reply: Reply) -> None:
        self.state.awaiting = None
        self._outgoing.append(reply.encode())


class ScriptedHandler(MilterHandler):
    def __init__(self, session: ScriptedSession, milter: "ScriptedMilter") -> None:
        super().__init__(session)
        self.milter = milter
        self.script = milter.script
        self.record = session.record
        self.seen: Counter[str] = Counter()

    def _maybe_hang(self, letter: str, occurrence: int = 0) -> None:
        script = self.script
        if script.hang == letter and script.hang_occurrence in (None, occurrence):
            import gevent

            deadline = time.monotonic() + 60
            while not self.milter.stopping.is_set() and time.monotonic() < deadline:
                gevent.sleep(0.02)

    def _answer(self, letter: str, command) -> Reply | None:
        occurrence = self.seen[letter]
        self.seen[letter] += 1
        self._maybe_hang(letter, occurrence)
        scripted = self.script.replies.get(letter)
        if isinstance(scripted, list):
            scripted = scripted[occurrence] if occurrence < len(scripted) else None
        if scripted is None:
            return None
        if scripted is CLOSE:
            self._close()
            return None
        if isinstance(scripted, Reply):
            return scripted
        reply = scripted(self.session, command)
        if reply is CLOSE:
            self._close()
            return None
        return reply

    def _close(self) -> None:
        """Close the socket without answering (the session loop then ends on the write error)."""
        session = self.session
        session._outgoing.clear()
        session.closed = True
        try:
            session.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.record.calls.append("closed-by-script")

    def negotiate(self, offer) -> Wanted:
        self._maybe_hang("O")
        script = self.script
        return Wanted(actions=offer.actions if script.actions is None else script.actions,
                      protocol=script.protocol, macro_lists=script.macro_lists)

    def connect(self, command):
        return self._answer("C", command)

    def helo(self, command):
        return self._answer("H", command)

    def envelope_from(self, command):
        return self._answer("M", command)

    def envelope_recipient(self, command):
        return self._answer("R", command)

    def data(self, command):
        return self._answer("T", command)

    def unknown(self, command):
        return self._answer("U", command)

    def header(self, command):
        return self._answer("L", command)

    def end_of_header(self, command):
        return self._answer("N", command)

    def body(self, command):
        return self._answer("B", command)

    def end_of_message(self, command):
        return self._answer("E", command)

    def abort(self) -> None:
        self.record.calls.append("abort")

    def close(self) -> None:
        self.record.calls.append("close")


class ScriptedMilter:
    """A milter on a unix socket, served from a background thread with its own gevent hub."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.spec = f"unix:{path}"
        self.script = Script()
        self.sessions: list[SessionRecord] = []
        self.stopping = threading.Event()
        self.log = io.StringIO()
        self.logger = Logger(stream=self.log)
        self._changed = threading.Condition()
        self._ready = threading.Event()
        self.thread_error: BaseException | None = None
        self.listener = bind_listener(parse_spec(self.spec))
        self.thread = threading.Thread(target=self._serve, name="scripted-milter", daemon=True)
        self.thread.start()
        assert self._ready.wait(10), "scripted milter thread did not start"

    def _serve(self) -> None:
        try:
            import gevent
            from gevent import socket as gsocket
            from gevent.server import StreamServer

            hub = gevent.get_hub()  # this thread's own hub
            listener = self.listener
            sock = gsocket.socket(listener.family, listener.type, listener.proto,
                                  fileno=os.dup(listener.fileno()))
            server = StreamServer(sock, self._handle)

            def watch() -> None:
                while not self.stopping.is_set():
                    gevent.sleep(0.02)
                server.stop(timeout=2)

            gevent.spawn(watch)
            self._ready.set()
            server.serve_forever()
            sock.close()
            hub.destroy(destroy_loop=True)
        except BaseException as error:  # reported at teardown
            self.thread_error = error
            self._ready.set()

    def _handle(self, sock, address) -> None:
        record = SessionRecord()
        with self._changed:
            self.sessions.append(record)
        try:
            ScriptedSession(sock, self._factory, record, logger=self.logger).run()
        except Exception as error:
            record.error = error
        finally:
            record.done.set()
            with self._changed:
                self._changed.notify_all()

    def _factory(self, session: ScriptedSession) -> ScriptedHandler:
        return ScriptedHandler(session, self)

    def wait_sessions(self, count: int, timeout: float = 10.0) -> list[SessionRecord]:
        """The first ``count`` sessions, once each has finished (bounded wait)."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                if len(self.sessions) >= count and all(record.done.is_set() for record in self.sessions[:count]):
                    return list(self.sessions[:count])
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(f"expected {count} finished milter sessions, have "
                                         f"{sum(r.done.is_set() for r in self.sessions)} of {len(self.sessions)}")
                self._changed.wait(min(remaining, 0.1))

    @property
    def session(self) -> SessionRecord:
        """The one session of a single-session test."""
        records = self.wait_sessions(1)
        time.sleep(0.05)
        assert len(self.sessions) == 1, f"expected one milter session, got {len(self.sessions)}"
        return records[0]

    def stop(self) -> None:
        self.stopping.set()
        self.thread.join(10)
        self.listener.close()
        try:
            if self.path.is_socket():
                self.path.unlink()
        except OSError:
            pass
