"""The one stage table (P-CMD-0, P-NEG-6, P-NEG-11, P-NEG-13, P-SM-1, P-SM-6, C-TOML-5).

The table is checked against the wire facts it encodes (command classes, flag words,
SMFIM numbers), so a typo in one row fails here rather than in a session.
"""

from __future__ import annotations

import ast
import pathlib

import pytest

import milterman
from milterman.protocol import COMMAND_TYPES, MacroStage, Step
from milterman.protocol import stages
from milterman.protocol.flags import NO_REPLY_STEPS, SKIP_STEPS


def test_stage_names_in_protocol_order_C_TOML_5():
    assert stages.NAMES == ("connect", "helo", "envelope-from", "envelope-recipient", "data", "unknown", "header",
                            "end-of-header", "body", "end-of-message")
    assert stages.LETTERS == "CHMRTULNBE"
    assert stages.STAGE_NAMES["O"] == "negotiate"
    assert all(stages.STAGE_LETTERS[stages.STAGE_NAMES[letter]] == letter for letter in stages.LETTERS)


def test_every_stage_letter_is_a_command_P_CMD_0():
    for stage in stages.STAGES:
        assert stage.letter in COMMAND_TYPES
    assert stages.BY_LETTER["M"].name == "envelope-from" and stages.BY_NAME["body"].letter == "B"


def test_handler_methods_are_the_names_with_underscores():
    assert stages.HANDLER_METHODS == {"C": "connect", "H": "helo", "M": "envelope_from", "R": "envelope_recipient",
                                      "T": "data", "U": "unknown", "L": "header", "N": "end_of_header",
                                      "B": "body", "E": "end_of_message"}


def test_skip_and_no_reply_bits_cover_the_flag_words_P_NEG_6_P_NEG_11():
    assert stages.ALL_SKIP_BITS == int(SKIP_STEPS)
    assert sum(stages.NO_REPLY_BITS.values()) == int(NO_REPLY_STEPS)
    assert stages.SKIP_BITS["L"] == Step.NO_HEADERS and stages.NO_REPLY_BITS["L"] == Step.NO_REPLY_HEADER
    assert "E" not in stages.SKIP_BITS and "E" not in stages.NO_REPLY_BITS  # end of message is always answered
    assert stages.EVENT_FLAGS["T"] == (int(Step.NO_DATA), int(Step.NO_REPLY_DATA), 4)
    assert stages.EVENT_FLAGS["U"][2] == 3


def test_macro_stage_numbers_P_NEG_13():
    assert stages.MACRO_STAGE_LETTERS == {MacroStage.CONNECT: "C", MacroStage.HELO: "H", MacroStage.MAIL: "M",
                                          MacroStage.RCPT: "R", MacroStage.DATA: "T",
                                          MacroStage.END_OF_MESSAGE: "E", MacroStage.END_OF_HEADER: "N"}
    assert stages.MACRO_LETTER_STAGES["N"] == 6 and stages.MACRO_LETTER_STAGES["E"] == 5
    # stages without a list of their own borrow the nearest earlier one (M-MAC-3)
    assert {letter: stages.MACRO_LIST_LETTERS[letter] for letter in "ULB"} == {"U": "C", "L": "T", "B": "N"}
    assert all(stages.MACRO_LIST_LETTERS[letter] in stages.MACRO_LETTER_STAGES for letter in stages.LETTERS)


def test_message_steps_and_refusals_P_SM_1_P_SM_6():
    assert stages.MESSAGE_STEPS == {"M": (1, False), "R": (2, True), "T": (3, False), "L": (4, True),
                                    "N": (5, False), "B": (6, True), "E": (7, False)}
    assert stages.END_OF_MESSAGE_STEP == 7
    assert {stage.letter for stage in stages.STAGES if stage.refusal == "connection"} == {"C", "H"}
    assert stages.BY_LETTER["R"].refusal == "recipient" and stages.BY_LETTER["U"].refusal == "nothing"
    assert [stage.letter for stage in stages.STAGES if not stage.discard_allowed] == ["C", "H", "U"]  # P-RPL-6
    assert stages.CONTENT_LETTERS == frozenset("LNBE") and stages.ENVELOPE_LETTERS == frozenset("CHMRTU")


def test_stage_name_lookup():
    assert stages.stage_name("R") == "envelope-recipient"
    assert stages.stage_name("K") == "K" and stages.stage_name("K", "start") == "start"


PACKAGE = pathlib.Path(milterman.__file__).parent
_WORDS = {stage.name for stage in stages.STAGES} | {stage.handler for stage in stages.STAGES}


def stage_tables(path: pathlib.Path) -> list[int]:
    """Lines of literals that spell out the stage vocabulary: a dict pairing three or more stage letters with
    stage or handler names (either way round), or a sequence of three or more stage names."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Dict):
            pairs = [(key.value, value.value) for key, value in zip(node.keys, node.values, strict=True)
                     if isinstance(key, ast.Constant) and isinstance(value, ast.Constant)]
            if sum((a in stages.BY_LETTER and b in _WORDS) or (b in stages.BY_LETTER and a in _WORDS)
                   for a, b in pairs) >= 3:
                found.append(node.lineno)
        elif isinstance(node, (ast.Tuple, ast.List, ast.Set)):
            if sum(isinstance(item, ast.Constant) and item.value in _WORDS for item in node.elts) >= 3:
                found.append(node.lineno)
    return found


@pytest.mark.parametrize("relative", ["protocol", "net", "manager/child.py", "config/predicates.py", "tools"])
def test_the_stage_table_is_spelled_out_once(relative):
    """Issue 11 item 1: these modules read protocol/stages.py and write no stage table of their own."""
    root = PACKAGE / relative
    files = [root] if root.is_file() else sorted(root.rglob("*.py"))
    offenders = [f"{path.relative_to(PACKAGE)}:{line}" for path in files if path.name != "stages.py"
                 for line in stage_tables(path)]
    assert offenders == []


def test_the_check_finds_a_stage_table(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text('NAMES = {"C": "connect", "H": "helo", "M": "envelope-from"}\n'
                      'ORDER = ("connect", "helo", "data")\nOTHER = {"C": 1, "connect": "x"}\n')
    assert stage_tables(sample) == [1, 2]
    assert stage_tables(PACKAGE / "protocol" / "stages.py") == []  # the table is built, not spelled out
