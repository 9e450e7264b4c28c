"""A milter driven in the same process, with no socket: the MTA side and the milter side joined in memory.

:class:`InProcessClient` is an :class:`~milterman.net.MtaClient` whose "socket" hands
the encoded commands to a :class:`~milterman.net.MilterSession` running the milter
class, and hands its encoded replies back. Both sides are the ordinary protocol code
(state machines, negotiation, checks), so an in-process milter behaves exactly as the
same class served on a socket; only the system calls and the second process are gone.

The milter's callbacks run when the MTA side reads a reply, under the reading (or
end-of-message) timeout: a callback that waits cooperatively (gevent) is interrupted
when it expires, and one that computes past it has its reply thrown away; either way
the MTA side sees the timeout it would see from a socket. ``progress()`` restarts it.
"""

from __future__ import annotations

import time
import traceback

from ..log import ERROR, Logger, logger as default_logger
from ..net import MilterSession, MtaClient, Timeouts
from ..protocol import PROGRESS, Negotiate
from .api import Milter
from .runner import handler_factory

_PROGRESS_WIRE = PROGRESS.encode()


class _Expired(Exception):
    """Raised into a callback that waits past its timeout."""


class _MilterEnd:
    """What the milter session writes to: the replies queue up for the MTA side."""

    __slots__ = ("pipe",)

    def __init__(self, pipe: "MemoryPipe") -> None:
        self.pipe = pipe

    def send(self, data: bytes) -> int:
        self.pipe.replied(data)
        return len(data)

    def sendall(self, data) -> None:
        self.pipe.replied(bytes(data))

    def settimeout(self, timeout: float | None) -> None:
        pass

    def close(self) -> None:
        pass


class MemoryPipe:
    """The MTA side's socket: ``send`` queues commands, ``recv`` runs the milter on them and returns its replies.

    ``reraise``: a callback's exception leaves ``recv`` as it is (tests want the traceback); otherwise it is
    logged and becomes a broken connection, which the MTA side handles as it would a crashed milter.
    """

    def __init__(self, cls: type[Milter], *, logger: Logger = default_logger, reraise: bool = False,
                 session_id: int | None = None) -> None:
        self.session = MilterSession(_MilterEnd(self), handler_factory(cls), logger=logger, idle_timeout=None,
                                     session_id=session_id)
        self.logger = logger
        self.reraise = reraise
        self._commands: list[bytes] = []
        self._replies: list[bytes] = []
        self._timeout: float | None = None
        self._timer = None
        self._deadline = 0.0
        #: called at once when the milter sends PROGRESS (the manager relays it to the MTA)
        self.on_progress = None
        self.closed = False

    # ------------------------------------------------------------------ the MTA side's socket

    def settimeout(self, timeout: float | None) -> None:
        self._timeout = timeout

    def send(self, data: bytes) -> int:
        if self.closed:
            raise BrokenPipeError("the in-process milter has finished")
        self._commands.append(data)
        return len(data)

    def sendall(self, data) -> None:
        self.send(bytes(data))

    def recv(self, size: int) -> bytes:
        if self._commands:
            self._run()
        if not self._replies:
            return b""  # nothing owed was produced: the milter has gone (closed)
        data = b"".join(self._replies)
        self._replies.clear()
        return data

    def close(self) -> None:
        """Let the milter see what is still queued (ABORT, QUIT), then end its connection context."""
        if self.closed:
            return
        try:
            if self._commands:
                self._feed(b"".join(self._commands))
        except Exception as error:
            self._log(error)
        finally:
            self._commands.clear()
            self.closed = True
            self.session.finish()

    # ------------------------------------------------------------------ running the milter

    def replied(self, data: bytes) -> None:
        """The milter session wrote ``data``; PROGRESS restarts the timeout and is relayed at once."""
        if data.endswith(_PROGRESS_WIRE):
            data = data[:-len(_PROGRESS_WIRE)]
            if self._timeout is not None:
                self._deadline = time.monotonic() + self._timeout
                if self._timer is not None:  # a new timer: gevent's cancel-and-start does not move the old one
                    import gevent

                    self._timer.close()
                    self._timer = gevent.Timeout(self._timeout, _Expired)
                    self._timer.start()
            if self.on_progress is not None:
                self.on_progress()
        if data:
            self._replies.append(data)

    def _run(self) -> None:
        data = b"".join(self._commands)
        self._commands.clear()
        timeout = self._timeout
        if timeout is None:
            self._feed(data)
            return
        import gevent

        self._deadline = time.monotonic() + timeout
        self._timer = gevent.Timeout(timeout, _Expired)
        self._timer.start()
        try:
            self._feed(data)
        except _Expired:
            self._replies.clear()
            raise TimeoutError("the milter did not answer in time") from None
        finally:
            self._timer.close()
            self._timer = None
        if time.monotonic() > self._deadline:  # a callback that computed past the timeout (it could not be cut)
            self._replies.clear()
            raise TimeoutError("the milter did not answer in time")

    def _feed(self, data: bytes) -> None:
        try:
            self.session.feed(data)
        except _Expired:
            raise
        except Exception as error:
            if self.reraise:
                raise
            self._log(error)
            self.closed = True
            raise ConnectionResetError(f"the milter failed: {type(error).__name__}: {error}") from None

    def _log(self, error: BaseException) -> None:
        if self.logger.enabled(ERROR):
            lines = traceback.format_exception(type(error), error, error.__traceback__)
            self.logger.error(f"[{self.session.id}] [milter][error][callback] {type(error).__name__}: {error} | "
                              + " | ".join(line.rstrip().replace("\n", " | ") for line in lines[-4:-1]))


class InProcessClient(MtaClient):
    """The MTA side of an in-process milter (everything :class:`~milterman.net.MtaClient` offers)."""

    @classmethod
    def start(cls, milter_class: type[Milter], offer: Negotiate, *, timeouts: Timeouts | None = None,
              logger: Logger = default_logger, reraise: bool = False, check_reply_text: bool = True,
              session_id: int | None = None) -> "InProcessClient":
        """A new connection context of ``milter_class`` (not yet negotiated)."""
        pipe = MemoryPipe(milter_class, logger=logger, reraise=reraise, session_id=session_id)
        client = cls(pipe, offer, timeouts=timeouts, check_reply_text=check_reply_text)
        pipe.on_progress = client._progress
        return client

    def _progress(self) -> None:
        if self.on_progress is not None:
            self.on_progress()
