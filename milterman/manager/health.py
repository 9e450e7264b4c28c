"""Child health, per child and per serving process: a child that cannot be reached does not cost mail time.

A failed connect or negotiation marks the child down with the reason. While it is down,
every session of the process counts the child's ``fallback_status`` at once, exactly as
for a child that cannot be reached (D-14), without trying to connect. One greenlet per
down child brings it back: it starts the child's ``command`` (at most once per attempt,
M-LAU-1), waits, then probes (connect, negotiate, quit); the wait starts at the child's
``retry_delay`` and doubles up to :data:`MAX_RETRY_DELAY`. The log gets one line when
the child goes down and one when it is back, never one per session; the controller's
``status`` shows each child's state per worker (:meth:`HealthBoard.statistics`). Each child
behind a socket also has its pool of kept connections here (:mod:`.pool`): emptied when the
child goes down and when the board is closed (a reload, a stop).
"""

from __future__ import annotations

from array import array

import time
from collections.abc import Callable

from ..log import DEBUG, Logger
from ..net import MilterIOError, MtaClient
from ..protocol import Negotiate, ProtocolError
from ..protocol.flags import Action
from .child import ChildDefinition
from .pool import ChildPool

#: the longest wait between two attempts to bring a child back (never shorter than its retry_delay)
MAX_RETRY_DELAY = 60.0
#: what a probe offers when no MTA has negotiated in this process yet: version 6, everything
DEFAULT_OFFER = Negotiate(6, int(Action.ALL), 0x1FFFFF)

UNKNOWN, UP, DOWN = "unknown", "up", "down"


def probe(definition: ChildDefinition, offer: Negotiate) -> str | None:
    """Connect, negotiate and quit as an MTA would; None when that worked, otherwise why not."""
    try:
        client = MtaClient.open(definition.spec, offer, timeouts=definition.timeouts, check_reply_text=False)
    except MilterIOError as error:
        return f"connect: {error}"
    try:
        client.negotiate()
    except (MilterIOError, ProtocolError) as error:
        client.close(send_quit=False)
        return f"negotiation failed: {error}"
    client.close(send_quit=True)
    return None


class ChildHealth:
    """One child's standing in one serving process, and the greenlet that brings it back."""

    def __init__(self, definition: ChildDefinition, logger: Logger,
                 offer: Callable[[], Negotiate] = lambda: DEFAULT_OFFER,
                 peak: Callable[[], int] = lambda: 1) -> None:
        self.definition = definition
        #: the child's kept connections in this process (None: in process, or reuse switched off)
        self.pool = ChildPool(definition.name, logger, peak) \
            if definition.spec is not None and definition.reuse_connection else None
        self.logger = logger
        self._offer = offer
        self.state = UNKNOWN
        #: wall-clock time of the last change of state
        self.since = time.time()
        self.last_error: str | None = None
        self.last_error_at: float | None = None
        #: failed attempts to bring it back since it went down
        self.attempts = 0
        #: wall-clock time of the next attempt while down
        self.next_attempt: float | None = None
        self._recovery = None
        self._reported_launch: str | None = None
        self.closed = False

    @property
    def name(self) -> str:
        return self.definition.name

    @property
    def down(self) -> bool:
        return self.state == DOWN

    def succeeded(self) -> None:
        """A session reached and negotiated the child."""
        if self.state == UP:
            return
        if self.state == DOWN:
            self._back("a session reached it")
        else:
            self.state = UP
            self.since = time.time()

    def failed(self, reason: str) -> None:
        """A session could not connect or negotiate: down (once), and the recovery greenlet starts."""
        self.last_error = reason
        self.last_error_at = time.time()
        if self.pool is not None:
            self.pool.clear()
        if self.state == DOWN or self.closed:
            return
        self.state = DOWN
        self.since = self.last_error_at
        self.attempts = 0
        delay = self.definition.retry_delay
        launch = self.definition.launch
        then = f"launching <{launch.line}>, next attempt in {delay:g} s" if launch is not None \
            else f"next attempt in {delay:g} s"
        self.logger.error(f"[manager][child][down] [{self.name}] {reason}; sessions get its fallback status "
                          f"<{self.definition.fallback_status.nick}> until it is back; {then}")
        import gevent

        self._recovery = gevent.spawn(self._recover)

    def _back(self, how: str) -> None:
        down_for = time.time() - self.since
        self.state = UP
        self.since = time.time()
        self.next_attempt = None
        self.logger.message(f"[manager][child][up] [{self.name}] back after {down_for:.3g} s ({how})")

    def _recover(self) -> None:
        """Launch (once per attempt), wait, probe; the wait doubles up to the cap."""
        import gevent

        delay = max(0.01, self.definition.retry_delay)
        cap = max(MAX_RETRY_DELAY, self.definition.retry_delay)
        launch = self.definition.launch
        while self.state == DOWN and not self.closed:
            if launch is not None:
                launch.start()
            self.next_attempt = time.time() + delay
            gevent.sleep(delay)
            if self.state != DOWN or self.closed:
                return
            error = probe(self.definition, self._offer())
            if error is None:
                self._back(f"attempt {self.attempts + 1}")
                return
            self.attempts += 1
            if launch is not None:
                error = self._launch_outcome(launch, error)
            self.last_error = error
            self.last_error_at = time.time()
            delay = min(delay * 2, cap)
            if self.logger.enabled(DEBUG):
                self.logger.debug(f"[manager][child][retry] [{self.name}] attempt {self.attempts}: {error}; "
                                  f"next in {delay:g} s")

    def _launch_outcome(self, launch, error: str) -> str:
        """The probe's error, with how the launched command ended; an error line once per new outcome."""
        outcome = launch.outcome()
        if outcome is None:
            return error
        how, tail = outcome
        # one log line: the tail's own lines joined (the log and its analyzer read a line per entry)
        text = f"<{launch.line}> {how}" + (f": {' | '.join(tail.splitlines())}" if tail else "")
        if not how.endswith("status 0") and text != self._reported_launch:
            self._reported_launch = text
            self.logger.error(f"[manager][child][launch][error] [{self.name}] {text}")
        return f"{error}; launch: {text}"

    def close(self) -> None:
        self.closed = True
        if self.pool is not None:
            self.pool.close()
        if self._recovery is not None:
            self._recovery.kill(block=False)
            self._recovery = None

    def statistics(self) -> dict:
        entry = {"state": self.state, "since": round(self.since, 3), "last_error": self.last_error,
                 "last_error_at": round(self.last_error_at, 3) if self.last_error_at is not None else None}
        if self.state == DOWN:
            entry["attempts"] = self.attempts
            entry["next_attempt"] = round(self.next_attempt, 3) if self.next_attempt is not None else None
        if self.pool is not None:
            entry["connections"] = self.pool.statistics()
        return entry


class HealthBoard:
    """Every child's health in one serving process (shared by the sessions of the process)."""

    def __init__(self, definitions: tuple[ChildDefinition, ...], logger: Logger) -> None:
        self._last_offer: Negotiate | None = None
        self.logger = logger
        #: the most sessions this process has served at once, in ``_peaks[0]`` (a machine number: see
        #: metrics.Tally; the last of a burst would otherwise keep a small-object arena of the burst)
        self._peaks = array("q", (1,))
        self.children = {definition.name: ChildHealth(definition, logger, self._offer, self._peak)
                         for definition in definitions}

    @property
    def last_offer(self) -> Negotiate | None:
        """The last offer an MTA made in this process: what probes offer."""
        return self._last_offer

    @last_offer.setter
    def last_offer(self, offer: Negotiate | None) -> None:
        if offer != self._last_offer:  # the same offer each session: the first one made is kept
            self._last_offer = offer

    @property
    def peak(self) -> int:
        """The most sessions this process has served at once: how many connections a child's pool keeps."""
        return self._peaks[0]

    @peak.setter
    def peak(self, sessions: int) -> None:
        self._peaks[0] = sessions

    def _offer(self) -> Negotiate:
        return self._last_offer or DEFAULT_OFFER

    def _peak(self) -> int:
        return self._peaks[0]

    def of(self, definition: ChildDefinition) -> ChildHealth:
        health = self.children.get(definition.name)
        if health is None:
            health = self.children[definition.name] = ChildHealth(definition, self.logger, self._offer, self._peak)
        return health

    def statistics(self) -> dict:
        return {name: health.statistics() for name, health in self.children.items()}

    def close(self) -> None:
        for health in self.children.values():
            health.close()


def summarize(boards: list[dict]) -> dict:
    """One entry per child over several processes' :meth:`HealthBoard.statistics`.

    ``state`` is ``down`` when any process has it down, else ``up`` when any has it up; ``since``
    is when the earliest of the processes in that state entered it; ``last_error`` the most recent.
    """
    summary: dict[str, dict] = {}
    for board in boards:
        for name, entry in board.items():
            child = summary.setdefault(name, {"workers": {UP: 0, DOWN: 0, UNKNOWN: 0}, "last_error": None,
                                              "last_error_at": None, "_since": {}})
            state = entry.get("state", UNKNOWN)
            child["workers"][state] = child["workers"].get(state, 0) + 1
            since = child["_since"]
            since[state] = min(since.get(state, entry["since"]), entry["since"])
            if entry.get("last_error_at") is not None and (child["last_error_at"] is None
                                                           or entry["last_error_at"] > child["last_error_at"]):
                child["last_error"], child["last_error_at"] = entry["last_error"], entry["last_error_at"]
    for child in summary.values():
        since = child.pop("_since")
        counts = child["workers"]
        child["state"] = DOWN if counts[DOWN] else UP if counts[UP] else UNKNOWN
        child["since"] = since.get(child["state"])
    return summary
