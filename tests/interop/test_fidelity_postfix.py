"""Behind Postfix the manager delivers the mail Postfix delivers chaining the same milters (D-16,
M-EOM-2, M-EOM-3, P-MOD-4): scripted libmilter milters doing the edits of issue 9 (fidelity.SCENARIOS),
once listed in smtpd_milters, once behind the manager, compared header by header (order, position
relative to Postfix's own Received:), body bytes, envelope, and what the last milter saw."""

from __future__ import annotations

import pytest
from fidelity import SCENARIOS, check, compare
from milter_processes import pymilter_usable
from postfix_harness import require_real


@pytest.mark.interop
@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_D_16_same_mail_as_postfix_chaining_the_milters(tmp_path, smtp_sink, postfix_factory, scenario):
    require_real("python3-milter", *pymilter_usable())
    chain, manager = compare(tmp_path, smtp_sink, lambda specs: postfix_factory(specs), "postfix", scenario)
    check(scenario, "postfix", manager)
