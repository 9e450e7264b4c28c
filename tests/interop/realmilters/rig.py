"""One mail through an MTA, observed completely: replies, fate, envelope, headers, body, DKIM.

:func:`observe` sends a :class:`TestMail` through a Postfix instance (from the sandbox's client
address, so the milters see an outside client) and waits (bounded) until Postfix decided its
fate: ``rejected``/``tempfailed`` at a stage, or, once accepted, ``delivered`` (to the SMTP sink),
``held`` (a milter's quarantine: the hold queue; its content is read with ``postcat`` and the
message removed), or ``discarded``.  The :class:`Outcome` is normalised so two runs of the same
mail compare equal when the MTA did the same thing.  Normalised, and nothing else:

* the queue id Postfix gave the message (in replies, its ``Received:`` field, rspamd's
  ``X-Rspamd-Queue-Id``) becomes ``QUEUEID``;
* the date at the end of a ``Received:`` field becomes ``DATE``;
* in ``DKIM-Signature`` fields the signing time ``t=`` and the signature ``b=`` (which covers
  ``t=``), and the ``header.b=`` prefix of it that ``Authentication-Results`` quote, become ``T``/``B``.

Everything else — header names with their case, values, order, the body bytes (as a SHA-256), the
envelope sender and recipients, every SMTP reply — must be the same.  DKIM signatures are checked
separately by dkimpy against the sandbox's DNS (:func:`dkim_results`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import subprocess
import time
from pathlib import Path

from postfix_harness import PostfixInstance, SendResult
from sandbox import CLIENT_ADDRESS, Sandbox
from smtp_sink import SinkMessage, SmtpSink

HERE = Path(__file__).resolve().parent
DEBIAN_PYTHON = "/usr/bin/python3"


@dataclasses.dataclass(frozen=True)
class TestMail:
    """A test mail: envelope and message (CRLF line ends)."""

    __test__ = False
    name: str
    mail_from: str
    rcpts: tuple[str, ...]
    message: bytes


@dataclasses.dataclass
class Outcome:
    """What one MTA did with one mail, normalised (see the module docstring)."""

    fate: str
    replies: list[str]
    mail_from: str | None = None
    rcpts: tuple[str, ...] = ()
    headers: list[tuple[str, str]] = dataclasses.field(default_factory=list)
    body_sha256: str | None = None
    dkim: list[dict] = dataclasses.field(default_factory=list)
    raw: bytes = b""
    log: str = ""
    """The MTA's log lines of this mail."""
    manager_log: str = ""
    """milter-manager's log lines of this mail (when it was in front of the milters)."""
    manager_log_offset: int = 0
    """Where in milter-manager's log this mail's lines begin."""

    def header_names(self) -> list[str]:
        return [name for name, _ in self.headers]

    def values(self, name: str) -> list[str]:
        return [value for field, value in self.headers if field.lower() == name.lower()]

    def comparable(self) -> dict:
        return {key: getattr(self, key) for key in ("fate", "replies", "mail_from", "rcpts", "headers",
                                                    "body_sha256", "dkim")}


def explain(chained: Outcome, managed: Outcome) -> str:
    """Both outcomes side by side and the end of the manager's log, for assertion messages."""
    def lines(outcome: Outcome) -> str:
        return "\n".join(f"  {n}: {v[:160]!r}" for n, v in outcome.headers)
    return (f"\nchain: {chained.fate} {chained.replies}\n{lines(chained)}\ndkim {chained.dkim}"
            f"\nmanager: {managed.fate} {managed.replies}\n{lines(managed)}\ndkim {managed.dkim}"
            f"\n--- manager log (end) ---\n{managed.manager_log[-4000:]}")


def assert_same(chained: Outcome, managed: Outcome) -> None:
    """Fate, replies, envelope, headers in order, body and DKIM verdicts all equal (D-16)."""
    context = explain(chained, managed)
    assert managed.fate == chained.fate, context
    assert managed.replies == chained.replies, context
    assert (managed.mail_from, managed.rcpts) == (chained.mail_from, chained.rcpts), context
    assert managed.headers == chained.headers, context
    assert managed.body_sha256 == chained.body_sha256, context
    assert managed.dkim == chained.dkim, context


def split_message(data: bytes) -> tuple[list[tuple[str, str]], bytes]:
    """Header fields (name as written, value unfolded-raw) in order, and the body bytes."""
    head, _, body = data.partition(b"\r\n\r\n")
    fields: list[tuple[str, str]] = []
    for line in head.decode("utf-8", "replace").split("\r\n"):
        if line[:1] in (" ", "\t") and fields:
            fields[-1] = (fields[-1][0], fields[-1][1] + "\r\n" + line)
        elif ":" in line:
            name, value = line.split(":", 1)
            fields.append((name, value.lstrip(" \t")))
    return fields, body


def normalise_value(name: str, value: str, queue_id: str | None) -> str:
    if queue_id:
        value = value.replace(queue_id, "QUEUEID")
    lower = name.lower()
    if lower == "received" and ";" in value:
        value = value[: value.rfind(";")] + "; DATE"
    elif lower == "dkim-signature":
        value = re.sub(r"(\bt=)\d+", r"\1T", value)
        value = re.sub(r"(\bb=)[A-Za-z0-9+/=\s]+", r"\1B", value)
    elif lower == "authentication-results":
        value = re.sub(r"(header\.b=\"?)[A-Za-z0-9+/]+", r"\1B", value)
    return value


def _reply_text(reply: tuple[int, str] | None, queue_id: str | None) -> str:
    if reply is None:
        return "-"
    text = f"{reply[0]} {reply[1]}"
    return text.replace(queue_id, "QUEUEID") if queue_id else text


def replies(result: SendResult) -> list[str]:
    """Every reply after the banner (EHLO's own list left out: it is the MTA's, not a milter's)."""
    queue_id = result.queue_id
    lines = [f"MAIL {_reply_text(result.mail, queue_id)}"]
    lines += [f"RCPT {rcpt} {_reply_text(reply, queue_id)}" for rcpt, reply in result.rcpts.items()]
    lines.append(f"DATA {_reply_text(result.data, queue_id)}")
    if result.error:
        lines.append(f"ERROR {result.error}")
    return lines


def dkim_results(sandbox: Sandbox, data: bytes) -> list[dict]:
    """dkimpy's verdict on every DKIM-Signature of ``data`` (keys from the sandbox's DNS)."""
    proc = subprocess.run(sandbox.command([DEBIAN_PYTHON, str(HERE / "dkim_tool.py"), "verify"]), input=data,
                          capture_output=True, timeout=60)
    if proc.returncode != 0:
        raise RuntimeError(f"dkim_tool verify failed: {proc.stderr.decode(errors='replace')}")
    return json.loads(proc.stdout)


def dkim_sign(sandbox: Sandbox, data: bytes, selector: str, domain: str, key: Path) -> bytes:
    proc = subprocess.run(sandbox.command([DEBIAN_PYTHON, str(HERE / "dkim_tool.py"), "sign", selector, domain,
                                           str(key)]), input=data, capture_output=True, timeout=60, check=True)
    return proc.stdout


def _held_content(postfix: PostfixInstance, queue_id: str) -> bytes:
    proc = subprocess.run(["/usr/sbin/postcat", "-c", str(postfix.config_dir), "-hbq", queue_id],
                          capture_output=True, timeout=30)
    return proc.stdout.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def _envelope_of_held(postfix: PostfixInstance, queue_id: str) -> tuple[str, tuple[str, ...]]:
    proc = subprocess.run(["/usr/sbin/postcat", "-c", str(postfix.config_dir), "-eq", queue_id],
                          capture_output=True, text=True, timeout=30)
    sender = re.search(r"^sender: (.*)$", proc.stdout, re.M)
    rcpts = tuple(re.findall(r"^recipient: (.*)$", proc.stdout, re.M))
    return (sender.group(1) if sender else ""), rcpts


def observe(postfix: PostfixInstance, sink: SmtpSink, sandbox: Sandbox, mail: TestMail,
            timeout: float = 60.0) -> Outcome:
    """Send ``mail`` through ``postfix`` and wait for its fate (see the module docstring)."""
    sink.clear()
    log_start = len(postfix.maillog())
    result = postfix.send(mail.mail_from, list(mail.rcpts), mail.message, source_address=CLIENT_ADDRESS,
                          timeout=timeout)
    outcome = Outcome(fate="", replies=replies(result))
    if not result.accepted:
        final = result.final
        code = final[0] if final else 0
        stage = "DATA" if result.data else ("RCPT" if result.rcpts and result.mail and result.mail[0] < 300 else "MAIL")
        outcome.fate = f"{'tempfailed' if 400 <= code < 500 else 'rejected'} at {stage}"
        outcome.log = postfix.maillog()[log_start:]
        return outcome
    queue_id = result.queue_id
    assert queue_id, result
    pattern = re.compile(rf"{queue_id}: (?:milter-hold|milter-discard|removed)")
    deadline = time.monotonic() + timeout
    while not pattern.search(postfix.maillog()[log_start:]):
        if time.monotonic() > deadline:
            raise TimeoutError(f"no fate for {queue_id} within {timeout:g} s:\n{postfix.maillog()[log_start:]}")
        time.sleep(0.05)
    log = postfix.maillog()[log_start:]
    outcome.log = log
    if f"{queue_id}: milter-hold" in log:
        outcome.fate = "held"
        data = _held_content(postfix, queue_id)
        outcome.mail_from, outcome.rcpts = _envelope_of_held(postfix, queue_id)
        subprocess.run(["/usr/sbin/postsuper", "-c", str(postfix.config_dir), "-d", queue_id, "hold"],
                       capture_output=True, timeout=30)
    elif f"{queue_id}: milter-discard" in log:
        outcome.fate = "discarded"
        return outcome
    else:
        outcome.fate = "delivered"
        message = _sink_message(sink, queue_id, deadline)
        data = message.data
        outcome.mail_from, outcome.rcpts = message.mail_from, tuple(sorted(message.rcpt_tos))
    headers, body = split_message(data)
    outcome.raw = data
    outcome.headers = [(name, normalise_value(name, value, queue_id)) for name, value in headers]
    outcome.body_sha256 = hashlib.sha256(body).hexdigest()
    outcome.dkim = dkim_results(sandbox, data)
    return outcome


def observe_sendmail(sendmail, sink: SmtpSink, sandbox: Sandbox, mail: TestMail, timeout: float = 60.0) -> Outcome:
    """:func:`observe` for a :class:`sendmail_harness.SendmailInstance`: Sendmail logs to syslog
    only, so an accepted mail's fate is read from the sink (the subset sent through Sendmail
    holds only mails that are delivered or refused in SMTP)."""
    sink.clear()
    result = sendmail.send(mail.mail_from, list(mail.rcpts), mail.message, source_address=CLIENT_ADDRESS,
                           timeout=timeout)
    match = re.search(r"2\.0\.0 (\S+) Message accepted", result.data[1]) if result.accepted else None
    queue_id = match.group(1) if match else None
    outcome = Outcome(fate="", replies=[line.replace(queue_id, "QUEUEID") if queue_id else line
                                        for line in replies(result)])
    if not result.accepted:
        final = result.final
        outcome.fate = f"{'tempfailed' if final and 400 <= final[0] < 500 else 'rejected'}"
        return outcome
    assert queue_id, result
    message = _sink_message(sink, queue_id, time.monotonic() + timeout)
    outcome.fate = "delivered"
    outcome.mail_from, outcome.rcpts = message.mail_from, tuple(sorted(message.rcpt_tos))
    headers, body = split_message(message.data)
    outcome.raw = message.data
    outcome.headers = [(name, normalise_value(name, value, queue_id)) for name, value in headers]
    outcome.body_sha256 = hashlib.sha256(body).hexdigest()
    outcome.dkim = dkim_results(sandbox, message.data)
    return outcome


def _sink_message(sink: SmtpSink, queue_id: str, deadline: float) -> SinkMessage:
    """The message whose trace fields name ``queue_id`` ("id QUEUEID" in Postfix's or Sendmail's
    own ``Received:``)."""
    while True:
        for message in sink.messages:
            if f" id {queue_id}" in message.data.split(b"\r\n\r\n", 1)[0].decode("utf-8", "replace"):
                return message
        if time.monotonic() > deadline:
            raise TimeoutError(f"{queue_id} was removed from the queue but never reached the sink")
        time.sleep(0.05)
