"""The process's counters keep machine numbers, not Python ints and floats (issue 15 item 4).

A Python number kept in a long-lived counter is a new object at each update; after a burst of
sessions the last ones sit in the burst's small-object arenas and keep them from going back to the
system. The counters live in arrays instead; what they report is unchanged.
"""

from __future__ import annotations

import gc
from array import array

from milterman.manager.metrics import LATENCY_BOUNDS, Histogram, Recorder, Tally
from milterman.protocol import CONTINUE, Reject


def test_counts_and_sums_are_kept_in_arrays():
    recorder = Recorder()
    child = recorder.child("child")
    for number in range(1000):
        recorder.session_finished("pass", 0.003)
        child.replied("C", CONTINUE if number % 2 else Reject(), 0.0004)
        child.failed("reading timeout")
    for counter in (recorder.duration, child.latency["C"], recorder.finished, child.replies, child.timeouts):
        held = [type(item) for item in gc.get_referents(counter) if isinstance(item, (int, float))]
        assert held == [], counter
        assert any(isinstance(item, array) for item in gc.get_referents(counter))
    snapshot = recorder.snapshot()
    assert snapshot["sessions_finished"] == {"pass": 1000}
    assert snapshot["session_duration"]["buckets"][LATENCY_BOUNDS.index(0.005)] == 1000
    assert abs(snapshot["session_duration"]["sum"] - 3.0) < 1e-9
    assert snapshot["children"]["child"]["replies"] == {"pass": 500, "reject": 500}
    assert snapshot["children"]["child"]["timeouts"] == {"reading": 1000}
    assert sum(child.latency["C"].counts) == 1000


def test_tally_reads_and_sets_like_a_dict():
    tally = Tally()
    tally.add("pass")
    tally["error"] = 3
    tally.add("error")
    assert (tally["pass"], tally["error"]) == (1, 4)
    assert tally.snapshot() == {"pass": 1, "error": 4}
    histogram = Histogram()
    histogram.observe(0.25)
    assert histogram.total == 0.25 and histogram.snapshot()["buckets"][LATENCY_BOUNDS.index(0.25)] == 1


def test_the_health_board_keeps_its_offer_and_peak_without_new_objects():
    """Each session sets the MTA's offer and may raise the peak: an equal offer keeps the one already there
    (the probes offer the same), and the peak reads back as set (the pools size on it)."""
    from milterman.log import Logger
    from milterman.manager.health import HealthBoard
    from milterman.protocol import Action, Negotiate, Step

    board = HealthBoard((), Logger())
    first = Negotiate(6, int(Action.ALL), int(Step.ALL))
    board.last_offer = first
    board.last_offer = Negotiate(6, int(Action.ALL), int(Step.ALL))
    assert board.last_offer is first
    other = Negotiate(2, int(Action.ADD_HEADERS), 0)
    board.last_offer = other
    assert board.last_offer is other and board._offer() is other
    assert board.peak == 1
    board.peak = 1000
    assert board.peak == 1000 and board._peak() == 1000
