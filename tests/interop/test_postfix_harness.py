"""Proof that the private-Postfix harness works: real Postfix, real SMTP, a real sink.

No milter of ours is involved: mail flows with no milter, Postfix's milter_default_action is
applied when the milter's port is closed, and Postfix really opens a milter session on a unix
socket in a directory Postfix can reach (we read its option negotiation packet and hang up).
"""

from __future__ import annotations

import socket
import smtplib
import struct
import threading
import time

import pytest

from postfix_harness import (
    MYHOSTNAME,
    PostfixInstance,
    _listening,
    _pid_alive,
    free_port,
    require_real,
    swaks_available,
)
from smtp_sink import SmtpSink

MESSAGE = (
    b"From: Alice <alice@example.org>\r\n"
    b"To: Bob <bob@example.net>\r\n"
    b"Subject: harness check\r\n"
    b"\r\n"
    b"first line\r\n"
    b".a line that starts with a dot\r\n"
    b"last line\r\n"
)


# -- the sink on its own (no Postfix) ---------------------------------------------------------


def test_sink_records_envelope_and_unstuffs_dots(smtp_sink: SmtpSink) -> None:
    with smtplib.SMTP(smtp_sink.host, smtp_sink.port, timeout=10) as client:
        assert client.noop()[0] == 250
        client.sendmail("a@example.org", ["b@example.net", "c@example.com"], MESSAGE)
        client.rset()
        # smtplib stuffs "..": it goes over the wire as "...", the sink must give back ".."
        client.sendmail("", ["d@example.net"], b"Subject: bounce\r\n\r\n..\r\n")
    first, second = smtp_sink.wait_for(2, timeout=5)
    assert first.mail_from == "a@example.org"
    assert first.rcpt_tos == ("b@example.net", "c@example.com")
    assert first.data == MESSAGE
    assert first.header("subject") == "harness check"
    assert first.body.startswith(b"first line\r\n.a line")
    assert second.mail_from == ""
    assert second.body == b"..\r\n"
    assert smtp_sink.errors == []
    with pytest.raises(TimeoutError, match="2 of 3"):
        smtp_sink.wait_for(3, timeout=0.2)


# -- Postfix with no milter -------------------------------------------------------------------


def test_mail_without_milter_reaches_the_sink(postfix_factory, smtp_sink: SmtpSink) -> None:
    mta: PostfixInstance = postfix_factory("")
    assert mta.is_running()
    assert mta.postconf("smtpd_milters", "relayhost") == {
        "smtpd_milters": "",
        "relayhost": f"[127.0.0.1]:{smtp_sink.port}",
    }

    result = mta.send("alice@example.org", ["bob@example.net", "carol@example.com"], MESSAGE)

    assert result.error is None
    assert result.banner is not None and result.banner[0] == 220 and MYHOSTNAME in result.banner[1]
    assert result.rcpts == {"bob@example.net": (250, "2.1.5 Ok"), "carol@example.com": (250, "2.1.5 Ok")}
    assert result.accepted and result.queue_id
    [msg] = smtp_sink.wait_for(1, timeout=20)
    assert msg.mail_from == "alice@example.org"
    assert sorted(msg.rcpt_tos) == ["bob@example.net", "carol@example.com"]
    assert msg.helo == MYHOSTNAME
    assert msg.header("Subject") == "harness check"
    assert msg.body == b"first line\r\n.a line that starts with a dot\r\nlast line\r\n"
    received = msg.header("Received") or ""
    assert f"by {MYHOSTNAME} (Postfix) with ESMTP id {result.queue_id}" in received.replace("\r\n\t", " ")
    relay = rf"relay=127\.0\.0\.1\[127\.0\.0\.1\]:{smtp_sink.port}"
    mta.wait_for_log(rf"{result.queue_id}: to=<bob@example.net>, {relay}.*status=sent")
    assert mta.wait_queue_empty(10)


def test_reject_is_data_not_an_exception(postfix_factory, smtp_sink: SmtpSink) -> None:
    mta = postfix_factory(
        "",
        extra_main_cf={
            "smtpd_recipient_restrictions": "check_recipient_access inline:{nobody@example.net=REJECT}, "
            "permit_mynetworks, reject"
        },
    )
    result = mta.send("alice@example.org", ["nobody@example.net", "bob@example.net"], MESSAGE)
    assert result.rcpts["nobody@example.net"][0] == 554
    assert "Recipient address rejected" in result.rcpts["nobody@example.net"][1]
    assert result.accepted_rcpts == ["bob@example.net"]
    assert result.accepted
    [msg] = smtp_sink.wait_for(1, timeout=20)
    assert msg.rcpt_tos == ("bob@example.net",)


# -- milter_default_action with a milter that is not there ------------------------------------


def test_closed_milter_port_with_tempfail_gives_451(postfix_factory, smtp_sink: SmtpSink) -> None:
    port = free_port()  # nothing listens there
    mta = postfix_factory(f"inet:127.0.0.1:{port}", milter_default_action="tempfail")
    assert mta.postconf("smtpd_milters")["smtpd_milters"] == f"inet:127.0.0.1:{port}"

    result = mta.send("alice@example.org", ["bob@example.net"], MESSAGE)

    assert result.error is None
    assert result.mail == (451, "4.7.1 Service unavailable - try again later")
    assert result.rcpts == {} and result.data is None and not result.accepted
    mta.wait_for_log(rf"warning: connect to Milter service inet:127\.0\.0\.1:{port}: Connection refused")
    mta.wait_for_log(r"NOQUEUE: milter-reject: MAIL from .*451 4\.7\.1")
    assert mta.queue_ids() == []
    time.sleep(1.0)  # nothing may trickle out later either
    assert smtp_sink.messages == []
    assert smtp_sink.connections == 0


def test_closed_milter_port_with_accept_delivers(postfix_factory, smtp_sink: SmtpSink) -> None:
    port = free_port()
    mta = postfix_factory(f"inet:127.0.0.1:{port}", milter_default_action="accept")

    result = mta.send("alice@example.org", "bob@example.net", MESSAGE)

    assert result.accepted, result
    [msg] = smtp_sink.wait_for(1, timeout=20)
    assert msg.rcpt_tos == ("bob@example.net",)
    assert msg.header("Subject") == "harness check"
    mta.wait_for_log(rf"connect to Milter service inet:127\.0\.0\.1:{port}: Connection refused")


# -- a milter session on a unix socket ----------------------------------------------------------


class _NegotiationRecorder:
    """Accepts milter connections on a unix socket, keeps the first packet of each
    (Postfix's SMFIC_OPTNEG) and hangs up.  Not a milter: just enough to see Postfix call."""

    def __init__(self, path: str) -> None:
        self.packets: list[bytes] = []
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.bind(path)
        self._sock.listen(4)
        self._sock.settimeout(0.2)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except OSError:
                continue
            with conn:
                conn.settimeout(5)
                try:
                    data = b""
                    while len(data) < 4 or len(data) < 4 + struct.unpack("!I", data[:4])[0]:
                        chunk = conn.recv(4096)
                        if not chunk:
                            break
                        data += chunk
                    self.packets.append(data)
                except OSError:
                    pass

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._sock.close()


@pytest.mark.parametrize("protocol", [2, 6])
def test_postfix_opens_milter_session_on_unix_socket(postfix_factory, smtp_sink, reachable_dir, protocol) -> None:
    path = reachable_dir / "milter.sock"
    recorder = _NegotiationRecorder(str(path))
    try:
        # smtpd runs as user postfix: it must be able to cross the directory and write the socket
        path.chmod(0o666)
        mta = postfix_factory(f"unix:{path}", milter_default_action="accept", milter_protocol=protocol)
        result = mta.send("alice@example.org", "bob@example.net", MESSAGE)
        assert result.accepted, result
        smtp_sink.wait_for(1, timeout=20)
    finally:
        recorder.close()
    assert recorder.packets, mta.maillog()
    packet = recorder.packets[0]
    length, command = struct.unpack("!IB", packet[:5])
    assert command == ord("O")  # SMFIC_OPTNEG
    assert length == 13
    version, actions, steps = struct.unpack("!III", packet[5:17])
    assert version == protocol
    assert actions != 0


# -- lifecycle --------------------------------------------------------------------------------


def test_two_instances_run_side_by_side_and_stop_alone(postfix_factory, smtp_sink: SmtpSink) -> None:
    first = postfix_factory("")
    second = postfix_factory("")
    assert first.port != second.port and first.root != second.root
    assert set(first.processes()).isdisjoint(second.processes())
    assert first.send("a@example.org", "one@example.net", MESSAGE).accepted
    assert second.send("a@example.org", "two@example.net", MESSAGE).accepted
    got = smtp_sink.wait_for(2, timeout=20)
    assert sorted(m.rcpt_tos[0] for m in got) == ["one@example.net", "two@example.net"]

    first_master = first.master_pid
    first.stop()
    assert not first.is_running() and first.processes() == []
    assert not _listening("127.0.0.1", first.port)
    # (its processes end as zombies here: this sandbox's PID 1 does not reap orphans)
    assert first_master is not None and not _pid_alive(first_master)
    # the other instance is untouched
    assert second.is_running()
    assert second.send("a@example.org", "three@example.net", MESSAGE).accepted
    assert smtp_sink.wait_for(3, timeout=20)[-1].rcpt_tos == ("three@example.net",)
    first.stop()  # a second stop is harmless


def test_restart_in_same_directory(reachable_dir, smtp_sink: SmtpSink) -> None:
    from postfix_harness import postfix_usable

    usable, reason = postfix_usable()
    require_real("postfix", usable, reason)
    mta = PostfixInstance(reachable_dir / "pf", [], smtp_sink.port)
    for round_ in range(2):
        with mta:
            assert mta.send("a@example.org", f"r{round_}@example.net", MESSAGE).accepted
            smtp_sink.wait_for(round_ + 1, timeout=20)
        assert not mta.is_running()
    assert "daemon started" in mta.maillog()


def test_swaks_send(postfix_factory, smtp_sink: SmtpSink) -> None:
    require_real("swaks", swaks_available(), "Debian package swaks")
    mta = postfix_factory("")
    result = mta.swaks_send("alice@example.org", ["bob@example.net"], MESSAGE)
    assert result.returncode == 0, result.transcript
    assert any(line.startswith("<-  250 2.0.0 Ok: queued as ") for line in result.server_lines)
    [msg] = smtp_sink.wait_for(1, timeout=20)
    assert msg.mail_from == "alice@example.org"
    assert msg.header("Subject") == "harness check"


# -- require_real ------------------------------------------------------------------------------


def test_require_real_skips_locally_and_fails_under_ci(monkeypatch) -> None:
    require_real("something", True)  # present: nothing happens
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="frobnicator is not available: not installed"):
        require_real("frobnicator", False, "not installed")
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI=true but frobnicator is not available"):
        require_real("frobnicator", False, "not installed")


def test_local_submission_goes_through_non_smtpd_milters(postfix_factory, smtp_sink: SmtpSink) -> None:
    port = free_port()  # closed: a milter that is down
    mta = postfix_factory(f"inet:127.0.0.1:{port}", non_smtpd=True, milter_default_action="accept")
    assert mta.postconf("non_smtpd_milters")["non_smtpd_milters"] == f"inet:127.0.0.1:{port}"
    proc = mta.submit("alice@example.org", ["bob@example.net"], MESSAGE)
    assert proc.returncode == 0, proc.stderr
    [msg] = smtp_sink.wait_for(1, timeout=20)
    assert msg.rcpt_tos == ("bob@example.net",) and msg.header("Subject") == "harness check"
    # the cleanup daemon (not smtpd) tried the milter for the locally submitted mail
    mta.wait_for_log(rf"postfix/cleanup\[\d+\]: warning: connect to Milter service inet:127\.0\.0\.1:{port}")
