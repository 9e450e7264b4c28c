"""Child connections kept across SMTP sessions: one pool per child per serving process.

At the end of an SMTP session a child that ended cleanly is sent ``K`` (quit, a new connection
follows: the child keeps its negotiated options and expects the next session's connect,
P-CMD-14, P-SM-5) instead of ``Q``, and its connection waits here. The next session of the
process that would offer the child the same options (the offer is the key: Postfix and
Sendmail offer differently) takes it instead of connecting and negotiating again: a child
then costs neither a connection nor a negotiation per session.

Everything falls back to a fresh connection. A kept connection is checked before it is
used (one non-blocking peek: the child must be connected and silent); one that fails this
check, or fails its first command in the new session (the session retries that stage on a
fresh connection, see :meth:`milterman.manager.child.Child.collect`), stops the child's
reuse for :data:`SUSPEND_SECONDS` and empties its pool (said once at info level per child and
process). A child that does not take ``K`` may also just stay silent: the first reply on a kept
connection is awaited for at most :data:`FIRST_REPLY_SECONDS`, and a child that lets it pass
is not reused again in the process (the stage goes on on a fresh connection). Only a child
that negotiated version 6 gets ``K`` (P-NEG-11). The pool holds at most as many idle
connections as the process has had sessions at once (the peak), closes those idle for
:data:`IDLE_SECONDS`, and is emptied (idle ones get ``Q``) when the child goes down and when the
configuration is reloaded; when the process stops, the child reads the end of the connection, a
normal end between two sessions (P-SM-4). Switched on per child by
``reuse_connection`` (off by default: a child then gets one connection per SMTP session and
``Q`` at its end, M-SES-3).
"""

from __future__ import annotations

import time
from collections.abc import Callable

from ..log import DEBUG, Logger
from ..net import MtaClient
from ..net.sockets import peer_state
from ..protocol import QUIT_NEW_CONNECTION, Negotiate

#: seconds an idle kept connection waits for a session before it is closed
IDLE_SECONDS = 60.0
#: seconds a child is not reused after a kept connection of it failed
SUSPEND_SECONDS = 300.0
#: seconds the first reply on a kept connection may take: a child that does not take ``K`` may simply
#: never answer (some libmilter milters do so); it is then not reused again in this process
FIRST_REPLY_SECONDS = 5.0


class ChildPool:
    """The idle connections of one child in one serving process, by the offer each was negotiated with."""

    __slots__ = ("name", "logger", "_idle", "idle", "_limit", "closed", "suspended_until", "_reported",
                 "reused", "kept", "_sweeper")

    def __init__(self, name: str, logger: Logger, limit: Callable[[], int] = lambda: 1) -> None:
        self.name = name
        self.logger = logger
        #: offer → [(connection, when it was given back)], the most recent last
        self._idle: dict[Negotiate, list[tuple[MtaClient, float]]] = {}
        #: idle connections over every offer
        self.idle = 0
        #: the most idle connections allowed now: the process's peak of concurrent sessions
        self._limit = limit
        self.closed = False
        #: monotonic time until which the child is not reused (a kept connection of it failed)
        self.suspended_until = 0.0
        self._reported = False
        #: counters for the controller's status: sessions that took a kept connection, connections kept
        self.reused = 0
        self.kept = 0
        self._sweeper = None

    # ------------------------------------------------------------------ a session takes, gives back

    def take(self, offer: Negotiate) -> MtaClient | None:
        """A kept connection negotiated with ``offer``, connected and silent; None: connect afresh."""
        stack = self._idle.get(offer)
        if not stack:
            return None
        client, _ = stack.pop()
        self.idle -= 1
        problem = peer_state(client.sock)
        if problem is None:
            self.reused += 1
            return client
        client.close(send_quit=False)
        self.failed(f"a kept connection was found {problem}")
        return None

    def give(self, client: MtaClient) -> bool:
        """Keep ``client`` (negotiated, no reply awaited): ``K`` is sent and it waits for the next session.

        ``False`` when it is not kept (the caller sends ``Q`` and closes as before): the pool is
        closed, the child's reuse is suspended, the pool is full, or it did not negotiate version 6.
        """
        options = client.state.options
        if (self.closed or options is None or options.version < 6 or self.idle >= max(1, self._limit())
                or time.monotonic() < self.suspended_until):
            return False
        client.begin(QUIT_NEW_CONNECTION)  # the caller closes it on MilterIOError / ProtocolError
        self._idle.setdefault(client.state.offer, []).append((client, time.monotonic()))
        self.idle += 1
        self.kept += 1
        if self._sweeper is None:
            import gevent

            self._sweeper = gevent.spawn(self._sweep)
        return True

    @property
    def suspended(self) -> bool:
        return time.monotonic() < self.suspended_until

    def failed(self, reason: str, for_good: bool = False) -> None:
        """A kept connection failed (found closed or talking, or on its first command): the child is
        not reused for :data:`SUSPEND_SECONDS`, or ``for_good`` in this process (it left its first command
        unanswered: it does not take ``K``); the line is written once per child and process."""
        self.suspended_until = float("inf") if for_good else time.monotonic() + SUSPEND_SECONDS
        self.clear()
        line = (f"[manager][child][reuse] [{self.name}] {reason}; its connections are "
                + ("no longer kept in this process" if for_good else f"not kept for {SUSPEND_SECONDS:g} s")
                + " (sessions connect afresh)")
        if not self._reported:
            self._reported = True
            self.logger.info(line)
        elif self.logger.enabled(DEBUG):
            self.logger.debug(line)

    # ------------------------------------------------------------------ emptying

    def clear(self) -> None:
        """Close every idle connection with ``Q`` (the child went down, the configuration changed, a stop)."""
        idle, self._idle, self.idle = self._idle, {}, 0
        for stack in idle.values():
            for client, _ in stack:
                client.close(send_quit=True)

    def close(self) -> None:
        """Empty the pool for good: connections given back later are closed by their sessions."""
        self.closed = True
        self.clear()
        if self._sweeper is not None:
            self._sweeper.kill(block=False)
            self._sweeper = None

    def _sweep(self) -> None:
        """Close connections idle for :data:`IDLE_SECONDS`; ends when nothing is idle any more."""
        import gevent

        try:
            while self.idle and not self.closed:
                gevent.sleep(IDLE_SECONDS / 4)
                expired = time.monotonic() - IDLE_SECONDS
                for offer, stack in list(self._idle.items()):
                    old = [entry for entry in stack if entry[1] <= expired]
                    if not old:
                        continue
                    stack[:] = [entry for entry in stack if entry[1] > expired]
                    if not stack:
                        del self._idle[offer]
                    self.idle -= len(old)
                    for client, _ in old:
                        client.close(send_quit=True)
        finally:
            self._sweeper = None

    def statistics(self) -> dict:
        entry = {"idle": self.idle, "kept": self.kept, "reused": self.reused}
        if self.suspended:  # null: for good (JSON has no infinity)
            left = self.suspended_until - time.monotonic()
            entry["suspended_for"] = round(left, 1) if left != float("inf") else None
        return entry
