"""The master's signals: the handler only queues them; the loop dispatches them to ``handle_<name>`` (D-5).

Standard library only. A Python signal handler may run between any two bytecodes of
the master, so it does nothing but put the signal in a :class:`SignalQueue` and (with
the wake-up pipe) wake the loop's ``select``. The loop then calls the owner's method
named after the signal: SIGHUP → ``handle_hup``, SIGTTIN → ``handle_ttin`` …

The queue is bounded: it holds each signal at most once. A signal that arrives while
the same one is still waiting is dropped and counted (the waiting one does the work;
the kernel merges pending signals the same way), so a storm of SIGHUPs during a slow
reload means one more reload, not one per signal. Should a queue ever be given a
``limit`` below the number of signals it handles, a signal arriving when it is full is
dropped and counted as well. The loop logs the counts (:meth:`SignalQueue.take_dropped`).
"""

from __future__ import annotations

import collections
import os
import signal
from collections.abc import Iterable

from .process import close_quietly

#: every signal the master handles (each needs a ``handle_<name>`` method on the master)
QUEUED_SIGNALS: tuple[int, ...] = (signal.SIGHUP, signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGUSR1,
                                   signal.SIGTTIN, signal.SIGTTOU, signal.SIGCHLD)


def signal_name(number: int) -> str:
    """``SIGHUP`` for 1; the number itself for a signal Python has no name for."""
    try:
        return signal.Signals(number).name
    except ValueError:
        return str(number)


def handler_name(number: int) -> str:
    """The method that handles ``number``: ``handle_hup`` for SIGHUP."""
    return "handle_" + signal_name(number).removeprefix("SIG").lower()


class SignalQueue:
    """Signals waiting for the master's loop, in the order they came, each at most once."""

    def __init__(self, signals: Iterable[int] = QUEUED_SIGNALS, limit: int | None = None) -> None:
        self.signals = tuple(signals)
        self.limit = limit if limit is not None else len(self.signals)
        self._waiting: collections.deque[int] = collections.deque()
        self._dropped: dict[int, int] = {}
        self._wake_read = self._wake_write = -1

    # ------------------------------------------------------------ the handler's side

    def install(self) -> None:
        """From now on, these signals are only queued."""
        for number in self.signals:
            signal.signal(number, self._on_signal)

    def restore_defaults(self) -> None:
        for number in self.signals:
            signal.signal(number, signal.SIG_DFL)

    def _on_signal(self, number: int, frame: object) -> None:
        self.put(number)

    def put(self, number: int) -> bool:
        """Queue ``number``; False (and counted) when it is already waiting or the queue is full."""
        if number in self._waiting or len(self._waiting) >= self.limit:
            self._dropped[number] = self._dropped.get(number, 0) + 1
            return False
        self._waiting.append(number)
        return True

    # ------------------------------------------------------------ the loop's side

    def __len__(self) -> int:
        return len(self._waiting)

    def dispatch(self, owner: object) -> None:
        """Call ``owner.handle_<name>()`` for each waiting signal, oldest first (also those queued meanwhile)."""
        while self._waiting:
            number = self._waiting.popleft()
            getattr(owner, handler_name(number))()

    def drain(self) -> list[int]:
        """Take every waiting signal without handling it (the single process replays them)."""
        waiting = list(self._waiting)
        self._waiting.clear()
        return waiting

    def take_dropped(self) -> dict[int, int]:
        """Signals dropped since the last call, and how many times each."""
        dropped, self._dropped = self._dropped, {}
        return dropped

    # ------------------------------------------------------------ waking the loop

    def open_wakeup(self) -> int:
        """A pipe the signal machinery writes a byte to for every signal; its read end, for ``select``."""
        self._wake_read, self._wake_write = os.pipe()
        os.set_blocking(self._wake_read, False)
        os.set_blocking(self._wake_write, False)
        signal.set_wakeup_fd(self._wake_write)
        return self._wake_read

    def clear_wakeup(self) -> None:
        """Empty the wake-up pipe (its bytes only woke the loop; the queue says what came)."""
        try:
            while os.read(self._wake_read, 4096):
                pass
        except (BlockingIOError, InterruptedError):
            pass

    def close_wakeup(self) -> None:
        """Stop waking (the master at exit, a worker right after fork)."""
        signal.set_wakeup_fd(-1)
        close_quietly(self._wake_read, self._wake_write)
        self._wake_read = self._wake_write = -1
