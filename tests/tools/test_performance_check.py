"""Behaviour tests of milter-performance-check (tools.md §3.7, PC-*, and the §7 item 11 fixes).

The tool runs as a real subprocess against :class:`FakeSmtpServer`, an SMTP server written
here (threads and standard-library sockets on 127.0.0.1) whose replies are scripted per
step, which offers STARTTLS with a certificate made by ``openssl req -x509`` at test time,
checks AUTH PLAIN / LOGIN / CRAM-MD5 exchanges against its users, takes XCLIENT, and records
every session (commands, HELO names, envelope, dot-unstuffed data, start times, concurrency).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import pty
import re
import secrets
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from milterman.tools.performance_check import parse_duration
from milterman.tools.performance_report import PERIODIC_HEADER, periodic_line, render_report, summarize
from milterman.tools.smtp_client import (SmtpUnsupportedError, choose_mechanism, cram_md5_response, dot_stuff,
                                         xtext)

from tools_support import REPO, RUN_DIR, Run, clean_env, run_tool

GREYLIST = "451 4.7.1 Greylisting in action, please come back later"
REJECTED = "550 5.7.1 Rejected"

# ------------------------------------------------------------------------------------------ fake server


@dataclass
class Session:
    """What one SMTP connection to the fake server did."""

    started: float
    commands: list[str] = field(default_factory=list)
    helos: list[str] = field(default_factory=list)
    tls: bool = False
    xclient: dict[str, str] | None = None
    auth: tuple[str, str, bool] | None = None
    mail_from: str | None = None
    rcpts: list[str] = field(default_factory=list)
    data: bytes | None = None
    closed: float | None = None
    counted: bool = True
    """Still counted in :attr:`FakeSmtpServer.active`."""


class FakeSmtpServer:
    """A scriptable SMTP server on 127.0.0.1 (a thread per connection).

    ``reply(step, argument, session)`` may return a reply (one or more lines, CRLF added)
    to use instead of the default at a step: ``banner``, ``ehlo``, ``helo``, ``mail``,
    ``rcpt``, ``data``, ``end`` (after the message), ``xclient``. ``delays`` holds seconds
    to wait before answering a step.
    """

    def __init__(self, *, cert: tuple[Path, Path] | None = None, auth: tuple[str, ...] = (),
                 users: dict[str, str] | None = None, xclient: bool = False, ehlo: bool = True,
                 reply: Callable[[str, str, Session], str | None] | None = None,
                 delays: dict[str, float] | None = None) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.1)
        self.port = self.listener.getsockname()[1]
        self.tls_context = None
        if cert is not None:
            self.tls_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            self.tls_context.load_cert_chain(str(cert[0]), str(cert[1]))
        self.auth = auth
        self.users = users or {}
        self.xclient = xclient
        self.ehlo_ok = ehlo
        self.reply_hook = reply
        self.delays = delays or {}
        self.sessions: list[Session] = []
        self.errors: list[str] = []
        self.lock = threading.Lock()
        self.active = 0
        self.max_active = 0
        self.stopping = threading.Event()
        self.threads: list[threading.Thread] = []
        self.connections: list[socket.socket] = []
        self.acceptor = threading.Thread(target=self._accept, daemon=True)
        self.acceptor.start()

    def _accept(self) -> None:
        while not self.stopping.is_set():
            try:
                conn, _ = self.listener.accept()
            except OSError:
                continue
            conn.settimeout(10)
            with self.lock:
                self.connections.append(conn)
                self.active += 1
                self.max_active = max(self.max_active, self.active)
                session = Session(time.monotonic())
                self.sessions.append(session)
            thread = threading.Thread(target=self._serve, args=(conn, session), daemon=True)
            self.threads.append(thread)
            thread.start()

    def stop(self) -> None:
        self.stopping.set()
        self.acceptor.join(5)
        self.listener.close()
        with self.lock:
            for conn in self.connections:
                try:
                    conn.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
        for thread in self.threads:
            thread.join(5)
        assert not any(thread.is_alive() for thread in [self.acceptor, *self.threads])

    @property
    def finished(self) -> list[Session]:
        """Sessions with a message accepted (end of data answered 250)."""
        return [session for session in self.sessions if session.data is not None]

    def _serve(self, conn: socket.socket, session: Session) -> None:
        try:
            self._session(conn, session)
        except (OSError, ValueError) as error:
            if not self.stopping.is_set() and not isinstance(error, (ConnectionResetError, BrokenPipeError)):
                self.errors.append(repr(error))
        finally:
            session.closed = time.monotonic()
            self._done(session)
            conn.close()

    def _done(self, session: Session) -> None:
        """The session no longer counts as active (at QUIT, before the reply lets the client go on)."""
        with self.lock:
            if session.counted:
                session.counted = False
                self.active -= 1

    def _answer(self, conn: socket.socket, step: str, argument: str, session: Session, default: str) -> bool:
        """Send the reply of ``step``; True when it was a 2xx/3xx (the step went through)."""
        time.sleep(self.delays.get(step, 0))
        text = (self.reply_hook and self.reply_hook(step, argument, session)) or default
        conn.sendall(text.replace("\n", "\r\n").encode() + b"\r\n")
        return text[:1] in "23"

    def _session(self, conn: socket.socket, session: Session) -> None:
        stream = conn.makefile("rb")
        if not self._answer(conn, "banner", "", session, "220 fake.example ESMTP"):
            return
        while True:
            raw = stream.readline(4096)
            if not raw:
                return
            line = raw.decode().rstrip("\r\n")
            session.commands.append(line)
            verb, _, argument = line.partition(" ")
            verb = verb.upper()
            if verb == "EHLO":
                session.helos.append(argument)
                if not self.ehlo_ok:
                    conn.sendall(b"502 5.5.2 Error: command not recognized\r\n")
                    continue
                keywords = ["PIPELINING", "8BITMIME"]
                if self.tls_context and not session.tls:
                    keywords.append("STARTTLS")
                if self.auth:
                    keywords.append("AUTH " + " ".join(self.auth))
                if self.xclient:
                    keywords.append("XCLIENT NAME ADDR PROTO HELO")
                text = "\n".join(["250-fake.example"] + [f"250-{k}" for k in keywords[:-1]] + [f"250 {keywords[-1]}"])
                self._answer(conn, "ehlo", argument, session, text)
            elif verb == "HELO":
                session.helos.append(argument)
                self._answer(conn, "helo", argument, session, "250 fake.example")
            elif verb == "STARTTLS":
                conn.sendall(b"220 2.0.0 Ready to start TLS\r\n")
                conn = self.tls_context.wrap_socket(conn, server_side=True)
                stream = conn.makefile("rb")
                session.tls = True
            elif verb == "XCLIENT":
                session.xclient = dict(item.split("=", 1) for item in argument.split())
                self._answer(conn, "xclient", argument, session, "220 fake.example ESMTP")
            elif verb == "AUTH":
                self._auth(conn, stream, argument, session)
            elif verb == "MAIL":
                if self._answer(conn, "mail", argument, session, "250 2.1.0 Ok"):
                    session.mail_from = argument
            elif verb == "RCPT":
                if self._answer(conn, "rcpt", argument, session, "250 2.1.5 Ok"):
                    session.rcpts.append(argument)
            elif verb == "DATA":
                if not self._answer(conn, "data", "", session, "354 End data with <CR><LF>.<CR><LF>"):
                    continue
                lines = []
                while True:
                    data_line = stream.readline(65536)
                    if not data_line:
                        return
                    if data_line == b".\r\n":
                        break
                    lines.append(data_line[1:] if data_line.startswith(b".") else data_line)
                if self._answer(conn, "end", "", session, "250 2.0.0 Ok: queued as FAKE"):
                    session.data = b"".join(lines)
            elif verb == "RSET":
                conn.sendall(b"250 2.0.0 Ok\r\n")
            elif verb == "QUIT":
                self._done(session)
                conn.sendall(b"221 2.0.0 Bye\r\n")
                return
            else:
                conn.sendall(b"502 5.5.2 Error: command not recognized\r\n")

    def _auth(self, conn: socket.socket, stream, argument: str, session: Session) -> None:
        def ask(prompt: bytes) -> str:
            conn.sendall(b"334 " + base64.b64encode(prompt) + b"\r\n")
            return stream.readline(4096).decode().strip()

        mechanism, _, initial = argument.partition(" ")
        mechanism = mechanism.upper()
        user, ok = "", False
        if mechanism == "PLAIN":
            token = initial or ask(b"")
            _, user, password = base64.b64decode(token).decode().split("\0")
            ok = self.users.get(user) == password
        elif mechanism == "LOGIN":
            user = base64.b64decode(ask(b"Username:")).decode()
            password = base64.b64decode(ask(b"Password:")).decode()
            ok = self.users.get(user) == password
        elif mechanism == "CRAM-MD5":
            challenge = f"<{secrets.token_hex(8)}@fake.example>".encode()
            user, _, digest = base64.b64decode(ask(challenge)).decode().rpartition(" ")
            expected = hmac.new(self.users.get(user, "").encode(), challenge, hashlib.md5).hexdigest()
            ok = user in self.users and hmac.compare_digest(digest, expected)
        session.auth = (mechanism, user, ok)
        conn.sendall(b"235 2.7.0 Authentication successful\r\n" if ok
                     else b"535 5.7.8 Error: authentication failed\r\n")


@pytest.fixture
def smtp_server():
    """``smtp_server(**options)`` → a running :class:`FakeSmtpServer`; all are stopped at teardown."""
    servers: list[FakeSmtpServer] = []

    def make(**options) -> FakeSmtpServer:
        server = FakeSmtpServer(**options)
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.stop()
        assert server.errors == [], server.errors


@pytest.fixture(scope="module")
def certificate(tmp_path_factory) -> tuple[Path, Path]:
    """A self-signed certificate and its key, made with ``openssl req -x509`` (Debian package openssl)."""
    directory = tmp_path_factory.mktemp("tls")
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                    "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "1", "-subj", "/CN=fake.example"],
                   check=True, capture_output=True, timeout=30)
    return cert, key


def check(server: FakeSmtpServer, *args: str, **kwargs) -> Run:
    """Run milter-performance-check against ``server``."""
    return run_tool("performance_check", "--smtp-server=127.0.0.1", f"--smtp-port={server.port}", *args, **kwargs)


def report_value(run: Run, label: str) -> str:
    match = re.search(rf"^ *{re.escape(label)}: +(\S+)", run.stdout, re.M)
    assert match, run.stdout
    return match.group(1)


def status_line(run: Run, label: str) -> tuple[int, str]:
    match = re.search(rf"^ {label:>17}: +(\d+) \( *([0-9.]+)%\)$", run.stdout, re.M)
    assert match, run.stdout
    return int(match.group(1)), match.group(2)


def write_mail(path: Path, *, headers: str = "", body: str = "Hello.\n") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes((headers + "\n" + body).encode())
    return path


# ------------------------------------------------------------------------------------------ PC-1, PC-2


def test_pc1_no_arguments_send_100_generated_mails(smtp_server):
    server = smtp_server()
    run = check(server)
    assert run.returncode == 0, run
    assert len(server.finished) == 100
    assert "      N mails:    100" in run.lines
    for session in server.finished:
        assert session.helos == ["localhost.localdomain"]
        assert session.mail_from == "FROM:<from@example.com>"
        assert session.rcpts == ["TO:<to@example.com>"]
        assert session.commands[-1] == "QUIT"
    # the generated mail (§3.3 item 4)
    data = server.finished[0].data.decode()
    head, body = data.split("\r\n\r\n", 1)
    names = [line.split(":", 1)[0] for line in head.split("\r\n") if not line.startswith("\t")]
    assert names == ["Return-Path", "Received", "MIME-Version", "Content-Transfer-Encoding", "Content-Type",
                     "X-Mailer", "Message-Id", "Subject", "From", "To", "Date"]
    assert "Return-Path: <from@example.com>" in head
    assert re.search(r"^Received: from localhost\.localdomain \(localhost\.localdomain \[192\.168\.1\.1\]\)\r\n"
                     r"\tby mail\.example\.com with ESMTP id [A-Za-z0-9]{10};", head, re.M)
    assert re.search(r"^Message-Id: <[0-9a-f]{64}@mail\.example\.com>\r$", head, re.M)
    assert "X-Mailer: milter-performance-check" in head and "Subject: test mail" in head
    assert "From: from@example.com" in head and "To: to@example.com" in head
    assert body == "Hello,\r\n\r\nThis is a test mail.\r\n"
    # no mail files: no slowest list, no failure lists
    assert run.lines[0] == "Total:"


def test_pc1_n_additional_lines(smtp_server):
    server = smtp_server()
    run = check(server, "--n-mails=1", "--n-additional-lines=3")
    assert run.returncode == 0, run
    body = server.finished[0].data.split(b"\r\n\r\n", 1)[1]
    line = b"0123456789 abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ"
    assert len(line) + 1 == 65  # the 65-byte line of §3.3 counts its LF; sent with CRLF
    assert body == b"Hello,\r\n\r\nThis is a test mail.\r\n" + (line + b"\r\n") * 3


def test_pc2_n_mails_and_several_recipients(smtp_server):
    server = smtp_server()
    run = check(server, "--n-mails=3", "--recipient=a@x", "--recipient=b@x")
    assert run.returncode == 0, run
    assert len(server.sessions) == 3
    for session in server.sessions:
        assert session.rcpts == ["TO:<a@x>", "TO:<b@x>"]
        assert b"\r\nTo: a@x, b@x\r\n" in session.data
    assert "      N mails:      3" in run.lines


def test_pc2_several_from_used_in_turn(smtp_server):
    server = smtp_server()
    run = check(server, "--n-mails=4", "--from=one@x", "--from=<two@x>")
    assert run.returncode == 0, run
    assert [session.mail_from for session in server.sessions] == ["FROM:<one@x>", "FROM:<two@x>"] * 2


# ------------------------------------------------------------------------------------------ PC-3, PC-4


def test_pc3_one_file_sent_n_mails_times(smtp_server, tmp_path):
    server = smtp_server()
    mail = write_mail(tmp_path / "one.eml", headers="Subject: one\n", body="single\n")
    run = check(server, "--n-mails=4", str(mail))
    assert run.returncode == 0, run
    assert len(server.finished) == 4
    assert all(session.data == b"Subject: one\r\n\r\nsingle\r\n" for session in server.finished)
    slowest = [line for line in run.lines if line.endswith(f"(sec): {mail}")]
    assert len(slowest) == 4 and all(re.match(r"^ *\d+\.\d\d \(sec\): ", line) for line in slowest)


def test_pc3_directory_each_file_once_with_slowest_list(smtp_server, tmp_path):
    server = smtp_server(delays={"end": 0.05})
    write_mail(tmp_path / "mails" / "b.eml", headers="Subject: b\n")
    write_mail(tmp_path / "mails" / "sub" / "a.eml", headers="Subject: a\n")
    run = check(server, "--n-mails=10", str(tmp_path / "mails"))
    assert run.returncode == 0, run
    assert len(server.finished) == 2
    # sorted list: mails/b.eml before mails/sub/a.eml
    assert [s.data.split(b"\r\n")[0] for s in server.finished] == [b"Subject: b", b"Subject: a"]
    assert re.match(rf"^ 0\.\d\d \(sec\): {re.escape(str(tmp_path / 'mails'))}/(b|sub/a)\.eml$", run.lines[0])
    assert re.match(r"^ 0\.\d\d \(sec\): .*\.eml$", run.lines[1])
    assert run.lines[2] == ""
    assert run.lines[3] == "Total:"
    assert "      N mails:      2" in run.lines


def test_pc3_more_than_ten_files_list_the_ten_slowest(smtp_server, tmp_path):
    server = smtp_server()
    for number in range(12):
        write_mail(tmp_path / "m" / f"{number:02}.eml")
    run = check(server, str(tmp_path / "m"))
    assert run.returncode == 0, run
    listed = [line for line in run.lines if "(sec): " in line]
    assert len(listed) == 10
    seconds = [float(line.split()[0]) for line in listed]
    assert seconds == sorted(seconds, reverse=True)


PC4_MAIL = ("Received: from host.example (host.example [10.0.0.1])\n\tby mx.example; Mon, 1 Jan 2024 00:00:00 +0000\n"
            "Received: from other.example\n"
            "From: \"Sender\" <sender@example.org>\n"
            "To: Alice <alice@example.org>, bob@example.org (Bob)\n"
            "Cc: \"Doe, John\" <john@example.org>\n"
            "Subject: pc4\n")


def test_pc4_envelope_from_the_mail_headers(smtp_server, tmp_path):
    server = smtp_server()
    mail = write_mail(tmp_path / "pc4.eml", headers=PC4_MAIL)
    run = check(server, "--n-mails=1", "--from=unused@x", "--recipient=unused@x", str(mail))
    assert run.returncode == 0, run
    [session] = server.sessions
    assert session.helos == ["host.example"]
    assert session.mail_from == "FROM:<sender@example.org>"
    # tools.md §3.3 item 3 BUG fixed: addresses, not the raw comma-split items
    assert session.rcpts == ["TO:<alice@example.org>", "TO:<bob@example.org>", "TO:<john@example.org>"]


def test_pc4_force_from_and_force_recipient_override(smtp_server, tmp_path):
    server = smtp_server()
    mail = write_mail(tmp_path / "pc4.eml", headers=PC4_MAIL)
    run = check(server, "--n-mails=1", "--force-from=forced@x", "--force-recipient=r1@x",
                "--force-recipient=<r2@x>", str(mail))
    assert run.returncode == 0, run
    [session] = server.sessions
    assert session.mail_from == "FROM:<forced@x>"
    assert session.rcpts == ["TO:<r1@x>", "TO:<r2@x>"]
    assert session.helos == ["host.example"]


def test_pc4_mail_without_headers_uses_defaults(smtp_server, tmp_path):
    server = smtp_server()
    mail = write_mail(tmp_path / "bare.eml", headers="Subject: bare\n")
    run = check(server, "--n-mails=1", "--helo-fqdn=client.example", "--from=f@x", "--recipient=r@x", str(mail))
    assert run.returncode == 0, run
    [session] = server.sessions
    assert (session.helos, session.mail_from, session.rcpts) == (["client.example"], "FROM:<f@x>", ["TO:<r@x>"])


def test_stdin_mail_gets_fresh_message_ids(smtp_server):
    server = smtp_server()
    mail = b"Message-Id: <fixed@example.org>\nSubject: stdin\nFrom: s@example.org\nTo: r@example.org\n\n.dot\nbody\n"
    run = check(server, "--n-mails=3", "-", input=mail)
    assert run.returncode == 0, run
    ids = []
    for session in server.finished:
        match = re.match(rb"Message-Id: (<[0-9a-f]{64}@mail\.example\.com>)\r\nSubject: stdin\r\n", session.data)
        assert match, session.data
        ids.append(match.group(1))
        assert session.data.endswith(b"\r\n\r\n.dot\r\nbody\r\n")  # dot-stuffed on the wire, unstuffed here
        assert session.commands.count(".dot") == 0
    assert len(set(ids)) == 3
    assert re.match(r"^ 0\.\d\d \(sec\): -$", run.lines[0])


def test_dot_stuffing_and_line_ends():
    assert dot_stuff(b"a\n.b\n..c\nd") == b"a\r\n..b\r\n...c\r\nd\r\n.\r\n"
    assert dot_stuff(b".\r\n") == b"..\r\n.\r\n"
    assert xtext("a b+c=d") == "a+20b+2Bc+3Dd"


# ------------------------------------------------------------------------------------------ PC-5, PC-6


def scripted(**replies: str) -> Callable[[str, str, Session], str | None]:
    """Replies by recipient local part: ``scripted(greylist=GREYLIST)`` answers RCPT TO:<greylist@…>."""
    def reply(step: str, argument: str, session: Session) -> str | None:
        if step == "rcpt":
            local = argument.split("<", 1)[1].split("@", 1)[0]
            return replies.get(local)
        return None
    return reply


def test_pc5_tempfail_reject_and_percentages(smtp_server, tmp_path):
    server = smtp_server(reply=scripted(greylist=GREYLIST, spam=REJECTED))
    write_mail(tmp_path / "m" / "a.eml", headers="To: ok@example.org\n")
    write_mail(tmp_path / "m" / "b.eml", headers="To: spam@example.org\n")
    write_mail(tmp_path / "m" / "c.eml", headers="To: greylist@example.org\n")
    run = check(server, str(tmp_path / "m"))
    assert run.returncode == 0, run
    assert len(server.finished) == 1
    lines = run.lines
    assert lines[lines.index("Rejected mails:") + 1:][:2] == [str(tmp_path / "m" / "b.eml"), ""]
    assert lines[lines.index("Temporary failed mails:") + 1:][:2] == [str(tmp_path / "m" / "c.eml"), ""]
    assert lines.index("Rejected mails:") < lines.index("Temporary failed mails:") < lines.index("Total:")
    assert status_line(run, "Temporary failure") == (1, "33.33")
    assert status_line(run, "Reject") == (1, "33.33")
    assert status_line(run, "Error") == (0, "0.00")
    assert run.stderr == ""
    # a failed transaction still ends with QUIT
    assert all(session.commands[-1] == "QUIT" for session in server.sessions)


@pytest.mark.parametrize("step", ["banner", "ehlo", "mail", "data", "end"])
def test_pc5_failures_at_every_step_are_classified(smtp_server, step):
    # a 5xx to EHLO makes the client try HELO (as Net::SMTP did): refuse both
    steps = ("ehlo", "helo") if step == "ehlo" else (step,)
    server = smtp_server(reply=lambda at, argument, session: (GREYLIST if len(server.sessions) % 2 else REJECTED)
                         if at in steps else None)
    run = check(server, "--n-mails=4")
    assert run.returncode == 0, run
    assert status_line(run, "Temporary failure") == (2, "50.00")
    assert status_line(run, "Reject") == (2, "50.00")
    assert server.finished == []


def test_pc5_connection_refused_is_an_error_on_stderr(tmp_path):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    run = run_tool("performance_check", "--smtp-server=127.0.0.1", f"--smtp-port={port}", "--n-mails=2")
    assert run.returncode == 1, run  # issue 8: no mail could connect (the report is still printed)
    assert run.stderr.splitlines() == ["ConnectionRefusedError: [Errno 111] Connection refused"] * 2 + [
        f"milter-performance-check: cannot connect to the SMTP server 127.0.0.1:{port}: Connection refused "
        "(all 2 mails failed)"]
    assert status_line(run, "Error") == (2, "100.00")
    assert status_line(run, "Temporary failure") == (0, "0.00")


def test_pc5_reading_timeout_is_an_error(smtp_server):
    server = smtp_server(delays={"banner": 1.5})
    run = check(server, "--n-mails=1", "--reading-timeout=0.3")
    assert run.returncode == 0, run
    assert run.stderr == "TimeoutError: no reply within 0.3 s\n"
    assert status_line(run, "Error") == (1, "100.00")


def test_pc5_server_closing_and_garbage_are_errors(smtp_server):
    server = smtp_server(reply=lambda step, argument, session: "hello there" if step == "mail" else None)
    run = check(server, "--n-mails=1")
    assert run.stderr == "SmtpProtocolError: malformed reply: <hello there>\n"
    assert status_line(run, "Error") == (1, "100.00")


def test_pc6_report_failure_responses(smtp_server, tmp_path):
    replies = {"greylist": GREYLIST, "spam": REJECTED}
    server = smtp_server(reply=scripted(**replies))
    for number in range(10):
        write_mail(tmp_path / "m" / f"t{number}.eml", headers="To: greylist@example.org\n")
    write_mail(tmp_path / "m" / "r.eml", headers="To: spam@example.org\n")
    write_mail(tmp_path / "m" / "s.eml", headers="To: ok@example.org\n")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        dead = probe.getsockname()[1]
    run = check(server, "--report-failure-responses", str(tmp_path / "m"))
    assert run.returncode == 0, run
    tail = run.stdout.split("             Error:   0 (  0.00%)\n", 1)[1]
    assert tail == ("\nTemporary failures:\n"
                    + "".join(f"  {number:2d} {GREYLIST}\n" for number in range(1, 11))
                    + f"Rejects:\n  1 {REJECTED}\n")
    # errors get their own list; with --no-… after it, nothing is printed
    errors = run_tool("performance_check", "--smtp-server=127.0.0.1", f"--smtp-port={dead}", "--n-mails=1",
                      "--report-failure-responses")
    assert errors.stdout.endswith("\n\nErrors:\n  1 ConnectionRefusedError: [Errno 111] Connection refused\n")
    quiet = run_tool("performance_check", "--smtp-server=127.0.0.1", f"--smtp-port={dead}", "--n-mails=1",
                     "--report-failure-responses", "--no-report-failure-responses")
    assert quiet.stdout.endswith("Error:   1 (100.00%)\n")


# ------------------------------------------------------------------------------------------ PC-7, PC-8


PERIODIC_ROW = re.compile(r"^\d\d:\d\d:\d\d {1,5}\d+ {1,7}\d+\.\d\d( {1,6}\d+\.\d\d){3}( {1,5}\d+){3}$")


def test_pc7_report_periodically(smtp_server):
    server = smtp_server(delays={"end": 0.25}, reply=lambda step, argument, session:
                         GREYLIST if step == "rcpt" and len(server.sessions) == 2 else None)
    run = check(server, "--n-mails=6", "--report-periodically=1")
    assert run.returncode == 0, run
    lines = run.lines
    assert lines[0] == "    Time  Sent mails/s Max(s) Min(s) Avg(s)   4XX   5XX Error"
    blank = lines.index("")
    rows = lines[1:blank]
    assert len(rows) >= 1 and all(PERIODIC_ROW.match(row) for row in rows), rows
    assert lines[blank + 1] == "Total:"
    # every mail is in some row (the last, partial interval is flushed too)
    assert sum(int(row.split()[1]) for row in rows) == 6
    assert sum(int(row.split()[6]) for row in rows) == 1


def test_pc7_periodic_line_format():
    records = [{"elapsed": 1.5, "status": "temporary-failure"}, {"elapsed": 0.01, "status": "reject"},
               {"elapsed": 0.03, "status": "error"}, {"elapsed": 0.02, "status": "success"}]
    now = time.mktime((2024, 1, 1, 9, 19, 45, 0, 0, -1))
    assert PERIODIC_HEADER == "    Time  Sent mails/s Max(s) Min(s) Avg(s)   4XX   5XX Error"
    assert periodic_line(records, 2.0, now) == "09:19:45     4    2.00   1.50   0.01   0.39     1     1     1"
    assert periodic_line([], 1.0, now) == "09:19:45     0    0.00   0.00   0.00   0.00     0     0     0"


def test_pc8_period_spreads_the_starts(smtp_server):
    server = smtp_server()
    run = check(server, "--period=2", "--n-mails=4")
    assert run.returncode == 0, run
    starts = [session.started for session in server.sessions]
    gaps = [later - earlier for earlier, later in zip(starts, starts[1:], strict=False)]
    assert len(gaps) == 3 and all(0.35 < gap < 0.75 for gap in gaps), gaps
    assert 1.4 < float(report_value(run, "Elapsed time")) < 2.5


def test_pc8_interval_starts_without_concurrency_cap(smtp_server):
    server = smtp_server(delays={"end": 0.6})
    run = check(server, "--interval=0.1", "--n-mails=5")
    assert run.returncode == 0, run
    starts = [session.started for session in server.sessions]
    gaps = [later - earlier for earlier, later in zip(starts, starts[1:], strict=False)]
    assert all(0.05 < gap < 0.35 for gap in gaps), gaps
    assert server.max_active >= 4  # started every 0.1 s though each takes 0.6 s


@pytest.mark.parametrize("args, message", [
    (["--interval=1", "--period=2"], "--period: can't use with --interval"),
    (["--period=2", "--interval=1"], "--interval: can't use with --period"),
    (["--flood=1", "--period=2"], "--period: can't use with --flood"),
    (["--interval=1", "--flood"], "--flood: can't use with --interval"),
])
def test_pc8_modes_conflict(args, message):
    run = run_tool("performance_check", *args)
    assert (run.returncode, run.stdout) == (1, message + "\n")


# ------------------------------------------------------------------------------------------ PC-9, PC-10, STARTTLS


def test_pc9_xclient_then_second_ehlo(smtp_server):
    server = smtp_server(xclient=True)
    run = check(server, "--n-mails=2", "--connect-host=client.example", "--connect-address=192.0.2.7")
    assert run.returncode == 0, run
    for session in server.finished:
        assert session.commands[:3] == ["EHLO localhost.localdomain", "XCLIENT NAME=client.example ADDR=192.0.2.7",
                                        "EHLO localhost.localdomain"]
        assert session.xclient == {"NAME": "client.example", "ADDR": "192.0.2.7"}
    only_address = smtp_server(xclient=True)
    assert check(only_address, "--n-mails=1", "--connect-address=192.0.2.8").returncode == 0
    assert only_address.sessions[0].commands[1] == "XCLIENT ADDR=192.0.2.8"


def test_pc9_server_without_xclient_is_an_error(smtp_server):
    server = smtp_server()
    run = check(server, "--n-mails=2", "--connect-host=client.example")
    assert run.returncode == 0, run  # §3.6 AMBIG settled: a per-mail error, not a crash
    message = "SmtpUnsupportedError: XCLIENT isn't enabled. See smtpd_authorized_xclient_hosts parameter for Postfix."
    assert run.stderr.splitlines() == [message] * 2
    assert status_line(run, "Error") == (2, "100.00")
    assert server.finished == [] and all(s.commands[-1] == "QUIT" for s in server.sessions)


USERS = {"alice": "s3cret:with colon"}


@pytest.mark.parametrize("offered, chosen", [
    (("LOGIN", "PLAIN", "CRAM-MD5"), "CRAM-MD5"),
    (("LOGIN", "PLAIN", "DIGEST-MD5"), "PLAIN"),
    (("LOGIN", "GSSAPI"), "LOGIN"),
])
def test_pc10_auto_mechanism_prefers_cram_md5_plain_login(smtp_server, offered, chosen):
    # §7 item 11: --auth-user works without --auth-mechanism (the original's default was "auth")
    server = smtp_server(auth=offered, users=USERS)
    run = check(server, "--n-mails=2", "--auth-user=alice", f"--auth-password={USERS['alice']}")
    assert run.returncode == 0, run
    assert [session.auth for session in server.sessions] == [(chosen, "alice", True)] * 2
    assert len(server.finished) == 2


@pytest.mark.parametrize("mechanism", ["plain", "login", "cram_md5", "cram-md5", "CRAM-MD5"])
def test_pc10_named_mechanism(smtp_server, mechanism):
    server = smtp_server(auth=("PLAIN", "LOGIN", "CRAM-MD5"), users=USERS)
    run = check(server, "--n-mails=1", "--auth-user=alice", f"--auth-password={USERS['alice']}",
                f"--auth-mechanism={mechanism}")
    assert run.returncode == 0, run
    assert server.sessions[0].auth == (mechanism.upper().replace("_", "-"), "alice", True)


@pytest.mark.parametrize("offered, args, message", [
    ((), [], "SmtpUnsupportedError: authentication isn't capable"),
    (("GSSAPI", "NTLM"), [], "SmtpUnsupportedError: all capable authentication mechanisms are not supported: "
                             "[GSSAPI, NTLM]"),
    (("PLAIN",), ["--auth-mechanism=login"], "SmtpUnsupportedError: specified mechanism isn't supported: LOGIN "
                                             "(offered: [PLAIN])"),
])
def test_pc10_mechanism_problems_are_errors(smtp_server, offered, args, message):
    server = smtp_server(auth=offered, users=USERS)
    run = check(server, "--n-mails=1", "--auth-user=alice", "--auth-password=x", *args)
    assert run.returncode == 0, run
    assert run.stderr == message + "\n"
    assert status_line(run, "Error") == (1, "100.00")


def test_pc10_wrong_password_is_a_reject(smtp_server):
    server = smtp_server(auth=("PLAIN",), users=USERS)
    run = check(server, "--n-mails=1", "--auth-user=alice", "--auth-password=wrong", "--report-failure-responses")
    assert server.sessions[0].auth == ("PLAIN", "alice", False)
    assert status_line(run, "Reject") == (1, "100.00")
    assert run.stdout.endswith("Rejects:\n  1 535 5.7.8 Error: authentication failed\n")


def test_pc10_auth_map(smtp_server, tmp_path):
    server = smtp_server(auth=("LOGIN",), users=USERS)
    auth_map = tmp_path / "auth-map"
    auth_map.write_text(f"# server:port user:password\n\n127.0.0.1:1 bob:nope\n"
                        f"127.0.0.1:{server.port} alice:{USERS['alice']}\n")
    run = check(server, "--n-mails=1", f"--auth-map={auth_map}")
    assert run.returncode == 0, run
    assert server.sessions[0].auth == ("LOGIN", "alice", True)
    # a service name as the port, and no entry for the server: no AUTH
    other = smtp_server(auth=("LOGIN",), users=USERS)
    auth_map.write_text("127.0.0.1:smtp alice:x\n")
    assert check(other, "--n-mails=1", f"--auth-map={auth_map}").returncode == 0
    assert other.sessions[0].auth is None and len(other.finished) == 1
    auth_map.write_text("# ok\n127.0.0.1:25 alice\n")
    run = check(other, f"--auth-map={auth_map}")
    assert (run.returncode, run.stdout) == (1, f"--auth-map: invalid format: {auth_map}:2: <127.0.0.1:25 alice>\n")


def test_choose_mechanism_and_cram_md5():
    assert choose_mechanism(["LOGIN", "PLAIN", "CRAM-MD5"], "auto") == "CRAM-MD5"
    with pytest.raises(SmtpUnsupportedError):
        choose_mechanism(["PLAIN"], "cram_md5")
    # RFC 2195's example
    challenge = b"<1896.697170952@postoffice.reston.mci.net>"
    assert base64.b64decode(cram_md5_response("tim", "tanstaaftanstaaf", challenge)) == \
        b"tim b913a602c7eda7a495b4e6e7334d3890"


def test_starttls_auto_always_disable(smtp_server, certificate):
    server = smtp_server(cert=certificate, auth=("PLAIN",), users=USERS)
    run = check(server, "--n-mails=2", "--auth-user=alice", f"--auth-password={USERS['alice']}")
    assert run.returncode == 0, run
    for session in server.finished:
        assert session.tls
        assert session.commands[:3] == ["EHLO localhost.localdomain", "STARTTLS", "EHLO localhost.localdomain"]
        assert session.auth == ("PLAIN", "alice", True)
    disabled = smtp_server(cert=certificate)
    assert check(disabled, "--n-mails=1", "--starttls=disable").returncode == 0
    assert not disabled.sessions[0].tls and len(disabled.finished) == 1
    plain = smtp_server()
    run = check(plain, "--n-mails=1", "--starttls=always")
    assert run.stderr == "SmtpUnsupportedError: STARTTLS isn't supported by the server\n"
    assert status_line(run, "Error") == (1, "100.00")


def test_ehlo_refused_falls_back_to_helo(smtp_server):
    server = smtp_server(ehlo=False)
    run = check(server, "--n-mails=1")
    assert run.returncode == 0, run
    assert server.sessions[0].commands[:2] == ["EHLO localhost.localdomain", "HELO localhost.localdomain"]
    assert len(server.finished) == 1


# ------------------------------------------------------------------------------------------ PC-11, PC-12, PC-13


@pytest.mark.parametrize("text, seconds", [("5", 5), ("50s", 50), ("10m", 600), ("0.5h", 1800), ("2SEC", 2),
                                           ("1.5minutes", 90), ("1hour", 3600), ("3seconds", 3)])
def test_pc11_duration_parser(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["5x", "", "m", ".5", "5.", "-1", "1 d"])
def test_pc11_bad_durations(text):
    with pytest.raises(ValueError, match="invalid period format"):
        parse_duration(text)


@pytest.mark.parametrize("option", ["--period", "--interval", "--flood", "--report-periodically"])
def test_pc11_bad_duration_is_an_option_error(option):
    run = run_tool("performance_check", f"{option}=5x")
    assert (run.returncode, run.stdout) == (1, f"{option}: invalid period format: <5x>\n")


SAMPLE_REPORT = """\
 0.50 (sec): mails/b.eml
 0.01 (sec): mails/a.eml

Rejected mails:
mails/b.eml

Total:
      N mails:      2
 Elapsed time:   0.75 (sec)
   Throughput:   2.67 (mails/sec)

Per mail:
          Max:   0.50 (sec)
          Min:   0.01 (sec)
      Average:   0.26 (sec)
          p50:   0.50 (sec)
          p90:   0.50 (sec)
          p99:   0.50 (sec)

Status:
 Temporary failure:   0 (  0.00%)
            Reject:   1 ( 50.00%)
             Error:   0 (  0.00%)
"""


def test_pc12_report_layout_exactly():
    records = [{"path": "mails/a.eml", "elapsed": 0.01, "status": "success", "response": None},
               {"path": "mails/b.eml", "elapsed": 0.5, "status": "reject", "response": REJECTED}]
    assert render_report(records, 0.75, with_files=True, failure_responses=False) == SAMPLE_REPORT
    assert render_report(records, 0.75, with_files=True, failure_responses=True) == \
        SAMPLE_REPORT + f"\nRejects:\n  1 {REJECTED}\n"
    # elapsed 0: throughput = number of mails (§3.5 item 6)
    assert summarize(records, 0.0)["throughput"] == 2.0


def test_pc12_zero_mails_print_zero_percentages(smtp_server):
    # §7 item 11: the original printed NaN
    server = smtp_server()
    run = check(server, "--n-mails=0")
    assert run.returncode == 0, run
    assert run.stdout == """\
Total:
      N mails:      0
 Elapsed time:   0.00 (sec)
   Throughput:   0.00 (mails/sec)

Per mail:
          Max:   0.00 (sec)
          Min:   0.00 (sec)
      Average:   0.00 (sec)
          p50:   0.00 (sec)
          p90:   0.00 (sec)
          p99:   0.00 (sec)

Status:
 Temporary failure:   0 (  0.00%)
            Reject:   0 (  0.00%)
             Error:   0 (  0.00%)
"""
    assert server.sessions == []


def test_pc12_every_line_of_a_real_run(smtp_server, tmp_path):
    server = smtp_server(reply=scripted(spam=REJECTED))
    write_mail(tmp_path / "m" / "a.eml", headers="To: spam@example.org\n")
    write_mail(tmp_path / "m" / "b.eml")
    run = check(server, str(tmp_path / "m"))
    patterns = [r" \d\.\d\d \(sec\): .*/[ab]\.eml", r" \d\.\d\d \(sec\): .*/[ab]\.eml", "",
                "Rejected mails:", re.escape(str(tmp_path / "m" / "a.eml")), "",
                "Total:", r"      N mails:      2", r" Elapsed time: +\d+\.\d\d \(sec\)",
                r"   Throughput: +\d+\.\d\d \(mails/sec\)", "", "Per mail:",
                *[rf" +{label}: +\d+\.\d\d \(sec\)" for label in ("Max", "Min", "Average", "p50", "p90", "p99")],
                "", "Status:", r" Temporary failure:   0 \(  0\.00%\)", r"            Reject:   1 \( 50\.00%\)",
                r"             Error:   0 \(  0\.00%\)"]
    assert len(run.lines) == len(patterns), run.stdout
    for pattern, line in zip(patterns, run.lines, strict=True):
        assert re.fullmatch(pattern, line), (pattern, line)
        if line.endswith("(sec)") and not line.endswith(".eml"):
            assert len(line.split(":", 1)[0]) == 13


def test_pc13_statistics_data_file(smtp_server, tmp_path):
    server = smtp_server(reply=scripted(spam=REJECTED))
    write_mail(tmp_path / "m" / "a.eml", headers="To: spam@example.org\n", body="x" * 10 + "\n")
    write_mail(tmp_path / "m" / "b.eml", headers="Subject: b\n")
    data = tmp_path / "stats.csv"
    run = check(server, f"--report-statistics-data={data}", str(tmp_path / "m"))
    assert run.returncode == 0, run  # §7 item 11: the original crashed here
    rows = data.read_text().splitlines()
    assert rows[0] == "wall clock time,response time,message size"
    assert len(rows) == 3
    for row in rows[1:]:
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}[+-]\d\d:\d\d,\d+\.\d+,\d+", row), row
    sizes = sorted(int(row.rsplit(",", 1)[1]) for row in rows[1:])
    assert sizes == sorted([len(b"To: spam@example.org\r\n\r\n" + b"x" * 10 + b"\r\n"),
                            len(b"Subject: b\r\n\r\nHello.\r\n")])
    bad = check(server, f"--report-statistics-data={tmp_path}/missing/stats.csv")
    assert bad.returncode == 1 and bad.stdout.startswith("--report-statistics-data: No such file or directory: <")


# ------------------------------------------------------------------------------------------ JSON, concurrency, workers


def test_report_json_with_percentiles(smtp_server):
    server = smtp_server(reply=lambda step, argument, session: GREYLIST if step == "rcpt"
                         and len(server.sessions) == 1 else None)
    run = check(server, "--n-mails=5", "--report=json")
    assert run.returncode == 0, run
    [line] = run.lines
    report = json.loads(line)
    assert len(report["mails"]) == 5
    assert {mail["status"] for mail in report["mails"]} == {"success", "temporary-failure"}
    assert [mail["response"] for mail in report["mails"] if mail["status"] != "success"] == [GREYLIST]
    totals = report["totals"]
    assert totals["mails"] == 5
    assert totals["statuses"] == {"success": 4, "temporary-failure": 1, "reject": 0, "error": 0}
    assert totals["percentages"]["temporary-failure"] == 20.0
    elapsed = sorted(mail["elapsed"] for mail in report["mails"])
    assert set(totals["latency"]) == {"p50", "p90", "p99"}
    assert totals["latency"]["p50"] == pytest.approx(elapsed[2], abs=1e-6)
    assert totals["latency"]["p99"] == pytest.approx(elapsed[4], abs=1e-6)
    assert totals["per_mail"]["max"] >= totals["latency"]["p90"] >= totals["latency"]["p50"]
    bad = run_tool("performance_check", "--report=xml")
    assert (bad.returncode, bad.stdout) == (1, "--report: unknown format: <xml> (available: json)\n")


def test_n_concurrent_connections_default_is_one(smtp_server):
    # §7 item 11: the default is 1 (code and --help), not the 10 of the original's documentation
    server = smtp_server(delays={"end": 0.05})
    assert check(server, "--n-mails=6").returncode == 0
    assert server.max_active == 1
    wide = smtp_server(delays={"end": 0.3})
    run = check(wide, "--n-mails=8", "--n-concurrent-connections=4")
    assert run.returncode == 0, run
    assert wide.max_active == 4 and len(wide.finished) == 8
    assert float(report_value(run, "Elapsed time")) < 1.2  # two rounds of 0.3 s, not eight
    usage = run_tool("performance_check", "--help")
    assert "--n-concurrent-connections=N     SMTP sessions at once (parallel and flood modes) [default: 1]." in \
        usage.stdout


def test_n_workers_each_send_the_whole_list(smtp_server, tmp_path):
    server = smtp_server(reply=scripted(spam=REJECTED))
    write_mail(tmp_path / "m" / "a.eml", headers="To: spam@example.org\n")
    write_mail(tmp_path / "m" / "b.eml")
    write_mail(tmp_path / "m" / "c.eml")
    data = tmp_path / "stats.csv"
    run = check(server, "--n-workers=3", f"--report-statistics-data={data}", "--report-periodically",
                str(tmp_path / "m"))
    assert run.returncode == 0, run
    assert len(server.sessions) == 9 and len(server.finished) == 6
    assert "      N mails:      9" in run.lines
    assert status_line(run, "Reject") == (3, "33.33")
    assert run.stdout.count(str(tmp_path / "m" / "a.eml")) == 3 + 3  # slowest list and rejected list
    assert len(data.read_text().splitlines()) == 10
    assert run.stderr == ""


def test_n_workers_negative_is_refused():
    run = run_tool("performance_check", "--n-workers=-1")
    assert (run.returncode, run.stdout) == (1, "--n-workers: must be positive number.: <-1>\n")


def test_flood_with_period_loops_until_the_deadline(smtp_server, tmp_path):
    server = smtp_server(delays={"end": 0.02})
    write_mail(tmp_path / "m" / "a.eml")
    write_mail(tmp_path / "m" / "b.eml")
    started = time.monotonic()
    run = check(server, "--flood=1", "--n-concurrent-connections=2", str(tmp_path / "m"))
    assert run.returncode == 0, run
    assert 1.0 <= time.monotonic() - started < 5
    count = int(report_value(run, "N mails"))
    assert count > 4 and count == len(server.finished)  # both files, several times, in two loops
    assert server.max_active == 2
    assert {session.data for session in server.finished} == {b"\r\nHello.\r\n"}


@pytest.mark.parametrize("extra", [[], ["--n-workers=2"]], ids=["in-process", "workers"])
def test_ctrl_c_stops_and_still_reports(smtp_server, extra):
    server = smtp_server(delays={"end": 0.05})
    process = subprocess.Popen([sys.executable, "-m", "milterman.cli.performance_check", "--smtp-server=127.0.0.1",
                                f"--smtp-port={server.port}", "--flood", *extra],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=clean_env(), cwd=RUN_DIR)
    try:
        deadline = time.monotonic() + 10
        while len(server.finished) < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        process.send_signal(signal.SIGINT)
        stdout, stderr = process.communicate(timeout=10)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(5)
    assert process.returncode == 0, (stdout, stderr)
    text = stdout.decode()
    count = int(re.search(r"N mails: +(\d+)", text).group(1))
    assert count >= 3 and abs(count - len(server.finished)) <= 2, (count, len(server.finished))
    assert "Status:" in text and stderr == b""


def test_shuffle(smtp_server, tmp_path):
    for number in range(20):
        write_mail(tmp_path / "m" / f"{number:02}.eml", headers=f"Subject: {number:02}\n")
    subjects = []
    for args in (["--shuffle"], ["--shuffle", "--no-shuffle"]):
        server = smtp_server()
        assert check(server, *args, str(tmp_path / "m")).returncode == 0
        subjects.append([session.data.split(b"\r\n")[0] for session in server.finished])
    shuffled, ordered = subjects
    assert ordered == sorted(ordered) and sorted(shuffled) == ordered and shuffled != ordered


def test_progress_line_on_a_terminal(smtp_server):
    server = smtp_server(delays={"end": 0.15})
    controller, terminal = pty.openpty()
    try:
        completed = subprocess.run([sys.executable, "-m", "milterman.cli.performance_check",
                                    "--smtp-server=127.0.0.1", f"--smtp-port={server.port}", "--n-mails=8"],
                                   stdout=subprocess.PIPE, stderr=terminal, env=clean_env(), cwd=RUN_DIR, timeout=30)
        os.close(terminal)
        terminal = -1
        shown = b""
        while True:
            try:
                chunk = os.read(controller, 65536)
            except OSError:
                break
            if not chunk:
                break
            shown += chunk
    finally:
        os.close(controller)
        if terminal >= 0:
            os.close(terminal)
    assert completed.returncode == 0
    assert re.search(rb"\r\x1b\[K\d+/8 mails, 0 4XX, 0 5XX, 0 errors, [0-9.]+ mails/s", shown), shown
    assert shown.endswith(b"\r\x1b[K")  # cleared before the report
    assert b"\x1b" not in completed.stdout


# ------------------------------------------------------------------------------------------ options


@pytest.mark.parametrize("args, message", [
    (["--n-mails=abc"], "--n-mails: invalid integer value: <abc>"),
    (["--n-mails=-1"], "--n-mails: too small: <-1>: parsed=<-1>, min=<0>"),
    (["--smtp-port=70000"], "--smtp-port: too big: <70000>: parsed=<70000>, max=<65535>"),
    (["--n-concurrent-connections=0"], "--n-concurrent-connections: too small: <0>: parsed=<0>, min=<1>"),
    (["--starttls=maybe"], "--starttls: must be one of auto, always, disable: <maybe>"),
    (["--auth-mechanism=digest-md5"],
     "--auth-mechanism: must be one of auto, plain, login, cram_md5, cram-md5: <digest-md5>"),
    (["--reading-timeout=soon"], "--reading-timeout: invalid number: <soon>"),
    (["--report-periodically=0"], "--report-periodically: must be more than 0: <0>"),
    (["--auth-user=alice"], "--auth-password: needed with --auth-user=<alice>"),
    (["/no/such/mail.eml"], "MAIL_FILE_OR_DIR: no such file or directory: </no/such/mail.eml>"),
    (["--auth-map=/no/such/map"], "--auth-map: /no/such/map: No such file or directory"),
])
def test_option_errors_name_the_value(args, message):
    run = run_tool("performance_check", *args)
    assert (run.returncode, run.stdout, run.stderr) == (1, message + "\n", "")


def test_help_and_version():
    usage = run_tool("performance_check", "--help")
    assert usage.returncode == 0 and usage.stdout.startswith("milter-performance-check: send mails")
    assert "[default: auto]" in usage.stdout.split("--auth-mechanism", 1)[1].split("\n", 1)[0]
    version = run_tool("performance_check", "--version")
    assert version.returncode == 0 and version.stdout.startswith("milter-performance-check ")


def test_launcher_runs(smtp_server):
    server = smtp_server()
    completed = subprocess.run([sys.executable, str(REPO / "bin" / "milter-performance-check"),
                                "--smtp-server=127.0.0.1", f"--smtp-port={server.port}", "--n-mails=1"],
                               capture_output=True, env=clean_env(), cwd="/", timeout=30)
    assert completed.returncode == 0, completed
    assert b"      N mails:      1\n" in completed.stdout


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_no_smtp_server_exits_1_naming_host_and_port():
    """Issue 8: a check that never reached the MTA is a failure, not a report of 100 % errors with status 0."""
    port = _closed_port()
    run = run_tool("performance_check", "--smtp-server=127.0.0.1", f"--smtp-port={port}", "--n-mails=3")
    assert run.returncode == 1, run
    last = run.stderr.splitlines()[-1]
    assert last == (f"milter-performance-check: cannot connect to the SMTP server 127.0.0.1:{port}: "
                    "Connection refused (all 3 mails failed)"), run
    assert "Error:   3 (100.00%)" in run.stdout  # the report is still there


def test_some_mails_connecting_is_a_normal_run(smtp_server):
    """Only a run where no mail connected fails; errors among delivered mails keep exit status 0."""
    server = smtp_server(reply=lambda step, argument, session: "hello there" if step == "mail" else None)
    run = check(server, "--n-mails=1")
    assert run.returncode == 0 and "cannot connect" not in run.stderr, run
