"""A Python condition behind real Postfix: it stops a child for the recipients of one domain.

The child is ``milters/pymilter_header_reject.py`` (python3-milter), which adds
``X-Pymilter: checked`` to every message it sees to the end. The condition
(``[[condition]] python = "…:SkipDomain"``) stops it at envelope-recipient for recipients
in ``stopped.example.net``: mail to that domain arrives without the header, mail to
any other domain with it, and the child's own log shows it never saw the stopped
recipient. Run with the manager serving in its master process and with two workers.
"""

from __future__ import annotations

import textwrap
import uuid

import pytest

from manager_processes import ManagerProcess
from milter_processes import PymilterProcess, pymilter_usable
from postfix_harness import require_real
from test_manager_postfix import SMALL_BODY, make_message, settle, start_postfix

pytestmark = pytest.mark.interop

CONDITION = '''
class SkipDomain:
    """Stop the child for recipients of stopped.example.net."""

    def envelope_recipient(self, facts):
        return facts.envelope_recipient.lower().endswith("@stopped.example.net>")
'''


@pytest.mark.parametrize("n_workers", [0, 2], ids=lambda n: f"n_workers={n}")
def test_python_condition_keeps_the_child_away_from_one_domain(tmp_path, monkeypatch, postfix_factory, smtp_sink,
                                                                n_workers):
    usable, reason = pymilter_usable()
    require_real("python3-milter", usable, reason)
    module = f"site_condition_{uuid.uuid4().hex[:12]}"
    (tmp_path / f"{module}.py").write_text(textwrap.dedent(CONDITION))
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))  # the manager imports the site's module
    child = PymilterProcess(tmp_path)
    manager = None
    try:
        manager = ManagerProcess(
            tmp_path, [{"name": "pymilter", "connection_spec": child.spec, "applicable_conditions": ["by-domain"]}],
            n_workers=n_workers,
            extra_toml=f'[[condition]]\nname = "by-domain"\npython = "{module}:SkipDomain"\n')
        mta = start_postfix(postfix_factory, manager)
        mails = [("alice@example.org", "bob@stopped.example.net", "stopped"),
                 ("alice@example.org", "carol@example.net", "kept"),
                 ("dave@example.org", "erin@Stopped.Example.Net", "stopped too")]
        for sender, rcpt, subject in mails:
            result = mta.send(sender, [rcpt], make_message(sender, [rcpt], subject, SMALL_BODY))
            assert result.accepted, f"{result}\n{manager.describe()}"
        delivered = settle(mta, smtp_sink, 3, manager)
        by_subject = {message.header("Subject"): message for message in delivered}
        assert by_subject["kept"].header("X-Pymilter") == "checked"
        assert by_subject["stopped"].header("X-Pymilter") is None, by_subject["stopped"].data[:2000]
        assert by_subject["stopped too"].header("X-Pymilter") is None
        assert by_subject["kept"].rcpt_tos == ("carol@example.net",)
        seen = child.log_path.read_text() if child.log_path.exists() else ""
        assert "carol@example.net" in seen
        assert "stopped.example.net" not in seen.lower(), seen
        assert "[condition][error]" not in manager.log()
    finally:
        if manager is not None:
            assert manager.stop() == 0
        child.stop()
