"""Behind Sendmail the manager delivers the mail Sendmail delivers chaining the same milters (D-16,
M-EOM-2, M-EOM-3, P-MOD-4): scripted libmilter milters doing the edits of issue 9, once listed in
INPUT_MAIL_FILTER, once behind the manager, compared header by header (order, position relative to
Sendmail's own Received:), body bytes and envelope."""

from __future__ import annotations

import pytest
from fidelity import compare, own_received
from milter_processes import pymilter_usable
from postfix_harness import require_real


@pytest.fixture
def start_sendmail(sendmail_factory):
    require_real("python3-milter", *pymilter_usable())
    return lambda specs: sendmail_factory(specs)


@pytest.mark.interop
def test_D_16_lower_case_delete_of_authentication_results(tmp_path, smtp_sink, start_sendmail):
    chain, manager = compare(tmp_path, smtp_sink, start_sendmail, "sendmail", "delete-lowercase")
    values = [value for name, value in manager.delivered.headers if name == "Authentication-Results"]
    assert values == ["forged.example; spf=pass"]


@pytest.mark.interop
def test_D_16_replaced_body_reaches_the_next_milter_with_crlf(tmp_path, smtp_sink, start_sendmail):
    chain, manager = compare(tmp_path, smtp_sink, start_sendmail, "sendmail", "body-lf")
    assert manager.seen["body"] == "replaced by a filter\r\nsecond line\r\n"
    assert manager.delivered.body == b"replaced by a filter\r\nsecond line\r\n"
    # the verbose log; Sendmail gets the bytes the child sent (it applies its own line-end rules)
    log = manager.manager_log
    assert "[manager][modification][child] [m1] replace-body length=33" in log
    assert "[manager][modification][child] [m2] insert-header <DKIM-Like> index=0 value-length=47" in log
    assert "[manager][modification][mta] replace-body length=33" in log
    assert "[manager][modification][mta] insert-header <DKIM-Like> index=0 value-length=47" in log
    assert "second line" not in log


@pytest.mark.interop
def test_D_16_delete_then_add_of_the_same_name(tmp_path, smtp_sink, start_sendmail):
    chain, manager = compare(tmp_path, smtp_sink, start_sendmail, "sendmail", "delete-then-add")
    names = [name for name, _ in manager.delivered.headers]
    assert names[-2:] == ["X-Spam-Status", "X-Later"]  # where the deleted one was


@pytest.mark.interop
def test_P_MOD_4_headers_inserted_at_index_0_land_above_sendmails_received(tmp_path, smtp_sink, start_sendmail):
    chain, manager = compare(tmp_path, smtp_sink, start_sendmail, "sendmail", "insert-0")
    first = manager.delivered.headers[:3]
    assert [name for name, _ in first] == ["Authentication-Results", "DKIM-Signature", "Received"]
    assert own_received(first[2][1])
