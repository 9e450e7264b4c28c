"""Behaviour tests of milter-test-server (tools.md §1.11, TS-*).

Every test runs the tool as a real subprocess against the scripted milter of
conftest.py (our own MilterSession on a unix socket, served from a background
thread with its own gevent hub) and checks both what the milter received and
what the tool printed.
"""

from __future__ import annotations

import json
import re
import socket

import pytest

from milterman import __version__
from milterman.protocol import (ACCEPT, DISCARD, REJECT, SHUTDOWN, SKIP, TEMPFAIL, ConnectionFailure, Family,
                                ReplyCode, Step, format_reply_text)

from tools_support import ELAPSED_LINE, Script

DEFAULT_LETTERS = ["O", "C", "H", "M", "R", "T", "L", "L", "N", "B", "E", "Q"]
DEFAULT_BODY = b"La de da de da 1.\nLa de da de da 2.\nLa de da de da 3.\nLa de da de da 4."
RED, GREEN, NORMAL = "\x1b[01;31m", "\x1b[01;32m", "\x1b[00m"


def red(text: str) -> str:
    return f"{RED}{text}{NORMAL}"


def green(text: str) -> str:
    return f"{GREEN}{text}{NORMAL}"


def normalized(stdout: str) -> str:
    """Replace the elapsed seconds (checked against the format first) by ``XXX``."""
    return ELAPSED_LINE.sub("elapsed-time: XXX seconds", stdout)


def assert_status(run, status: str) -> None:
    """Exactly the two result lines ``status: STATUS`` and the elapsed line, exit 0 (§1.8, §1.9)."""
    assert run.returncode == 0, (run.stdout, run.stderr)
    lines = run.lines
    assert len(lines) == 2, run.stdout
    assert lines[0] == f"status: {status}"
    assert ELAPSED_LINE.match(lines[1]), lines[1]


def without(letters: list[str], letter: str) -> list[str]:
    return [item for item in letters if item != letter]


def message_block(*, status: str = "pass", extra: tuple[str, ...] = (),
                  envelope: tuple[str, ...] = ("  MAIL FROM:<sender@example.com>", "  RCPT TO:<receiver@example.org>"),
                  headers: tuple[str, ...] = ("  From: <sender@example.com>", "  To: <receiver@example.org>"),
                  body: str = DEFAULT_BODY.decode()) -> str:
    """The whole stdout of a run with ``--output-message`` (tools.md §1.8), elapsed normalized."""
    lines = [f"status: {status}", "elapsed-time: XXX seconds", *extra, "",
             "Envelope:" + "-" * 30, *envelope,
             "Header:" + "-" * 32, *headers,
             "Body:" + "-" * 34, body]
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------ sequence


def test_TS_SEQ_1_all_continue_sequence(milter, run_server):
    run = run_server("-s", milter.spec)
    assert_status(run, "pass")
    session = milter.session
    assert session.letters == DEFAULT_LETTERS
    offer = session.command("O")
    assert (offer.version, offer.actions, offer.protocol) == (6, 0x1FF, 0x1FFFFF)  # §1.5 rule 2
    assert [(h.name, h.value) for h in session.commands("L")] == [("From", "<sender@example.com>"),
                                                                  ("To", "<receiver@example.org>")]
    assert session.command("B").chunk == DEFAULT_BODY
    assert session.command("E").chunk == b""  # no chunk attached to end-of-message
    assert session.calls == ["close"]


NO_STAGE = [
    pytest.param(Step.NO_CONNECT, "C", (), id="no-connect"),
    pytest.param(Step.NO_HELO, "H", (), id="no-helo"),
    pytest.param(Step.NO_MAIL, "M", (), id="no-envelope-from"),
    pytest.param(Step.NO_RCPT, "R", (), id="no-envelope-recipient"),
    pytest.param(Step.NO_UNKNOWN, "U", ("--unknown=HELP",), id="no-unknown"),
    pytest.param(Step.NO_DATA, "T", (), id="no-data"),
    pytest.param(Step.NO_HEADERS, "L", (), id="no-headers"),
    pytest.param(Step.NO_END_OF_HEADER, "N", (), id="no-end-of-header"),
    pytest.param(Step.NO_BODY, "B", (), id="no-body"),
]


@pytest.mark.parametrize("step, letter, extra", NO_STAGE)
def test_TS_SEQ_2_no_stage_not_sent(milter, run_server, step, letter, extra):
    milter.script = Script(protocol=step)
    run = run_server("-s", milter.spec, "--reading-timeout=5", *extra)
    assert_status(run, "pass")
    session = milter.session
    assert session.count(letter) == 0
    # §1.5 rule 5: the macros of a suppressed command are not sent either
    assert letter not in [packet.stage for packet in session.macro_packets]
    assert session.letters == without(DEFAULT_LETTERS, letter)


NO_REPLY = [
    pytest.param(Step.NO_REPLY_CONNECT, (), id="no-reply-connect"),
    pytest.param(Step.NO_REPLY_HELO, (), id="no-reply-helo"),
    pytest.param(Step.NO_REPLY_MAIL, (), id="no-reply-envelope-from"),
    pytest.param(Step.NO_REPLY_RCPT, ("-r", "a@example.org", "-r", "b@example.org"),
                 id="no-reply-envelope-recipient"),
    pytest.param(Step.NO_REPLY_UNKNOWN, ("--unknown=HELP",), id="no-reply-unknown"),
    pytest.param(Step.NO_REPLY_DATA, (), id="no-reply-data"),
    pytest.param(Step.NO_REPLY_HEADER, (), id="no-reply-header"),
    pytest.param(Step.NO_REPLY_END_OF_HEADER, (), id="no-reply-end-of-header"),
    pytest.param(Step.NO_REPLY_BODY, ("-b", "one", "-b", "two"), id="no-reply-body"),
]


@pytest.mark.parametrize("step, extra", NO_REPLY)
def test_TS_SEQ_3_no_reply_stage_completes(milter, run_server, step, extra):
    # A server that waited for the reply anyway would end with "reading timeout" after 3 s.
    milter.script = Script(protocol=step)
    run = run_server("-s", milter.spec, "--reading-timeout=3", *extra)
    assert_status(run, "pass")
    session = milter.session
    assert session.letters[0] == "O" and session.letters[-2:] == ["E", "Q"]
    assert session.count("C") == session.count("H") == session.count("M") == 1
    assert session.count("T") == session.count("N") == 1
    assert session.count("R") == (2 if step == Step.NO_REPLY_RCPT else 1)
    assert session.count("B") == (2 if step == Step.NO_REPLY_BODY else 1)
    assert session.count("U") == (1 if step == Step.NO_REPLY_UNKNOWN else 0)


@pytest.mark.parametrize("version, unknown_sent, data_sent", [(2, False, False), (3, True, False),
                                                              (4, True, True), (6, True, True)])
def test_TS_SEQ_4_unknown_and_data_by_version(milter, run_server, version, unknown_sent, data_sent):
    run = run_server("-s", milter.spec, f"--negotiate-version={version}", "--unknown=HELP",
                     "-r", "a@example.org", "-r", "b@example.org")
    assert_status(run, "pass")
    session = milter.session
    assert session.command("O").version == version
    expected = ["O", "C", "H", "M", "R", "R"]
    if unknown_sent:
        expected.append("U")
    if data_sent:
        expected.append("T")
    expected += ["L", "L", "N", "B", "E", "Q"]
    assert session.letters == expected
    if unknown_sent:
        assert session.command("U").command == "HELP"


def test_TS_SEQ_4_no_unknown_without_option(milter, run_server):
    run = run_server("-s", milter.spec)
    assert_status(run, "pass")
    assert milter.session.count("U") == 0


# ------------------------------------------------------------------------------------------ replies


def test_TS_REPLY_1_accept_at_helo(milter, run_server):
    milter.script = Script(replies={"H": ACCEPT})
    run = run_server("-s", milter.spec)
    assert_status(run, "accept")
    session = milter.session
    assert session.count("M") == 0
    assert without(session.letters, "A") == ["O", "C", "H", "Q"]


def test_TS_REPLY_2_discard_at_envelope_from(milter, run_server):
    milter.script = Script(replies={"M": DISCARD})
    run = run_server("-s", milter.spec)
    assert_status(run, "discard")
    session = milter.session
    assert session.count("R") == 0
    assert session.letters == ["O", "C", "H", "M", "A", "Q"]


@pytest.mark.parametrize("replies, status, data_sent", [
    pytest.param([REJECT, None], "pass", True, id="reject+continue"),
    pytest.param([None, REJECT], "pass", True, id="continue+reject"),
    pytest.param([REJECT, REJECT], "reject", False, id="reject+reject"),
    pytest.param([TEMPFAIL, TEMPFAIL], "temporary-failure", False, id="tempfail+tempfail"),
    pytest.param([REJECT, TEMPFAIL], "temporary-failure", False, id="reject+tempfail"),
    pytest.param([TEMPFAIL, REJECT], "reject", False, id="tempfail+reject"),
])
def test_TS_REPLY_3_rcpt_statuses(milter, run_server, replies, status, data_sent):
    milter.script = Script(replies={"R": replies})
    run = run_server("-s", milter.spec, "-r", "first@example.org", "-r", "second@example.org")
    assert_status(run, status)
    session = milter.session
    assert [rcpt.address for rcpt in session.commands("R")] == ["<first@example.org>", "<second@example.org>"]
    assert session.count("T") == (1 if data_sent else 0)
    assert session.count("E") == (1 if data_sent else 0)


def test_TS_REPLY_4_reject_at_connect(milter, run_server):
    milter.script = Script(replies={"C": REJECT})
    run = run_server("-s", milter.spec)
    assert_status(run, "reject")
    session = milter.session
    assert session.count("H") == 0
    assert without(session.letters, "A") == ["O", "C", "Q"]


def test_TS_REPLY_4_tempfail_at_data(milter, run_server):
    milter.script = Script(replies={"T": TEMPFAIL})
    run = run_server("-s", milter.spec)
    assert_status(run, "temporary-failure")
    session = milter.session
    assert session.count("L") == 0
    assert session.letters == ["O", "C", "H", "M", "R", "T", "A", "Q"]


@pytest.mark.parametrize("code, xcode, text, expected", [
    (554, "5.7.1", "1% 2%% 3%%%", "status: reject [554]<5.7.1>(1% 2%% 3%%%)"),
    (451, "4.7.1", "Greylisting", "status: temporary-failure [451]<4.7.1>(Greylisting)"),
])
def test_TS_REPLY_5_reply_code_at_helo(milter, run_server, code, xcode, text, expected):
    milter.script = Script(replies={"H": ReplyCode(format_reply_text(code, xcode, text))})
    run = run_server("-s", milter.spec)
    assert run.returncode == 0
    assert run.lines[0] == expected
    assert ELAPSED_LINE.match(run.lines[1]) and len(run.lines) == 2
    assert milter.session.count("M") == 0


def test_TS_REPLY_6_connection_failure_at_helo(milter, run_server):
    # A connection-failure reply is a protocol error (P-BAD-35): the session prints only the error
    # message line (status error) and the tool still exits 0 (§1.8, §1.9).
    milter.script = Script(replies={"H": ConnectionFailure.INSTANCE})
    run = run_server("-s", milter.spec)
    assert run.returncode == 0, run.stdout
    assert len(run.lines) == 1, run.stdout
    assert not run.stdout.startswith("status:")
    assert "connection-failure" in run.stdout and "P-BAD-35" in run.stdout
    assert milter.session.count("M") == 0


def test_TS_REPLY_6_shutdown_at_helo(milter, run_server):
    milter.script = Script(replies={"H": SHUTDOWN})
    run = run_server("-s", milter.spec)
    assert_status(run, "abort")
    assert milter.session.count("M") == 0


def test_TS_REPLY_7_skip_during_body(milter, run_server):
    milter.script = Script(protocol=Step.SKIP, replies={"B": [None, SKIP]})
    run = run_server("-s", milter.spec, "-b", "chunk1", "-b", "chunk2", "-b", "chunk3", "-b", "chunk4")
    assert_status(run, "pass")
    session = milter.session
    assert [body.chunk for body in session.commands("B")] == [b"chunk1", b"chunk2"]
    assert session.letters[-4:] == ["B", "B", "E", "Q"]


# ------------------------------------------------------------------------------------------ options


def test_TS_OPT_1_connect_host(milter, run_server):
    run = run_server("-s", milter.spec, "--connect-host=test-host")
    assert_status(run, "pass")
    connect = milter.session.command("C")
    assert connect.hostname == "test-host"
    assert (connect.family, connect.port, connect.ip) == (Family.INET, 50443, "192.168.123.123")


def test_TS_OPT_1_connect_address(milter, run_server):
    run = run_server("-s", milter.spec, "--connect-address=inet:12345@192.168.1.1")
    assert_status(run, "pass")
    connect = milter.session.command("C")
    assert connect.hostname == "mx.example.net"
    assert (connect.family, connect.port, connect.ip) == (Family.INET, 12345, "192.168.1.1")


def test_TS_OPT_1_invalid_connect_address(run_server, tmp_path):
    run = run_server("-s", f"unix:{tmp_path}/none.sock", "--connect-address=inet:99999@192.168.1.1")
    assert run.returncode == 1
    assert run.stdout == "port number should be less than 65536: <inet:99999@192.168.1.1>: <99999>\n"


def test_TS_OPT_2_helo_from_recipients(milter, run_server):
    run = run_server("-s", milter.spec, "--helo-fqdn=test-host", "--envelope-from=from@example.com",
                     "--envelope-recipient=to1@example.org", "--envelope-recipient=<to2@example.org>",
                     "-r", "to3@example.org")
    assert_status(run, "pass")
    session = milter.session
    assert session.command("H").name == "test-host"
    assert session.command("M").address == "<from@example.com>"
    recipients = ["<to1@example.org>", "<to2@example.org>", "<to3@example.org>"]
    assert [rcpt.address for rcpt in session.commands("R")] == recipients
    assert [session.macros("R", n)["rcpt_addr"] for n in range(3)] == recipients  # reset per RCPT (§1.4)
    # default headers use the normalized sender and the first recipient (§1.3 rule 2)
    assert [(h.name, h.value) for h in session.commands("L")] == [("From", "<from@example.com>"),
                                                                  ("To", "<to1@example.org>")]


def test_TS_OPT_2_deprecated_aliases(milter, run_server):
    run = run_server("-s", milter.spec, "--from=old@example.com", "--recipient=old-rcpt@example.org")
    assert_status(run, "pass")
    session = milter.session
    assert session.command("M").address == "<old@example.com>"
    assert [rcpt.address for rcpt in session.commands("R")] == ["<old-rcpt@example.org>"]


def test_TS_OPT_3_headers(milter, run_server):
    run = run_server("-s", milter.spec, "--header=X-A:1", "-h", "X-B: spaced value ", "--header=X-A:2:3")
    assert_status(run, "pass")
    headers = [(h.name, h.value) for h in milter.session.commands("L")]
    # appended in the given order (the §1.3 rule 3 AMBIG is settled as append), values verbatim,
    # split at the first colon, default From/To appended (§1.3 rule 2)
    assert headers == [("X-A", "1"), ("X-B", " spaced value "), ("X-A", "2:3"),
                       ("From", "<sender@example.com>"), ("To", "<receiver@example.org>")]


def test_TS_OPT_3_header_without_colon(run_server, tmp_path):
    run = run_server("-s", f"unix:{tmp_path}/none.sock", "--header=NoColon")
    assert run.returncode == 1
    assert run.stdout == "headers option should be 'NAME:VALUE'\n"


def test_TS_OPT_3_given_from_and_to_not_added(milter, run_server):
    run = run_server("-s", milter.spec, "-h", "To:<x@example.org>", "-h", "from:lower@example.com")
    assert_status(run, "pass")
    headers = [(h.name, h.value) for h in milter.session.commands("L")]
    # "From" is matched case-sensitively: a "from" header does not prevent the default From
    assert headers == [("To", "<x@example.org>"), ("from", "lower@example.com"), ("From", "<sender@example.com>")]


def test_TS_OPT_4_body_chunks(milter, run_server):
    run = run_server("-s", milter.spec, "--body=chunk1", "--body=chunk2", "--body=chunk3")
    assert_status(run, "pass")
    chunks = [body.chunk for body in milter.session.commands("B")]
    assert chunks == [b"chunk1", b"chunk2", b"chunk3"]
    assert b"".join(chunks) == b"chunk1chunk2chunk3"


DEFAULT_MAIL_MACROS = {"mail_mailer": "mail_mailer", "mail_host": "mail_host", "mail_addr": "mail_addr"}


def test_TS_OPT_5_authenticated_macros(milter, run_server):
    run = run_server("-s", milter.spec, "--authenticated-name=user", "--authenticated-type=PLAIN",
                     "--authenticated-author=another-user@example.com")
    assert_status(run, "pass")
    session = milter.session
    assert session.macros("M") == {**DEFAULT_MAIL_MACROS, "auth_authen": "user", "auth_type": "PLAIN",
                                   "auth_author": "another-user@example.com"}
    # only the envelope-from stage gets them
    for letter in "CHRTNE":
        assert not {"auth_authen", "auth_type", "auth_author"} & set(session.macros(letter))
    assert b"{auth_authen}\0user\0" in session.raw


def test_TS_OPT_5_authenticated_name_alone(milter, run_server):
    run = run_server("-s", milter.spec, "--authenticated-name=user")
    assert_status(run, "pass")
    assert milter.session.macros("M") == {**DEFAULT_MAIL_MACROS, "auth_authen": "user"}


def test_TS_OPT_6_reading_timeout(milter, run_server):
    milter.script = Script(hang="O")  # never answers the negotiation
    run = run_server("-s", milter.spec, "--reading-timeout", "1", timeout=30)
    assert run.returncode == 0
    assert run.stdout == "reading timeout\n"
    assert run.elapsed < 10


def test_TS_OPT_6_all_timeouts_overrides_end_of_message_timeout(milter, run_server):
    # The default end-of-message timeout is 300 s; --all-timeouts=1 must shorten it too.
    milter.script = Script(hang="E")
    run = run_server("-s", milter.spec, "--all-timeouts=1", timeout=30)
    assert run.returncode == 0
    assert run.stdout == "end-of-message timeout\n"
    assert run.elapsed < 10


def test_TS_OPT_6_all_timeouts_overrides_reading_timeout(milter, run_server):
    milter.script = Script(hang="H")
    run = run_server("-s", milter.spec, "--reading-timeout=60", "--all-timeouts=1", timeout=30)
    assert run.returncode == 0
    assert run.stdout == "reading timeout\n"
    assert run.elapsed < 10


def test_TS_OPT_6_end_of_message_timeout(milter, run_server):
    # BUG of the original (value stored into the writing timeout): implemented as documented.
    milter.script = Script(hang="E")
    run = run_server("-s", milter.spec, "--end-of-message-timeout=1", timeout=30)
    assert run.returncode == 0
    assert run.stdout == "end-of-message timeout\n"
    assert run.elapsed < 10


def test_TS_OPT_7_version(run_server):
    run = run_server("--version")
    assert run.returncode == 0
    assert run.stdout == f"milter-test-server {__version__}\n"


# ------------------------------------------------------------------------------------------ macros

DEFAULT_MACROS = {
    "C": {"daemon_name": "milter-test-server", "if_addr": "127.0.0.1", "if_name": "localhost",
          "j": "mail.example.com"},
    "H": {"cert_issuer": "cert_issuer", "cert_subject": "cert_subject", "cipher": "0", "cipher_bits": "0",
          "tls_version": "0"},
    "M": DEFAULT_MAIL_MACROS,
    "R": {"rcpt_addr": "<receiver@example.org>", "rcpt_host": "rcpt_host", "rcpt_mailer": "rcpt_mailer"},
    "T": {"i": "i"},
    "N": {"i": "i"},
    "E": {"i": "i"},
}


def test_TS_MAC_1_default_macros(milter, run_server):
    run = run_server("-s", milter.spec)
    assert_status(run, "pass")
    session = milter.session
    for letter, expected in DEFAULT_MACROS.items():
        assert session.macros(letter) == expected, letter
    # one macro packet per stage, immediately before its command; none for header/body/unknown
    sequence = session.letters_with_macros
    assert sequence == ["O", "D", "C", "D", "H", "D", "M", "D", "R", "D", "T", "L", "L", "D", "N", "B",
                        "D", "E", "Q"]
    for index, item in enumerate(session.received):
        if item.letter == "D":
            assert item.command.stage == session.received[index + 1].letter
            names = [name for name, _ in item.command.macros]
            assert names == sorted(names)  # sent sorted by name (§0.4)
    # names longer than one character travel in braces, one-character names bare (§0.4)
    assert b"{daemon_name}\0milter-test-server\0" in session.raw
    assert b"\0j\0mail.example.com\0" in session.raw
    assert b"\0daemon_name\0" not in session.raw


def test_TS_MAC_1_name_option_sets_daemon_name(milter, run_server):
    run = run_server("-s", milter.spec, "--name=custom-name")
    assert_status(run, "pass")
    assert milter.session.macros("C")["daemon_name"] == "custom-name"


def test_TS_MAC_1_symbol_lists_restrict_macros(milter, run_server):
    # §1.4: the milter's macro requests (negotiate reply) restrict what is sent per stage
    milter.script = Script(macro_lists=((0, "{daemon_name} j"), (2, "{mail_addr}"), (4, "")))
    run = run_server("-s", milter.spec, "--authenticated-name=user")
    assert_status(run, "pass")
    session = milter.session
    assert session.macros("C") == {"daemon_name": "milter-test-server", "j": "mail.example.com"}
    assert session.macros("M") == {"mail_addr": "mail_addr"}
    assert session.macros("T") == {}
    assert session.macros("H") == DEFAULT_MACROS["H"]


def test_TS_MAC_2_stage_macro_options(milter, run_server):
    run = run_server("-s", milter.spec,
                     "--connect-macro=client_connections:10",
                     "--helo-macro", "client_ptr:unknown",
                     "--envelope-from-macro=client_addr:192.168.1.1",
                     "--envelope-from-macro=client_name:unknown-host",
                     "--envelope-recipient-macro=client_port:2929",
                     "--data-macro=i:queue-id-2929",
                     "--end-of-header-macro=n-headers:100",
                     "--end-of-message-macro=elapsed:0.29")
    assert_status(run, "pass")
    session = milter.session
    added = {
        "C": {"client_connections": "10"},
        "H": {"client_ptr": "unknown"},
        "M": {"client_addr": "192.168.1.1", "client_name": "unknown-host"},
        "R": {"client_port": "2929"},
        "T": {"i": "queue-id-2929"},
        "N": {"n-headers": "100"},
        "E": {"elapsed": "0.29"},
    }
    for letter, extra in added.items():
        assert session.macros(letter) == {**DEFAULT_MACROS[letter], **extra}, letter


@pytest.mark.parametrize("option", ["--connect-macro", "--helo-macro", "--envelope-from-macro",
                                    "--envelope-recipient-macro", "--data-macro", "--end-of-header-macro",
                                    "--end-of-message-macro"])
def test_TS_MAC_3_macro_without_colon(run_server, tmp_path, option):
    run = run_server("-s", f"unix:{tmp_path}/none.sock", f"{option}=client_connections")
    assert run.returncode == 1
    assert run.stdout == "macro name and value delimiter ':' doesn't exist: <client_connections>\n"


# ------------------------------------------------------------------------------------------ --mail-file

MAIL_LF = (b"Return-Path: <test-from@example.com>\n"
           b"X-Source:\n"
           b"List-Archive:\n"
           b" <http://lists.example.com/archive/>\n"
           b"Authentication-Results: mail.example.com;\n"
           b"\tspf=none smtp.mailfrom=test-from@example.com\n"
           b"From: Test Sender <test-from@example.com>\n"
           b"To: test-to@example.com\n"
           b"Cc: cc@example.com\n"
           b"Subject: test\n"
           b"\n"
           b"Message body\n"
           b"Message body\n"
           b"Message body\n")


def expected_mail_headers(eol: str) -> list[tuple[str, str]]:
    return [("Return-Path", "<test-from@example.com>"),
            ("X-Source", ""),
            ("List-Archive", f"{eol} <http://lists.example.com/archive/>"),
            ("Authentication-Results", f"mail.example.com;{eol}\tspf=none smtp.mailfrom=test-from@example.com"),
            ("From", "Test Sender <test-from@example.com>"),
            ("To", "test-to@example.com"),
            ("Cc", "cc@example.com"),
            ("Subject", "test")]


@pytest.mark.parametrize("eol", ["\n", "\r\n"], ids=["LF", "CRLF"])
def test_TS_MAIL_1_mail_file(milter, run_server, tmp_path, eol):
    path = tmp_path / "mail.eml"
    path.write_bytes(MAIL_LF.replace(b"\n", eol.encode()))
    run = run_server("-s", milter.spec, f"--mail-file={path}")
    assert_status(run, "pass")
    session = milter.session
    assert session.command("M").address == "<test-from@example.com>"
    assert [rcpt.address for rcpt in session.commands("R")] == ["<test-to@example.com>"]  # Cc ignored
    assert [(h.name, h.value) for h in session.commands("L")] == expected_mail_headers(eol)
    assert [body.chunk for body in session.commands("B")] == [f"Message body{eol}".encode() * 3]


def test_TS_MAIL_1_explicit_options_win_over_mail_file(milter, run_server, tmp_path):
    # §1.2 AMBIG, settled: explicit -f/-r/-b win over values from --mail-file
    path = tmp_path / "mail.eml"
    path.write_bytes(MAIL_LF)
    run = run_server("-s", milter.spec, "-m", str(path), "-f", "explicit@example.com", "-r", "rcpt@example.org",
                     "-b", "explicit body")
    assert_status(run, "pass")
    session = milter.session
    assert session.command("M").address == "<explicit@example.com>"
    assert [rcpt.address for rcpt in session.commands("R")] == ["<rcpt@example.org>"]
    assert [body.chunk for body in session.commands("B")] == [b"explicit body"]
    assert [(h.name, h.value) for h in session.commands("L")] == expected_mail_headers("\n")


def test_TS_MAIL_1_attached_short_options_win_over_mail_file(milter, run_server, tmp_path):
    path = tmp_path / "mail.eml"
    path.write_bytes(MAIL_LF)
    run = run_server("-s", milter.spec, f"--mail-file={path}", "-fexplicit@example.com", "-rrcpt@example.org")
    assert_status(run, "pass")
    session = milter.session
    assert session.command("M").address == "<explicit@example.com>"
    assert [rcpt.address for rcpt in session.commands("R")] == ["<rcpt@example.org>"]


def test_TS_MAIL_2_folded_from_and_to(milter, run_server, tmp_path):
    path = tmp_path / "folded.eml"
    path.write_bytes(b"From: Test Sender\n <test-from@example.com>\n"
                     b"To: Test Sender\n <test-to@example.com>\n"
                     b"\n"
                     b"body\n")
    run = run_server("-s", milter.spec, "--mail-file", str(path))
    assert_status(run, "pass")
    session = milter.session
    assert session.command("M").address == "<test-from@example.com>"
    assert [rcpt.address for rcpt in session.commands("R")] == ["<test-to@example.com>"]
    assert [(h.name, h.value) for h in session.commands("L")] == [
        ("From", "Test Sender\n <test-from@example.com>"), ("To", "Test Sender\n <test-to@example.com>")]
    assert [body.chunk for body in session.commands("B")] == [b"body\n"]


def test_TS_MAIL_3_large_body_is_split(milter, run_server, tmp_path):
    line = b"x" * 99                          # 100 bytes with its newline
    lines = [line] * 1000 + [b"y" * 70000] + [line] * 1000
    path = tmp_path / "large.eml"
    path.write_bytes(b"From: <a@example.com>\nTo: <b@example.org>\n\n" + b"\n".join(lines) + b"\n")
    # every line gets "\n", then exactly one trailing "\n" is removed (§1.6 rule 6): the file's own
    # final newline stays
    expected = b"\n".join(lines) + b"\n"
    run = run_server("-s", milter.spec, "-m", str(path))
    assert_status(run, "pass")
    chunks = [body.chunk for body in milter.session.commands("B")]
    assert len(chunks) >= 5
    assert all(0 < len(chunk) <= 65535 for chunk in chunks)
    assert b"".join(chunks) == expected
    assert sum(map(len, chunks)) == len(expected) == 2000 * 100 + 70001
    assert chunks[0] == (line + b"\n") * 655   # a new chunk starts when the next line would pass 65535


def test_TS_MAIL_4_mbox_line_skipped_and_stdin(milter, run_server):
    data = b"From test-from@example.com Mon Jan  1 00:00:00 2024\n" + MAIL_LF
    run = run_server("-s", milter.spec, "--mail-file=-", input=data)
    assert_status(run, "pass")
    session = milter.session
    assert [(h.name, h.value) for h in session.commands("L")] == expected_mail_headers("\n")
    assert session.command("M").address == "<test-from@example.com>"


def test_TS_MAIL_4_missing_file(run_server, tmp_path):
    path = tmp_path / "no-such.eml"
    run = run_server("-s", f"unix:{tmp_path}/none.sock", f"--mail-file={path}")
    assert run.returncode == 1
    assert run.stdout == f"{path} does not exist.\n"


def test_TS_MAIL_4_invalid_header(run_server, tmp_path):
    path = tmp_path / "bad.eml"
    path.write_bytes(b"Subject: ok\n-bad header line\n\nbody\n")
    run = run_server("-s", f"unix:{tmp_path}/none.sock", f"--mail-file={path}")
    assert run.returncode == 1
    assert run.stdout == "invalid header: <-bad header line>\n"


def test_TS_MAIL_4_invalid_address(run_server, tmp_path):
    path = tmp_path / "bad-address.eml"
    path.write_bytes(b"From: Someone <broken@example.com\n\nbody\n")
    run = run_server("-s", f"unix:{tmp_path}/none.sock", f"--mail-file={path}")
    assert run.returncode == 1
    assert run.stdout == "invalid mail address: <Someone <broken@example.com>\n"


# ------------------------------------------------------------------------------------------ output


def test_TS_OUT_1_default_message_block(milter, run_server):
    run = run_server("-s", milter.spec, "--output-message")
    assert run.returncode == 0
    assert normalized(run.stdout) == message_block()


def test_TS_OUT_1_message_block_of_a_mail_file(milter, run_server, tmp_path):
    path = tmp_path / "mail.eml"
    path.write_bytes(MAIL_LF)
    run = run_server("-s", milter.spec, "--output-message", "-m", str(path))
    assert run.returncode == 0
    # §1.8 rule 2: "NAME: FIRSTLINE", then each further line of a folded value; "NAME:" when empty
    assert normalized(run.stdout) == message_block(
        envelope=("  MAIL FROM:<test-from@example.com>", "  RCPT TO:<test-to@example.com>"),
        headers=("  Return-Path: <test-from@example.com>", "  X-Source:", "  List-Archive: ",
                 "   <http://lists.example.com/archive/>", "  Authentication-Results: mail.example.com;",
                 "  \tspf=none smtp.mailfrom=test-from@example.com", "  From: Test Sender <test-from@example.com>",
                 "  To: test-to@example.com", "  Cc: cc@example.com", "  Subject: test"),
        body="Message body\nMessage body\nMessage body\n")


def add_recipient(session, command):
    session.add_recipient("receiver+added@example.org")


def delete_recipient(session, command):
    session.delete_recipient("receiver@example.org")


def change_from(session, command):
    session.change_from("sender+changed@example.com")


def add_header(session, command):
    session.add_header("X-Test-Header1", "TestHeader1Value")


def insert_header(session, command):
    session.insert_header(1, "To", "<receiver+added@example.org>")


def change_header(session, command):
    session.change_header("To", 1, "<receiver+changed@example.org>")


def delete_header(session, command):
    session.change_header("To", 1, "")


def replace_body(session, command):
    session.replace_body(b"This is the replaced message.")


def quarantine(session, command):
    session.quarantine("Virus is found.")


FROM_LINE = "  From: <sender@example.com>"
TO_LINE = "  To: <receiver@example.org>"
OUT_2_CASES = [
    pytest.param(change_from, message_block(envelope=(red("- MAIL FROM:<sender@example.com>"),
                                                      green("+ MAIL FROM:<sender+changed@example.com>"),
                                                      "  RCPT TO:<receiver@example.org>")), id="change-from"),
    pytest.param(add_recipient, message_block(envelope=("  MAIL FROM:<sender@example.com>",
                                                        "  RCPT TO:<receiver@example.org>",
                                                        green("+ RCPT TO:<receiver+added@example.org>"))),
                 id="add-recipient"),
    pytest.param(delete_recipient, message_block(envelope=("  MAIL FROM:<sender@example.com>",
                                                           red("- RCPT TO:<receiver@example.org>"))),
                 id="delete-recipient"),
    pytest.param(add_header, message_block(headers=(FROM_LINE, TO_LINE,
                                                    green("+ X-Test-Header1: TestHeader1Value"))), id="add-header"),
    pytest.param(insert_header, message_block(headers=(FROM_LINE, green("+ To: <receiver+added@example.org>"),
                                                       TO_LINE)), id="insert-header"),
    pytest.param(change_header, message_block(headers=(FROM_LINE, green("+ To: <receiver+changed@example.org>"),
                                                       red("- To: <receiver@example.org>"))), id="change-header"),
    pytest.param(delete_header, message_block(headers=(FROM_LINE, red("- To: <receiver@example.org>"))),
                 id="delete-header"),
    pytest.param(replace_body, message_block(body="This is the replaced message."), id="replace-body"),
    pytest.param(quarantine, message_block(status="quarantine", extra=("Quarantine reason: <Virus is found.>",)),
                 id="quarantine"),
]


@pytest.mark.parametrize("action, expected", OUT_2_CASES)
def test_TS_OUT_2_end_of_message_actions(milter, run_server, action, expected):
    milter.script = Script(replies={"E": action})
    run = run_server("-s", milter.spec, "--output-message", "--color=yes")
    assert run.returncode == 0, run.stdout
    assert normalized(run.stdout) == expected


def test_TS_OUT_2_bare_color_option_means_yes(milter, run_server):
    milter.script = Script(replies={"E": change_from})
    run = run_server("-s", milter.spec, "--output-message", "--color")
    assert run.returncode == 0
    assert normalized(run.stdout) == OUT_2_CASES[0].values[1]


@pytest.mark.parametrize("color", [(), ("--color=no",), ("--color=false",)], ids=["default", "no", "false"])
def test_TS_OUT_3_no_color(milter, run_server, color):
    milter.script = Script(replies={"E": change_from})
    run = run_server("-s", milter.spec, "--output-message", *color, env=None)
    assert run.returncode == 0
    assert "\x1b" not in run.stdout
    assert "- MAIL FROM:<sender@example.com>\n+ MAIL FROM:<sender+changed@example.com>\n" in run.stdout


def test_TS_OUT_3_invalid_color(run_server, tmp_path):
    run = run_server("-s", f"unix:{tmp_path}/none.sock", "--color=sometimes")
    assert run.returncode == 1
    assert run.stdout == "Invalid color value: sometimes\n"


def test_TS_OUT_3_charset_conversion(milter, run_server):
    run = run_server("-s", milter.spec, "--output-message", "-h", 'Content-Type:text/plain; charset="us-ascii"')
    assert run.returncode == 0
    assert normalized(run.stdout) == message_block(headers=('  Content-Type: text/plain; charset="us-ascii"',
                                                            FROM_LINE, TO_LINE))


def test_TS_OUT_4_quarantine_reason(milter, run_server):
    milter.script = Script(replies={"E": quarantine})
    run = run_server("-s", milter.spec)
    assert run.returncode == 0
    assert normalized(run.stdout) == ("status: quarantine\nelapsed-time: XXX seconds\n"
                                      "Quarantine reason: <Virus is found.>\n")


def test_TS_OUT_5_elapsed_format(milter, run_server):
    run = run_server("-s", milter.spec)
    assert run.returncode == 0
    line = run.lines[1]
    assert re.fullmatch(r"elapsed-time: [0-9.e+-]+ seconds", line)
    seconds = float(line.split()[1])
    assert 0 <= seconds < 10
    # C "%g": at most 6 significant digits
    assert len(re.sub(r"e.*|[^0-9]", "", line.split()[1]).lstrip("0")) <= 6


# ------------------------------------------------------------------------------------------ exit status


@pytest.mark.parametrize("args, message", [
    (("-s", "xxxx:9999@localhost"), "protocol must be 'unix', 'inet' or 'inet6': <xxxx:9999@localhost>: <xxxx>"),
    (("-s", "inet:99999@localhost"), "port number should be less than 65536: <inet:99999@localhost>: <99999>"),
    (("-s", "inet"), "spec doesn't have colon: <inet>"),
    (("--connection-spec=inet:",), "spec doesn't have content: <inet:>"),
    (("-s", "inet:10x25"), "port number has invalid character: <inet:10x25>: <x>"),
    (("-s", "inet:10025@[127.0.0.1"), "']' is missing: <inet:10025@[127.0.0.1>: <[127.0.0.1>"),
    (("-s", "inet:10025@[127.0.0.300]"), "invalid host address: <inet:10025@[127.0.0.300]>: <127.0.0.300>"),
    ((), "spec should not be NULL"),
])
def test_TS_EXIT_1_invalid_spec(run_server, args, message):
    run = run_server(*args)
    assert run.returncode == 1
    assert run.stdout == message + "\n"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_TS_EXIT_2_nothing_listening_inet(run_server):
    port = free_port()
    run = run_server("-s", f"inet:{port}@[127.0.0.1]")
    assert run.returncode == 1
    assert run.lines[-1] == f"Failed to connect to inet:{port}@[127.0.0.1]: Connection refused"


def test_TS_EXIT_2_nothing_listening_unix(run_server, tmp_path):
    path = tmp_path / "nobody.sock"
    run = run_server("-s", str(path))  # a value starting with "/" is taken as unix:VALUE
    assert run.returncode == 1
    assert run.lines[-1] == f"Failed to connect to unix:{path}: No such file or directory"


def test_TS_EXIT_3_reject_still_exits_zero(milter, run_server):
    milter.script = Script(replies={"M": REJECT})
    run = run_server("-s", milter.spec)
    assert run.returncode == 0
    assert run.lines[0] == "status: reject"


# ------------------------------------------------------------------------------------------ threads


def test_TS_THR_1_three_sessions(milter, run_server):
    run = run_server("-s", milter.spec, "--threads=3")
    assert run.returncode == 0, run.stdout
    sessions = milter.wait_sessions(3)
    assert all(session.letters == DEFAULT_LETTERS for session in sessions)
    assert run.lines.count("status: pass") == 3
    assert len(ELAPSED_LINE.findall(run.stdout)) == 3
    assert len(run.lines) == 6


def test_TS_THR_1_failing_connect_exits_one(run_server):
    port = free_port()
    run = run_server("-s", f"inet:{port}@[127.0.0.1]", "--threads=2")
    assert run.returncode == 1
    assert run.stdout.count(f"Failed to connect to inet:{port}@[127.0.0.1]") == 2


def test_TS_MAC_1_load_mode_sends_every_session_the_whole_transaction(milter, run_server):
    """Load mode builds and encodes the transaction once; each session still negotiates and gets every
    stage, with the macros its milter asked for (§1.4), and the report lists each session once."""
    milter.script = Script(macro_lists=((0, "{daemon_name} j"), (2, "{mail_addr}")))
    run = run_server("-s", milter.spec, "--n-sessions=4", "--concurrency=2", "--report=json")
    assert run.returncode == 0, run.stdout
    report = json.loads(run.lines[-1])
    assert [session["session"] for session in report["sessions"]] == [1, 2, 3, 4]
    assert report["totals"]["statuses"] == {"pass": 4}
    sessions = milter.wait_sessions(4)
    for session in sessions:
        assert session.letters == DEFAULT_LETTERS
        assert session.macros("C") == {"daemon_name": "milter-test-server", "j": "mail.example.com"}
        assert session.macros("M") == {"mail_addr": "mail_addr"}
        assert session.macros("R") == DEFAULT_MACROS["R"]
