"""The counters of one serving process: what the controller's ``status`` and the metrics endpoint show.

One :class:`Recorder` per serving process (kept by the application across reloads, so counters
only grow); sessions and children write into it on the hot path with a few additions and one
``bisect``, nothing else. Each heartbeat the worker publishes :meth:`Recorder.snapshot` with its
other counters; the master reads every worker's snapshot, adds those of workers that have exited,
and builds both the ``status`` answer and the metrics from that one sum (:func:`add_counters`,
:func:`metric_families`).
"""

from __future__ import annotations

import platform
from array import array
from bisect import bisect_left

from .. import __version__
from ..protocol import ACCEPT, CONTINUE, DISCARD, REJECT, TEMPFAIL, Reply
from ..protocol.stages import stage_name
from ..server.app import MetricFamily
from .status import status_of

#: upper bounds (seconds) of the latency histograms' buckets; the last bucket is +Inf
LATENCY_BOUNDS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


#: the status name of each plain reply letter (a ``y`` reply code goes through status_of, M-RC-1)
_NICKS = {letter: status_of(reply).nick for letter, reply in (("c", CONTINUE), ("a", ACCEPT), ("r", REJECT),
                                                                ("t", TEMPFAIL), ("d", DISCARD))}


#: Counters live in arrays (machine numbers), not as Python ints and floats: a Python number kept in a
#: long-lived counter is a new object at each update, made wherever the allocator is at that moment; after a
#: burst of sessions the last ones sit in the burst's small-object arenas and keep each of them (1 MiB) from
#: going back to the system.
_NO_COUNTS = array("q", bytes(8 * (len(LATENCY_BOUNDS) + 1)))


class Histogram:
    """Counts per bucket (not cumulative) and the sum of the observed values."""

    __slots__ = ("counts", "sums")

    def __init__(self) -> None:
        self.counts = array("q", _NO_COUNTS)
        #: the sum of the observed values, in ``sums[0]``
        self.sums = array("d", (0.0,))

    @property
    def total(self) -> float:
        return self.sums[0]

    def observe(self, seconds: float) -> None:
        self.counts[bisect_left(LATENCY_BOUNDS, seconds)] += 1
        self.sums[0] += seconds

    def snapshot(self) -> dict:
        return {"buckets": self.counts.tolist(), "sum": self.sums[0]}


class Tally:
    """Counts by name (a status, a timeout kind), kept in an array like the histograms' counts."""

    __slots__ = ("_index", "_counts")

    def __init__(self) -> None:
        self._index: dict[str, int] = {}
        self._counts = array("q")

    def add(self, name: str) -> None:
        index = self._index.get(name)  # _slot's lookup, inline: a known name costs no call of its own
        if index is None:
            index = self._slot(name)
        self._counts[index] += 1

    def _slot(self, name: str) -> int:
        index = self._index.get(name)
        if index is None:
            index = self._index[name] = len(self._counts)
            self._counts.append(0)
        return index

    def __getitem__(self, name: str) -> int:
        return self._counts[self._index[name]]

    def __setitem__(self, name: str, count: int) -> None:
        self._counts[self._slot(name)] = count

    def snapshot(self) -> dict[str, int]:
        counts = self._counts
        return {name: counts[index] for name, index in self._index.items()}


class ChildRecord:
    """One child's counters in one serving process."""

    __slots__ = ("ended", "replies", "timeouts", "fallbacks", "latency")

    def __init__(self) -> None:
        #: final status of the child's sessions (``[milter][end]``) → count
        self.ended = Tally()
        #: status of each final reply the child sent → count
        self.replies = Tally()
        #: ``connection`` / ``writing`` / ``reading`` / ``end-of-message`` → count
        self.timeouts = Tally()
        #: sessions in which the child's fallback status answered for it (D-14, M-ERR-3)
        self.fallbacks = 0
        #: command letter → latency histogram (from sending the command to its final reply)
        self.latency: dict[str, Histogram] = {}

    def replied(self, letter: str, reply: Reply, seconds: float) -> None:
        """A final reply to ``letter`` arrived ``seconds`` after the command was sent."""
        nick = _NICKS.get(reply.LETTER) or status_of(reply).nick  # a plain letter without the enum's hashing
        self.replies.add(nick)
        histogram = self.latency.get(letter)
        if histogram is None:
            histogram = self.latency[letter] = Histogram()
        histogram.counts[bisect_left(LATENCY_BOUNDS, seconds)] += 1
        histogram.sums[0] += seconds

    def observe(self, letter: str, seconds: float) -> None:
        histogram = self.latency.get(letter)
        if histogram is None:
            histogram = self.latency[letter] = Histogram()
        histogram.observe(seconds)

    def failed(self, kind: str) -> None:
        """A failure talking to the child; timeouts are counted by kind (``reading timeout`` → ``reading``)."""
        if kind.endswith(" timeout"):
            kind = kind[:-len(" timeout")]
            self.timeouts.add(kind)

    def snapshot(self) -> dict:
        return {"ended": self.ended.snapshot(), "replies": self.replies.snapshot(),
                "timeouts": self.timeouts.snapshot(),
                "fallbacks": self.fallbacks,
                "latency": {stage_name(letter): histogram.snapshot()  # ``negotiate`` includes connecting
                            for letter, histogram in list(self.latency.items())}}


class Recorder:
    """Sessions and children of one serving process."""

    def __init__(self) -> None:
        self._started = array("q", (0,))
        #: final status of the session (the status of ``[session][end]``) → count
        self.finished = Tally()
        self.duration = Histogram()
        self.children: dict[str, ChildRecord] = {}

    @property
    def started(self) -> int:
        """Sessions whose children were started."""
        return self._started[0]

    @started.setter
    def started(self, count: int) -> None:
        self._started[0] = count

    def child(self, name: str) -> ChildRecord:
        record = self.children.get(name)
        if record is None:
            record = self.children[name] = ChildRecord()
        return record

    def session_finished(self, status: str, seconds: float) -> None:
        """A session that started its children ended; ``status``: the last one the MTA got."""
        self.finished.add(status)
        self.duration.observe(seconds)

    def snapshot(self) -> dict:
        """Counters only (they are summed over workers and kept when a worker exits)."""
        return {"sessions_started": self.started, "sessions_finished": self.finished.snapshot(),
                "session_duration": self.duration.snapshot(),
                "children": {name: record.snapshot() for name, record in list(self.children.items())}}


def build_info() -> dict[str, str]:
    return {"version": __version__, "python": platform.python_version()}


# ----------------------------------------------------------------------------- the families


TIMEOUT_KINDS = ("connection", "writing", "reading", "end-of-message")
PREFIX = "milter_manager"


def metric_families(status: dict) -> list[MetricFamily]:
    """The manager's metrics from the controller's ``status`` answer (its ``totals`` and ``children``)."""
    totals = status.get("totals", {})
    counters = totals.get("counters", {})
    health = status.get("children", {})
    children = counters.get("children", {})
    names = sorted(set(health) | set(children))

    def family(name: str, kind: str, text: str, samples: list, bounds: tuple = ()) -> MetricFamily:
        return MetricFamily(f"{PREFIX}_{name}", kind, text, samples, bounds)

    def per_child(key: str, label: str) -> list:
        return [({"child": name, label: value}, count) for name in names
                for value, count in sorted(children.get(name, {}).get(key, {}).items())]

    duration = counters.get("session_duration")
    return [
        family("build_info", "gauge", "Version of milter-manager and of Python (always 1).", [(build_info(), 1)]),
        family("sessions_started_total", "counter", "MTA sessions whose children were started.",
               [({}, counters.get("sessions_started", 0))]),
        family("sessions_finished_total", "counter", "MTA sessions finished, by the last status the MTA got.",
               [({"status": name}, count) for name, count in sorted(counters.get("sessions_finished", {}).items())]),
        family("sessions_in_flight", "gauge", "MTA sessions in progress.",
               [({}, totals.get("sessions_processing", 0))]),
        family("session_duration_seconds", "histogram", "Length of MTA sessions.",
               [({}, duration)] if duration else [], LATENCY_BOUNDS),
        family("child_sessions_total", "counter", "Sessions of each child milter, by the child's final status.",
               per_child("ended", "status")),
        family("child_replies_total", "counter", "Final replies of each child milter, by status.",
               per_child("replies", "status")),
        family("child_fallbacks_total", "counter",
               "Sessions in which a child milter failed and its fallback status answered for it.",
               [({"child": name}, children.get(name, {}).get("fallbacks", 0)) for name in names]),
        family("child_timeouts_total", "counter", "Timeouts talking to each child milter, by kind.",
               [({"child": name, "kind": kind}, children.get(name, {}).get("timeouts", {}).get(kind, 0))
                for name in names for kind in TIMEOUT_KINDS]),
        family("child_up", "gauge", "1 when the child milter is up in every worker, 0 when down in any "
                                    "(absent until a session has tried it).",
               [({"child": name}, health[name]["state"] == "up") for name in names
                if health.get(name, {}).get("state") in ("up", "down")]),
        family("child_workers", "gauge", "Serving processes that see each child milter in each state.",
               [({"child": name, "state": state}, count) for name in names
                for state, count in sorted(health.get(name, {}).get("workers", {}).items())]),
        family("child_stage_duration_seconds", "histogram",
               "Time from sending a command to a child milter to its final reply, by stage.",
               [({"child": name, "stage": stage}, histogram) for name in names
                for stage, histogram in sorted(children.get(name, {}).get("latency", {}).items())],
               LATENCY_BOUNDS),
    ]
