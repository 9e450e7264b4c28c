"""The two examples of examples/: what they do, the same in process and over a unix socket."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
sys.path.insert(0, str(EXAMPLES))

from footer import Footer  # noqa: E402
from recipient_policy import RecipientPolicy  # noqa: E402

pytest_plugins = ["milterman.testing.pytest_plugin"]


def test_examples_are_short():
    for path in EXAMPLES.glob("*.py"):
        assert len(path.read_text().splitlines()) < 40, path


@pytest.mark.parametrize("where", ["in process", "over a unix socket"])
def test_recipient_policy(milter_tester, where):
    target = RecipientPolicy if where == "in process" else milter_tester.serve(RecipientPolicy)
    outcome = milter_tester.run(target, recipients=["alice@example.test", "Former@example.test", "bob@example.test"])
    assert outcome.rejected_recipients == ["<Former@example.test>"]
    assert outcome.replies("envelope_recipient")[1].text == "550 5.1.1 former@example.test: this mailbox is closed"
    assert outcome.added_headers == [("X-Recipients-Checked", "alice@example.test, bob@example.test")]
    outcome = milter_tester.run(target, recipients=["former@example.test"])
    assert outcome.status == "reject" and outcome.smtp_reply.startswith("550 5.1.1")


@pytest.mark.parametrize("where", ["in process", "over a unix socket"])
def test_footer(milter_tester, where):
    target = Footer if where == "in process" else milter_tester.serve(Footer)
    outcome = milter_tester.run(target, headers=[("Content-Type", "text/plain; charset=utf-8")],
                                body=b"Hello,\r\nsee you.\r\n")
    assert outcome.body == (b"Hello,\r\nsee you.\r\n-- \r\nSent through example.test; report abuse to "
                            b"postmaster@example.test\r\n")
    html = milter_tester.run(target, headers=[("Content-Type", "text/html")], body=b"<p>hi</p>\r\n")
    assert html.status == "accept" and html.body == b"<p>hi</p>\r\n"
    big = b"x" * 70000 + b"\r\n"  # several body chunks, and a replacement longer than one packet
    assert milter_tester.run(target, body=big).body.startswith(big + b"-- \r\n")
