"""The MTA side of a milter socket: send commands, collect replies, apply timeouts (P-SM-9, P-SM-12).

:class:`MtaClient` is the low-level exchange that the manager's child side and the
test server share; the protocol rules it follows are :class:`~milterman.protocol.MtaState`'s
and :func:`~milterman.protocol.macros.macro_packet`'s (the tools' whole transaction is
:func:`milterman.testing.transaction.play_transaction`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from ..protocol import QUIT, Command, MtaState, Negotiate, Options, ProtocolError, Reply, ReplyDecoder
from ..protocol.flags import MAX_DATA_SIZE_1M
from ..protocol.macros import macro_packet
from .sockets import connect as open_connection
from .sockets import send_all
from .spec import ConnectionSpec


class MilterIOError(Exception):
    """The milter could not be talked to: timeout, closed connection or socket error.

    ``kind`` is one of ``connection timeout``, ``writing timeout``, ``reading timeout``,
    ``end-of-message timeout``, ``closed`` or ``io``; ``str()`` is the message the tools print.
    """

    def __init__(self, kind: str, message: str | None = None) -> None:
        super().__init__(message or kind)
        self.kind = kind


@dataclass(slots=True)
class Timeouts:
    """Per-phase timeouts in seconds, as the test server names them."""

    connection: float = 300.0
    writing: float = 10.0
    reading: float = 10.0
    end_of_message: float = 300.0


@dataclass(slots=True)
class Response:
    """Everything the milter sent for one command: the final reply and what preceded it."""

    final: Reply
    modifications: list[Reply] = field(default_factory=list)
    progress: int = 0


class MtaClient:
    """One milter socket driven from the MTA side.

    Writes are batched: macros queue until their command is sent, and both leave
    in one write. Reads honour the per-phase timeout; PROGRESS restarts it (P-SM-12).
    """

    def __init__(self, sock, offer: Negotiate, *, timeouts: Timeouts | None = None, strict: bool = True,
                 max_data_size: int = MAX_DATA_SIZE_1M, check_reply_text: bool = True) -> None:
        self.sock = sock
        self.timeouts = timeouts or Timeouts()
        self.state = MtaState(offer, strict=strict)
        self.decoder = ReplyDecoder(max_data_size=max_data_size, strict=strict, check_reply_text=check_reply_text)
        self._pending: list[bytes] = []
        self._deadline = 0.0
        self._timeout = self.timeouts.reading
        #: seconds spent waiting for replies (the manager's per-child elapsed time)
        self.waited = 0.0
        #: called for each PROGRESS / modification as it arrives (the manager relays them at once)
        self.on_progress = None
        self.on_modification = None

    @classmethod
    def open(cls, spec: ConnectionSpec, offer: Negotiate, *, timeouts: Timeouts | None = None,
             strict: bool = True, check_reply_text: bool = True) -> "MtaClient":
        """Connect within the connection timeout (``MilterIOError`` on failure)."""
        timeouts = timeouts or Timeouts()
        try:
            sock = open_connection(spec, timeouts.connection)
        except TimeoutError:
            raise MilterIOError("connection timeout") from None
        except OSError as error:
            raise MilterIOError("io", f"Failed to connect to {spec}: {error.strerror or error}") from None
        return cls(sock, offer, timeouts=timeouts, strict=strict, check_reply_text=check_reply_text)

    @property
    def options(self) -> Options | None:
        return self.state.options

    def negotiate(self) -> Options:
        """Send our offer and validate the milter's answer (P-NEG-9)."""
        self.send(self.state.offer)
        assert self.state.options is not None
        return self.state.options

    def will_send(self, letter: str) -> bool:
        return self.state.will_send(letter)

    def queue_macros(self, stage: str, macros: dict[str, str] | list[tuple[str, str]]) -> None:
        """Queue a macro packet for ``stage``, filtered by the milter's macro-list request (P-NEG-14)."""
        packet = macro_packet(self.state.options, stage, macros)
        if packet is not None:
            self._pending.append(packet.encode())

    def queue_encoded_macros(self, stage: str, packet: bytes) -> bool:
        """Queue an already encoded macro packet when this milter asked for no list at ``stage`` (the
        manager encodes the MTA's macros once for every child); ``False``: use :meth:`queue_macros`."""
        options = self.state.options
        if options is not None and options.macro_request(stage) is not None:
            return False
        self._pending.append(packet)
        return True

    def send(self, command: Command) -> Response | None:
        """Send ``command`` (after any queued macros); wait for its reply when one is owed."""
        if not self.begin(command):
            return None
        return self.collect(command.LETTER)

    def begin(self, command: Command) -> bool:
        """Write ``command`` (after any queued macros) without waiting; ``True`` when a reply is owed.

        The reply's deadline starts now, so a caller that fans one command out to several
        milters and then collects the replies one by one still gives each its own timeout.
        """
        expects_reply = self.state.send(command)
        self._pending.append(command.encode())
        data = b"".join(self._pending)
        self._pending.clear()
        self._write(data)
        if expects_reply:
            self._timeout = self.timeouts.end_of_message if command.LETTER == "E" else self.timeouts.reading
            self._deadline = time.monotonic() + self._timeout
        return expects_reply

    def _write(self, data: bytes) -> None:
        self.sock.settimeout(self.timeouts.writing)
        try:
            send_all(self.sock, data)
        except TimeoutError:
            raise MilterIOError("writing timeout") from None
        except OSError as error:
            raise MilterIOError("io", f"write failed: {error.strerror or error}") from None

    def collect(self, letter: str) -> Response:
        """Read until the final reply to the command begun last; PROGRESS restarts the timer (P-SM-12)."""
        kind = "end-of-message timeout" if letter == "E" else "reading timeout"
        modifications: list[Reply] = []
        progress = 0
        decoder = self.decoder
        state = self.state
        started = time.monotonic()
        try:
            while True:
                reply = decoder.next_message()
                if reply is None:
                    # Past the deadline a reply that already arrived is still taken: a caller that
                    # collects several milters one after another must not time out the one whose
                    # answer waited in its socket while a slower one was read (M-ERR-2).
                    remaining = max(0.0, self._deadline - time.monotonic())
                    self.sock.settimeout(remaining)
                    try:
                        data = self.sock.recv(262144)
                    except (TimeoutError, BlockingIOError):
                        raise MilterIOError(kind) from None
                    except OSError as error:
                        raise MilterIOError("io", f"read failed: {error.strerror or error}") from None
                    if not data:
                        decoder.feed_eof()
                        raise MilterIOError("closed", "connection closed by the milter")
                    decoder.feed(data)
                    continue
                if state.receive(reply):
                    return Response(reply, modifications, progress)
                if reply.LETTER == "p":
                    progress += 1
                    self._deadline = time.monotonic() + self._timeout
                    if self.on_progress is not None:
                        self.on_progress()
                else:
                    modifications.append(reply)
                    if self.on_modification is not None:
                        self.on_modification(reply)
        finally:
            self.waited += time.monotonic() - started

    def close(self, send_quit: bool = True) -> None:
        """Send QUIT (when still possible) and close the socket."""
        try:
            if send_quit and self.state.can_quit:
                self.send(QUIT)
        except (MilterIOError, ProtocolError):
            pass
        finally:
            try:
                self.sock.close()
            except OSError:
                pass
