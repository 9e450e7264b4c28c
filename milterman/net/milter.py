"""The milter side of a socket: read commands, call a handler per stage, write replies.

The shape is the one libmilter users know: a handler object per connection with
one method per stage, returning a reply (or ``None`` for continue), and calls on
the session for end-of-message modifications. Protocol rules stay in
:class:`milterman.protocol.connection.MilterConnection`; this module only moves bytes
(gevent sockets) and calls the handler.

Replies produced while handling one batch of received packets leave in one
write; modifications queue in front of the final reply (P-FRM-6: one writer).
"""

from __future__ import annotations

import itertools
import socket
import traceback
from time import monotonic
from types import FunctionType
from dataclasses import dataclass
from collections.abc import Callable

from ..log import DEBUG, ERROR, TRACE, Logger, logger as default_logger
from ..protocol import (CONTINUE, PROGRESS, Action, AddHeader, AddRcpt, AddRcptWithParameters, ChangeFrom, ChangeHeader,
                        DeleteRcpt, InsertHeader, Negotiate, Options, ProtocolError, Quarantine,
                        RemoteProtocolError, ReplaceBody, Reply, Step, chunk_body)
from ..protocol.connection import BODY_THEN_END, MilterConnection
from ..protocol.flags import MAX_DATA_SIZE_1M
from ..protocol.stages import HANDLER_METHODS
from .idle import IdleWatch, watch_idle
from .sockets import send_all

#: process-wide id counter for sessions and child connections
_ids = itertools.count(1)
#: the most one read takes from the MTA
RECEIVE_SIZE = 262144
#: gevent's getcurrent and :func:`.runners.run`, set by the first MilterSession.start (this module imports no
#: gevent: the master imports it)
_getcurrent: Callable = None  # type: ignore[assignment]
_run: Callable = None  # type: ignore[assignment]
_get_hub: Callable = None  # type: ignore[assignment]
#: gevent's socket class and Semaphore, imported by the first session (not per session)
_gevent_socket: type | None = None
_Semaphore: type | None = None


def _is_gevent_socket(sock) -> bool:
    """A gevent socket waits in the hub, where one session timer can interrupt it (a plain socket in a
    thread, or a test's stand-in, keeps its own timeout)."""
    global _gevent_socket
    if _gevent_socket is None:
        from gevent.socket import socket as gevent_socket

        _gevent_socket = gevent_socket
    return isinstance(sock, _gevent_socket)


def next_id() -> int:
    """A fresh id for a protocol agent (MTA-side session or child connection)."""
    return next(_ids)


@dataclass(frozen=True, slots=True)
class Wanted:
    """What a milter application asks for in negotiation (P-NEG-8 inputs)."""

    actions: int = Action.NONE
    protocol: int = Step.NONE
    macro_lists: tuple[tuple[int, str], ...] = ()
    required_actions: int = Action.NONE


class MilterHandler:
    """Base class of milter applications; one instance serves one SMTP connection context.

    Override the stage methods you need; each receives the command message and
    returns a :class:`~milterman.protocol.Reply` or ``None`` (continue).
    ``self.session`` offers macros and the end-of-message modifications.
    """

    def __init__(self, session: "MilterSession") -> None:
        self.session = session

    def negotiate(self, offer: Negotiate) -> Wanted:
        """What to ask the MTA for; default: every action offered, every event, every reply."""
        return Wanted(actions=offer.actions)

    def negotiated(self, options: Options) -> None:
        """Called once the options are settled."""

    def connect(self, command) -> Reply | None:
        return None

    def helo(self, command) -> Reply | None:
        return None

    def envelope_from(self, command) -> Reply | None:
        return None

    def envelope_recipient(self, command) -> Reply | None:
        return None

    def data(self, command) -> Reply | None:
        return None

    def unknown(self, command) -> Reply | None:
        return None

    def header(self, command) -> Reply | None:
        return None

    def end_of_header(self, command) -> Reply | None:
        return None

    def body(self, command) -> Reply | None:
        return None

    def end_of_message(self, command) -> Reply | None:
        return None

    def abort(self) -> None:
        """The current message was given up (only called when one was open, P-SM-3)."""

    def close(self) -> None:
        """The SMTP connection context ended (QUIT, QUIT_NC, EOF or error)."""

    def interrupted(self, interrupt: BaseException) -> Reply | None:
        """A wait of this handler was interrupted (:class:`Interrupt`): the reply to the current command."""
        raise interrupt

    def protocol_error(self, error: ProtocolError) -> Reply | None:
        """The MTA broke the protocol; a final reply returned here is sent before closing."""
        return None


#: handler class → its stage functions by call letter (see MilterSession._bind_methods)
_CLASS_METHODS: dict[type, dict[str, Callable] | None] = {}
_HANDLER_NAMES = frozenset(HANDLER_METHODS.values())


def _method_table(methods: dict[str, Callable], *, unbound: bool) -> dict[str, Callable]:
    """Stage callables taking ``(handler, command)``, with the lenient end of message that carries data (BE)."""
    if not unbound:
        methods = {letter: (lambda handler, command, method=method: method(command))
                   for letter, method in methods.items()}
    body, end_of_message = methods["B"], methods["E"]

    def body_then_end(handler, command):
        body(handler, command)
        return end_of_message(handler, command)

    methods[BODY_THEN_END] = body_then_end
    return methods


class Interrupt(BaseException):
    """Raised into a session's greenlet while a handler method waits: the handler's ``interrupted``
    gives the reply to the current command at once (the manager's disconnect check, M-ERR-8)."""


class ModificationCalls:
    """The end-of-message modifications a milter asks for, as calls (P-MOD-*): each becomes one packet handed
    to ``_modify``, which the socket session queues and the in-process client checks and collects."""

    __slots__ = ()

    def _modify(self, modification: Reply) -> None:
        raise NotImplementedError

    def add_header(self, name: str, value: str) -> None:
        self._modify(AddHeader(name, value))

    def insert_header(self, index: int, name: str, value: str) -> None:
        self._modify(InsertHeader(index, name, value))

    def change_header(self, name: str, index: int, value: str) -> None:
        """Change (or with an empty value delete) the ``index``-th header named ``name`` (P-MOD-5)."""
        self._modify(ChangeHeader(index, name, value))

    def add_recipient(self, recipient: str, args: str | None = None) -> None:
        self._modify(AddRcpt(recipient) if args is None else AddRcptWithParameters(recipient, args))

    def delete_recipient(self, recipient: str) -> None:
        self._modify(DeleteRcpt(recipient))

    def change_from(self, sender: str, args: str | None = None) -> None:
        self._modify(ChangeFrom(sender, args))

    def replace_body(self, body: bytes) -> None:
        """Replace the body; split into 65535-byte packets, as a socket carries it (P-MOD-11)."""
        for chunk in chunk_body(body) or [b""]:
            self._modify(ReplaceBody(chunk))

    def quarantine(self, reason: str) -> None:
        self._modify(Quarantine(reason))


class MilterSession(ModificationCalls):
    """Serves one accepted MTA connection with handlers made by ``handler_factory``."""

    def __init__(self, sock: socket.socket, handler_factory: Callable[["MilterSession"], MilterHandler], *,
                 logger: Logger = default_logger, strict: bool = True, max_data_size: int = MAX_DATA_SIZE_1M,
                 idle_timeout: float | None = 7210.0, session_id: int | None = None,
                 packet_buffer_size: int = 0) -> None:
        self.sock = sock
        self.id = next_id() if session_id is None else session_id
        self.logger = logger
        #: the protocol side of the connection: state, decoder, queued replies (no I/O)
        self.connection = MilterConnection(strict=strict, max_data_size=max_data_size)
        #: the protocol state machine (:class:`~milterman.protocol.MilterState`), the connection's for its life
        self.state = self.connection.state
        #: the macro store of this connection (P-MAC-6 lookups); plain attributes: read per command
        self.macros = self.state.macros
        self.idle_timeout = idle_timeout
        self._factory = handler_factory
        self.handler = handler_factory(self)
        #: flush once this many reply bytes are queued (0: one write per received batch)
        self.packet_buffer_size = packet_buffer_size
        self._methods: dict[str, Callable] = {}
        self._bind_methods()
        self.closed = False
        #: the MTA's negotiation offer (a handler made after QUIT_NC needs it again, D-4)
        self.offer: Negotiate | None = None
        self._handler_used = True
        #: a gevent socket's system socket ``send`` (non-blocking), tried first by :meth:`flush`; else None
        self._send = None
        #: the letter of the command being handled (the macro context of P-MAC)
        self.current: str | None = None
        global _Semaphore
        if _Semaphore is None:
            from gevent.lock import Semaphore

            _Semaphore = Semaphore
        self._write_lock = _Semaphore()

    def _bind_methods(self) -> None:
        """The handler's methods by the ``calls`` of :meth:`MilterConnection.events` (one lookup per command).

        Looked up once per handler class (plain functions, called with the handler); a handler whose
        instance holds one of the names itself gets its own bound table.
        """
        handler = self.handler
        cls = type(handler)
        methods = _CLASS_METHODS.get(cls, False)
        if methods is False:
            functions = {letter: getattr(cls, name) for letter, name in HANDLER_METHODS.items()}
            plain = all(type(function) is FunctionType for function in functions.values())
            methods = _CLASS_METHODS[cls] = _method_table(functions, unbound=True) if plain else None
        instance = getattr(handler, "__dict__", None)
        if methods is None or (instance and not _HANDLER_NAMES.isdisjoint(instance)):
            methods = _method_table({letter: getattr(handler, name) for letter, name in HANDLER_METHODS.items()},
                                    unbound=False)
        self._methods = methods

    @property
    def decoder(self):
        return self.connection.decoder

    @decoder.setter
    def decoder(self, decoder) -> None:
        self.connection.decoder = decoder

    @property
    def _outgoing(self) -> list[bytes]:
        return self.connection.outgoing

    @property
    def commands_received(self) -> int:
        """Commands received from the MTA: a connection without any is no milter session (M-MNT-1)."""
        return self.connection.commands_received

    # ----------------------------------------------------------------- what handlers use

    @property
    def options(self) -> Options | None:
        return self.state.options

    def getsymval(self, name: str) -> str | None:
        """libmilter's lookup: newest stage first, ``x`` and ``{x}`` alike (P-MAC-5)."""
        return self.state.macros.get(name)

    def queue(self, reply: Reply) -> None:
        """Queue a reply or modification (checked against the protocol state) for the next write."""
        self.connection.send(reply)
        if self.packet_buffer_size and self.connection.pending_bytes >= self.packet_buffer_size:
            self.flush()

    _modify = queue

    def progress(self) -> None:
        """Tell the MTA we are still working (P-RPL-9); sent at once, end of message only."""
        self.connection.send(PROGRESS)
        self.flush()

    def flush(self) -> None:
        """Write everything queued, as one packet stream (P-FRM-6)."""
        connection = self.connection
        if not connection.outgoing:
            return
        with self._write_lock:
            outgoing = connection.outgoing  # MilterConnection.data_to_send, inline (one call less per write)
            data = b"".join(outgoing)
            outgoing.clear()
            connection.pending_bytes = 0
            send = self._send
            if send is None:
                send_all(self.sock, data)
                return
            try:
                sent = send(data)  # the system socket's send: gevent's adds a call and a timeout check
            except BlockingIOError:
                sent = 0
            if sent < len(data):
                self.sock.sendall(memoryview(data)[sent:])  # the MTA is not reading: wait in the hub

    # ----------------------------------------------------------------- the loop

    def run(self) -> bool:
        """Serve until QUIT, EOF, an idle timeout or a protocol error, in this greenlet; never raises.

        Returns whether the MTA sent at least one command: a connection that is opened and
        closed (a readiness probe) is no milter session and is not counted for maintenance.
        """
        sock = self.sock
        watch = None
        try:
            gevent_socket = _is_gevent_socket(sock)
            if gevent_socket:
                self._send = sock._sock.send  # gevent's socket wraps a non-blocking system socket
            if self.idle_timeout is not None and gevent_socket:
                sock.settimeout(None)  # no gevent Timeout per read: one timer for the whole session
                watch = watch_idle(self.idle_timeout)
            else:
                sock.settimeout(self.idle_timeout)
            recv = sock.recv
            while not self.closed:
                try:
                    if watch is None:
                        data = recv(RECEIVE_SIZE)
                    else:
                        watch.since = monotonic()
                        data = recv(RECEIVE_SIZE)
                        watch.since = None
                except TimeoutError:
                    self._log_idle()
                    break
                if not self._take(data):
                    break
        except Exception as error:
            self._report(error)
        finally:
            if watch is not None:
                watch.stop()
            self._finish()
        return self.commands_received > 0

    # ----------------------------------------------------------------- parked between commands

    #: called with (session, whether the MTA sent a command) when a session :meth:`start` returned ends
    on_end: Callable[["MilterSession", bool], None] | None = None
    #: the greenlet doing this session's step; None while it waits for the MTA (parked) or before start
    _runner = None
    _reader = None
    _watch: IdleWatch | None = None
    _done = False

    def start(self) -> "bool | MilterSession":
        """Serve in this greenlet until the MTA has nothing more to read, then wait without a greenlet.

        A waiting session is a loop watcher on its socket (no greenlet per held connection); each
        batch the MTA sends is handled in a runner greenlet (:mod:`.runners`). Returns what
        :meth:`run` returns when the session is over already, else the session itself, which calls
        :attr:`on_end` when it ends. A socket that is not gevent's is served by :meth:`run`.
        """
        sock = self.sock
        if not _is_gevent_socket(sock):
            return self.run()
        global _getcurrent, _run, _get_hub
        if _run is None:  # imported once, not per session (a from-import of a package module costs calls)
            import gevent

            from . import runners

            _getcurrent, _run, _get_hub = gevent.getcurrent, runners.run, gevent.get_hub
        loop = _get_hub().loop
        try:
            self._send = sock._sock.send  # gevent's socket wraps a non-blocking system socket
            self._recv = sock._sock.recv
            sock.settimeout(None)  # a reply the MTA does not read waits in the hub (flush)
            self._reader = loop.io(sock.fileno(), 1)
            if self.idle_timeout is not None:
                self._watch = IdleWatch(self.idle_timeout, loop, self._expired)
        except Exception as error:
            self._report(error)
            self._end()
            return self.commands_received > 0
        return self if self._step() else self.commands_received > 0

    def _step(self) -> bool:
        """Handle what the MTA sent until its socket has nothing more to read; whether the session waits.

        Called by :meth:`start`, then by the loop through :func:`.runners.run` in a runner each time the
        waiting session's socket becomes readable.
        """
        self._reader.stop()
        self._runner = _getcurrent()
        parked = False
        try:
            if self._watch is not None:
                self._watch.since = None
            recv = self._recv
            while not self.closed:
                try:
                    data = recv(RECEIVE_SIZE)
                except BlockingIOError:
                    self._runner = None
                    if self._watch is not None:
                        self._watch.since = monotonic()
                    self._reader.start(_run, MilterSession._step, self)
                    parked = True
                    return True
                if not self._take(data):
                    break
        except Exception as error:
            self._report(error)
        finally:
            if not parked:
                self._end()
        return False

    def _take(self, data: bytes) -> bool:
        """One read from the MTA: its commands handled and the replies written; False at its end (EOF)."""
        connection = self.connection
        if not data:  # what MilterConnection.receive_data does, without its call per read
            connection.decoder.feed_eof()
            return False
        connection.decoder.feed(data)
        self._handle_available()
        self.flush()
        return True

    def _expired(self) -> None:
        """The idle limit passed while parked (a loop callback): finish the session in a runner."""
        self._reader.stop()
        _run(_time_out, self)

    def stop(self) -> None:
        """End the session (the server stops): a parked one is finished, a working one's step interrupted."""
        import gevent

        gevent.get_hub().loop.run_callback(_stop_now, self)

    def _end(self) -> None:
        """The session is over: release its watchers, finish it, and tell :attr:`on_end`."""
        self._done = True
        self._runner = None
        if self._reader is not None:
            self._reader.close()
        if self._watch is not None:
            self._watch.stop()
        self._finish()
        if self.on_end is not None:
            self.on_end(self, self.commands_received > 0)

    def _log_idle(self) -> None:
        self.logger.error(f"[{self.id}] [milter][error][timeout] no command for {self.idle_timeout:g} s")

    def _report(self, error: Exception) -> None:
        """Log why serving stopped (called in an ``except`` clause); a remote protocol error may get a last reply."""
        log = self.logger
        if isinstance(error, RemoteProtocolError):
            self._protocol_error(error)
        elif isinstance(error, ProtocolError):  # a handler asked for something the protocol forbids
            log.error(f"[{self.id}] [milter][error][local] {error}")
        elif isinstance(error, OSError):
            if log.enabled(DEBUG):
                log.debug(f"[{self.id}] [milter][error][io] {error}")
        else:  # a handler bug must not take the worker down
            log.error(f"[{self.id}] [milter][error][internal] {error!r}: "
                      f"{traceback.format_exc().strip().splitlines()[-3:]}")

    def _handle_available(self) -> None:
        state = self.state
        log = self.logger
        tracing = log.mask & TRACE  # Logger.enabled, inline: checked once per read
        for command, abort, calls, owed in self.connection.events():
            if tracing:
                log.trace(f"[{self.id}] [milter][receive] {command!r}")
            if abort:
                self.handler.abort()  # implied by MAIL or HELO (P-SM-8), or ABORT with an open message (P-SM-3)
            if state.warnings:
                for warning in state.warnings:
                    log.warning(f"[{self.id}] [milter][warning] {warning}")
                state.warnings.clear()
            letter = command.LETTER
            if calls is not None:
                self.current = letter
                self._handler_used = True
                try:
                    reply = self._methods[calls](self.handler, command) if calls else None
                except Interrupt as interrupt:
                    reply = self.handler.interrupted(interrupt)
                if owed:
                    self.queue(reply or CONTINUE)
            elif letter == "O":
                self._negotiate(command)
            elif letter == "Q":
                self.closed = True
                return
            elif letter == "K":
                self.handler.close()
                self.handler = self._factory(self)
                self._handler_used = False
                self._bind_methods()

    def _negotiate(self, offer: Negotiate) -> None:
        self.offer = offer
        wanted = self.handler.negotiate(offer)
        options = self.connection.negotiate(offer, actions=wanted.actions, protocol=wanted.protocol,
                                            macro_lists=wanted.macro_lists, required_actions=wanted.required_actions)
        self.handler.negotiated(options)

    def _protocol_error(self, error: RemoteProtocolError) -> None:
        self.logger.error(f"[{self.id}] [milter][error][protocol] {error}")
        try:
            reply = self.handler.protocol_error(error)
            if reply is not None and self.connection.last_word(reply):
                self.flush()
        except Exception as failure:
            if self.logger.enabled(ERROR):
                self.logger.error(f"[{self.id}] [milter][error][fallback] {failure!r}")

    def _finish(self) -> None:
        self.closed = True
        try:
            if self.connection.message_open:
                self.handler.abort()
            if self._handler_used:
                self.handler.close()
        except Exception as error:
            self.logger.error(f"[{self.id}] [milter][error][close] {error!r}")
        try:
            self.sock.close()
        except OSError:
            pass


def _time_out(session: MilterSession) -> None:
    """A parked session that hit its idle limit (in a runner): logged and finished, as ``run`` does."""
    session._log_idle()
    session._end()


def _stop_now(session: MilterSession) -> None:
    """(a loop callback) Finish a parked session in a runner, or interrupt the step of a working one."""
    if session._done:
        return
    runner = session._runner
    if runner is None:
        session._reader.stop()
        _run(MilterSession._end, session)
    else:
        from greenlet import GreenletExit

        runner.throw(GreenletExit)
