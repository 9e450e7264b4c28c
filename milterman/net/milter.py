"""The milter side of a socket: read commands, call a handler per stage, write replies.

The shape is the one libmilter users know: a handler object per connection with
one method per stage, returning a reply (or ``None`` for continue), and calls on
the session for end-of-message modifications. Protocol rules stay in
:mod:`milterman.protocol.state`; this module only moves bytes (gevent sockets).

Replies produced while handling one batch of received packets leave in one
write; modifications queue in front of the final reply (P-FRM-6: one writer).
"""

from __future__ import annotations

import itertools
import socket
import traceback
from dataclasses import dataclass
from collections.abc import Callable

from ..log import DEBUG, ERROR, TRACE, Logger, logger as default_logger
from ..protocol import (CONTINUE, PROGRESS, Action, AddHeader, AddRcpt, AddRcptWithParameters, ChangeFrom,
                        ChangeHeader, CommandDecoder, DeleteRcpt, InsertHeader, MilterState, Negotiate,
                        Options, ProtocolError, Quarantine, RemoteProtocolError, ReplaceBody, Reply, Step,
                        chunk_body)
from ..protocol.flags import MAX_DATA_SIZE_1M
from ..protocol.negotiation import EVENT_FLAGS
from .sockets import send_all

#: process-wide id counter for sessions and child connections
_ids = itertools.count(1)


def next_id() -> int:
    """A fresh id for a protocol agent (MTA-side session or child connection)."""
    return next(_ids)


#: command letter → handler method name
HANDLER_METHODS = {"C": "connect", "H": "helo", "M": "envelope_from", "R": "envelope_recipient", "T": "data",
                   "U": "unknown", "L": "header", "N": "end_of_header", "B": "body", "E": "end_of_message"}


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


class Interrupt(BaseException):
    """Raised into a session's greenlet while a handler method waits: the handler's ``interrupted``
    gives the reply to the current command at once (the manager's disconnect check, M-ERR-8)."""


class MilterSession:
    """Serves one accepted MTA connection with handlers made by ``handler_factory``."""

    def __init__(self, sock: socket.socket, handler_factory: Callable[["MilterSession"], MilterHandler], *,
                 logger: Logger = default_logger, strict: bool = True, max_data_size: int = MAX_DATA_SIZE_1M,
                 idle_timeout: float | None = 7210.0, session_id: int | None = None,
                 packet_buffer_size: int = 0) -> None:
        self.sock = sock
        self.id = next_id() if session_id is None else session_id
        self.logger = logger
        self.state = MilterState(strict=strict)
        self.decoder = CommandDecoder(max_data_size=max_data_size, strict=strict)
        self.idle_timeout = idle_timeout
        self._factory = handler_factory
        self.handler = handler_factory(self)
        self._outgoing: list[bytes] = []
        self._queued_bytes = 0
        #: flush once this many reply bytes are queued (0: one write per received batch)
        self.packet_buffer_size = packet_buffer_size
        self._unwanted = 0
        self._methods: dict[str, Callable] = {}
        self._bind_methods()
        self.closed = False
        #: the MTA's negotiation offer (a handler made after QUIT_NC needs it again, D-4)
        self.offer: Negotiate | None = None
        self._handler_used = True
        #: commands received from the MTA: a connection without any is no milter session (M-MNT-1)
        self.commands_received = 0
        #: the letter of the command being handled (the macro context of P-MAC)
        self.current: str | None = None
        from gevent.lock import Semaphore

        self._write_lock = Semaphore()

    def _bind_methods(self) -> None:
        handler = self.handler
        self._methods = {letter: getattr(handler, name) for letter, name in HANDLER_METHODS.items()}

    # ----------------------------------------------------------------- what handlers use

    @property
    def macros(self):
        """The macro store of this connection (P-MAC-6 lookups)."""
        return self.state.macros

    @property
    def options(self) -> Options | None:
        return self.state.options

    def getsymval(self, name: str) -> str | None:
        """libmilter's lookup: newest stage first, ``x`` and ``{x}`` alike (P-MAC-5)."""
        return self.state.macros.get(name)

    def queue(self, reply: Reply) -> None:
        """Queue a reply or modification (checked against the protocol state) for the next write."""
        self.state.check_send(reply)
        data = reply.encode()
        self._outgoing.append(data)
        if self.packet_buffer_size:
            self._queued_bytes += len(data)
            if self._queued_bytes >= self.packet_buffer_size:
                self.flush()

    def add_header(self, name: str, value: str) -> None:
        self.queue(AddHeader(name, value))

    def insert_header(self, index: int, name: str, value: str) -> None:
        self.queue(InsertHeader(index, name, value))

    def change_header(self, name: str, index: int, value: str) -> None:
        """Change (or with an empty value delete) the ``index``-th header named ``name`` (P-MOD-5)."""
        self.queue(ChangeHeader(index, name, value))

    def add_recipient(self, recipient: str, args: str | None = None) -> None:
        self.queue(AddRcpt(recipient) if args is None else AddRcptWithParameters(recipient, args))

    def delete_recipient(self, recipient: str) -> None:
        self.queue(DeleteRcpt(recipient))

    def change_from(self, sender: str, args: str | None = None) -> None:
        self.queue(ChangeFrom(sender, args))

    def replace_body(self, body: bytes) -> None:
        """Replace the body; split into 65535-byte packets (P-MOD-11)."""
        chunks = chunk_body(body) or [b""]
        for chunk in chunks:
            self.queue(ReplaceBody(chunk))

    def quarantine(self, reason: str) -> None:
        self.queue(Quarantine(reason))

    def progress(self) -> None:
        """Tell the MTA we are still working (P-RPL-9); sent at once, end of message only."""
        self.state.check_send(PROGRESS)
        self._outgoing.append(PROGRESS.encode())
        self.flush()

    def flush(self) -> None:
        """Write everything queued, as one packet stream (P-FRM-6)."""
        if not self._outgoing:
            return
        with self._write_lock:
            data = b"".join(self._outgoing)
            self._outgoing.clear()
            self._queued_bytes = 0
            send_all(self.sock, data)

    # ----------------------------------------------------------------- the loop

    def run(self) -> bool:
        """Serve until QUIT, EOF, an idle timeout or a protocol error; never raises.

        Returns whether the MTA sent at least one command: a connection that is opened and
        closed (a readiness probe) is no milter session and is not counted for maintenance.
        """
        log = self.logger
        try:
            self.sock.settimeout(self.idle_timeout)
            while not self.closed:
                try:
                    data = self.sock.recv(262144)
                except TimeoutError:
                    log.error(f"[{self.id}] [milter][error][timeout] no command for {self.idle_timeout:g} s")
                    break
                if not data:
                    self.decoder.feed_eof()
                    break
                self.decoder.feed(data)
                self._handle_available()
                self.flush()
        except RemoteProtocolError as error:
            self._protocol_error(error)
        except ProtocolError as error:  # a handler asked for something the protocol forbids
            log.error(f"[{self.id}] [milter][error][local] {error}")
        except OSError as error:
            if log.enabled(DEBUG):
                log.debug(f"[{self.id}] [milter][error][io] {error}")
        except Exception as error:  # a handler bug must not take the worker down
            log.error(f"[{self.id}] [milter][error][internal] {error!r}: "
                      f"{traceback.format_exc().strip().splitlines()[-3:]}")
        finally:
            self._finish()
        return self.commands_received > 0

    def _handle_available(self) -> None:
        state = self.state
        log = self.logger
        tracing = log.enabled(TRACE)
        for command in self.decoder:
            self.commands_received += 1
            if tracing:
                log.trace(f"[{self.id}] [milter][receive] {command!r}")
            letter = command.LETTER
            was_in_message = state.message_step != 0
            if was_in_message and (letter == "M" or letter == "H"):
                self.handler.abort()  # implied abort (P-SM-8)
            needs_reply = state.receive(command)
            if state.warnings:
                for warning in state.warnings:
                    log.warning(f"[{self.id}] [milter][warning] {warning}")
                state.warnings.clear()
            method = self._methods.get(letter)
            if method is not None:
                self.current = letter
                self._handler_used = True
                try:
                    if letter == "E" and command.chunk:  # lenient mode: data on E is a last body chunk (P-BAD-20)
                        self._methods["B"](command)
                    if letter in EVENT_FLAGS and self._unwanted & EVENT_FLAGS[letter][0]:
                        reply = None  # an event the application asked to skip: answer it ourselves (P-NEG-8 step 4)
                    else:
                        reply = method(command)
                except Interrupt as interrupt:
                    reply = self.handler.interrupted(interrupt)
                if needs_reply:
                    self.queue(reply or CONTINUE)
                continue
            if letter == "D":
                continue
            if letter == "O":
                self._negotiate(command)
            elif letter == "A":
                if was_in_message:
                    self.handler.abort()
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
        reply = self.state.negotiate(offer, actions=wanted.actions, protocol=wanted.protocol,
                                     macro_lists=wanted.macro_lists, required_actions=wanted.required_actions)
        self._unwanted = int(wanted.protocol) & int(Step.NO_CONNECT | Step.NO_HELO | Step.NO_MAIL | Step.NO_RCPT
                                               | Step.NO_BODY | Step.NO_HEADERS | Step.NO_END_OF_HEADER
                                               | Step.NO_UNKNOWN | Step.NO_DATA)
        self._outgoing.append(reply.encode())
        options = self.state.options
        if options is not None and options.max_data_size > self.decoder.max_data_size:
            self.decoder.max_data_size = options.max_data_size
        self.handler.negotiated(options)

    def _protocol_error(self, error: RemoteProtocolError) -> None:
        self.logger.error(f"[{self.id}] [milter][error][protocol] {error}")
        try:
            reply = self.handler.protocol_error(error)
            if reply is not None and self.state.phase != "init":
                self._outgoing.clear()
                self._outgoing.append(reply.encode())
                self.flush()
        except Exception as failure:
            if self.logger.enabled(ERROR):
                self.logger.error(f"[{self.id}] [milter][error][fallback] {failure!r}")

    def _finish(self) -> None:
        self.closed = True
        try:
            if self.state.message_step:
                self.handler.abort()
            if self._handler_used:
                self.handler.close()
        except Exception as error:
            self.logger.error(f"[{self.id}] [milter][error][close] {error!r}")
        try:
            self.sock.close()
        except OSError:
            pass
