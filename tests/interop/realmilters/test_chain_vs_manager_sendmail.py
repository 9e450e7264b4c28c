"""A subset of the real-milter mails through Sendmail: its own chain vs Sendmail → milter-manager.

Sendmail (unpacked from Debian's packages by sendmail_harness.py, run in the sandbox's network)
lists the same nine milters with ``INPUT_MAIL_FILTER`` in the same order; a second instance has
only milter-manager.  Sendmail differs from Postfix in what the manager must reproduce (D-16): a
header deleted and added again by one child (rspamd replacing SpamAssassin's ``X-Spam-Status``)
takes the deleted one's place, and Sendmail's own ``Received:`` is not counted in insert indexes.
Both instances send macro ``v`` at connect, which is how the manager tells Sendmail from Postfix.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import rig
from rig import assert_same, explain
from postfix_harness import require_real
from sendmail_harness import SendmailInstance, sendmail_usable

pytestmark = pytest.mark.interop

SUBSET = ["clean", "dkim-inbound", "filter-rewrite"]
#: Sendmail's default connect macros plus ``v`` (the MTA's name and version).
CONNECT_MACROS = "j, _, {daemon_name}, {if_name}, {if_addr}, v"
#: The test client (192.0.2.10) may relay to the recipient domains.
RELAY = "RELAY_DOMAIN(`recipient.test')dnl"


class SendmailPair:
    def __init__(self, realmilters) -> None:
        self.realmilters = realmilters
        self.instances: list[SendmailInstance] = []
        specs = [m.sendmail_spec for m in realmilters.milters]
        self.chain = self._start("chain", specs)
        self.managed = self._start("manager", [f"inet:{realmilters.manager.port}@127.0.0.1"])

    def _start(self, name: str, milters: list[str]) -> SendmailInstance:
        directory = Path(tempfile.mkdtemp(prefix=f"sendmail-{name}-", dir=self.realmilters.directory))
        os.chmod(directory, 0o755)
        instance = SendmailInstance(directory, milters, self.realmilters.sink.port, milter_timeouts=(10, 60, 60, 120),
                                    milter_macros={"CONNECT": CONNECT_MACROS}, extra_mc=RELAY)
        self.instances.append(instance)
        instance.start()
        return instance

    def run(self, name: str) -> tuple[rig.Outcome, rig.Outcome]:
        mail = self.realmilters.mails[name]
        sink, sandbox = self.realmilters.sink, self.realmilters.sandbox
        chained = rig.observe_sendmail(self.chain, sink, sandbox, mail)
        start = len(self.realmilters.manager.log())
        managed = rig.observe_sendmail(self.managed, sink, sandbox, mail)
        managed.manager_log = self.realmilters.manager.log()[start:]
        return chained, managed

    def stop(self) -> None:
        for instance in self.instances:
            instance.stop()


@pytest.fixture(scope="module")
def sendmail_pair(realmilters) -> Iterator[SendmailPair]:
    usable, reason = sendmail_usable()
    require_real("sendmail", usable, reason)
    pair = SendmailPair(realmilters)
    try:
        yield pair
    finally:
        pair.stop()


@pytest.mark.parametrize("name", SUBSET)
def test_the_manager_delivers_what_the_sendmail_chain_delivers(sendmail_pair, name):
    """D-16 on Sendmail: fate, replies, envelope, headers in order, body and DKIM all equal."""
    chained, managed = sendmail_pair.run(name)
    context = explain(chained, managed)
    assert chained.fate == "delivered", context
    assert_same(chained, managed)
    if name == "clean":
        # rspamd deleted SpamAssassin's X-Spam-Status and added its own: Sendmail puts it in the old place
        names = [n for n, _ in chained.headers]
        assert names.index("X-Spam-Status") < names.index("X-Virus-Scanned"), context
