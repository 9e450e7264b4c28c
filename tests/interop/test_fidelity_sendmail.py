"""Behind Sendmail the manager delivers the mail Sendmail delivers chaining the same milters (D-16,
M-EOM-2, M-EOM-3, P-MOD-4): scripted libmilter milters doing the edits of issue 9 (fidelity.SCENARIOS),
once listed in INPUT_MAIL_FILTER, once behind the manager, compared header by header (order, position
relative to Sendmail's own Received:), body bytes, envelope, and what the last milter saw."""

from __future__ import annotations

import pytest
from fidelity import SCENARIOS, check, compare
from milter_processes import pymilter_usable
from postfix_harness import require_real


@pytest.mark.interop
@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_D_16_same_mail_as_sendmail_chaining_the_milters(tmp_path, smtp_sink, sendmail_factory, scenario):
    require_real("python3-milter", *pymilter_usable())
    chain, manager = compare(tmp_path, smtp_sink, lambda specs: sendmail_factory(specs), "sendmail", scenario)
    check(scenario, "sendmail", manager)
