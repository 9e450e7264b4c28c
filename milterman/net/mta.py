"""The MTA side of a milter socket: send commands, collect replies, apply timeouts (P-SM-9, P-SM-12).

:class:`MtaClient` is the low-level exchange that the manager's child side and the
test server share; the protocol rules it follows are :class:`~milterman.protocol.MtaState`'s
and :func:`~milterman.protocol.macros.macro_packet`'s (the tools' whole transaction is
:func:`milterman.testing.transaction.play_transaction`).
"""

from __future__ import annotations

import struct
import time
from dataclasses import dataclass, field

from ..protocol import QUIT, Command, MtaState, Negotiate, Options, ProtocolError, Reply, ReplyDecoder
from ..protocol.flags import MAX_DATA_SIZE_1M
from ..protocol.macros import macro_packet
from .sockets import connect as open_connection
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


#: a reply from a local milter nearly always fits; one buffer per process, never held across a wait
_RECEIVE_BUFFER = bytearray(262144)
_RECEIVE_VIEW = memoryview(_RECEIVE_BUFFER)
#: queued no-reply commands are written once they reach this size, even before a command that needs a reply
_PENDING_LIMIT = 65536
#: commands that always leave at once: nothing follows them that would carry them (P-SM-4, P-SM-5)
_FLUSHING = frozenset("QK")
_BODY_HEADER = struct.Struct(">IB")


class MtaClient:
    """One milter socket driven from the MTA side.

    Writes are batched: macros queue until their command is sent, a command the milter does not
    answer (its no-reply bits, ``A``) waits for the next one that it answers, and all leave in one
    write. The socket is non-blocking from the start (a plain system socket from :meth:`open`,
    with no gevent wrapper and no watcher until one is needed): a read is tried first, and only
    when nothing is there does the caller wait on the socket (:func:`collect_all` waits on several
    at once, on one read watcher per connection made the first time) against the per-phase
    deadline; PROGRESS restarts it (P-SM-12). A write the socket does not take whole waits on a
    watcher of its own within the writing timeout.
    """

    __slots__ = ("sock", "timeouts", "state", "decoder", "_pending", "_pending_size", "_deadline", "_timeout", "waited",
                 "on_progress", "on_modification", "_letter", "_modifications", "_progress", "fileno", "_readable",
                 "will_send")

    def __init__(self, sock, offer: Negotiate, *, timeouts: Timeouts | None = None, strict: bool = True,
                 max_data_size: int = MAX_DATA_SIZE_1M, check_reply_text: bool = True) -> None:
        self.sock = sock
        self.timeouts = timeouts or Timeouts()
        self.state = MtaState(offer, strict=strict)
        #: ``will_send(letter)``: should the event go to this milter now; the state's own method (asked per
        #: command and child, so no call of ours around it)
        self.will_send = self.state.will_send
        self.decoder = ReplyDecoder(max_data_size=max_data_size, strict=strict, check_reply_text=check_reply_text)
        self._pending: list = []
        self._pending_size = 0
        self._deadline = 0.0
        self._timeout = self.timeouts.reading
        #: seconds spent waiting for replies (the manager's per-child elapsed time)
        self.waited = 0.0
        #: called for each PROGRESS / modification as it arrives (the manager relays them at once)
        self.on_progress = None
        self.on_modification = None
        #: the reply being read: its letter, the modifications (a list once there is one) and progress count so far
        self._letter = ""
        self._modifications: list[Reply] | tuple = ()
        self._progress = 0
        #: the socket's descriptor when it is a real socket that can be waited on (None: no socket)
        self.fileno: int | None = None
        self._readable = None
        fileno = getattr(sock, "fileno", None)
        if fileno is not None:
            self.fileno = fileno()
            # once: every read and write is tried without waiting (a connection from :meth:`open` is a plain
            # socket born non-blocking: its own send and recv_into are called, with no bound copies kept)
            if sock.gettimeout() != 0.0:
                sock.settimeout(0.0)

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

    def negotiate(self, *, wait_first: bool = False) -> Options:
        """Send our offer and validate the milter's answer (P-NEG-9); ``wait_first`` as :meth:`collect`'s."""
        self.begin(self.state.offer)
        self.collect("O", wait_first=wait_first)
        assert self.state.options is not None
        return self.state.options

    def queue_macros(self, stage: str, macros: dict[str, str] | list[tuple[str, str]]) -> None:
        """Queue a macro packet for ``stage``, filtered by the milter's macro-list request (P-NEG-14)."""
        packet = macro_packet(self.state.options, stage, macros)
        if packet is not None:
            data = packet.encode()
            self._pending.append(data)
            self._pending_size += len(data)

    def queue_encoded_macros(self, stage: str, packet: bytes) -> bool:
        """Queue an already encoded macro packet when this milter asked for no list at ``stage`` (the
        manager encodes the MTA's macros once for every child); ``False``: use :meth:`queue_macros`."""
        options = self.state.options
        if options is not None and options.macro_lists and options.macro_request(stage) is not None:
            return False
        self._pending.append(packet)
        self._pending_size += len(packet)
        return True

    def send(self, command: Command) -> Response | None:
        """Send ``command`` (after any queued macros); wait for its reply when one is owed."""
        if not self.begin(command):
            return None
        return self.collect(command.LETTER)

    def begin(self, command: Command, packet: bytes | None = None) -> bool:
        """Write ``command`` (after anything queued) without waiting; ``True`` when a reply is owed.

        ``packet`` is the command already encoded (a fan-out encodes it once for every milter, and a
        body chunk is passed on without a copy). A command the milter will not answer is only
        queued: it leaves with the next one it answers, in order (P-SM-1, D-2). The reply's
        deadline starts now, so a caller that fans one command out to several milters and then
        collects the replies still gives each its own timeout.
        """
        expects_reply = self.state.send(command)
        letter = command.LETTER
        if packet is None and letter == "B":
            chunk = command.chunk
            pending = self._pending
            pending.append(_BODY_HEADER.pack(len(chunk) + 1, 0x42))
            pending.append(chunk)
            self._pending_size += len(chunk) + 5
            if expects_reply or self._pending_size >= _PENDING_LIMIT:
                self.flush()
        else:
            if packet is None:
                packet = command.encode()
            if expects_reply and not self._pending:
                self._write(packet)  # the usual case: nothing queued, one packet, one write
            else:
                self._pending.append(packet)
                self._pending_size += len(packet)
                if expects_reply or letter in _FLUSHING or self._pending_size >= _PENDING_LIMIT:
                    self.flush()
        if expects_reply:
            timeouts = self.timeouts
            self._timeout = timeout = timeouts.end_of_message if letter == "E" else timeouts.reading
            self._deadline = time.monotonic() + timeout
        return expects_reply

    def flush(self) -> None:
        """Write everything queued, in one system call when the socket takes it whole."""
        pending = self._pending
        if not pending:
            return
        data = pending[0] if len(pending) == 1 else None
        if data is None and self._pending_size > 16384:
            self._write(b"", list(pending))
        else:
            self._write(data if data is not None else b"".join(pending))
        pending.clear()
        self._pending_size = 0

    def _write(self, data, pieces: list | None = None) -> None:
        """One write of ``data``, or of ``pieces`` (large ones, body chunks, leave as they are without
        being joined into one copy); what the socket does not take at once is waited for."""
        try:
            sent = self.sock.send(data) if pieces is None else self.sock.sendmsg(pieces)
        except BlockingIOError:
            sent = 0
        except OSError as error:
            raise MilterIOError("io", f"write failed: {error.strerror or error}") from None
        if pieces is not None and sent < sum(len(piece) for piece in pieces):
            data = b"".join(pieces)
        if sent < len(data):
            self._write_waiting(memoryview(data)[sent:])

    def _write_waiting(self, rest) -> None:
        """The socket is full: write the rest as it takes it, waiting in this greenlet on a write watcher
        of its own, all of it within the writing timeout (rare: a milter not reading; M-ERR-2)."""
        import gevent

        hub = gevent.get_hub()
        writable = hub.loop.io(self.fileno, 2)
        timer = gevent.Timeout(self.timeouts.writing)  # one deadline for the whole rest, as sendall's
        timer.start()
        send = self.sock.send
        try:
            while rest:
                try:
                    rest = rest[send(rest):]
                except BlockingIOError:
                    hub.wait(writable)
        except gevent.Timeout as expired:
            if expired is not timer:
                raise
            raise MilterIOError("writing timeout") from None
        except OSError as error:
            raise MilterIOError("io", f"write failed: {error.strerror or error}") from None
        finally:
            timer.close()
            writable.close()

    def collect(self, letter: str, *, wait_first: bool = False) -> Response:
        """Read until the final reply to the command begun last; PROGRESS restarts the timer (P-SM-12).

        ``wait_first``: no read is tried before waiting for the socket (when nothing is buffered). For a
        milter in another process written to just now (the test server's load mode) the reply is hardly
        ever there yet, and that read only fails: a system call and an exception per command."""
        started = time.monotonic()
        self._letter = letter
        self._modifications = ()  # most replies come without any: no list made for them
        self._progress = 0
        response = None
        if not wait_first or self.fileno is None or self.decoder.pending_bytes:
            try:
                response = self._take()
            except BaseException:
                self.waited += time.monotonic() - started
                raise
        if response is None:
            results = [None]
            _wait({0: self}, results, started)
            response = results[0]
            if isinstance(response, Exception):
                raise response
        else:
            self.waited += time.monotonic() - started
        return response

    def collect_waiting(self, letter: str) -> Response:
        """:meth:`collect` with ``wait_first``: the same replies, timeouts (P-SM-12, M-ERR-2) and errors."""
        return self.collect(letter, wait_first=True)

    # ------------------------------------------------------------------ reading without waiting

    def _take(self):
        """Every complete packet buffered so far, then one read attempt at a time until the socket
        is empty: the final reply, or ``None`` when more must be waited for. Raises
        :class:`MilterIOError` or :class:`ProtocolError`."""
        decoder = self.decoder
        state = self.state
        reply = decoder.next_message()
        while True:
            if reply is None:
                try:
                    size = self.sock.recv_into(_RECEIVE_BUFFER)
                except BlockingIOError:
                    return None
                except OSError as error:
                    raise MilterIOError("io", f"read failed: {error.strerror or error}") from None
                if not size:
                    decoder.feed_eof()
                    raise MilterIOError("closed", "connection closed by the milter")
                decoder.feed(_RECEIVE_VIEW[:size])
                reply = decoder.next_message()
                continue
            if state.receive(reply):
                return Response(reply, self._modifications, self._progress)
            if reply.LETTER == "p":
                self._progress += 1
                self._deadline = time.monotonic() + self._timeout
                if self.on_progress is not None:
                    self.on_progress()
            else:
                if self._modifications:
                    self._modifications.append(reply)
                else:
                    self._modifications = [reply]
                if self.on_modification is not None:
                    self.on_modification(reply)
            reply = decoder.next_message()

    def _timed_out(self) -> MilterIOError:
        return MilterIOError("end-of-message timeout" if self._letter == "E" else "reading timeout")

    def _watcher(self):
        """The socket's read watcher in the event loop, made the first time a read must wait (many connections
        never wait: the child's answer is already there) and closed with the connection."""
        watcher = self._readable
        if watcher is None:
            import gevent  # a plain import: ``from gevent import`` costs a Python-level call each time

            watcher = self._readable = gevent.get_hub().loop.io(self.fileno, 1)
        return watcher

    def close(self, send_quit: bool = True) -> None:
        """Send QUIT (when still possible) and close the socket."""
        try:
            if send_quit and self.state.can_quit:
                self.send(QUIT)
        except (MilterIOError, ProtocolError):
            pass
        finally:
            watcher, self._readable = self._readable, None
            if watcher is not None:
                watcher.close()
            try:
                self.sock.close()
            except OSError:
                pass


def collect_all(clients: list[MtaClient], letter: str) -> list:
    """The final reply (a :class:`Response`) or the failure (:class:`MilterIOError`,
    :class:`ProtocolError`) of each client, whose command ``letter`` was begun, in order.

    All of it runs in the calling greenlet: each socket is read first (measured: starting a watcher
    again costs libev two epoll_ctl calls, more than a read that finds nothing); the ones with
    nothing there yet are waited on together, with one timer for the earliest deadline. Each client
    is held to its own deadline, and a reply already in its socket when that deadline passes is
    still taken (M-ERR-2). A client with no socket (in process) is collected as it collects.
    """
    results: list = [None] * len(clients)
    waiting: dict[int, MtaClient] = {}
    started = time.monotonic()
    index = 0
    for client in clients:
        if getattr(client, "fileno", None) is None:  # no socket (in process, or a test double)
            try:
                results[index] = client.collect(letter)
            except (MilterIOError, ProtocolError) as error:
                results[index] = error
            index += 1
            continue
        client._letter = letter
        client._modifications = ()
        client._progress = 0
        try:
            outcome = client._take()
        except (MilterIOError, ProtocolError) as error:
            outcome = error
        if outcome is None:
            waiting[index] = client
        else:
            results[index] = outcome
            client.waited += time.monotonic() - started
        index += 1
    if waiting:
        _wait(waiting, results, started)
    return results


def _wait(waiting: dict, results: list, started: float) -> None:
    """Wait in this greenlet for every socket in ``waiting`` (index → client) until its final
    reply, failure or deadline; the outcomes go into ``results``."""
    import gevent  # a plain import: ``from gevent import`` costs a Python-level call each time

    hub = gevent.get_hub()
    loop = hub.loop
    switch = gevent.getcurrent().switch
    for index, client in waiting.items():
        client._watcher().start(switch, index)
    timer = None
    try:
        while waiting:
            if timer is None:  # one timer, for the earliest deadline (PROGRESS may have moved it on)
                deadline = min(client._deadline for client in waiting.values())
                timer = loop.timer(max(0.0, deadline - time.monotonic()))
                timer.start(switch, -1)
            token = hub.switch()
            if token == -1:
                timer.close()
                timer = None
                now = time.monotonic()
                due = [index for index, client in waiting.items() if client._deadline <= now]
            elif token in waiting:
                due = None
            else:
                continue
            for index in due if due is not None else (token,):
                client = waiting[index]
                try:
                    outcome = client._take()  # past its deadline, a reply already there is still taken (M-ERR-2)
                except (MilterIOError, ProtocolError) as error:
                    outcome = error
                if outcome is None:
                    if due is None:
                        continue
                    outcome = client._timed_out()
                client._readable.stop()
                del waiting[index]
                results[index] = outcome
                client.waited += time.monotonic() - started
    finally:
        if timer is not None:
            timer.close()
        for client in waiting.values():
            client._readable.stop()
