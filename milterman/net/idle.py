"""A session's idle limit as one loop timer (the MTA-facing session waits for the MTA under it).

One libev timer per session, re-armed only when it fires, instead of a gevent Timeout made and
cancelled around every read.
"""

from __future__ import annotations

from collections.abc import Callable
from time import monotonic


class IdleWatch:
    """The idle limit of one session as a single loop timer, instead of a gevent Timeout per read.

    ``since`` is set while the session waits for the MTA (``None`` while it works); when the timer
    fires and the wait has lasted ``limit`` seconds, ``expired`` is called in the hub (a blocking
    session's: throw :class:`TimeoutError` into the waiting greenlet, as a socket timeout would raise
    it); otherwise it is armed again for what is left.
    """

    __slots__ = ("limit", "since", "_expired", "_loop", "_timer")

    def __init__(self, limit: float, loop, expired: Callable[[], None]) -> None:
        self.limit = limit
        self.since: float | None = None
        self._expired = expired
        self._loop = loop
        self._timer = None
        self._arm(limit)

    def _arm(self, after: float) -> None:
        timer = self._timer = self._loop.timer(max(after, 0.001))
        timer.start(self._check)

    def _check(self) -> None:
        since = self.since
        left = self.limit if since is None else since + self.limit - monotonic()
        if left > 0:
            self._timer.close()
            self._arm(left)
        else:
            self._expired()

    def stop(self) -> None:
        self._timer.close()


def watch_idle(limit: float) -> IdleWatch:
    """An :class:`IdleWatch` that throws :class:`TimeoutError` into the calling greenlet."""
    import gevent  # a plain import: ``from gevent import`` costs a Python-level call each time

    greenlet = gevent.getcurrent()

    def expired() -> None:
        greenlet.throw(TimeoutError(f"no data for {limit:g} s"))

    return IdleWatch(limit, gevent.get_hub().loop, expired)
