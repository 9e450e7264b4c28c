"""milter-manager proven behind a real Postfix, with real children (acceptance of the issue
"milter-manager … proven behind real Postfix").

Postfix (a private 3.7 instance, tests/interop/postfix_harness.py) talks the milter protocol to one
milter-manager; the manager's children are real milters: the python3-milter milter
``milters/pymilter_header_reject.py`` (adds ``X-Pymilter: checked``, rejects recipients containing
"reject"), milter-test-client, and OpenDKIM (Debian's package) signing with a key made by
opendkim-genkey.  What reaches the SMTP sink is checked byte for byte where it matters: the
DKIM-Signature is verified with dkimpy against the test key (no DNS).

Faults: a child that is SIGKILLed during end-of-message, and a child that never answers it
(``end_of_message_timeout = 2``), each with fallback ``accept`` (delivered, with the other
children's edits) and ``temporary-failure`` (4xx to the SMTP client, nothing delivered).  Every
test counts what reached the sink and checks Postfix's queue is empty: no mail lost or doubled.

Every Postfix test runs with the manager serving in its master process (``--n-workers 0``) and
with two worker processes (``--n-workers 2``).
"""

from __future__ import annotations

import email.utils
import os
import re
import signal
import smtplib
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from manager_processes import (DkimKey, ManagerProcess, OpenDkimProcess, StallingMilterProcess,
                               opendkim_usable)
from milter_processes import RUN_DIR, PymilterProcess, TestClientProcess, pymilter_usable
from postfix_harness import PostfixInstance, require_real
from smtp_sink import SmtpSink

pytestmark = pytest.mark.interop

try:
    import dkim  # dkimpy, from the test extra of setup.cfg
except ImportError:  # pragma: no cover - reported by the dkim_key fixture
    dkim = None

DOMAIN = "example.org"
SELECTOR = "milterman"
#: Postfix waits longer for the manager than the manager waits for a stalled child (2 s)
POSTFIX_MILTER_TIMEOUTS = (5, 10, 30)
PYMILTER_REJECT = (550, "5.7.1 Recipient rejected by pymilter")


# -- fixtures -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dkim_key(tmp_path_factory) -> DkimKey:
    require_real("dkimpy", dkim is not None, "pip install -e '.[test]' (setup.cfg's test extra)")
    usable, reason = opendkim_usable()
    require_real("opendkim", usable, reason)
    return DkimKey(tmp_path_factory.mktemp("dkim-key"), DOMAIN, SELECTOR)


@pytest.fixture(scope="module")
def real_children(tmp_path_factory, dkim_key):
    """pymilter, OpenDKIM (relaxed/simple) and OpenDKIM (simple/simple), shared by the module's
    tests (they keep no state between sessions).

    All are libmilter programs, which take ~4.5 s to leave after SIGTERM: they are signalled
    together at teardown and then waited for."""
    usable, reason = pymilter_usable()
    require_real("python3-milter", usable, reason)
    started = []
    try:
        started.append(PymilterProcess(tmp_path_factory.mktemp("pymilter")))
        started.append(OpenDkimProcess(tmp_path_factory.mktemp("opendkim"), dkim_key))
        started.append(OpenDkimProcess(tmp_path_factory.mktemp("opendkim-simple"), dkim_key,
                                       canonicalization="simple/simple"))
        yield tuple(started)
    finally:
        for child in started:
            if child.process.poll() is None:
                child.process.send_signal(signal.SIGTERM)
        for child in started:
            child.stop()


@pytest.fixture
def pymilter(real_children) -> PymilterProcess:
    return real_children[0]


@pytest.fixture
def opendkim(real_children) -> OpenDkimProcess:
    return real_children[1]


@pytest.fixture
def opendkim_simple(real_children) -> OpenDkimProcess:
    return real_children[2]


@pytest.fixture
def test_client(tmp_path):
    process = TestClientProcess(tmp_path)
    yield process
    process.stop()


@pytest.fixture
def stalling_child(tmp_path):
    usable, reason = pymilter_usable()
    require_real("python3-milter", usable, reason)
    process = StallingMilterProcess(tmp_path)
    yield process
    process.stop()


@pytest.fixture(params=[0, 2], ids=lambda n: f"n_workers={n}")
def n_workers(request) -> int:
    return request.param


@pytest.fixture
def manager_factory(tmp_path, n_workers):
    """``manager_factory(milters, **kwargs)`` → a running :class:`ManagerProcess` with the
    parametrized ``--n-workers``; every manager is stopped at teardown (also on failure)."""
    managers: list[ManagerProcess] = []

    def make(milters, **kwargs) -> ManagerProcess:
        manager = ManagerProcess(tmp_path, milters, n_workers=n_workers, **kwargs)
        managers.append(manager)
        return manager

    yield make
    failures = []
    for manager in reversed(managers):
        status = manager.stop()
        if status != 0:  # SIGTERM: finish the sessions, exit 0 (D-5)
            failures.append(f"milter-manager exited with status {status} after SIGTERM\n{manager.describe()}")
    assert not failures, "\n".join(failures)


# -- helpers -------------------------------------------------------------------------------------


def make_message(sender: str, rcpts: list[str], subject: str, body: bytes) -> bytes:
    header = (
        f"From: Sender <{sender}>\r\n"
        f"To: {', '.join(rcpts)}\r\n"
        f"Subject: {subject}\r\n"
        f"Date: {email.utils.formatdate(localtime=False)}\r\n"
        f"Message-ID: {email.utils.make_msgid(domain=DOMAIN)}\r\n"
        "MIME-Version: 1.0\r\n"
        "Content-Type: text/plain; charset=us-ascii\r\n"
        "\r\n"
    ).encode("ascii")
    return header + body


SMALL_BODY = b"Hello,\r\n\r\nthis went through milter-manager.\r\n-- \r\nmilterman\r\n"


def children(pymilter, opendkim, *middle: dict) -> list[dict]:
    """pymilter first, then ``middle``, then OpenDKIM last (it signs what the others left)."""
    return [{"name": "pymilter", "connection_spec": pymilter.spec}, *middle,
            {"name": "opendkim", "connection_spec": opendkim.spec}]


def client_child(client: TestClientProcess) -> dict:
    return {"name": "milter-test-client", "connection_spec": f"inet:{client.port}@[127.0.0.1]"}


def start_postfix(postfix_factory, manager: ManagerProcess) -> PostfixInstance:
    # milter_default_action=tempfail: if the manager is not there, nothing is delivered
    return postfix_factory(manager.postfix_spec, milter_default_action="tempfail",
                           milter_timeouts=POSTFIX_MILTER_TIMEOUTS)


def settle(mta: PostfixInstance, sink: SmtpSink, expected: int, manager: ManagerProcess) -> list:
    """Exactly ``expected`` messages reached the sink, and nothing is left (or deferred) in the queue."""
    if expected:
        sink.wait_for(expected, timeout=30)
    assert mta.wait_queue_empty(20), f"queue not empty: {mta.queue_ids()}\n{mta.maillog()[-3000:]}"
    time.sleep(0.5)  # a second copy would be on its way by now
    assert mta.queue_ids() == []
    messages = sink.messages
    assert sink.errors == []
    assert len(messages) == expected, (
        f"{len(messages)} message(s) at the sink, expected {expected}\n{mta.maillog()[-3000:]}\n"
        f"{manager.describe()}")
    return messages


def verify_dkim(data: bytes, key: DkimKey) -> None:
    """The DKIM-Signature of ``data`` verifies against the test key; d= and s= are ours."""
    signature = re.search(rb"^DKIM-Signature:(.*?)\r\n(?![ \t])", data, re.M | re.S)
    assert signature, f"no DKIM-Signature in\n{data[:3000]!r}"
    tags = re.sub(rb"\s+", b"", signature.group(1))
    assert re.search(rb"(^|;)d=" + re.escape(key.domain.encode()) + rb"(;|$)", tags), tags
    assert re.search(rb"(^|;)s=" + re.escape(key.selector.encode()) + rb"(;|$)", tags), tags
    assert re.search(rb"(^|;)a=rsa-sha256(;|$)", tags), tags
    logs: list[str] = []

    class _Log:
        def debug(self, msg, *args):
            logs.append(msg % args if args else str(msg))

        info = error = warning = debug

    assert dkim.verify(data, logger=_Log(), dnsfunc=key.dnsfunc), "DKIM verification failed:\n" + "\n".join(logs)


def normalised(body: bytes) -> bytes:
    return body.replace(b"\r\n", b"\n")


# -- the three real children behind Postfix ----------------------------------------------------------


def test_three_children_sign_add_header_and_reject_one_recipient(
        postfix_factory, smtp_sink, manager_factory, pymilter, opendkim, dkim_key, test_client):
    manager = manager_factory(children(pymilter, opendkim, client_child(test_client)))
    mta = start_postfix(postfix_factory, manager)
    rcpts = ["bob@example.net", "reject-me@example.net", "carol@example.net"]
    message = make_message(f"alice@{DOMAIN}", rcpts, "three children", SMALL_BODY)

    result = mta.send(f"alice@{DOMAIN}", rcpts, message)

    assert result.error is None, result
    assert result.rcpts == {"bob@example.net": (250, "2.1.5 Ok"),
                            "reject-me@example.net": PYMILTER_REJECT,
                            "carol@example.net": (250, "2.1.5 Ok")}, manager.describe()
    assert result.accepted, f"{result}\n{manager.describe()}"
    [delivered] = settle(mta, smtp_sink, 1, manager)
    assert sorted(delivered.rcpt_tos) == ["bob@example.net", "carol@example.net"]
    # exactly as Postfix writes it when talking to pymilter directly: one space after the colon
    assert b"\r\nX-Pymilter: checked\r\n" in delivered.data, delivered.data[:2000]
    assert [name for name, _ in delivered.headers].count("X-Pymilter") == 1
    assert [name for name, _ in delivered.headers].count("DKIM-Signature") == 1
    verify_dkim(delivered.data, dkim_key)
    assert delivered.body == SMALL_BODY
    # milter-test-client saw every recipient and, after pymilter's end of message, its header (D-3)
    output = test_client.wait_output("finished")
    assert "envelope-recipient: <<reject-me@example.net>>" in output
    assert "header: <X-Pymilter: checked>" in output
    assert "end-of-message" in output


def test_body_over_5_mib_passes_unchanged_and_signed(
        postfix_factory, smtp_sink, manager_factory, pymilter, opendkim, dkim_key, test_client):
    manager = manager_factory(children(pymilter, opendkim, client_child(test_client)))
    mta = start_postfix(postfix_factory, manager)
    line = b"0123456789 abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ !#$%&*+-/=?^_"
    body = b"".join(b"%07d " % number + line + b"\r\n" for number in range(65000))
    body += b".a line starting with a dot\r\n..two dots\r\nlast line\r\n"
    assert len(body) > 5 * 1024 * 1024
    message = make_message(f"alice@{DOMAIN}", ["bob@example.net"], "large body", body)

    result = mta.send(f"alice@{DOMAIN}", ["bob@example.net"], message, timeout=60)

    assert result.accepted, f"{result}\n{manager.describe()}"
    [delivered] = settle(mta, smtp_sink, 1, manager)
    assert len(delivered.body) == len(body)
    assert normalised(delivered.body) == normalised(body)
    assert delivered.header("X-Pymilter") == "checked"
    verify_dkim(delivered.data, dkim_key)


def test_simple_header_canonicalization_still_verifies(
        postfix_factory, smtp_sink, manager_factory, pymilter, opendkim_simple, dkim_key):
    """c=simple/simple: any change to the signed headers' bytes (the DKIM-Signature's own folding
    and leading space included) breaks the signature, so this checks the manager hands OpenDKIM's
    header to Postfix byte for byte (header-leading-space negotiated for one child, not the other)."""
    manager = manager_factory(children(pymilter, opendkim_simple))
    mta = start_postfix(postfix_factory, manager)
    body = SMALL_BODY + b"  two leading blanks, a trailing one \r\n\ttab\r\n"
    message = make_message(f"alice@{DOMAIN}", ["bob@example.net"], "simple  canonicalization", body)

    result = mta.send(f"alice@{DOMAIN}", ["bob@example.net"], message)

    assert result.accepted, f"{result}\n{manager.describe()}"
    [delivered] = settle(mta, smtp_sink, 1, manager)
    assert re.search(rb"^DKIM-Signature: v=1; a=rsa-sha256; c=simple/simple;", delivered.data, re.M), delivered.data
    verify_dkim(delivered.data, dkim_key)
    assert b"\r\nX-Pymilter: checked\r\n" in delivered.data
    assert delivered.body == body


def test_condition_keeps_opendkim_away_from_one_sender(
        postfix_factory, smtp_sink, manager_factory, pymilter, opendkim, dkim_key):
    conditions = (
        '[[condition]]\n'
        'name = "no-dkim-for-test"\n'
        '  [[condition.rule]]\n'
        '  stage = "envelope-from"\n'
        "  match = { envelope_from = ['nodkim@'] }\n"
    )
    milters = children(pymilter, opendkim)
    milters[-1]["applicable_conditions"] = ["no-dkim-for-test"]
    manager = manager_factory(milters, extra_toml=conditions)
    mta = start_postfix(postfix_factory, manager)

    plain = mta.send(f"nodkim@{DOMAIN}", ["bob@example.net"],
                     make_message(f"nodkim@{DOMAIN}", ["bob@example.net"], "no dkim", SMALL_BODY))
    assert plain.accepted, f"{plain}\n{manager.describe()}"
    [unsigned] = settle(mta, smtp_sink, 1, manager)
    signed_result = mta.send(f"alice@{DOMAIN}", ["bob@example.net"],
                             make_message(f"alice@{DOMAIN}", ["bob@example.net"], "dkim", SMALL_BODY))
    assert signed_result.accepted, f"{signed_result}\n{manager.describe()}"
    _, signed = settle(mta, smtp_sink, 2, manager)

    assert unsigned.mail_from == f"nodkim@{DOMAIN}"
    assert unsigned.header("X-Pymilter") == "checked"
    assert unsigned.header("DKIM-Signature") is None, unsigned.data[:2000]
    assert signed.mail_from == f"alice@{DOMAIN}"
    assert signed.header("X-Pymilter") == "checked"
    verify_dkim(signed.data, dkim_key)


# -- faults at end of message ----------------------------------------------------------------------


def _send_in_background(mta: PostfixInstance, sender: str, rcpts: list[str], message: bytes):
    outcome: dict = {}

    def run() -> None:
        outcome["began"] = time.monotonic()
        outcome["result"] = mta.send(sender, rcpts, message, timeout=60)
        outcome["ended"] = time.monotonic()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, outcome


def _check_fault_outcome(fallback, result, mta, smtp_sink, manager, dkim_key) -> None:
    if fallback == "accept":
        assert result.accepted, f"{result}\n{manager.describe()}"
        [delivered] = settle(mta, smtp_sink, 1, manager)
        # the children before the failed one (pymilter) and after it (OpenDKIM) still count
        assert b"\r\nX-Pymilter: checked\r\n" in delivered.data, delivered.data[:2000]
        verify_dkim(delivered.data, dkim_key)
        assert delivered.body == SMALL_BODY
    else:
        assert result.error is None, result
        assert result.data is not None and 400 <= result.data[0] < 500, f"{result}\n{manager.describe()}"
        assert not result.accepted
        settle(mta, smtp_sink, 0, manager)
        mta.wait_for_log(r"milter-reject: END-OF-MESSAGE from .*: 4\.\d+\.\d+ ")
    # Postfix itself saw a well-behaved milter: no timeout, no broken reply
    assert not re.search(r"warning: milter ", mta.maillog()), mta.maillog()[-3000:]


@pytest.mark.parametrize("fallback", ["accept", "temporary-failure"])
def test_child_killed_during_end_of_message(
        postfix_factory, smtp_sink, manager_factory, pymilter, opendkim, dkim_key, stalling_child, fallback):
    manager = manager_factory(children(pymilter, opendkim, {
        "name": "stalling", "connection_spec": stalling_child.spec, "fallback_status": fallback}))
    mta = start_postfix(postfix_factory, manager)
    message = make_message(f"alice@{DOMAIN}", ["bob@example.net"], "child killed", SMALL_BODY)

    thread, outcome = _send_in_background(mta, f"alice@{DOMAIN}", ["bob@example.net"], message)
    try:
        stalling_child.wait_log("eom", timeout=30)  # Postfix now waits for the end-of-message reply
        stalling_child.kill()
    finally:
        thread.join(90)
    assert not thread.is_alive(), "the SMTP client still waits"
    result = outcome["result"]
    # the manager saw the child's socket close (M-ERR-4), it did not wait for a timeout
    assert outcome["ended"] - outcome["began"] < 10, (outcome, manager.describe())
    _check_fault_outcome(fallback, result, mta, smtp_sink, manager, dkim_key)
    assert manager.alive(), manager.describe()


@pytest.mark.parametrize("fallback", ["accept", "temporary-failure"])
def test_child_that_never_answers_end_of_message_times_out(
        postfix_factory, smtp_sink, manager_factory, pymilter, opendkim, dkim_key, stalling_child, fallback):
    manager = manager_factory(children(pymilter, opendkim, {
        "name": "stalling", "connection_spec": stalling_child.spec, "fallback_status": fallback,
        "end_of_message_timeout": 2.0}))
    mta = start_postfix(postfix_factory, manager)
    message = make_message(f"alice@{DOMAIN}", ["bob@example.net"], "child stalls", SMALL_BODY)

    began = time.monotonic()
    result = mta.send(f"alice@{DOMAIN}", ["bob@example.net"], message, timeout=60)
    elapsed = time.monotonic() - began

    assert "eom" in stalling_child.log()
    # the manager's 2 s end-of-message timeout decided, not Postfix's 30 s milter_content_timeout
    assert 2.0 <= elapsed < POSTFIX_MILTER_TIMEOUTS[2] - 5, (elapsed, result, manager.describe())
    _check_fault_outcome(fallback, result, mta, smtp_sink, manager, dkim_key)
    assert manager.alive(), manager.describe()


# -- the disconnect check (M-ERR-8): taRgrey ----------------------------------------------------


def test_taRgrey_smtp_client_that_gives_up_during_a_tarpit_gets_the_fallback_at_disconnect(
        postfix_factory, smtp_sink, manager_factory, stalling_child):
    """A child tarpits at end of message; the SMTP client gives up and closes its connection while Postfix's
    smtpd still waits for the milter. The manager finds the client gone in the kernel's TCP table within the
    check interval, answers Postfix temporary-failure and logs [session][disconnected] — long before the
    child's end_of_message_timeout or Postfix's milter_content_timeout."""
    manager = manager_factory(
        [{"name": "stalling", "connection_spec": stalling_child.spec, "fallback_status": "accept",
          "end_of_message_timeout": 120.0}],
        manager_toml='connection_check_interval = 1\nconnection_checkers = ["netstat"]\n'
                     'fallback_status_at_disconnect = "temporary-failure"\n')
    mta = start_postfix(postfix_factory, manager)
    client = smtplib.SMTP(mta.host, mta.port, timeout=30)
    client.ehlo("client.milterman.test")
    assert client.mail(f"alice@{DOMAIN}")[0] == 250
    assert client.rcpt("bob@example.net")[0] == 250
    assert client.docmd("DATA")[0] == 354
    client.send(make_message(f"alice@{DOMAIN}", ["bob@example.net"], "tarpitted", SMALL_BODY) + b"\r\n.\r\n")
    stalling_child.wait_log("eom")
    client.close()  # the SMTP client gives up (its socket and the file smtplib reads replies from)
    closed = time.monotonic()
    deadline = closed + 15
    while "[session][disconnected]" not in manager.log() and time.monotonic() < deadline:
        time.sleep(0.05)
    waited = time.monotonic() - closed
    assert re.search(r"\[session\]\[disconnected\]\[[0-9.e+-]+\]\(\d+\)", manager.log()), manager.describe()
    assert waited < 5, (waited, manager.describe())
    # Postfix got the temporary failure for the message (nothing was queued or delivered)
    mta.wait_for_log(re.compile(r"milter-reject: END-OF-MESSAGE .*4\.\d\.\d"), timeout=15)
    assert mta.queue_ids() == [] and smtp_sink.messages == []
    assert re.search(r"\[milter\]\[end\]\[end-of-message\]\[temporary-failure\]\[[^]]+\]\(\d+\): stalling",
                     manager.log()), manager.describe()
    assert manager.alive(), manager.describe()


# -- detection (D-9) -------------------------------------------------------------------------------


def _opendkim_enabled() -> bool:
    links = [Path("/etc/systemd/system/multi-user.target.wants/opendkim.service")]
    links += Path("/etc").glob("rc[2-5].d/S[0-9][0-9]opendkim")
    return any(path.exists() or path.is_symlink() for path in links)


def _expected_opendkim_socket() -> tuple[str, str]:
    """The socket Debian's opendkim will listen on, as a milterman spec, and the file that says so."""
    override = Path("/etc/systemd/system/opendkim.service.d/override.conf")
    if override.exists():
        match = re.search(r"^ExecStart=\S*opendkim\b.*?\s-p\s+(\S+)", override.read_text(), re.M)
        if match:
            return _libmilter_to_spec(match.group(1)), str(override)
    match = re.search(r"^\s*Socket\s+(\S+)", Path("/etc/opendkim.conf").read_text(), re.M)
    assert match, "/etc/opendkim.conf has no Socket line"
    return _libmilter_to_spec(match.group(1)), "/etc/opendkim.conf"


def _libmilter_to_spec(socket: str) -> str:
    kind, _, rest = socket.partition(":")
    if socket.startswith("/"):
        return f"unix:{socket}"
    if kind in ("local", "unix"):
        return f"unix:{rest}"
    port, _, host = rest.partition("@")
    if host in ("", "0.0.0.0", "*"):
        host = "127.0.0.1"
    return f"{kind}:{port}@[{host.strip('[]')}]"


def test_show_config_lists_the_opendkim_of_debians_package(tmp_path):
    require_real("opendkim", os.access("/usr/sbin/opendkim", os.X_OK) and Path("/etc/opendkim.conf").exists(),
                 "Debian package opendkim")
    require_real("opendkim enabled", _opendkim_enabled(), "the opendkim service is not enabled")
    expected_spec, expected_source = _expected_opendkim_socket()
    plain = 'version = 1\n[manager]\nconnection_spec = "inet:10025@[127.0.0.1]"\n[log]\nuse_syslog = false\n'
    # detection is asked for by [package] platform = "debian" (D-9)
    (tmp_path / "milter-manager.toml").write_text(plain.replace("version = 1\n",
                                                                'version = 1\n[package]\nplatform = "debian"\n'))
    script = Path(sys.executable).parent / "milter-manager"
    argv = [str(script)] if script.exists() else [sys.executable, "-m", "milterman.cli.manager"]

    run = subprocess.run([*argv, "-c", str(tmp_path), "--show-config"], capture_output=True, text=True,
                         timeout=60, cwd=RUN_DIR)

    assert run.returncode == 0, run.stdout + run.stderr
    tables = run.stdout.split("[[milter]]")[1:]
    [table] = [t for t in tables if re.search(r'^name = "opendkim"$', t, re.M)]
    assert f"# detected from {expected_source}" in table, table
    assert f'connection_spec = "{expected_spec}"' in table, table
    assert "enabled = true" in table
    # the same directory with --no-detect: no opendkim
    quiet = subprocess.run([*argv, "-c", str(tmp_path), "--show-config", "--no-detect"], capture_output=True,
                           text=True, timeout=60, cwd=RUN_DIR)
    assert quiet.returncode == 0 and "[[milter]]" not in quiet.stdout, quiet.stdout
    # a configuration that does not ask: no opendkim either
    (tmp_path / "milter-manager.toml").write_text(plain)
    unasked = subprocess.run([*argv, "-c", str(tmp_path), "--show-config"], capture_output=True, text=True,
                             timeout=60, cwd=RUN_DIR)
    assert unasked.returncode == 0 and "[[milter]]" not in unasked.stdout, unasked.stdout
