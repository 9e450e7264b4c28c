"""Child connections kept across SMTP sessions (``reuse_connection``, P-CMD-14, P-SM-5).

A child with ``reuse_connection = true`` gets ``K`` at the end of an SMTP session and the next
session takes the same connection without a new negotiation; every failure of a kept connection
falls back to a fresh one and never gives the mail the child's fallback status. Real manager and
real sockets, scripted children (tests/support/scripted_milter.py), and the pool itself in process.
"""

from __future__ import annotations

import io
import signal
import time

import gevent
import pytest
from manager_harness import OFFER, letters, wait_until
from scripted_milter import ScriptedHandler, ScriptedMilter, short_dir

from milterman.log import Logger
from milterman.manager.child import Child, ChildDefinition
from milterman.manager.health import HealthBoard
from milterman.manager.metrics import ChildRecord
from milterman.manager.status import Status
from milterman.net import Timeouts, parse_spec
from milterman.protocol import CONTINUE, Connect, Family, Negotiate

HEADERS = (("From", "<sender@example.org>"), ("Subject", "hello"))
BODY = (b"line 1\r\n",)
#: what one child sees of one mail session after the negotiation
SESSION = ["C", "H", "M", "R", "T", "L", "L", "N", "B", "E"]


def mail_session(env) -> None:
    """One SMTP session with one mail through the manager, every answer continue; then QUIT."""
    mta = env.mta()
    mta.session_start()
    mta.envelope()
    assert mta.content(HEADERS, BODY) == [CONTINUE]
    mta.quit()
    mta.close()


def end_lines(output: str, name: str) -> list[str]:
    return [line for line in output.splitlines() if "[milter][end]" in line and line.endswith(f": {name}")]


class LeavesAfterK(ScriptedHandler):
    """A child that does not keep its connection after ``K``: it closes it, at once or after ``delay``
    seconds without reading anything more (what a milter without QUIT_NC may do)."""

    delay = 0.0

    def close(self) -> None:
        super().close()
        if self.session.closed:
            return  # Q or the end of the connection: nothing to leave
        deadline = time.monotonic() + self.delay
        while time.monotonic() < deadline and not self.milter.stopping.is_set():
            gevent.sleep(0.02)
        self._close()


class LeavingMilter(ScriptedMilter):
    def __init__(self, path, delay: float) -> None:
        self.delay = delay
        super().__init__(path)

    def _factory(self, session):
        handler = LeavesAfterK(session, self)
        handler.delay = self.delay
        return handler


def leaving_milter(env, name: str, delay: float) -> LeavingMilter:
    milter = LeavingMilter(env.dir / f"{name}.sock", delay)
    env.milters[name] = milter  # stopped by the env's teardown
    return milter


# ------------------------------------------------------------------------------------------ kept connections


def sessions_kept(child, count: int) -> None:
    """Wait until ``child`` got ``K`` ``count`` times: the manager has kept the connection of the session the
    MTA just quit (its end runs after the MTA's QUIT is read, so the next session could otherwise come
    first and rightly get a fresh connection)."""
    wait_until(lambda: sum(record.count("K") for record in child.sessions) == count, 10, f"{count} K")


def test_P_CMD_14_a_kept_connection_serves_the_next_sessions_without_negotiating_again(env):
    """``reuse_connection = true``: one connection and one negotiation for three SMTP sessions, each ended by
    ``K`` (the child's close callback runs each time); the child without the key gets a connection, a
    negotiation and ``Q`` per session (M-SES-3). The statistics lines stay one per child per session."""
    kept = env.milter("kept")
    fresh = env.milter("fresh")
    env.start([{"name": "kept", "reuse_connection": True}, {"name": "fresh"}], log={"level": "all"})
    for number in range(1, 4):
        mail_session(env)
        sessions_kept(kept, number)
    for record in fresh.wait_sessions(3):
        assert record.letters[0] == "O" and record.letters[-1] == "Q"
    wait_until(lambda: kept.sessions[0].count("K") == 3, 10, f"three K: {kept.sessions[0].letters}")
    assert len(kept.sessions) == 1
    assert kept.sessions[0].letters == ["O", *SESSION, "K", *SESSION, "K", *SESSION, "K"]
    assert kept.sessions[0].calls.count("close") == 3
    output = env.manager.wait_output("[milter][end]", count=6)
    assert len(end_lines(output, "kept")) == 3 and len(end_lines(output, "fresh")) == 3
    assert output.count("[manager][child][reuse] [kept] a kept connection") == 2
    assert "[manager][child][reuse] [fresh]" not in output


def test_P_CMD_14_a_kept_connection_of_a_worker_is_used_by_that_worker_s_next_sessions(env):
    """With two workers each keeps its own connections: at most two negotiations for six sessions."""
    kept = env.milter("kept")
    env.start([{"name": "kept", "reuse_connection": True}], n_workers=2)
    for number in range(1, 7):
        mail_session(env)
        sessions_kept(kept, number)
    assert 1 <= len(kept.sessions) <= 2
    assert sum(record.count("O") for record in kept.sessions) == len(kept.sessions)
    assert sum(record.count("C") for record in kept.sessions) == 6


# ------------------------------------------------------------------------------------------ falling back


def test_a_kept_connection_that_fails_its_first_command_is_retried_on_a_fresh_one_in_the_same_stage(env):
    """The child closes its connection 0.3 s after ``K`` without reading on: the next session's connect
    fails on the kept connection and is sent again on a fresh one, so the mail never gets the child's
    fallback (reject here); the child is then not reused for a while (one info line), so the third
    session connects afresh and ends with ``Q``."""
    leaver = leaving_milter(env, "leaver", delay=0.3)
    env.start([{"name": "leaver", "reuse_connection": True, "fallback_status": "reject"}], log={"level": "all"})
    for _ in range(3):
        mail_session(env)  # asserts that every reply is continue: no fallback
    records = leaver.wait_sessions(3)
    # the next connect may reach the child before it goes (it is never answered): timing decides
    assert records[0].letters[:len(SESSION) + 2] == ["O", *SESSION, "K"]
    for record in records[1:]:
        assert record.letters == ["O", *SESSION, "Q"]
    output = env.manager.wait_output("[milter][end]", count=3)
    assert output.count("[manager][child][reuse] [leaver] a kept connection failed on its first command") == 1
    assert "[manager][child][error]" not in output
    assert len(end_lines(output, "leaver")) == 3


def test_a_child_silent_after_K_is_answered_on_a_fresh_connection_and_not_kept_again(env):
    """A child that does not take ``K`` and stays silent: the first reply on the kept connection is awaited
    5 s (not the reading timeout, 60 s here), then the stage goes on on a fresh connection and the child
    is never kept again in the process: the third session gets ``Q``. No mail gets the fallback."""
    silent = leaving_milter(env, "silent", delay=60.0)
    env.start([{"name": "silent", "reuse_connection": True, "fallback_status": "reject", "reading_timeout": 60.0}],
              log={"level": "all"})
    mail_session(env)
    started = time.monotonic()
    mail_session(env)
    assert 4.5 < time.monotonic() - started < 30
    mail_session(env)
    wait_until(lambda: len(silent.sessions) == 3 and all(r.done.is_set() for r in silent.sessions[1:]), 20,
               "the two fresh connections closed")
    for record in silent.sessions[1:]:
        assert record.letters == ["O", *SESSION, "Q"]
    output = env.manager.output
    assert output.count("[manager][child][reuse] [silent] a kept connection did not answer its first command "
                        "within 5 s; its connections are no longer kept in this process") == 1
    assert "[manager][child][error]" not in output


def test_a_kept_connection_found_closed_is_replaced_before_the_session_uses_it(env):
    """The child closes at once after ``K``: the next session's peek finds the connection closed and
    connects afresh before sending anything (one info line); every mail goes through."""
    leaver = leaving_milter(env, "leaver", delay=0.0)
    env.start([{"name": "leaver", "reuse_connection": True, "fallback_status": "reject"}], log={"level": "all"})
    mail_session(env)
    leaver.wait_sessions(1)
    mail_session(env)
    records = leaver.wait_sessions(2)
    assert records[1].letters == ["O", *SESSION, "Q"]
    output = env.manager.output
    assert output.count("[manager][child][reuse] [leaver] a kept connection was found closed") == 1
    assert "[manager][child][error]" not in output


def test_a_child_that_timed_out_is_never_kept(env):
    """M-ERR-2: a child that timed out in a session is closed, not kept; the next session connects afresh."""
    slow = env.milter("slow")
    slow.script.hang = "H"
    slow.script.hang_occurrence = 0
    env.start([{"name": "slow", "reuse_connection": True, "reading_timeout": 0.5}])
    mta = env.mta()
    mta.negotiate()
    assert letters(mta.connect()) == ["c"]
    assert letters(mta.helo()) == ["a"]  # its fallback, accept, and no child is left
    mta.quit()
    mta.close()
    slow.script.hang = None
    mail_session(env)
    wait_until(lambda: len(slow.sessions) == 2 and slow.sessions[1].count("K") == 1, 10, "a second connection")
    assert slow.sessions[1].letters[0] == "O"
    assert "K" not in slow.sessions[0].letters


def test_a_reload_closes_the_kept_connections(env):
    """A new configuration (SIGHUP) empties the pool: the kept connection gets ``Q`` and is closed."""
    kept = env.milter("kept")
    env.start([{"name": "kept", "reuse_connection": True}])
    mail_session(env)
    wait_until(lambda: kept.sessions[0].count("K") == 1, 10, "K")
    assert not kept.sessions[0].done.is_set()
    env.manager.proc.send_signal(signal.SIGHUP)
    record = kept.wait_sessions(1)[0]
    assert record.letters[-2:] == ["K", "Q"]
    mail_session(env)
    wait_until(lambda: len(kept.sessions) == 2 and kept.sessions[1].count("K") == 1, 10, "a fresh kept one")
    assert kept.sessions[1].letters[0] == "O"


# ------------------------------------------------------------------------------------------ the pool in process


@pytest.fixture
def unit(tmp_path):
    milter = ScriptedMilter(short_dir(tmp_path) / "unit.sock")
    definition = ChildDefinition(name="unit", spec=parse_spec(milter.spec), fallback_status=Status.ACCEPT,
                                 timeouts=Timeouts(2.0, 2.0, 2.0, 2.0), retry_delay=60.0, reuse_connection=True,
                                 record=ChildRecord())
    board = HealthBoard((definition,), Logger(stream=io.StringIO()))
    yield milter, definition, board
    board.close()
    milter.stop()


def session(definition: ChildDefinition, board: HealthBoard, offer: Negotiate = OFFER) -> Child:
    """One session's child: a kept connection or a new one, then connect answered."""
    child = Child(definition, board.logger)
    if not child.reuse(board.of(definition).pool, offer):
        child.connect(offer)
    assert child.exchange(Connect("mx.example.net", Family.INET, 25, "192.0.2.1"), None).final == CONTINUE
    return child


def test_the_pool_is_keyed_by_the_offer_and_bounded_by_the_peak_of_concurrent_sessions(unit):
    milter, definition, board = unit
    pool = board.of(definition).pool
    first = session(definition, board)
    second = session(definition, board)
    first.quit()
    second.quit()  # the peak is one session: the second connection is not kept
    assert pool.idle == 1
    wait_until(lambda: [record.letters[-1] for record in milter.sessions if record.done.is_set()] == ["Q"], 10,
               "the second connection closed with Q")
    other = Negotiate(6, OFFER.actions, OFFER.protocol & ~0x10)  # another MTA's offer: not the same options
    assert not Child(definition, board.logger).reuse(pool, other)
    board.peak = 2
    third = session(definition, board)
    assert pool.idle == 0 and pool.reused == 1
    fourth = session(definition, board)
    third.quit()
    fourth.quit()
    assert pool.idle == 2
    # one negotiation latency per session, kept or not (the metrics' negotiate stage)
    assert sum(definition.record.latency["O"].counts) == 4


def test_a_child_marked_down_and_a_closed_board_empty_the_pool(unit):
    milter, definition, board = unit
    health = board.of(definition)
    session(definition, board).quit()
    assert health.pool.idle == 1
    health.failed("connect: refused")  # marked down: its kept connections get Q
    assert health.pool.idle == 0
    record = milter.wait_sessions(1)[0]
    assert record.letters[-2:] == ["K", "Q"]
    health.close()
    child = session(definition, board)
    child.quit()  # the board is closed (a reload): not kept
    assert health.pool.idle == 0
    assert milter.wait_sessions(2)[1].letters[-1] == "Q"


def test_a_child_below_protocol_version_6_is_never_sent_K(unit):
    """P-NEG-11: ``K`` needs version 6; a child negotiated lower gets ``Q`` as before."""
    milter, definition, board = unit
    session(definition, board, Negotiate(2, OFFER.actions, 0)).quit()
    assert board.of(definition).pool.idle == 0
    assert milter.wait_sessions(1)[0].letters[-1] == "Q"


def test_idle_kept_connections_are_closed_after_the_idle_time(unit, monkeypatch):
    from milterman.manager import pool as pool_module

    monkeypatch.setattr(pool_module, "IDLE_SECONDS", 0.2)
    milter, definition, board = unit
    session(definition, board).quit()
    started = time.monotonic()
    while board.of(definition).pool.idle and time.monotonic() - started < 5:
        gevent.sleep(0.05)
    assert board.of(definition).pool.idle == 0
    assert milter.wait_sessions(1)[0].letters[-2:] == ["K", "Q"]
