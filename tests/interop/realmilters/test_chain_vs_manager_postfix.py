"""The same mail, the same milters: Postfix chaining them vs Postfix → milter-manager → them (D-16).

Nine real milters from Debian 12 (pyspf-milter, opendkim verifying, dkimpy-milter, opendmarc,
spamass-milter + spamd, clamav-milter + clamd, rspamd's milter proxy, MIMEDefang, opendkim
signing; conftest.py and daemons.py) answer each test mail of mails.py once behind Postfix's own
chain (``smtpd_milters`` in that order) and once behind milter-manager listing them in the same
order.  Fate, every SMTP reply, the delivered envelope, every header in order, the body bytes and
the DKIM verdicts must be the same (rig.py says what is normalised).  Where a manager must differ
from a chain — every child sees MAIL at once; a quarantine by one child does not stop the later
ones — the difference is asserted as exactly that (doc/differences.md lists it for users).
"""

from __future__ import annotations

import subprocess
import sys
import time
import tomllib

import pytest
from rig import Outcome, assert_same, explain

pytestmark = pytest.mark.interop

#: Mails whose fate does not involve a quarantine: everything must be equal.
SAME = ["clean", "gtube", "virus", "forged-spf", "dkim-inbound", "dmarc-reject", "filter-rewrite",
        "filter-discard", "filter-tempfail"]
#: Mail -> (the quarantining milter, the milters after it in the chain).
HELD = {"dmarc-quarantine": "opendmarc", "filter-quarantine": "mimedefang"}
#: Headers each milter writes, to tell which child wrote an extra header of a held mail.
WRITES = {
    "spamass-milter": {"x-spam-checker-version", "x-spam-status", "x-spam-level", "x-spam-flag", "x-spam-report"},
    "clamav-milter": {"x-virus-scanned", "x-virus-status"},
    "rspamd": {"x-spam-status", "x-spam"},
    "mimedefang": {"x-scanned-by"},
    "opendkim-sign": {"dkim-signature"},
}

_outcomes: dict[str, tuple[Outcome, Outcome]] = {}


def outcomes(realmilters, name: str) -> tuple[Outcome, Outcome]:
    """(chain, manager) for mail ``name``, sent once per session however many tests look at it."""
    if name not in _outcomes:
        _outcomes[name] = realmilters.run(realmilters.mails[name])
    return _outcomes[name]


@pytest.mark.parametrize("name", SAME)
def test_the_manager_delivers_what_the_postfix_chain_delivers(realmilters, name):
    """D-16: fate, replies, envelope, headers (names, values, order), body and DKIM all equal."""
    chained, managed = outcomes(realmilters, name)
    assert_same(chained, managed)


def test_the_mails_get_the_verdicts_the_milters_give(realmilters):
    """The suite tests something: each milter's verdict shows in the chain's outcome."""
    fates = {name: outcomes(realmilters, name)[0] for name in SAME + list(HELD)}
    assert fates["clean"].fate == "delivered"
    assert [d["ok"] for d in fates["clean"].dkim] == [True, True], fates["clean"].dkim
    assert fates["gtube"].replies[-1] == "DATA 554 5.7.1 Gtube pattern", fates["gtube"].replies
    assert fates["virus"].replies[-1].startswith("DATA 550 5.7.1 Rejected by clamav-milter: Milterman.Test.Marker"), \
        fates["virus"].replies
    assert fates["forged-spf"].replies[0].startswith("MAIL 550 5.7.23"), fates["forged-spf"].replies
    assert fates["dmarc-reject"].fate == "rejected at DATA", fates["dmarc-reject"].replies
    assert fates["dkim-inbound"].dkim == [{"d": "good.test", "s": "in", "a": "rsa-sha256", "ok": True}]
    assert fates["filter-discard"].fate == "discarded"
    assert fates["filter-tempfail"].replies[-1] == "DATA 451 4.7.1 Try again later (test filter)", \
        fates["filter-tempfail"].replies
    rewrite = fates["filter-rewrite"]
    assert (rewrite.mail_from, rewrite.rcpts) == ("rewritten@sign.test", ("added@recipient.test", "bob@recipient.test"))
    assert rewrite.values("Subject") == ["Rewritten by the test filter"]
    for name in HELD:
        assert fates[name].fate == "held", name


def test_the_verdicts_come_from_the_sandbox_s_dns_and_nothing_else(realmilters):
    """The SPF, DKIM and DMARC verdicts above are real look-ups answered by the sandbox's DNS
    server, in a network where only the loopback interface exists."""
    outcomes(realmilters, "dkim-inbound")
    outcomes(realmilters, "dmarc-reject")
    links = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True, timeout=30, check=True)
    assert [line.split(":")[1].strip() for line in links.stdout.splitlines()] == ["lo"], links.stdout
    log = realmilters.sandbox.dns_log.read_text(errors="replace")
    for name in ("good.test", "in._domainkey.good.test", "_dmarc.good.test", "_dmarc.dmarc-reject.test"):
        assert f"query[TXT] {name} from 127.0.0.1" in log, name


def test_forged_authentication_results_are_removed_as_in_the_chain(realmilters):
    """Issue item 1 (D-16): dkimpy-milter deletes earlier results of our authserv-id by the name
    ``authentication-results``; the manager must match names case-insensitively as Postfix does."""
    chained, managed = outcomes(realmilters, "dkim-inbound")
    forged = [v for v in managed.values("Authentication-Results") if "bank.test" in v]
    assert not forged, explain(chained, managed)
    assert managed.values("Authentication-Results") == chained.values("Authentication-Results"), \
        explain(chained, managed)


def test_a_body_replaced_by_a_child_is_signed_as_in_the_chain(realmilters):
    """Issue item 2 (D-16): MIMEDefang's footer (LF line ends) reaches opendkim (signing) with CRLF,
    so opendkim's signature of the delivered mail verifies, as behind Postfix's chain."""
    chained, managed = outcomes(realmilters, "filter-rewrite")
    assert {"d": "sign.test", "s": "rsa", "a": "rsa-sha256", "ok": True} in chained.dkim
    assert managed.dkim == chained.dkim, explain(chained, managed)


def test_headers_inserted_at_the_top_are_above_postfix_s_received(realmilters):
    """Issue item 3 (D-16, P-MOD-4): headers a child inserts at index 0 land above Postfix's own
    ``Received:`` as with chaining, and every header keeps the chain's order."""
    chained, managed = outcomes(realmilters, "clean")
    names = chained.header_names()
    assert names.index("Received") > names.index("DKIM-Signature"), explain(chained, managed)
    assert managed.header_names() == names, explain(chained, managed)


@pytest.mark.parametrize("name", sorted(HELD))
def test_a_quarantine_does_not_stop_the_later_children(realmilters, name):
    """Must differ (D-16): Postfix calls no milter after one that quarantined the message; the
    manager lets the later children finish, so the held copy also carries their headers.  All the
    rest (fate, replies, envelope, body, the chain's headers in their order) is the same."""
    chained, managed = outcomes(realmilters, name)
    context = explain(chained, managed)
    assert chained.fate == managed.fate == "held", context
    assert managed.replies == chained.replies, context
    assert (managed.mail_from, managed.rcpts) == (chained.mail_from, chained.rcpts), context
    assert managed.body_sha256 == chained.body_sha256, context
    # the chain's headers are all there, in the same order ...
    remaining = iter(managed.headers)
    assert all(header in remaining for header in chained.headers), context
    # ... and every extra one was written by a milter after the quarantining one
    extra = [n for n, v in managed.headers if (n, v) not in chained.headers]
    quarantiner = HELD[name]
    order = [m.name for m in realmilters.milters]
    later = set().union(*(WRITES.get(m, set()) for m in order[order.index(quarantiner) + 1:]))
    assert extra and all(n.lower() in later for n in extra), (extra, context)


def test_every_child_sees_mail_from_at_once(realmilters):
    """Must differ: behind Postfix's chain, a reject at MAIL by the first milter means the others
    never see MAIL; the manager has given MAIL to every child by then (each one ends its session
    at the envelope-from stage).  The SMTP client sees the same reply."""
    chained, managed = outcomes(realmilters, "forged-spf")
    assert managed.replies == chained.replies
    assert chained.replies[0].startswith("MAIL 550"), chained.replies
    names = {m.name for m in realmilters.milters}
    deadline = time.monotonic() + 15  # the children's end lines follow the reply to the MTA
    while True:
        log = realmilters.manager.log()[managed.manager_log_offset:]
        ended = {line.rsplit(": ", 1)[-1] for line in log.splitlines() if "[milter][end][envelope-from]" in line}
        if names <= ended or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert names <= ended, (sorted(names - ended), log[-4000:])


def test_a_hand_written_configuration_gets_exactly_its_children(realmilters):
    """Issue item 4 (D-9): with Debian's milters installed, the hand-written configuration (which
    does not ask for detection) gets exactly its children, in its order, with nothing attached."""
    manager = realmilters.manager
    shown = subprocess.run([sys.executable, "-m", "milterman.cli.manager", "-c", str(manager.config_dir),
                            "--show-config"], capture_output=True, text=True, timeout=60, cwd="/")
    assert shown.returncode == 0, shown.stderr
    children = tomllib.loads(shown.stdout).get("milter", [])
    assert [c["name"] for c in children] == [m.name for m in realmilters.milters], shown.stdout
    assert [c["connection_spec"] for c in children] == [m.spec for m in realmilters.milters]
    for child in children:
        assert not child.get("applicable_conditions"), child
        assert not child.get("command"), child
