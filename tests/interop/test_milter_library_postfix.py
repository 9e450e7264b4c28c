"""Milters written with milterman.milter behind real Postfix: served by milter-run, and in process in the manager.

* The Tag file of the issue, exactly as written: carol is refused with 5xx at RCPT, alice and bob get
  the message with ``X-Tagged: yes`` — once with ``milter-run tag:Tag -s inet:PORT@[127.0.0.1]`` as
  Postfix's milter, once as ``[[milter]] python = "tag:Tag"`` of milter-manager (n_workers 0 and 2).
* Each example of examples/ both ways: the delivered mails (envelope, header fields other than
  Received:, body) are the same.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from manager_processes import ManagerProcess, wait_listening_quietly
from milter_processes import free_port, stop
from test_manager_postfix import POSTFIX_MILTER_TIMEOUTS, make_message, settle

pytestmark = pytest.mark.interop

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"

#: the issue's file, exactly as written (tests/support/tag.py)
TAG = (Path(__file__).resolve().parents[1] / "support" / "tag.py").read_text()


class MilterRunProcess:
    """``milter-run MODULE:CLASS -s inet:PORT@[127.0.0.1]`` started in ``directory`` (where the module is)."""

    def __init__(self, directory: Path, reference: str, *args: str) -> None:
        self.port = free_port()
        self.log_path = directory / f"milter-run-{self.port}.log"
        self._output = open(self.log_path, "wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "milterman.cli.milter_run", reference, "-s", f"inet:{self.port}@[127.0.0.1]",
             *args], stdout=self._output, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=directory)
        try:
            wait_listening_quietly(self.port, self.process, 20.0, "milter-run", self.log_path)
        except BaseException:
            self.stop()
            raise

    @property
    def postfix_spec(self) -> str:
        return f"inet:127.0.0.1:{self.port}"

    def describe(self) -> str:
        return f"--- milter-run log ---\n{self.log_path.read_text(errors='replace')[-4000:]}"

    def stop(self) -> int | None:
        status = stop(self.process, signal.SIGTERM, timeout=15)
        self._output.close()
        return status


def serve(how: str, directory: Path, reference: str, n_workers: int = 0):
    """The milter behind Postfix: milter-run itself, or milter-manager with it as an in-process child."""
    if how == "milter-run":
        return MilterRunProcess(directory, reference, "--n-workers", str(n_workers))
    return ManagerProcess(directory, [{"name": reference.partition(":")[0], "python": reference}],
                          n_workers=n_workers)


def postfix_for(postfix_factory, server):
    return postfix_factory(server.postfix_spec, milter_default_action="tempfail",
                           milter_timeouts=POSTFIX_MILTER_TIMEOUTS)


@pytest.mark.parametrize("how,n_workers", [("milter-run", 0), ("milter-run", 2), ("in process", 0),
                                           ("in process", 2)])
def test_the_tag_file_as_written(tmp_path, monkeypatch, postfix_factory, smtp_sink, how, n_workers):
    (tmp_path / "tag.py").write_text(TAG)
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))  # the manager imports the site's module
    server = serve(how, tmp_path, "tag:Tag", n_workers)
    try:
        mta = postfix_for(postfix_factory, server)
        recipients = ["alice@example.test", "carol@example.test", "bob@example.test"]
        result = mta.send("sender@example.org", recipients,
                          make_message("sender@example.org", recipients, "tagged", b"Hello.\r\n"))
        assert result.accepted, f"{result}\n{server.describe()}"
        assert 500 <= result.rcpts["carol@example.test"][0] < 600, result
        assert result.accepted_rcpts == ["alice@example.test", "bob@example.test"]
        (delivered,) = settle(mta, smtp_sink, 1, server)
        assert delivered.rcpt_tos == ("alice@example.test", "bob@example.test")
        assert delivered.header("X-Tagged") == "yes"
    finally:
        assert server.stop() == 0


MAILS = [
    ("text/plain; charset=us-ascii", ["alice@example.test", "former@example.test", "bob@example.test"],
     b"Hello,\r\n\r\nsee you.\r\n"),
    ("text/html; charset=us-ascii", ["carol@example.test"], b"<p>Hello</p>\r\n"),
    ("text/plain; charset=us-ascii", ["dave@example.test"], b"no final newline"),
]


def comparable(message) -> tuple:
    """Envelope, header fields other than Received: and body."""
    return (message.mail_from, message.rcpt_tos,
            [(name, value) for name, value in message.headers if name.lower() != "received"], message.body)


def deliveries(postfix_factory, smtp_sink, server) -> list[tuple]:
    mta = postfix_for(postfix_factory, server)
    smtp_sink.clear()
    expected = 0
    for number, (content_type, recipients, body) in enumerate(MAILS):
        message = (f"From: Sender <sender@example.org>\r\nTo: {', '.join(recipients)}\r\nSubject: mail {number}\r\n"
                   f"Date: Wed, 02 Dec 2026 12:00:0{number} +0000\r\nMessage-ID: <mail{number}@example.org>\r\n"
                   f"MIME-Version: 1.0\r\nContent-Type: {content_type}\r\n\r\n").encode() + body
        result = mta.send("sender@example.org", recipients, message)
        expected += bool(result.accepted)
    messages = settle(mta, smtp_sink, expected, server)
    mta.stop()
    return sorted((comparable(message) for message in messages), key=lambda item: item[1])


@pytest.mark.parametrize("reference", ["recipient_policy:RecipientPolicy", "footer:Footer"])
def test_each_example_delivers_the_same_served_and_in_process(tmp_path, monkeypatch, postfix_factory, smtp_sink,
                                                             reference):
    shutil.copy(EXAMPLES / f"{reference.partition(':')[0]}.py", tmp_path)
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    results = {}
    for how in ("milter-run", "in process"):
        server = serve(how, tmp_path, reference)
        try:
            results[how] = deliveries(postfix_factory, smtp_sink, server)
        finally:
            assert server.stop() == 0
    direct, managed = results["milter-run"], results["in process"]
    assert len(direct) == 3
    assert direct == managed
    if reference.startswith("recipient"):
        assert all("former@example.test" not in rcpts for _, rcpts, _, _ in direct)
        assert ("X-Recipients-Checked", "alice@example.test, bob@example.test") in direct[0][2]
    else:
        bodies = {tuple(sorted(rcpts)): body for _, rcpts, _, body in direct}
        assert bodies[("alice@example.test", "bob@example.test", "former@example.test")].endswith(
            b"see you.\r\n-- \r\nSent through example.test; report abuse to postmaster@example.test\r\n")
        assert bodies[("carol@example.test",)] == b"<p>Hello</p>\r\n"
        assert bodies[("dave@example.test",)].startswith(b"no final newline\r\n-- \r\n")

