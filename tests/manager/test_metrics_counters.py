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
