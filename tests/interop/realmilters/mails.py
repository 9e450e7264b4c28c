"""The test mails of the real-milter suite and the DNS records that give them their verdicts.

Domains (all under the reserved ``.test``; the sandbox's DNS server answers only these):

* ``sign.test``: our own domain: SPF passes for the test client, DMARC ``p=none``; opendkim
  (RSA, selector ``rsa``) and dkimpy-milter (ed25519, selector ``ed``) sign its mail.
* ``good.test``: an outside domain whose mail passes SPF; its inbound mail is DKIM-signed by the
  test (selector ``in``); DMARC ``p=reject``.
* ``forged.test``: SPF ``-all``: pyspf-milter rejects at MAIL.
* ``dmarc-reject.test`` / ``dmarc-quarantine.test``: DMARC ``p=reject`` / ``p=quarantine`` and
  no SPF or DKIM of their own, so a mail with their From: fails DMARC (opendmarc rejects or
  quarantines it).
"""

from __future__ import annotations

import email.utils
from collections.abc import Callable

from rig import TestMail
from sandbox import CLIENT_ADDRESS
from daemons import VIRUS_MARKER

GTUBE = "XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"
#: The forged Authentication-Results an attacker puts into inbound mail: same authserv-id as ours.
FORGED_RESULTS = ("Authentication-Results: mta.milterman.test; dkim=pass header.d=bank.test; "
                  "spf=pass smtp.mailfrom=bank.test")


def dns_records(dkim_records: dict[str, str]) -> dict[str, str | list[str]]:
    spf_pass = f"v=spf1 ip4:{CLIENT_ADDRESS} -all"
    records: dict[str, str | list[str]] = {
        "sign.test": spf_pass,
        "_dmarc.sign.test": "v=DMARC1; p=none",
        "good.test": spf_pass,
        "_dmarc.good.test": "v=DMARC1; p=reject",
        "forged.test": "v=spf1 -all",
        "dmarc-reject.test": "v=spf1 -all",
        "_dmarc.dmarc-reject.test": "v=DMARC1; p=reject",
        "dmarc-quarantine.test": "v=spf1 -all",
        "_dmarc.dmarc-quarantine.test": "v=DMARC1; p=quarantine",
    }
    records.update(dkim_records)
    return records


HOSTS = {"mta.milterman.test": "127.0.0.1", "client.milterman.test": CLIENT_ADDRESS}


def _message(name: str, from_: str, *, subject: str, body: str, extra: str = "",
             to: str = "bob@recipient.test") -> bytes:
    text = (f"{extra}From: <{from_}>\r\nTo: <{to}>\r\nSubject: {subject}\r\n"
            f"Date: {DATE}\r\nMessage-ID: <{name}@milterman.test>\r\n"
            "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n" + body)
    return text.replace("\r\n", "\n").replace("\n", "\r\n").encode()


#: The mails are dated when the suite starts (SpamAssassin scores dates in the past).
DATE = email.utils.formatdate(localtime=False)
BODY = "Hello Bob,\r\n\r\nthe minutes of Tuesday's meeting are below.\r\n\r\n-- \r\nAlice\r\n"


def build(sign: Callable[[bytes], bytes]) -> dict[str, TestMail]:
    """Every test mail by name; ``sign`` DKIM-signs a message as good.test (selector ``in``)."""
    rcpts = ("bob@recipient.test",)
    inbound = _message("dkim-inbound", "news@good.test", subject="Newsletter", body=BODY)
    mails = [
        TestMail("clean", "alice@sign.test", ("bob@recipient.test", "carol@recipient.test"),
                 _message("clean", "alice@sign.test", subject="Minutes", body=BODY)),
        TestMail("gtube", "alice@good.test", rcpts,
                 _message("gtube", "alice@good.test", subject="Offer", body=f"{GTUBE}\r\n")),
        TestMail("virus", "alice@good.test", rcpts,
                 _message("virus", "alice@good.test", subject="Invoice", body=f"see {VIRUS_MARKER}\r\n")),
        TestMail("forged-spf", "ceo@forged.test", rcpts,
                 _message("forged-spf", "ceo@forged.test", subject="Urgent", body=BODY)),
        TestMail("dkim-inbound", "news@good.test", rcpts, sign(FORGED_RESULTS.encode() + b"\r\n" + inbound)),
        TestMail("dmarc-reject", "bounce@good.test", rcpts,
                 _message("dmarc-reject", "ceo@dmarc-reject.test", subject="Wire transfer", body=BODY)),
        TestMail("dmarc-quarantine", "bounce@good.test", rcpts,
                 _message("dmarc-quarantine", "billing@dmarc-quarantine.test", subject="Invoice", body=BODY)),
        TestMail("filter-rewrite", "alice@sign.test", ("bob@recipient.test", "removed@recipient.test"),
                 _message("filter-rewrite", "alice@sign.test", subject="Report", body=BODY,
                          extra="X-Milterman-Test: rewrite\r\nX-Milterman-Remove: yes\r\n")),
        TestMail("filter-quarantine", "alice@sign.test", rcpts,
                 _message("filter-quarantine", "alice@sign.test", subject="Hold me", body=BODY,
                          extra="X-Milterman-Test: quarantine\r\n")),
        TestMail("filter-discard", "alice@sign.test", rcpts,
                 _message("filter-discard", "alice@sign.test", subject="Drop me", body=BODY,
                          extra="X-Milterman-Test: discard\r\n")),
        TestMail("filter-tempfail", "alice@sign.test", rcpts,
                 _message("filter-tempfail", "alice@sign.test", subject="Later", body=BODY,
                          extra="X-Milterman-Test: tempfail\r\n")),
    ]
    return {mail.name: mail for mail in mails}
