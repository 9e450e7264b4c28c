"""The disconnect check (M-ERR-8, D-17): the taRgrey case.

A greylisting child tarpits (does not answer RCPT); the SMTP client gives up and closes its
TCP connection. With ``connection_check_interval`` and the ``netstat`` checker, the manager
sees the client gone in the kernel's TCP table, answers the MTA
``fallback_status_at_disconnect`` for the pending command, stops the children and logs
``[session][disconnected]``. The SMTP connection is a real loopback TCP connection opened
and closed by the test; the MTA side (macros with the client's real address and port, the
MTA's own address and port) is driven by the test.
"""

from __future__ import annotations

import re
import socket
import time

import pytest

from manager_harness import letters, wait_until
from milterman.manager.disconnect import ConnectionFacts, TcpTables, netstat_connected
from milterman.protocol import TEMPFAIL, Connect, Family, Rcpt
from scripted_milter import Script

DISCONNECTED = re.compile(r"\[session\]\[disconnected\]\[([0-9.e+-]+)\]\((\d+)\)")


class SmtpConnection:
    """A real SMTP-like TCP connection on loopback: the MTA's listening socket, the client, the MTA's end."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.client = socket.create_connection(self.listener.getsockname())
        self.server_side, _ = self.listener.accept()  # the MTA keeps its end open while the milter works
        self.client_address: tuple[str, int] = self.client.getsockname()
        self.daemon_address: tuple[str, int] = self.listener.getsockname()

    def macros(self) -> dict[str, str]:
        host, port = self.daemon_address
        return {"{daemon_addr}": host, "{daemon_port}": str(port), "j": "mx.example.net"}

    def close(self) -> None:
        for sock in (self.client, self.server_side, self.listener):
            sock.close()


@pytest.fixture
def smtp():
    connection = SmtpConnection()
    yield connection
    connection.close()


def test_netstat_checker_reads_the_kernel_tcp_table_M_ERR_8(smtp):
    """The checker finds the MTA's end of a live connection (connected), and CLOSE_WAIT once the client
    closed (gone); an MTA that is not local is never judged."""
    facts = ConnectionFacts(smtp.client_address, smtp.daemon_address, "", {})
    assert netstat_connected(facts, TcpTables(0)) is True
    smtp.client.close()

    def gone() -> bool:
        return netstat_connected(facts, TcpTables(0)) is False

    wait_until(gone, 5, "the MTA's end in CLOSE_WAIT")
    remote_mta = ConnectionFacts(smtp.client_address, smtp.daemon_address, ("8.8.8.8", 40000), {})
    assert netstat_connected(remote_mta, TcpTables(0)) is True


def start_tarpit(env, manager: dict | None = None, n_workers: int = 0):
    """One greylisting child that never answers RCPT (reading timeout far away)."""
    child = env.milter("greylist")
    child.script = Script(hang="R")
    env.start([{"name": "greylist", "reading_timeout": 60.0, "fallback_status": "accept"}],
              manager={"connection_check_interval": 1, "connection_checkers": ["netstat"], **(manager or {})},
              log={"level": "all"}, n_workers=n_workers)
    return child


def start_session(env, smtp: SmtpConnection):
    mta = env.mta(timeout=15)
    mta.negotiate()
    host, port = smtp.client_address
    assert letters(mta.exchange(Connect("client.example.org", Family.INET, port, host), smtp.macros())) == ["c"]
    assert letters(mta.helo()) == ["c"]
    assert letters(mta.mail()) == ["c"]
    return mta


@pytest.mark.parametrize("fallback, expected, n_workers", [("temporary-failure", TEMPFAIL, 0), ("reject", None, 0),
                                                           ("temporary-failure", TEMPFAIL, 2)])
def test_taRgrey_client_gone_while_child_tarpits_gets_fallback_at_disconnect_M_ERR_8(env, smtp, fallback, expected,
                                                                                     n_workers):
    start_tarpit(env, {"fallback_status_at_disconnect": fallback}, n_workers)
    mta = start_session(env, smtp)
    mta.send(Rcpt("<rcpt@example.org>"))
    # the client is still there: the tarpit goes on (checked every second, no false alarm)
    assert mta.silence(2.5) == []
    smtp.client.close()
    closed = time.monotonic()
    replies = mta.read_reply(timeout=10)
    waited = time.monotonic() - closed
    if expected is not None:
        assert replies == [expected]
    else:
        assert letters(replies) == ["r"]
    assert waited < 3.0, f"answered {waited:.2f} s after the client left (interval 1 s)"
    output = env.manager.wait_output("[session][disconnected]")
    assert DISCONNECTED.search(output), output
    # the child of that session was stopped with that status, once
    ended = env.manager.wait_output("[milter][end][envelope-recipient]")
    assert re.search(rf"\[milter\]\[end\]\[envelope-recipient\]\[{fallback}\]\[[^]]+\]\(\d+\): greylist", ended)
    mta.quit()


def test_without_checkers_the_tarpit_is_not_cut_M_ERR_8(env, smtp):
    """connection_checkers empty (the default): the interval alone checks nothing."""
    child = env.milter("greylist")
    child.script = Script(hang="R")
    env.start([{"name": "greylist", "reading_timeout": 4.0, "fallback_status": "temporary-failure"}],
              manager={"connection_check_interval": 1}, log={"level": "all"})
    mta = start_session(env, smtp)
    mta.send(Rcpt("<rcpt@example.org>"))
    smtp.client.close()
    assert mta.silence(2.5) == []
    assert mta.read_reply(timeout=5) == [TEMPFAIL]  # the child's own reading timeout (M-ERR-2)
    assert "[session][disconnected]" not in env.manager.output
    mta.quit()


TARPIT_IN_PROCESS = """
import gevent

from milterman.milter import CONTINUE, Milter


class Tarpit(Milter):
    def envelope_recipient(self, recipient, parameters):
        gevent.sleep(30)  # a greylisting milter in the worker that keeps the client waiting
        return CONTINUE
"""


def test_an_in_process_child_that_tarpits_is_cut_when_the_client_leaves_M_ERR_8(env, smtp):
    """The check covers an in-process child too, whose envelope callback runs while the stage is begun."""
    (env.dir / "tarpit_site.py").write_text(TARPIT_IN_PROCESS)
    env.start([{"name": "greylist", "python": "tarpit_site:Tarpit", "reading_timeout": 60.0,
                "fallback_status": "accept"}],
              manager={"connection_check_interval": 1, "connection_checkers": ["netstat"],
                       "fallback_status_at_disconnect": "temporary-failure"}, log={"level": "all"})
    mta = start_session(env, smtp)
    # the child skips connect, but the check reads it: the manager asks the MTA for it (D-2)
    assert "C" in mta.options.sent
    mta.send(Rcpt("<rcpt@example.org>"))
    assert mta.silence(2.5) == []  # the client is still there: the callback goes on
    smtp.client.close()
    closed = time.monotonic()
    assert mta.read_reply(timeout=10) == [TEMPFAIL]
    waited = time.monotonic() - closed
    assert waited < 3.0, f"answered {waited:.2f} s after the client left (interval 1 s)"
    assert DISCONNECTED.search(env.manager.wait_output("[session][disconnected]"))
    mta.quit()


@pytest.mark.parametrize("checkers, asked", [('["netstat"]', True), ("[]", False)])
def test_the_check_asks_the_mta_for_connect_and_its_macros_D_2(checkers, asked):
    """With a checker on, connect and the macros the check reads count as read, as a condition's do (D-2);
    without one nothing is added."""
    from milterman.config import load_string
    from milterman.manager.app import build_context
    from milterman.manager.disconnect import CONNECTION_MACROS

    configuration = load_string('version = 1\n[log]\nuse_syslog = false\n[manager]\nconnection_check_interval = 1\n'
                                f'connection_checkers = {checkers}\n[[milter]]\nname = "a"\n'
                                'connection_spec = "unix:/nonexistent/a.sock"\n')
    context = build_context(configuration)
    assert ("C" in context.stages_read) is asked
    assert (set(context.macros_read.get("C", ())) >= set(CONNECTION_MACROS)) is asked
