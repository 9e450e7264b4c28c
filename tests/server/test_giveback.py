"""Memory given back after a burst of sessions (issue 15 item 4; D-12: never after each session).

A serving process (the master with n_workers 0, a worker otherwise) counts the sessions in
progress; when a burst of them is over it runs a full collection and ``malloc_trim(0)`` and says
so at debug level. Real sockets: sessions are held open past negotiation and connect, all at once,
then closed.
"""

from __future__ import annotations

import os
import socket
import sys
import time

import pytest

from milterman.protocol import QUIT, Action, Connect, Family, MtaState, Negotiate, ReplyDecoder, Step
from milterman.server.giveback import BURST, GiveBack

GIVE_BACK_LINE = "[server][memory][give-back]"


def held_session(path: str, number: int) -> tuple[socket.socket, MtaState]:
    """One MTA connection negotiated and past connect, left open (bounded waits)."""
    offer = Negotiate(6, int(Action.ALL), int(Step.ALL))
    state, decoder = MtaState(offer), ReplyDecoder()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(15)
    sock.connect(path)
    for command in (offer, Connect(f"client{number}.example.test", Family.INET, 25000 + number, "127.0.0.1")):
        owed = state.send(command)
        sock.sendall(command.encode())
        while owed:
            reply = decoder.next_message()
            if reply is None:
                data = sock.recv(65536)
                assert data, "the server closed a session before answering"
                decoder.feed(data)
            elif state.receive(reply):
                owed = False
    return sock, state


def burst(path: str, count: int) -> None:
    held = [held_session(path, number) for number in range(count)]
    for sock, state in held:
        state.send(QUIT)
        sock.sendall(QUIT.encode())
        sock.close()


@pytest.mark.parametrize("n_workers", [0, 1])
def test_burst_of_held_sessions_gives_memory_back(start_client, n_workers):
    server = start_client("--log-level", "+debug", n_workers=n_workers)
    path = str(server.socket_path)
    burst(path, BURST + 4)
    server.wait_log(r"\[server\]\[memory\]\[give-back\] heap memory given back after a burst", timeout=15)
    assert server.log().count(GIVE_BACK_LINE) == 1


def test_sessions_one_at_a_time_give_nothing_back(start_client):
    """Below a burst nothing runs: one session after another never pays for a give-back (D-12)."""
    server = start_client("--log-level", "+debug", n_workers=0)
    path = str(server.socket_path)
    for _ in range(BURST + 2):
        burst(path, 1)
    time.sleep(1.0)  # longer than the give-back's settling delay
    burst(path, 1)
    assert GIVE_BACK_LINE not in server.log()


def recording_give_back(**options) -> tuple[GiveBack, list[tuple[float, object]]]:
    """A GiveBack whose scheduled runs are recorded (delay, function) instead of run later."""
    scheduled: list[tuple[float, object]] = []
    give_back = GiveBack(lambda delay, function: scheduled.append((delay, function)), **options)
    if give_back._trim is None:  # Debian's glibc has it: under CI a missing one is a failure, not a skip
        assert os.environ.get("CI") != "true", "this C library has no malloc_trim"
        pytest.skip("this C library has no malloc_trim")
    return give_back, scheduled


def test_give_back_waits_for_the_interval_and_for_sessions_to_end():
    """At most one run per interval; a run due while sessions are back in progress is left to the next
    burst's end (the caller's clock and scheduler, no sockets)."""
    now = [100.0]
    give_back, scheduled = recording_give_back(burst=2, interval=5.0, settle=0.2, clock=lambda: now[0])
    for _ in range(3):
        give_back.started()
    for _ in range(3):
        give_back.ended()
    assert [delay for delay, _ in scheduled] == [0.2]
    scheduled.pop()[1]()
    assert give_back.runs == 1
    now[0] += 1.0
    give_back.started(), give_back.started()
    give_back.ended(), give_back.ended()
    delay, run = scheduled.pop()
    assert delay == pytest.approx(4.0)  # the interval since the last run
    give_back.started()  # a session came back before the run was due
    run()
    assert give_back.runs == 1
    give_back.ended()  # this burst's end schedules it again
    assert len(scheduled) == 1


def test_give_back_empties_the_type_attribute_cache():
    """A name made afresh for one attribute lookup (gevent's loop makes a ``"stop"`` each time a one-shot
    timer fires) is kept by Python's type attribute cache and pins the small-object arena it was made in;
    the give-back drops those references, so the burst's arenas can go back to the system."""

    class Watched:
        def stop(self) -> None:
            pass

    name = "".join(["st", "op"])  # not interned: a string of its own, like one made by C code per call
    assert name is not "stop"  # noqa: F632 (identity is the point)
    before = sys.getrefcount(name)
    getattr(Watched(), name)
    assert sys.getrefcount(name) > before  # the cache holds it
    give_back, _ = recording_give_back(burst=1)
    give_back._run()
    assert sys.getrefcount(name) == before


def sessions_through(give_back: GiveBack, count: int) -> None:
    """``count`` sessions in progress at once, then all ended."""
    for _ in range(count):
        give_back.started()
    for _ in range(count):
        give_back.ended()


def test_a_second_pass_follows_a_burst_while_no_session_comes():
    """After a burst's give-back a second pass runs ``again`` seconds later if no session is in progress
    then: blocks freed meanwhile (timers, the interpreter's free lists refilled from the burst's arenas)
    let more arenas go. It never repeats by itself, and a session in progress skips it."""
    give_back, scheduled = recording_give_back(burst=2, interval=5.0, settle=0.2, again=5.0)
    sessions_through(give_back, 2)
    scheduled.pop()[1]()
    assert give_back.runs == 1
    delay, again = scheduled.pop()
    assert delay == 5.0
    again()
    assert give_back.runs == 2
    assert scheduled == []  # the second pass schedules nothing
    sessions_through(give_back, 2)
    scheduled.pop()[1]()
    assert give_back.runs == 3
    give_back.started()  # a session in progress when the second pass is due: skipped
    scheduled.pop()[1]()
    assert give_back.runs == 3
    assert scheduled == []


def test_without_again_there_is_no_second_pass():
    give_back, scheduled = recording_give_back(burst=1, settle=0.2)
    sessions_through(give_back, 1)
    scheduled.pop()[1]()
    assert give_back.runs == 1
    assert scheduled == []


def test_serving_process_gives_back_again_after_a_burst(start_client):
    """The serving process runs the second pass (the debug line says "again") once the burst is over."""
    server = start_client("--log-level", "+debug", n_workers=0)
    burst(str(server.socket_path), BURST + 4)
    server.wait_log(r"\[server\]\[memory\]\[give-back\] heap memory given back again after a burst", timeout=20)
    assert server.log().count(GIVE_BACK_LINE) == 2


def test_what_goes_first_runs_only_with_a_give_back():
    """``before`` (the serving process frees its idle runner greenlets there) runs ahead of each give-back
    and not when a run is skipped because a session came back: that session may need a runner."""
    calls: list[int] = []
    give_back, scheduled = recording_give_back(burst=2, settle=0.2, again=5.0,
                                               before=lambda: calls.append(give_back.runs))
    sessions_through(give_back, 2)
    give_back.started()  # back before the run is due
    scheduled.pop()[1]()
    assert calls == [] and give_back.runs == 0
    give_back.ended()
    scheduled.pop()[1]()
    assert calls == [0]  # before the trim of the first run
    scheduled.pop()[1]()  # the second pass
    assert calls == [0, 1]


def test_a_serving_process_without_a_master_has_no_heartbeat(start_client):
    """n_workers 0: no heartbeat file and no master to watch, so no greenlet wakes every second (its
    timeouts would pin the arenas a burst's give-back frees). Seen from outside: an idle serving process
    uses no CPU over seconds."""
    import psutil

    server = start_client(n_workers=0)
    process = psutil.Process(server.master_pid)
    time.sleep(0.5)
    before = process.num_ctx_switches().voluntary
    time.sleep(3.0)
    assert process.num_ctx_switches().voluntary - before <= 1
