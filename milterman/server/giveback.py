"""Memory given back to the system once a burst of sessions is over.

A burst of concurrent sessions leaves the serving process at its high-water mark: glibc keeps
freed heap pages (greenlet stack copies, receive buffers, per-session objects) for reuse and only
returns what sits at the very top of the heap. ``malloc_trim(0)`` returns every whole free page.
Sessions whose objects form reference cycles are only freed by a full collection, so one runs
first: a burst's garbage would otherwise hold its memory until the collector's next full pass.
Python's type attribute cache is emptied before it: it keeps a reference to each attribute name it
was last asked for, and names made afresh for one lookup (gevent's event loop makes a ``"stop"``
string each time a one-shot timer fires) would otherwise stay scattered through the small-object
arenas the burst filled, each pinning a whole arena (1 MiB) that could be given back.
It runs off the per-packet path: when the number of sessions in progress drops to zero after a
burst (at least :data:`BURST` at once since the last run), a moment later, and at most once per
``interval`` seconds (D-12: no work merely because the process went idle after each session).

A second pass follows the first some seconds later (``again``) if the process is still without
sessions. A small-object arena goes back only once its last block is freed, and after the first
pass the burst's arenas still hold a few blocks; what the process does meanwhile (timers, the
interpreter's free lists of dicts, tuples and floats refilled from those arenas' partly used pools)
keeps them in use. Measured on the manager with 1000 sessions held then closed (n_workers 0), the
second collection frees 2-3 more arenas (2-3 MB of the 6-7 MB the first pass leaves).

Only the standard library (ctypes) is used, so the module may be imported anywhere; the caller
passes the way to run something later (gevent's ``spawn_later`` in a serving process).
"""

from __future__ import annotations

import ctypes
import gc
import sys
import time
from collections.abc import Callable

from ..log import DEBUG, Logger
from ..log import logger as default_logger

#: sessions in progress at once since the last give-back that make the next one worth it
BURST = 8
#: seconds between two give-backs at most
INTERVAL = 5.0
#: seconds after a give-back before the second pass (None: no second pass)
AGAIN = 5.0
#: seconds the process must stay without sessions before memory is given back (the last
#: session's greenlet and objects are freed by then)
SETTLE = 0.2


def _malloc_trim() -> Callable[[int], int] | None:
    """libc's ``malloc_trim``, or None on a C library without it (musl, macOS)."""
    try:
        function = ctypes.CDLL(None).malloc_trim
    except (AttributeError, OSError):
        return None
    function.argtypes = [ctypes.c_size_t]
    function.restype = ctypes.c_int
    return function


#: empties the type attribute cache (Python 3.13 names it ``_clear_internal_caches``; the older name is deprecated)
_clear_type_cache: Callable[[], None] = getattr(sys, "_clear_internal_caches", None) or sys._clear_type_cache


class GiveBack:
    """Counts the sessions in progress and gives freed memory back after a burst."""

    def __init__(self, later: Callable[[float, Callable[[], None]], object], *, logger: Logger = default_logger,
                 burst: int = BURST, interval: float = INTERVAL, settle: float = SETTLE,
                 again: float | None = None, before: Callable[[], None] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        """``before`` runs just ahead of each give-back (the caller frees what only it can, such as idle
        greenlets), never when the give-back is skipped because sessions came back."""
        self._later = later
        self._before = before
        self.logger = logger
        self.burst = burst
        self.interval = interval
        self.settle = settle
        self.again = again
        self._clock = clock
        self._trim = _malloc_trim()
        if self._trim is None and logger.enabled(DEBUG):
            logger.debug("[server][memory][give-back] this C library has no malloc_trim: freed memory is "
                         "not given back after bursts")
        self.in_progress = 0
        #: the most sessions in progress at once since the last give-back
        self.high_water = 0
        self._last = -interval
        self._scheduled = False
        #: give-backs run so far (malloc_trim called)
        self.runs = 0

    def started(self) -> None:
        """A session began."""
        self.in_progress += 1
        if self.in_progress > self.high_water:
            self.high_water = self.in_progress

    def ended(self) -> None:
        """A session ended; the last one of a burst schedules the give-back."""
        self.in_progress -= 1
        if self.in_progress == 0 and self.high_water >= self.burst and not self._scheduled \
                and self._trim is not None:
            self._scheduled = True
            delay = max(self.settle, self._last + self.interval - self._clock())
            self._later(delay, self._run)

    def _run(self) -> None:
        """Give memory back unless sessions came back meanwhile (then the next burst's end does it)."""
        self._scheduled = False
        if self.in_progress or self._trim is None:
            return
        self.high_water = 0
        self._give_back("")
        if self.again is not None:
            self._later(self.again, self._run_again)

    def _run_again(self) -> None:
        """The second pass, if no session came since (otherwise the end of the next burst gives back)."""
        if self.in_progress or self._scheduled:
            return
        self._give_back(" again")

    def _give_back(self, again: str) -> None:
        if self._before is not None:
            self._before()
        started = self._last = self._clock()
        _clear_type_cache()
        gc.collect()
        collected = self._clock()
        self._trim(0)
        self.runs += 1
        if self.logger.enabled(DEBUG):
            self.logger.debug(f"[server][memory][give-back] heap memory given back{again} after a burst ({self.runs} "
                              f"so far; collection {(collected - started) * 1000:.1f} ms, trim "
                              f"{(self._clock() - collected) * 1000:.1f} ms)")
