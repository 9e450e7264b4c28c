"""The private Sendmail of the interop tests: it relays to the sink and calls its milters in order."""

from __future__ import annotations

import json

import pytest
from milter_processes import EditsMilterProcess, pymilter_usable
from postfix_harness import require_real

MESSAGE = (b"From: <sender@example.org>\r\nTo: <alice@example.test>\r\nSubject: harness\r\n"
           b"Date: Sat, 21 Nov 2026 10:00:00 +0000\r\nMessage-ID: <harness@example.org>\r\n\r\nbody\r\n")


@pytest.mark.interop
def test_sendmail_relays_to_the_sink_with_its_own_received_header(sendmail_factory, smtp_sink):
    sendmail = sendmail_factory()
    result = sendmail.send("sender@example.org", ["alice@example.test", "bob@example.test"], MESSAGE)
    assert result.accepted, result
    [delivered] = smtp_sink.wait_for(1, timeout=30)
    assert delivered.mail_from == "sender@example.org"
    assert sorted(delivered.rcpt_tos) == ["alice@example.test", "bob@example.test"]  # Sendmail sorts them
    names = [name for name, _ in delivered.headers]
    assert names == ["Received", "From", "To", "Subject", "Date", "Message-ID"], names
    assert "by mta.milterman.test" in delivered.headers[0][1]
    assert delivered.body == b"body\r\n"
    sendmail.stop()
    assert sendmail.processes() == []


@pytest.mark.interop
def test_sendmail_calls_its_milters_in_order(tmp_path, sendmail_factory, smtp_sink):
    require_real("python3-milter", *pymilter_usable())
    first = EditsMilterProcess(tmp_path, "add:X-First:one")
    second = EditsMilterProcess(tmp_path, f"record:{tmp_path / 'second.json'}", "add:X-Second:two")
    try:
        sendmail = sendmail_factory([first.libmilter_spec, second.libmilter_spec])
        assert sendmail.send("sender@example.org", ["alice@example.test"], MESSAGE).accepted
        [delivered] = smtp_sink.wait_for(1, timeout=30)
    finally:
        first.stop()
        second.stop()
    seen = json.loads((tmp_path / "second.json").read_text())
    assert ["X-First", "one"] in seen["headers"]  # the second milter sees the first one's edit
    assert [name for name, _ in delivered.headers][-2:] == ["X-First", "X-Second"]
