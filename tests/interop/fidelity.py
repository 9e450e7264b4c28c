"""The same mail as the MTA's own chain (D-16): scripted milters chained by the MTA, then the same
milters behind milter-manager, and what was delivered compared.

Each scenario is a list of milters in order, each a list of end-of-message edits for
``milters/pymilter_edits.py``; the last milter also records what it saw (headers, body). A run starts
fresh milters, sends :data:`MESSAGE` through the MTA (Postfix or Sendmail, from the fixtures) either
listing the milters itself or listing only the manager, which lists them in the same order, and
returns the delivered mail and the record.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path

from manager_processes import ManagerProcess
from milter_processes import EditsMilterProcess
from smtp_sink import SinkMessage, SmtpSink

MESSAGE = (b"Received: from upstream.example.org by relay.example.org; Sat, 21 Nov 2026 09:00:00 +0000\r\n"
           b"From: <sender@example.org>\r\nTo: <alice@example.test>\r\nSubject: fidelity\r\n"
           b"Authentication-Results: forged.example; dkim=pass\r\n"
           b"X-Dup: 1\r\nAuthentication-Results: forged.example; spf=pass\r\nX-Dup: 2\r\n"
           b"Date: Sat, 21 Nov 2026 10:00:00 +0000\r\nMessage-ID: <fidelity@example.org>\r\n\r\n"
           b"original body\r\n")
SENDER = "sender@example.org"
RECIPIENTS = ["alice@example.test", "bob@example.test"]

#: the issue's edits (issue 9, D-16)
SCENARIOS: dict[str, list[list[str]]] = {
    # dkimpy-milter deletes earlier Authentication-Results naming them in lower case
    "delete-lowercase": [["delete:authentication-results:1"], []],
    # mimedefang replaces the body with LF line ends; a DKIM signer after it hashes the body it is given
    "body-lf": [["body-lf:replaced by a filter|second line"], ["bodyhash:DKIM-Like"]],
    # spamass-milter adds X-Spam-Status, another adds X-Later, rspamd deletes X-Spam-Status and adds its own
    "delete-then-add": [["add:X-Spam-Status:Yes, spamassassin"], ["add:X-Later:later"],
                        ["delete:X-Spam-Status:1", "add:X-Spam-Status:No, rspamd"]],
    # opendkim signs and an authentication milter reports, both at index 0
    "insert-0": [["insert:0:DKIM-Signature:v=1; a=rsa-sha256; d=example.org"],
                 ["insert:0:Authentication-Results:mta.milterman.test; dkim=pass"]],
    # the MTAs' rules beyond the issue: inserts counting hidden entries, add of a present name,
    # deletes and changes of one name across milters
    "insert-middle": [["insert:5:X-Five:five"], ["insert:11:X-Eleven:eleven"]],
    "add-present-name": [["add:Subject:second"], ["change:subject:2:changed"]],
    "deletes-across-milters": [["delete:X-Dup:1"], ["delete:X-Dup:2", "change:x-dup:1:new"]],
}


@dataclasses.dataclass
class Run:
    delivered: SinkMessage
    seen: dict
    """What the last milter saw: {"headers": [[name, value], ...], "body": str (latin-1), ...}."""
    manager_log: str = ""


def own_received(value: str) -> bool:
    return "by mta.milterman.test" in value


def normalised(message: SinkMessage) -> tuple:
    """Envelope, headers in order, body bytes; the MTA's own Received: (queue id, time) as a marker."""
    headers = [(name, "<the MTA's own>" if name == "Received" and own_received(value) else value)
               for name, value in message.headers]
    return message.mail_from, sorted(message.rcpt_tos), headers, message.body


def run(directory: Path, sink: SmtpSink, start_mta: Callable[[list[str]], object], kind: str,
        milters: list[list[str]], through_manager: bool) -> Run:
    """One mail through the MTA chaining ``milters`` itself, or through the manager listing them."""
    label = "manager" if through_manager else "chain"
    record = directory / f"{label}-seen.json"
    record.unlink(missing_ok=True)
    edits = [list(m) for m in milters]
    edits[-1].append(f"record:{record}")
    processes = [EditsMilterProcess(directory, *m) for m in edits]
    manager = None
    try:
        if through_manager:
            manager = ManagerProcess(directory, [{"name": f"m{number}", "connection_spec": process.manager_spec}
                                                 for number, process in enumerate(processes, 1)])
            specs = [manager.postfix_spec if kind == "postfix" else f"inet:{manager.port}@127.0.0.1"]
        else:
            specs = [p.postfix_spec if kind == "postfix" else p.libmilter_spec for p in processes]
        mta = start_mta(specs)
        result = mta.send(SENDER, RECIPIENTS, MESSAGE)
        assert result.accepted, (label, result, manager.describe() if manager else "")
        [delivered] = sink.wait_for(1, timeout=30)
        sink.clear()
        mta.stop()
    finally:
        for process in processes:
            process.stop()
        if manager is not None:
            manager.stop()
    return Run(delivered, json.loads(record.read_text()), manager.log() if manager else "")


def compare(directory: Path, sink: SmtpSink, start_mta: Callable[[list[str]], object], kind: str,
            scenario: str) -> tuple[Run, Run]:
    """The chain's run and the manager's, after asserting they delivered the same mail and that the
    last milter saw the same headers and body (D-16)."""
    milters = SCENARIOS[scenario]
    chain = run(directory, sink, start_mta, kind, milters, through_manager=False)
    manager = run(directory, sink, start_mta, kind, milters, through_manager=True)
    assert manager.seen["headers"] == chain.seen["headers"], ("the last milter saw other headers behind the manager",
                                                            manager.seen["headers"], chain.seen["headers"])
    assert manager.seen["body"] == chain.seen["body"], ("the last milter saw another body behind the manager",
                                                      manager.seen["body"], chain.seen["body"])
    assert normalised(manager.delivered) == normalised(chain.delivered), manager.manager_log[-6000:]
    return chain, manager


def check(scenario: str, kind: str, manager: Run) -> None:
    """What each scenario must show besides being the chain's mail (the MTA's rules, D-16)."""
    headers = manager.delivered.headers
    names = [name for name, _ in headers]
    if scenario == "delete-lowercase":
        assert [value for name, value in headers if name == "Authentication-Results"] == ["forged.example; spf=pass"]
    elif scenario == "body-lf":
        assert manager.seen["body"] == "replaced by a filter\r\nsecond line\r\n"  # not LF (M-BODY-3)
        assert manager.delivered.body == b"replaced by a filter\r\nsecond line\r\n"
        # the debug log: each modification a child asked for and each sent to the MTA, the body as a
        # length only; Postfix gets the body with CRLF, Sendmail the child's bytes (it converts them)
        log = manager.manager_log
        assert "[manager][modification][child] [m1] replace-body length=33" in log
        assert "[manager][modification][child] [m2] insert-header <DKIM-Like> index=0 value-length=47" in log
        assert f"[manager][modification][mta] replace-body length={35 if kind == 'postfix' else 33}" in log
        assert "[manager][modification][mta] insert-header <DKIM-Like> index=0 value-length=47" in log
        assert "second line" not in log
    elif scenario == "delete-then-add":
        # Postfix appends the re-added header; Sendmail puts it where the deleted one was
        assert names[-2:] == (["X-Later", "X-Spam-Status"] if kind == "postfix" else ["X-Spam-Status", "X-Later"])
    elif scenario == "insert-0":
        assert names[:3] == ["Authentication-Results", "DKIM-Signature", "Received"]  # above the MTA's own
        assert own_received(headers[2][1])
