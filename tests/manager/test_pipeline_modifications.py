"""The pipeline applies and reports modifications by the MTA's rules (D-16, M-EOM-2, M-BODY-3, P-MOD-4),
in process: real children over in-memory clients (session_support), the MTA side recording its packets."""

from __future__ import annotations

import io

import pytest
from session_support import HEADERS, MtaSide, Port, child

import milterman.manager.session.pipeline as pipeline_module
from milterman.log import DEBUG, DEFAULT, Logger
from milterman.manager.context import ManagerContext
from milterman.manager.session.pipeline import MessagePipeline
from milterman.protocol import (CONTINUE, END_OF_HEADER, AddHeader, Body, ChangeHeader, EndOfMessage, Header,
                                InsertHeader, ReplaceBody)

LF_BODY = b"replaced\nby a filter\n"


def run(*children, postfix: bool, level: int = DEFAULT) -> tuple[MtaSide, str]:
    mta = MtaSide()
    if postfix:
        mta.macros.define("C", (("v", "Postfix 3.7.11"),))
    stream = io.StringIO()
    port = Port(list(children))
    pipeline = MessagePipeline(port, mta, ManagerContext(chunk_size=65535, logger=Logger(level, stream=stream)))
    port.pipeline = pipeline
    pipeline.start(port.children)
    for name, value in HEADERS:
        pipeline.header(Header(name, value))
    pipeline.end_of_header(END_OF_HEADER)
    pipeline.body(Body(b"original\r\n"))
    assert pipeline.end_of_message(EndOfMessage()) == CONTINUE
    return mta, stream.getvalue()


def body_seen(made) -> bytes:
    return b"".join(command.chunk for command in made.client.commands if command.LETTER == "B")


@pytest.mark.parametrize("postfix", [True, False])
def test_D_16_M_BODY_3_a_replaced_body_reaches_the_next_child_with_crlf(postfix):
    c1 = child("c1", {"E": [ReplaceBody(LF_BODY), CONTINUE]})
    c2 = child("c2")
    mta, _ = run(c1, c2, postfix=postfix)
    assert body_seen(c2) == b"replaced\r\nby a filter\r\n"
    # Postfix gets the body as it passes it on; Sendmail the child's bytes, which it converts itself
    assert mta.queued[0] == ReplaceBody(b"replaced\r\nby a filter\r\n" if postfix else LF_BODY)


def test_D_16_P_MOD_4_insert_at_0_stays_at_0_and_lower_case_delete_matches():
    c1 = child("c1", {"E": [InsertHeader(0, "DKIM-Signature", "v=1"), ChangeHeader(1, "subject", ""), CONTINUE]})
    c2 = child("c2")
    mta, _ = run(c1, c2, postfix=True)
    assert [command.name for command in c2.client.commands if command.LETTER == "L"] == ["DKIM-Signature", "From"]
    assert mta.queued == [ChangeHeader(1, "Subject", ""), InsertHeader(0, "DKIM-Signature", "v=1")]


def test_debug_level_logs_each_request_and_each_edit_sent_never_the_values_or_the_body():
    c1 = child("c1", {"E": [ReplaceBody(LF_BODY), AddHeader("X-Secret", "value"), CONTINUE]})
    _, log = run(c1, child("c2"), postfix=True, level=DEFAULT | DEBUG)
    assert "[c1] replace-body length=21" in log and "[c1] add-header <X-Secret> value-length=5" in log
    assert "[manager][modification][mta] replace-body length=23" in log
    assert "[manager][modification][mta] add-header <X-Secret> value-length=5" in log
    assert "filter" not in log and "value\n" not in log and "<X-Secret>=<value>" in log  # the statistics line only


def test_no_modification_line_is_formatted_below_the_debug_level(monkeypatch):
    def refuse(modification):
        raise AssertionError(f"formatted at a disabled level: {modification!r}")

    monkeypatch.setattr(pipeline_module, "describe", refuse)
    c1 = child("c1", {"E": [ReplaceBody(LF_BODY), AddHeader("X-A", "a"), CONTINUE]})
    mta, log = run(c1, child("c2"), postfix=True)
    assert AddHeader("X-A", "a") in mta.queued and "[manager][modification]" not in log
