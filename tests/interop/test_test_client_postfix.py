"""milter-test-client behind a real Postfix (Debian's package, a private instance on loopback).

Acceptance of the protocol-core issue: the client prints the envelope, headers, body and
Postfix's macros, and the mail is accepted and relayed (tools.md §2.3, P-DIFF-0, P-MAC-9).
"""

from __future__ import annotations

import re

import pytest
from milter_processes import TestClientProcess

MESSAGE = (b"From: Sender <sender@example.org>\r\n"
           b"To: Alice <alice@example.test>\r\n"
           b"Subject: interop through milter-test-client\r\n"
           b"X-Folded: first line\r\n\tsecond line\r\n"
           b"\r\n"
           b"Hello Alice,\r\n"
           b"this body went through milter-test-client.\r\n")


@pytest.mark.interop
@pytest.mark.parametrize("milter_protocol", [6, 2])
def test_postfix_talks_to_milter_test_client(tmp_path, postfix_factory, smtp_sink, milter_protocol):
    """Postfix → milter-test-client: every stage printed with Postfix's macros; mail delivered."""
    client = TestClientProcess(tmp_path)
    try:
        postfix = postfix_factory(client.postfix_spec, milter_protocol=milter_protocol)
        result = postfix.send("sender@example.org", ["alice@example.test"], MESSAGE)
        assert result.accepted, result
        delivered = smtp_sink.wait_for(1, timeout=20)[0]
        output = client.wait_output("finished")
    finally:
        assert client.stop() == 0
    assert delivered.mail_from == "sender@example.org"
    assert delivered.rcpt_tos == ("alice@example.test",)
    assert delivered.header("Subject") == "interop through milter-test-client"
    assert b"this body went through milter-test-client." in delivered.body

    assert re.search(rf"^negotiate: version=<{milter_protocol}>, action=<add-headers\|", output, re.M), output
    # reverse DNS is off: Postfix sends its "unknown" client as the bracketed address (P-CON-3)
    assert re.search(r"^connect: host=<\[127\.0\.0\.1\]>, address=<inet:\d+@\[127\.0\.0\.1\]>$", output, re.M)
    assert "envelope-from: <<sender@example.org>>" in output
    assert "envelope-recipient: <<alice@example.test>>" in output
    assert "header: <Subject: interop through milter-test-client>" in output
    assert "header: <X-Folded: first line\n\tsecond line>" in output  # P-CMD-8: bare LF inside a folded value
    assert "end-of-header" in output
    assert "body: <Hello Alice,\r\nthis body went through milter-test-client.\r\n>" in output
    assert "end-of-message" in output
    # Postfix's macros (P-MAC-9): connect stage names, brace-stripped, and the queue id at DATA (v6 only)
    connect_block = output.split("connect: ", 1)[1].split("helo: ", 1)[0]
    assert "  daemon_name=mta.milterman.test" in connect_block
    assert re.search(r"^  v=Postfix \d", connect_block, re.M)
    assert "  j=mta.milterman.test" in connect_block
    mail_block = output.split("envelope-from: ", 1)[1].split("envelope-recipient: ", 1)[0]
    assert "  mail_addr=sender@example.org" in mail_block
    rcpt_block = output.split("envelope-recipient: ", 1)[1]
    assert "  rcpt_addr=alice@example.test" in rcpt_block
    if milter_protocol >= 4:
        data_block = output.split("\ndata\n", 1)[1].split("header: ", 1)[0]
        assert re.search(r"^  i=[0-9A-F]+$", data_block, re.M), data_block
    else:
        assert "\ndata\n" not in output  # P-NEG-11: no DATA event below version 4
    assert output.count("\nfinished\n") == 1
