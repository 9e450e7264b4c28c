"""A milter driven in the same process, with no socket: the MTA side and the milter side joined in memory.

:class:`InProcessClient` is an :class:`~milterman.net.MtaClient` whose commands go, as
message objects, to a :class:`~milterman.net.MilterSession` running the milter class,
and whose replies come back as message objects. Both sides keep their ordinary state
machines (negotiation, the order of commands, which reply is allowed where), so an
in-process milter behaves exactly as the same class served on a socket; only the
encoding, the system calls and the second process are gone.

The milter's callbacks run when the MTA side collects a reply, under the reading (or
end-of-message) timeout: a callback that waits cooperatively (gevent) is interrupted
when it expires, and one that computes past it has its reply thrown away; either way
the MTA side sees the timeout it would see from a socket. ``progress()`` restarts it.
"""

from __future__ import annotations

import time
import traceback
from collections import deque

from ..log import ERROR, Logger, logger as default_logger
from ..net import MilterIOError, MilterSession, MtaClient, Response, Timeouts
from ..protocol import PROGRESS, Command, Negotiate, ProtocolError, Reply
from ..protocol.macros import macro_packet
from .api import Milter
from .runner import handler_factory


class _Expired(Exception):
    """Raised into a callback that waits past its timeout."""


class _Commands:
    """Stands in for the session's decoder: the commands handed over, as objects, in order."""

    __slots__ = ("queue", "max_data_size")

    def __init__(self) -> None:
        self.queue: deque[Command] = deque()
        self.max_data_size = 0

    def __iter__(self):
        queue = self.queue
        while queue:
            yield queue.popleft()

    def feed_eof(self) -> None:
        pass


class _Closed:
    """Where a socket would be, on both sides: nothing travels through it (bytes written to it directly, as the
    manager's disconnect check writes ABORT and QUIT, are dropped: closing the client ends the milter's context)."""

    def send(self, data: bytes) -> int:
        return len(data)

    def settimeout(self, timeout: float | None) -> None:
        pass

    def close(self) -> None:
        pass


class InProcessSession(MilterSession):
    """The ordinary milter-side session, its replies kept as objects instead of written to a socket."""

    def __init__(self, cls: type[Milter], *, logger: Logger, session_id: int | None) -> None:
        super().__init__(_Closed(), handler_factory(cls), logger=logger, idle_timeout=None, session_id=session_id)
        self.decoder = _Commands()
        self.replies: list[Reply] = []
        #: called when the milter sends PROGRESS (restarts the timeout; the manager relays it at once)
        self.on_progress = None

    def queue(self, reply: Reply) -> None:
        self.state.check_send(reply)
        self.replies.append(reply)

    def progress(self) -> None:
        self.state.check_send(PROGRESS)
        if self.on_progress is not None:
            self.on_progress()

    def flush(self) -> None:
        """Only the negotiation reply is queued encoded by the session: the client decodes it."""

    def handle(self, commands: list[Command]) -> None:
        """Run the milter on ``commands``; its replies are in :attr:`replies`. Errors propagate."""
        self.decoder.queue.extend(commands)
        self._handle_available()

    def negotiation_reply(self) -> bytes:
        outgoing = self._outgoing
        data = b"".join(outgoing)
        outgoing.clear()
        return data

    def finish(self) -> None:
        self._finish()


class InProcessClient(MtaClient):
    """The MTA side of an in-process milter (everything :class:`~milterman.net.MtaClient` offers).

    ``reraise``: a callback's exception leaves :meth:`collect` as it is (tests want the traceback);
    otherwise it is logged and becomes a broken connection, as a crashed milter would be.
    """

    def __init__(self, session: InProcessSession, offer: Negotiate, *, timeouts: Timeouts | None = None,
                 reraise: bool = False, check_reply_text: bool = True) -> None:
        super().__init__(_Closed(), offer, timeouts=timeouts, check_reply_text=check_reply_text)
        self.session = session
        self.reraise = reraise
        self._objects: list[Command] = []
        #: one loop timer per timeout value, armed around each run of the milter (cheaper than a Timeout each time)
        self._timers: dict[float, object] = {}
        self._timer = None
        self._progressed = 0
        self.finished = False
        session.on_progress = self._milter_progress

    @classmethod
    def start(cls, milter_class: type[Milter], offer: Negotiate, *, timeouts: Timeouts | None = None,
              logger: Logger = default_logger, reraise: bool = False, check_reply_text: bool = True,
              session_id: int | None = None) -> "InProcessClient":
        """A new connection context of ``milter_class`` (not yet negotiated)."""
        session = InProcessSession(milter_class, logger=logger, session_id=session_id)
        return cls(session, offer, timeouts=timeouts, reraise=reraise, check_reply_text=check_reply_text)

    # ------------------------------------------------------------------ the MTA side, objects instead of bytes

    def queue_macros(self, stage: str, macros: dict[str, str] | list[tuple[str, str]]) -> None:
        """As :meth:`MtaClient.queue_macros` (filtered by the milter's macro-list request, P-NEG-14), unencoded."""
        packet = macro_packet(self.state.options, stage, macros)
        if packet is not None:
            self._objects.append(packet)

    def queue_encoded_macros(self, stage: str, packet: bytes) -> bool:
        return False  # never decode what the manager encoded for the socket children: take the values

    def begin(self, command: Command) -> bool:
        if self.finished:
            raise MilterIOError("closed", "connection closed by the milter")
        expects_reply = self.state.send(command)
        self._objects.append(command)
        if expects_reply:
            self._timeout = self.timeouts.end_of_message if command.LETTER == "E" else self.timeouts.reading
            self._deadline = time.monotonic() + self._timeout
        return expects_reply

    def collect(self, letter: str) -> Response:
        """Run the milter on what was begun and take its replies; PROGRESS restarts the timeout (P-SM-12)."""
        started = time.monotonic()
        try:
            replies = self._run(letter, max(0.0, self._deadline - started))
            modifications: list[Reply] = []
            progress = self._progressed
            state = self.state
            for reply in replies:
                if state.receive(reply):
                    return Response(reply, modifications, progress)
                modifications.append(reply)
                if self.on_modification is not None:
                    self.on_modification(reply)
            self.finished = True
            raise MilterIOError("closed", "connection closed by the milter")
        finally:
            self.waited += time.monotonic() - started

    def _arm(self) -> None:
        """Start the timer of the current timeout: it throws :class:`_Expired` into this greenlet if it waits."""
        from gevent import getcurrent, get_hub

        timer = self._timers.get(self._timeout)
        if timer is None:  # repeating, so that again() counts the whole timeout from now (a stopped libev
            #                timer started again would only wait for what was left of it)
            timer = self._timers[self._timeout] = get_hub().loop.timer(self._timeout, self._timeout)
        timer.again(getcurrent().throw, _Expired, update=True)
        self._timer = timer

    def _run(self, letter: str, timeout: float) -> list[Reply]:
        session = self.session
        commands, self._objects = self._objects, []
        self._progressed = 0
        self._deadline = time.monotonic() + timeout
        self._arm()
        try:
            session.handle(commands)
            if letter == "O":
                self.decoder.feed(session.negotiation_reply())
                reply = self.decoder.next_message()
                session.replies.append(reply)
        except _Expired:
            self._fail()
            raise MilterIOError("end-of-message timeout" if letter == "E" else "reading timeout") from None
        except Exception as error:
            self._fail()
            if self.reraise:
                raise
            if isinstance(error, ProtocolError) and not isinstance(error, MilterIOError):
                raise MilterIOError("io", f"the milter broke the protocol: {error}") from None
            self._log(error)
            raise MilterIOError("io", f"the milter failed: {type(error).__name__}: {error}") from None
        finally:
            self._timer.stop()
            self._timer = None
        if time.monotonic() > self._deadline:  # computed past the timeout (it could not be cut): reply dropped
            self._fail()
            raise MilterIOError("end-of-message timeout" if letter == "E" else "reading timeout")
        replies = session.replies
        session.replies = []
        return replies

    def _milter_progress(self) -> None:
        """The milter sent PROGRESS: a new timeout from now, and the manager hears of it at once."""
        self._progressed += 1
        self._deadline = time.monotonic() + self._timeout
        if self._timer is not None:
            self._timer.stop()
            self._arm()
        if self.on_progress is not None:
            self.on_progress()

    def _fail(self) -> None:
        self.finished = True
        self.session.replies = []

    def _log(self, error: BaseException) -> None:
        logger = self.session.logger
        if logger.enabled(ERROR):
            lines = traceback.format_exception(type(error), error, error.__traceback__)
            logger.error(f"[{self.session.id}] [milter][error][callback] {type(error).__name__}: {error} | "
                         + " | ".join(line.rstrip().replace("\n", " | ") for line in lines[-4:-1]))

    def close(self, send_quit: bool = True) -> None:
        """Let the milter see what is still queued (ABORT, QUIT), then end its connection context."""
        if self.finished:
            return
        super().close(send_quit)  # QUIT queued (as an object) when it may still be sent; the "socket" is no socket
        self.finished = True
        try:
            if self._objects:
                self.session.handle(self._objects)
        except Exception as error:
            if self.reraise:
                raise
            self._log(error)
        finally:
            self._objects = []
            for timer in self._timers.values():
                timer.close()
            self.session.finish()
