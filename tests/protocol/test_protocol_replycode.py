"""SMFIR_REPLYCODE texts: parsing (MTA side) and formatting (milter side), section 8 (P-CODE-*)."""

from __future__ import annotations

import pytest

from milterman.protocol import (LocalProtocolError, MalformedPacket, ReplyCode, format_reply_text,
                                parse_reply_text, unescape_percent)


# ---------------------------------------------------------------------------------------------------------
# parsing


def test_parse_single_line_with_enhanced_code_P_CODE_2_P_CODE_4():
    parsed = parse_reply_text("550 5.7.1 Spam detected")
    assert (parsed.code, parsed.xcode, parsed.lines) == ("550", "5.7.1", ("Spam detected",))
    assert parsed.message == "Spam detected"


def test_parse_without_enhanced_code_is_legal_P_CODE_4():
    parsed = parse_reply_text("550 Rejected")
    assert (parsed.code, parsed.xcode, parsed.lines) == ("550", None, ("Rejected",))
    assert parse_reply_text("451").code == "451"


@pytest.mark.parametrize("text", ["250 2.0.0 OK", "354 go ahead", "199 x", "650 x", "55 x", "5x0 x", "", "x550 y",
                                  " 550 x"])
def test_parse_refuses_codes_outside_4xx_5xx_P_CODE_2_P_BAD_40(text):
    with pytest.raises(MalformedPacket):
        parse_reply_text(text)


@pytest.mark.parametrize("text", ["550 4.7.1 mixed classes", "450 5.7.1 mixed", "550 2.0.0 success?",
                                  "550-5.7.1 a\r\n550 4.7.1 b"])
def test_parse_refuses_class_mismatch_P_CODE_4_P_BAD_40(text):
    with pytest.raises(MalformedPacket):
        parse_reply_text(text)


def test_parse_fifth_character_digit_must_match_class_P_CODE_2():
    """Postfix: a digit in the 5th position must equal the first digit, even without a full x.y.z."""
    with pytest.raises(MalformedPacket):
        parse_reply_text("550 4 things went wrong")
    assert parse_reply_text("550 5 things went wrong").xcode is None


def test_parse_multi_line_P_CODE_5():
    text = ("550-5.7.0 Spammer access rejected\r\n550-5.7.0 Please see our policy at:\r\n"
            "550 5.7.0 http://www.example.com/policy")
    parsed = parse_reply_text(text)
    assert parsed.code == "550" and parsed.xcode == "5.7.0"
    assert parsed.lines == ("Spammer access rejected", "Please see our policy at:", "http://www.example.com/policy")


@pytest.mark.parametrize("text, rule", [
    ("550-5.7.1 first\r\n550-5.7.1 second", "P-CODE-5"),          # last line uses '-'
    ("550 5.7.1 first\r\n550 5.7.1 second", "P-CODE-5"),          # a non-last line uses ' '
    ("550-5.7.1 first\r\n551 5.7.1 second", "P-CODE-5"),          # code not repeated
    ("550-5.7.1 first\r\n450 4.7.1 second", "P-CODE-5"),
    ("550 5.7.1 done\r\n", "P-CODE-5"),                           # CRLF after the last line
    ("550 5.7.1 bare\nLF", "P-CODE-7"),
    ("550 5.7.1 bare\rCR", "P-CODE-7"),
    ("550 5.7.1 nul\0inside", "P-BAD-40"),
])
def test_parse_refuses_bad_multi_line_forms_P_CODE_5_P_CODE_7(text, rule):
    with pytest.raises(MalformedPacket) as error:
        parse_reply_text(text)
    assert error.value.rule == rule


def test_reply_code_decision_follows_first_digit_P_CODE_3():
    assert ReplyCode("451 4.3.2 later").is_temporary is True
    assert ReplyCode("421 4.7.0 closing").is_temporary is True
    assert ReplyCode("550 5.7.1 no").is_temporary is False
    assert ReplyCode("550 5.7.1 no").code == "550"


# ---------------------------------------------------------------------------------------------------------
# percent signs (P-CODE-6, P-BAD-41)


@pytest.mark.parametrize("wire, seen", [
    ("550 5.7.1 100%% sure", "550 5.7.1 100% sure"),
    ("550 5.7.1 50% off", "550 5.7.1 50 off"),          # lone % dropped
    ("550 5.7.1 %", "550 5.7.1 "),
    ("550 5.7.1 %%%", "550 5.7.1 %"),
    ("550 5.7.1 %%%%", "550 5.7.1 %%"),
    ("550 5.7.1 no percent", "550 5.7.1 no percent"),
])
def test_unescape_percent_P_CODE_6_P_BAD_41(wire, seen):
    assert unescape_percent(wire) == seen
    assert ReplyCode(wire).smtp_text == seen


def test_lone_percent_text_is_still_a_valid_reply_P_BAD_41():
    assert parse_reply_text("550 5.7.1 50% off").lines == ("50% off",)


# ---------------------------------------------------------------------------------------------------------
# formatting (our milter side)


def test_format_always_adds_an_enhanced_code_P_CODE_4():
    assert format_reply_text(550, None, "Rejected") == "550 5.0.0 Rejected"
    assert format_reply_text("451", None, "later") == "451 4.0.0 later"
    assert format_reply_text(550, "5.7.1", "Spam") == "550 5.7.1 Spam"
    assert format_reply_text(550, None, "") == "550 5.0.0"


def test_format_doubles_percent_P_CODE_6():
    text = format_reply_text(550, "5.7.1", "100% sure, 50%% off")
    assert text == "550 5.7.1 100%% sure, 50%%%% off"
    assert unescape_percent(text) == "550 5.7.1 100% sure, 50%% off"


def test_format_multi_line_P_CODE_5():
    expected = "550-5.7.0 one\r\n550-5.7.0 two\r\n550 5.7.0 three"
    assert format_reply_text(550, "5.7.0", ["one", "two", "three"]) == expected
    assert format_reply_text(550, "5.7.0", "one\ntwo\nthree") == expected
    assert format_reply_text(550, "5.7.0", "one\r\ntwo\r\nthree") == expected
    assert parse_reply_text(expected).lines == ("one", "two", "three")


@pytest.mark.parametrize("code", [250, 354, "2xx", "5500", 600, "55"])
def test_format_refuses_codes_outside_4xx_5xx_P_CODE_2(code):
    with pytest.raises(LocalProtocolError):
        format_reply_text(code, None, "text")


@pytest.mark.parametrize("code, xcode", [(550, "4.7.1"), (451, "5.7.1"), (550, "2.0.0"), (550, "5.7"),
                                         (550, "5.1000.1"), (550, "x.y.z")])
def test_format_refuses_bad_or_mismatching_enhanced_code_P_CODE_4(code, xcode):
    with pytest.raises(LocalProtocolError):
        format_reply_text(code, xcode, "text")


@pytest.mark.parametrize("lines", [["a\rb"], ["a\nb"], ["nul\0"], ["x" * 981], ["l"] * 33])
def test_format_refuses_text_restrictions_P_CODE_5_P_CODE_7(lines):
    with pytest.raises(LocalProtocolError):
        format_reply_text(550, "5.7.1", lines)


def test_format_limits_are_inclusive_P_CODE_5_P_CODE_7():
    assert len(format_reply_text(550, "5.7.1", ["x" * 980]).split("\r\n")) == 1
    assert len(format_reply_text(550, "5.7.1", ["l"] * 32).split("\r\n")) == 32
