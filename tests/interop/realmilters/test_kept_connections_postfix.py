"""The real milters with their connections kept across SMTP sessions (``reuse_connection``, P-CMD-14).

Every child of a third Postfix's manager has ``reuse_connection = true``: at the end of each SMTP
session it gets ``K`` instead of ``Q`` and the next session takes the same connection without a
new negotiation. Each mail goes through twice (the second time every child that took ``K`` well
is on a kept connection) and must come out as it does from Postfix's own chain. The manager's log
then says that every one of the nine milters was taken on a kept connection; one that does not
take ``K`` is named once and not kept again, and its mail is still equal: the stage went on on a
fresh connection. On Debian 12 pyspf-milter, dkimpy-milter, spamass-milter and rspamd take it;
opendkim (verifying and signing), opendmarc, clamav-milter and MIMEDefang stay silent after it
(libmilter itself takes it: bench/cmilter.c does).
"""

from __future__ import annotations

import re

import pytest
from rig import assert_same, observe

pytestmark = pytest.mark.interop

#: the mails of test_chain_vs_manager_postfix.py whose outcome must be equal
SAME = ["clean", "gtube", "virus", "forged-spf", "dkim-inbound", "dmarc-reject", "filter-rewrite",
        "filter-discard", "filter-tempfail"]


@pytest.mark.parametrize("name", SAME)
def test_kept_connections_deliver_what_the_postfix_chain_delivers(realmilters, name):
    """D-16 with kept connections: the same mail twice, both times equal to the chain's."""
    manager, postfix = realmilters.kept()
    mail = realmilters.mails[name]
    chained = observe(realmilters.chain, realmilters.sink, realmilters.sandbox, mail)
    for _ in range(2):
        log_start = len(manager.log())
        kept = observe(postfix, realmilters.sink, realmilters.sandbox, mail)
        kept.manager_log = manager.log()[log_start:]
        assert_same(chained, kept)


def test_every_real_milter_serves_sessions_on_kept_connections(realmilters):
    """After the mails above: each child was taken on a kept connection; one that did not answer there
    (it does not take ``K``) is named once and not kept again, so the mails above stayed equal."""
    manager, postfix = realmilters.kept()
    for _ in range(2):
        observe(postfix, realmilters.sink, realmilters.sandbox, realmilters.mails["clean"])
    log = manager.log()
    names = [child["name"] for child in realmilters.children()]
    reused = {name: len(re.findall(rf"\[manager\]\[child\]\[reuse\] \[{re.escape(name)}\] a kept connection$",
                                   log, re.MULTILINE)) for name in names}
    assert all(reused.values()), reused
    refused = re.findall(r"\[manager\]\[child\]\[reuse\] \[([^\]]+)\] a kept connection (?!$)(.*)", log)
    print(f"kept connections taken per child: {reused}; not taking K: {refused}")
    assert len({name for name, _ in refused}) == len(refused), refused  # each said once
    for name, why in refused:
        assert "no longer kept in this process" in why, (name, why)
        said = log.index(f"[manager][child][reuse] [{name}] a kept connection {why}")
        assert f"[manager][child][reuse] [{name}] a kept connection\n" not in log[said:], name  # never taken again
    assert {"pyspf-milter", "dkimpy-milter", "spamass-milter", "rspamd"} <= {
        name for name in names if name not in dict(refused)}, refused  # these take K
    assert "[manager][child][error]" not in log, manager.describe()
