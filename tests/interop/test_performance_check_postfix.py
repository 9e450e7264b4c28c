"""milter-performance-check against a real Postfix with milter-manager and child milters in place
(tools.md §3.7, every PC-* behaviour a real MTA can show).

The stack: milter-performance-check → Postfix (a private 3.7 instance, tests/interop/postfix_harness.py:
Cyrus SASL with a test sasldb, STARTTLS with a certificate made here, XCLIENT allowed from 127.0.0.1)
→ milter-manager (this repository's) with three children: milter-test-client (prints what it gets, so
the test sees the HELO name, the XCLIENT-supplied client and the AUTH macros), the example ``reject``
milter (550 for spam@…) and ``milters/milterman_greylist.py`` (451 for greylist@…) → the SMTP sink.
Every test checks that the report's counts equal the mails the sink received, and that Postfix's
queue is empty afterwards.

A second stack has no SASL and no XCLIENT authorization, and a manager child that cannot be reached
with ``fallback_status = "temporary-failure"`` (D-14): every session is tempfailed by the manager.

What the real MTA showed (the MTA wins over the spec's expectations):
- Debian's Postfix reads ``smtpd.conf`` from ``$config_directory/sasl/`` (then ``/usr/lib/sasl``);
  ``cyrus_sasl_config_path`` alone did not make it read another directory.
- a child's temporary failure at connect is not the SMTP greeting: Postfix greets with 220, accepts
  EHLO and answers the refusal at MAIL FROM with its own text (451 4.7.1 Service unavailable - try
  again later), not the child's.
- XCLIENT after EHLO/STARTTLS: Postfix had already opened a milter session for the real client; it
  ends that one without a message and opens another for the XCLIENT client (the real client's port
  kept), so the children see two connects per mail. (Postfix also logs ``xclient=0/1`` in its
  disconnect counters although XCLIENT worked.)
"""

from __future__ import annotations

import grp
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from manager_processes import ManagerProcess, wait_listening_quietly
from milter_processes import RUN_DIR, TestClientProcess, free_port, stop
from postfix_harness import PostfixInstance, postfix_usable, require_real
from smtp_sink import SmtpSink

pytestmark = pytest.mark.interop

GREYLIST_SCRIPT = Path(__file__).resolve().parent / "milters" / "milterman_greylist.py"
REALM = "milterman.test"
USER, PASSWORD = "alice", "Secret 42"
SPAM_REPLY = "550 5.7.1 No spam here"
GREYLIST_REPLY = "451 4.7.1 Greylisting in action, please come back later"


# -- processes ------------------------------------------------------------------------------------


class PythonMilter:
    """A milter of ours (``python -m milterman.tools.example_milters reject SPEC`` or a script) on a free port."""

    def __init__(self, directory: Path, *argv: str) -> None:
        self.port = free_port()
        self.output_path = directory / f"milter-{self.port}.out"
        self._output = open(self.output_path, "wb")
        self.process = subprocess.Popen([sys.executable, *argv, f"inet:{self.port}@[127.0.0.1]"],
                                        stdout=self._output, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                        cwd=RUN_DIR)
        try:
            wait_listening_quietly(self.port, self.process, 15.0, " ".join(argv), self.output_path)
        except BaseException:
            self.stop()
            raise

    @property
    def spec(self) -> str:
        return f"inet:{self.port}@[127.0.0.1]"

    def stop(self) -> int | None:
        status = stop(self.process)
        self._output.close()
        return status


class Stack:
    """Postfix → milter-manager → children → sink, with helpers to run the tool and count what arrived."""

    def __init__(self, mta: PostfixInstance, sink: SmtpSink, manager: ManagerProcess,
                 client: TestClientProcess | None) -> None:
        self.mta, self.sink, self.manager, self.client = mta, sink, manager, client

    def check(self, *args: str, input: bytes | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
        """Run milter-performance-check against this Postfix."""
        return subprocess.run([sys.executable, "-m", "milterman.cli.performance_check", "--smtp-server=127.0.0.1",
                               f"--smtp-port={self.mta.port}", *args], input=input, capture_output=True,
                              text=True, timeout=timeout, cwd=RUN_DIR)

    def delivered(self, before: int, expected: int) -> list:
        """Exactly ``expected`` more messages reached the sink, and the queue is empty."""
        if expected:
            self.sink.wait_for(before + expected, timeout=30)
        assert self.mta.wait_queue_empty(20), f"queue: {self.mta.queue_ids()}\n{self.mta.maillog()[-3000:]}"
        time.sleep(0.3)  # a stray extra copy would be here by now
        messages = self.sink.messages[before:]
        assert len(messages) == expected, (f"{len(messages)} new message(s) at the sink, expected {expected}\n"
                                           f"{self.mta.maillog()[-3000:]}\n{self.manager.describe()}")
        assert self.sink.errors == []
        return messages

    def client_output(self, offset: int, text: str) -> str:
        """milter-test-client's output after ``offset``, once ``text`` is in it."""
        assert self.client is not None
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            output = self.client.output()[offset:]
            if text in output:
                return output
            time.sleep(0.05)
        raise AssertionError(f"{text!r} not printed by milter-test-client:\n{self.client.output()[offset:]}")


def make_certificate(directory: Path) -> tuple[Path, Path]:
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                    "-keyout", str(key), "-out", str(cert), "-days", "1", "-subj", "/CN=mta.milterman.test"],
                   check=True, capture_output=True, timeout=30)
    return cert, key


def make_sasldb(config_dir: Path) -> Path:
    """``$config_directory/sasl/smtpd.conf`` and a sasldb with USER (readable by smtpd, which runs as postfix)."""
    sasl = config_dir / "sasl"
    sasl.mkdir(mode=0o755)
    (sasl / "smtpd.conf").write_text(f"pwcheck_method: auxprop\nauxprop_plugin: sasldb\nsasldb_path: {sasl}/sasldb2\n"
                                     "mech_list: PLAIN LOGIN CRAM-MD5\n")
    os.chmod(sasl / "smtpd.conf", 0o644)
    subprocess.run(["saslpasswd2", "-f", str(sasl / "sasldb2"), "-u", REALM, "-c", "-p", USER],
                   input=PASSWORD.encode(), check=True, capture_output=True, timeout=30)
    os.chown(sasl / "sasldb2", 0, grp.getgrnam("postfix").gr_gid)
    os.chmod(sasl / "sasldb2", 0o640)
    return sasl


def require_stack() -> None:
    usable, reason = postfix_usable()
    require_real("postfix", usable, reason)
    require_real("saslpasswd2", shutil.which("saslpasswd2") is not None, "Debian package sasl2-bin")
    require_real("Cyrus SASL modules", Path("/usr/lib/x86_64-linux-gnu/sasl2/libcrammd5.so").exists()
                 or bool(list(Path("/usr/lib").glob("*/sasl2/libcrammd5.so"))), "Debian package libsasl2-modules")
    require_real("openssl", shutil.which("openssl") is not None, "Debian package openssl")


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    """The main stack, shared by the module's tests (each counts only its own mails)."""
    require_stack()
    work = tmp_path_factory.mktemp("performance-check")
    root = Path(tempfile.mkdtemp(prefix="milterman-pc-postfix-"))
    os.chmod(root, 0o755)
    started: list = []
    sink = SmtpSink()
    try:
        client = TestClientProcess(work)
        started.append(client)
        reject = PythonMilter(work, "-m", "milterman.tools.example_milters", "reject")
        started.append(reject)
        greylist = PythonMilter(work, str(GREYLIST_SCRIPT))
        started.append(greylist)
        manager = ManagerProcess(work, [
            {"name": "milter-test-client", "connection_spec": f"inet:{client.port}@[127.0.0.1]"},
            {"name": "reject", "connection_spec": reject.spec},
            {"name": "greylist", "connection_spec": greylist.spec},
        ], log_level="info")
        started.append(manager)
        mta = PostfixInstance(root, manager.postfix_spec, sink.port, milter_default_action="tempfail",
                              milter_timeouts=(5, 10, 30), extra_main_cf={})
        cert, key = make_certificate(mta.config_dir)
        sasl = make_sasldb(mta.config_dir)
        mta.extra_main_cf.update({
            "smtpd_sasl_auth_enable": "yes",
            "smtpd_sasl_type": "cyrus",
            "smtpd_sasl_path": "smtpd",
            "cyrus_sasl_config_path": str(sasl),
            "smtpd_sasl_local_domain": REALM,
            "smtpd_tls_security_level": "may",
            "smtpd_tls_cert_file": str(cert),
            "smtpd_tls_key_file": str(key),
            "smtpd_tls_auth_only": "yes",
            "smtpd_authorized_xclient_hosts": "127.0.0.1",
            "mynetworks": "127.0.0.0/8 192.0.2.0/24",
        })
        mta.start()
        started.append(mta)
        yield Stack(mta, sink, manager, client)
    finally:
        for process in reversed(started):
            process.stop()
        sink.close()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def tempfail_stack(tmp_path_factory):
    """Postfix without SASL or XCLIENT; the manager has a child nobody listens for (fallback tempfail)."""
    require_stack()
    work = tmp_path_factory.mktemp("performance-check-tempfail")
    root = Path(tempfile.mkdtemp(prefix="milterman-pc-postfix-tempfail-"))
    os.chmod(root, 0o755)
    started: list = []
    sink = SmtpSink()
    try:
        client = TestClientProcess(work)
        started.append(client)
        manager = ManagerProcess(work, [
            {"name": "milter-test-client", "connection_spec": f"inet:{client.port}@[127.0.0.1]"},
            {"name": "dead", "connection_spec": f"inet:{free_port()}@[127.0.0.1]",
             "fallback_status": "temporary-failure", "connection_timeout": 2.0, "retry_delay": 0.0},
        ], log_level="info")
        started.append(manager)
        mta = PostfixInstance(root, manager.postfix_spec, sink.port, milter_default_action="tempfail",
                              milter_timeouts=(5, 10, 30))
        mta.start()
        started.append(mta)
        yield Stack(mta, sink, manager, client)
    finally:
        for process in reversed(started):
            process.stop()
        sink.close()
        shutil.rmtree(root, ignore_errors=True)


def counts(stdout: str) -> dict[str, int]:
    """N mails and the three status counts of a text report."""
    found = {"mails": int(re.search(r"^      N mails: +(\d+)$", stdout, re.M).group(1))}
    for label in ("Temporary failure", "Reject", "Error"):
        found[label] = int(re.search(rf"^ {label:>17}: +(\d+) \(", stdout, re.M).group(1))
    return found


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


# -- PC-1, PC-2, PC-12 ----------------------------------------------------------------------------


def test_pc1_pc2_generated_mails_through_manager_reach_the_sink(stack):
    before, offset = len(stack.sink), len(stack.client.output())
    run = stack.check("--n-mails=5", "--recipient=a@example.net", "--recipient=b@example.net")
    assert run.returncode == 0, run
    assert run.stderr == ""
    assert counts(run.stdout) == {"mails": 5, "Temporary failure": 0, "Reject": 0, "Error": 0}
    assert re.search(r"^ Temporary failure:   0 \(  0\.00%\)$", run.stdout, re.M)
    messages = stack.delivered(before, 5)
    for message in messages:
        assert message.mail_from == "from@example.com"
        assert message.rcpt_tos == ("a@example.net", "b@example.net")
        assert message.header("X-Mailer") == "milter-performance-check"
        assert message.header("To") == "a@example.net, b@example.net"
        assert message.body == b"Hello,\r\n\r\nThis is a test mail.\r\n"
    output = stack.client_output(offset, "helo: <localhost.localdomain>")
    assert output.count("envelope-from: <<from@example.com>>") == 5


# -- PC-3 … PC-6, PC-13: mail files, a reject and a tempfail from children --------------------------


def test_pc3_to_pc6_pc13_files_rejects_and_tempfails_from_children(stack, tmp_path):
    mails = tmp_path / "mails"
    write(mails / "a-ok.eml", "Received: from host.example (host.example [192.0.2.5])\n\tby mx.example; "
          "Mon, 1 Jan 2024 00:00:00 +0000\nFrom: Sender <sender@example.org>\n"
          "To: Alice <alice@example.net>\nCc: \"Doe, John\" <john@example.net>\nSubject: ok\n\n.leading dot\nok\n")
    write(mails / "b-spam.eml", "From: sender@example.org\nTo: spam@example.net\nSubject: spam\n\nspam\n")
    write(mails / "sub" / "c-greylist.eml", "From: sender@example.org\nTo: greylist@example.net\n"
          "Subject: grey\n\ngrey\n")
    data = tmp_path / "statistics.csv"
    before, offset = len(stack.sink), len(stack.client.output())
    run = stack.check("--report-failure-responses", f"--report-statistics-data={data}", str(mails))
    assert run.returncode == 0, run
    assert counts(run.stdout) == {"mails": 3, "Temporary failure": 1, "Reject": 1, "Error": 0}
    lines = run.stdout.splitlines()
    assert all(re.match(rf"^ *\d+\.\d\d \(sec\): {re.escape(str(mails))}/", line) for line in lines[:3])
    assert lines[3] == ""
    assert lines[lines.index("Rejected mails:") + 1] == str(mails / "b-spam.eml")
    assert lines[lines.index("Temporary failed mails:") + 1] == str(mails / "sub" / "c-greylist.eml")
    assert re.search(r"^            Reject:   1 \( 33\.33%\)$", run.stdout, re.M)
    assert run.stdout.endswith(f"\nTemporary failures:\n  1 {GREYLIST_REPLY}\nRejects:\n  1 {SPAM_REPLY}\n")
    [message] = stack.delivered(before, 1)
    assert message.mail_from == "sender@example.org"
    assert message.rcpt_tos == ("alice@example.net", "john@example.net")  # addresses extracted (§7 item 11)
    assert message.body == b".leading dot\r\nok\r\n"  # dot-stuffed on the wire, intact at the end
    output = stack.client_output(offset, "helo: <host.example>")  # HELO from the first Received:
    assert "envelope-recipient: <<spam@example.net>>" in output
    rows = data.read_text().splitlines()
    assert rows[0] == "wall clock time,response time,message size" and len(rows) == 4


def test_pc5_child_answers_classified_with_one_file_many_times(stack, tmp_path):
    mail = write(tmp_path / "spam.eml", "From: s@example.org\nTo: spam@example.net\n\nx\n")
    before = len(stack.sink)
    run = stack.check("--n-mails=3", str(mail))
    assert counts(run.stdout) == {"mails": 3, "Temporary failure": 0, "Reject": 3, "Error": 0}
    assert run.stdout.count(str(mail)) == 6  # 3 in the slowest list, 3 in the rejected list
    stack.delivered(before, 0)


def test_pc5_dead_child_with_tempfail_fallback(tempfail_stack):
    before = len(tempfail_stack.sink)
    run = tempfail_stack.check("--n-mails=3", "--report-failure-responses")
    assert run.returncode == 0, run
    assert counts(run.stdout) == {"mails": 3, "Temporary failure": 3, "Reject": 0, "Error": 0}
    responses = run.stdout.split("Temporary failures:\n", 1)[1].splitlines()
    assert len(responses) == 3 and all(re.match(r"^  \d 4\d\d ", line) for line in responses), responses
    assert re.search(r"^ Temporary failure:   3 \(100\.00%\)$", run.stdout, re.M)
    tempfail_stack.delivered(before, 0)


def test_pc5_connection_refused_is_an_error(stack):
    run = subprocess.run([sys.executable, "-m", "milterman.cli.performance_check", "--smtp-server=127.0.0.1",
                          f"--smtp-port={free_port()}", "--n-mails=1"], capture_output=True, text=True,
                         timeout=30, cwd=RUN_DIR)
    assert run.returncode == 1  # issue 8: no mail could connect
    assert run.stderr.startswith("ConnectionRefusedError: [Errno 111] Connection refused\n"
                                 "milter-performance-check: cannot connect to the SMTP server 127.0.0.1:")


# -- PC-9: XCLIENT --------------------------------------------------------------------------------


def test_pc9_xclient_client_seen_by_the_child(stack):
    before, offset = len(stack.sink), len(stack.client.output())
    run = stack.check("--n-mails=1", "--connect-host=client.example", "--connect-address=192.0.2.10")
    assert run.returncode == 0, run
    assert counts(run.stdout)["mails"] == 1 and run.stderr == ""
    stack.delivered(before, 1)
    output = stack.client_output(offset, "connect: host=<client.example>")
    assert re.search(r"^connect: host=<client\.example>, address=<inet:\d+@\[192\.0\.2\.10\]>$", output, re.M), output
    assert "helo: <localhost.localdomain>" in output  # the EHLO after XCLIENT
    # Postfix had already opened a milter session for the real client (EHLO, STARTTLS, EHLO): XCLIENT ends
    # it without a message and starts a new one, so the children see two connects for one mail
    connects = re.findall(r"^connect: host=<([^>]*)>", output, re.M)
    assert connects == ["[127.0.0.1]", "client.example"], output
    first = output.split("connect: host=<client.example>", 1)[0]
    assert "envelope-from:" not in first and "finished" in first
    stack.mta.wait_for_log(r"disconnect from client\.example\[192\.0\.2\.10\]")


def test_pc9_xclient_not_authorized_is_an_error(tempfail_stack):
    run = tempfail_stack.check("--n-mails=2", "--connect-host=client.example")
    assert run.returncode == 0, run
    message = "SmtpUnsupportedError: XCLIENT isn't enabled. See smtpd_authorized_xclient_hosts parameter for Postfix."
    assert run.stderr.splitlines() == [message] * 2
    assert counts(run.stdout) == {"mails": 2, "Temporary failure": 0, "Reject": 0, "Error": 2}


# -- PC-10: AUTH against Cyrus SASL, after STARTTLS ---------------------------------------------------


@pytest.mark.parametrize("mechanism, used", [("auto", "CRAM-MD5"), ("plain", "PLAIN"), ("login", "LOGIN"),
                                             ("cram-md5", "CRAM-MD5")])
def test_pc10_auth_against_postfix_sasl(stack, mechanism, used):
    before, offset = len(stack.sink), len(stack.client.output())
    log_before = len(stack.mta.maillog())
    run = stack.check("--n-mails=2", f"--auth-user={USER}", f"--auth-password={PASSWORD}",
                      f"--auth-mechanism={mechanism}", f"--from=auth-{mechanism}@example.org")
    assert run.returncode == 0, run
    assert counts(run.stdout) == {"mails": 2, "Temporary failure": 0, "Reject": 0, "Error": 0}, run.stdout
    stack.delivered(before, 2)
    deadline = time.monotonic() + 10
    while stack.mta.maillog()[log_before:].count(f"sasl_method={used}, sasl_username={USER}@{REALM}") < 2:
        assert time.monotonic() < deadline, stack.mta.maillog()[log_before:]
        time.sleep(0.05)
    output = stack.client_output(offset, f"envelope-from: <<auth-{mechanism}@example.org>>")
    assert f"  auth_type={used}" in output and f"  auth_authen={USER}@{REALM}" in output, output
    assert "  tls_version=TLSv1" in output  # STARTTLS (auto) came first: smtpd_tls_auth_only = yes


def test_pc10_wrong_password_is_a_reject_and_no_tls_means_no_auth(stack):
    before = len(stack.sink)
    run = stack.check("--n-mails=1", f"--auth-user={USER}", "--auth-password=wrong", "--report-failure-responses")
    assert counts(run.stdout) == {"mails": 1, "Temporary failure": 0, "Reject": 1, "Error": 0}
    assert re.search(r"^Rejects:\n  1 535 5\.7\.8 Error: authentication failed", run.stdout, re.M), run.stdout
    run = stack.check("--n-mails=1", f"--auth-user={USER}", f"--auth-password={PASSWORD}", "--starttls=disable")
    assert run.stderr == "SmtpUnsupportedError: authentication isn't capable\n"
    assert counts(run.stdout)["Error"] == 1
    stack.delivered(before, 0)


# -- PC-7, PC-8, PC-13, JSON, workers, flood: the report's counts equal what the sink received ---------------


def test_pc7_pc8_period_and_periodic_report(stack):
    before = len(stack.sink)
    run = stack.check("--period=2", "--n-mails=4", "--report-periodically=1")
    assert run.returncode == 0, run
    lines = run.stdout.splitlines()
    assert lines[0] == "    Time  Sent mails/s Max(s) Min(s) Avg(s)   4XX   5XX Error"
    blank = lines.index("")
    assert blank >= 2 and lines[blank + 1] == "Total:"
    assert sum(int(row.split()[1]) for row in lines[1:blank]) == 4
    assert counts(run.stdout) == {"mails": 4, "Temporary failure": 0, "Reject": 0, "Error": 0}
    assert float(re.search(r"Elapsed time: +([0-9.]+)", run.stdout).group(1)) >= 1.4
    stack.delivered(before, 4)


def test_workers_concurrency_json_and_statistics_data(stack, tmp_path):
    data = tmp_path / "statistics.csv"
    before = len(stack.sink)
    run = stack.check("--n-workers=2", "--n-concurrent-connections=3", "--n-mails=6", "--report=json",
                      f"--report-statistics-data={data}", "--recipient=spam@example.net",
                      "--recipient=bob@example.net")
    assert run.returncode == 0, run
    report = json.loads(run.stdout)
    totals = report["totals"]
    assert totals["mails"] == 12 and len(report["mails"]) == 12
    assert totals["statuses"] == {"success": 0, "temporary-failure": 0, "reject": 12, "error": 0}
    assert {mail["response"] for mail in report["mails"]} == {SPAM_REPLY}
    assert 0 < totals["latency"]["p50"] <= totals["latency"]["p90"] <= totals["latency"]["p99"]
    assert len(data.read_text().splitlines()) == 13
    stack.delivered(before, 0)
    run = stack.check("--n-workers=2", "--n-concurrent-connections=3", "--n-mails=6", "--report=json")
    report = json.loads(run.stdout)
    assert report["totals"]["statuses"]["success"] == 12
    stack.delivered(before, 12)


def test_flood_until_the_deadline(stack):
    before = len(stack.sink)
    run = stack.check("--flood=1.5", "--n-concurrent-connections=2")
    assert run.returncode == 0, run
    found = counts(run.stdout)
    assert found["mails"] >= 4 and found["Error"] == found["Reject"] == found["Temporary failure"] == 0
    stack.delivered(before, found["mails"])


def test_stdin_mail_with_fresh_message_ids(stack):
    before = len(stack.sink)
    mail = b"Message-Id: <same@example.org>\nFrom: s@example.org\nTo: r@example.net\nSubject: stdin\n\nbody\n"
    run = stack.check("--n-mails=3", "-", input=mail.decode())
    assert counts(run.stdout)["mails"] == 3
    ids = {message.header("Message-Id") for message in stack.delivered(before, 3)}
    assert len(ids) == 3 and "<same@example.org>" not in ids
