"""Message state of the manager: the MTA's header rules, the edits sent to it and the body buffer
(D-16, M-EOM-2, M-EOM-3, P-MOD-4, M-BODY-1, M-BODY-3).

The expectations of the header and body rules are what Postfix 3.7 and Sendmail 8.17 did with
scripted milters chained behind them (tests/interop/test_fidelity_*.py repeat them with the MTAs).
"""

from __future__ import annotations

import random

import pytest

from milterman.manager.message import POSTFIX, SENDMAIL, BodyBuffer, Headers, describe, header_edits, passed_on
from milterman.protocol import AddHeader, ChangeHeader, InsertHeader, ReplaceBody

ORIGINAL = [("Received", "upstream"), ("From", "a"), ("To", "b"), ("Subject", "s"), ("X-Spam-Status", "old"),
            ("Authentication-Results", "one"), ("X-Dup", "1"), ("Authentication-Results", "two"), ("X-Dup", "2")]
OWN = ("Received", "(the MTA's own)")


def mta(kind: str) -> Headers:
    headers = Headers(ORIGINAL)
    headers.begin_edits(kind)
    return headers


def chain(kind: str, *children: list[tuple]) -> Headers:
    """Apply each child's requests as the MTA does, a child after the other."""
    headers = mta(kind)
    for requests in children:
        for request in requests:
            getattr(headers, request[0])(*request[1:])
        headers.end_child()
    return headers


def names(headers: Headers) -> list[str]:
    return [f"{name}:{value}" for name, value in headers.delivered()]


def replay(kind: str, edits) -> Headers:
    """The MTA applying the manager's edits (one milter: no end_child in between)."""
    headers = mta(kind)
    for edit in edits:
        if isinstance(edit, AddHeader):
            headers.add(edit.name, edit.value)
        elif isinstance(edit, InsertHeader):
            headers.insert(edit.index, edit.name, edit.value)
        else:
            headers.change(edit.name, edit.index, edit.value)
    return headers


@pytest.mark.parametrize("kind", [POSTFIX, SENDMAIL])
def test_D_16_change_and_delete_match_names_in_any_case(kind):
    headers = chain(kind, [("change", "authentication-results", 1, "")], [("change", "subject", 1, "new")])
    assert ("Authentication-Results", "one") not in headers.items
    assert ("Authentication-Results", "two") in headers.items
    spelling = "subject" if kind == POSTFIX else "Subject"  # Postfix takes the milter's spelling
    assert (spelling, "new") in headers.items


def test_D_16_a_delete_then_an_add_lands_in_the_deleted_place_behind_sendmail_only():
    for children in ([("change", "x-spam-status", 1, ""), ("add", "X-Spam-Status", "new")],), (
            [("change", "X-Spam-Status", 1, "")], [("add", "X-Spam-Status", "new")]):
        sendmail = chain(SENDMAIL, *children)
        assert sendmail.items[4] == ("X-Spam-Status", "new")
        postfix = chain(POSTFIX, *children)
        assert postfix.items[-1] == ("X-Spam-Status", "new")


def test_P_MOD_4_insert_index_counts_the_mtas_own_received_and_sendmails_default_slots():
    assert names(chain(POSTFIX, [("insert", 0, "X-Zero", "z")]))[:2] == ["X-Zero:z", "Received:(the MTA's own)"]
    assert names(chain(SENDMAIL, [("insert", 0, "X-Zero", "z")]))[:2] == ["X-Zero:z", "Received:(the MTA's own)"]
    assert names(chain(POSTFIX, [("insert", 5, "X-Five", "f")]))[4:6] == ["Subject:s", "X-Five:f"]
    # Sendmail: 7 default-header slots sit between its Received: and the message's first header
    assert names(chain(SENDMAIL, [("insert", 5, "X-Five", "f")]))[1] == "X-Five:f"
    assert names(chain(SENDMAIL, [("insert", 11, "X-Ins", "i")]))[4] == "X-Ins:i"  # after To:


def test_sendmail_add_goes_before_the_first_header_of_that_name_postfix_appends():
    assert chain(SENDMAIL, [("add", "Subject", "second")]).items[3] == ("Subject", "second")
    assert chain(POSTFIX, [("add", "Subject", "second")]).items[-1] == ("Subject", "second")


def test_sendmail_deleted_headers_count_within_the_milter_not_after_it():
    same = chain(SENDMAIL, [("change", "X-Dup", 1, ""), ("change", "X-Dup", 2, "")])
    assert [name for name, _ in same.items].count("X-Dup") == 0
    later = chain(SENDMAIL, [("change", "X-Dup", 1, "")], [("change", "X-Dup", 2, "")])
    assert ("X-Dup", "2") in later.items
    postfix = chain(POSTFIX, [("change", "X-Dup", 1, ""), ("change", "X-Dup", 2, "")])
    assert ("X-Dup", "2") in postfix.items


@pytest.mark.parametrize("kind", [POSTFIX, SENDMAIL])
def test_M_EOM_3_edits_reproduce_the_list_on_the_mta(kind):
    headers = mta(kind)
    original = headers.snapshot()
    headers.change("Subject", 1, "changed")
    headers.change("x-dup", 1, "")
    headers.insert(0, "DKIM-Signature", "d")
    headers.add("X-C2", "v")
    edits = header_edits(original, headers)
    assert replay(kind, edits).delivered() == headers.delivered()
    assert edits[0] == ChangeHeader(1, "Subject", "changed")
    assert edits[1] == ChangeHeader(1, "X-Dup", "")
    assert InsertHeader(0, "DKIM-Signature", "d") in edits
    assert edits[-1] == AddHeader("X-C2", "v")


@pytest.mark.parametrize("kind", [POSTFIX, SENDMAIL])
def test_M_EOM_3_random_chains_reach_the_mta_unchanged(kind):
    """Any chain of requests: the edits sent make the MTA's list equal the manager's (1000 chains)."""
    rng = random.Random(16)
    pool = ["Subject", "subject", "X-Dup", "x-dup", "Authentication-Results", "X-New", "Received", "Date", "From"]
    for _ in range(1000):
        headers = mta(kind)
        original = headers.snapshot()
        for _child in range(rng.randint(1, 3)):
            for _request in range(rng.randint(0, 4)):
                verb = rng.choice(["add", "insert", "change", "delete"])
                name = rng.choice(pool)
                if verb == "add":
                    headers.add(name, f"v{rng.random():.3f}")
                elif verb == "insert":
                    headers.insert(rng.randint(0, 14), name, f"v{rng.random():.3f}")
                else:
                    headers.change(name, rng.randint(0, 3), "" if verb == "delete" else f"v{rng.random():.3f}")
            headers.end_child()
        edits = header_edits(original, headers)
        assert replay(kind, edits).delivered() == headers.delivered(), (edits, headers.entries)


def test_D_16_replaced_body_line_ends_as_each_mta_passes_them_on():
    measured = {  # what the next milter got from Postfix 3.7 / Sendmail 8.17 after a milter sent the key
        b"a\nb\n": (b"a\r\nb\r\n", b"a\r\nb\r\n"),
        b"a\r\nb\nc": (b"a\r\nb\r\nc\r\n", b"a\r\nb\r\nc"),
        b"a\rb\r\n": (b"a\rb\r\n", b"a\rb\r\n"),
        b"x": (b"x\r\n", b"x"),
        b"": (b"", b""),
        b"a\n\n\n": (b"a\r\n\r\n\r\n", b"a\r\n\r\n\r\n"),
        b"a\r": (b"a\r\r\n", b"a\r"),
        b"a\r\r\nb\n\r\n": (b"a\r\r\nb\r\n\r\n", b"a\r\nb\r\n\r\n"),
    }
    for sent, (postfix, sendmail) in measured.items():
        for size in (1, 2, 3, 65535):
            pieces = [sent[i:i + size] for i in range(0, len(sent), size)]
            out = list(passed_on(pieces, POSTFIX, 4))
            assert b"".join(out) == postfix and all(len(piece) <= 4 for piece in out), (sent, size)
            assert b"".join(passed_on(pieces, SENDMAIL, 65535)) == sendmail, (sent, size)


def test_M_BODY_3_a_replacement_is_kept_as_sent_and_passed_on_with_crlf():
    body = BodyBuffer()
    body.append(b"orig\r\n")
    assert b"".join(body.passed_on(10)) == b"orig\r\n"
    body.start_replacement(POSTFIX)
    body.append(b"new\n")
    body.append(b"text")
    assert body.getvalue() == b"new\ntext"
    assert b"".join(body.passed_on(3)) == b"new\r\ntext\r\n"
    body.close()


def test_describe_gives_kind_name_index_and_lengths_never_the_value():
    assert describe(InsertHeader(0, "DKIM-Signature", "secret")) == (
        "insert-header <DKIM-Signature> index=0 value-length=6")
    assert describe(ChangeHeader(2, "X-A", "")) == "delete-header <X-A> index=2 value-length=0"
    assert describe(AddHeader("X-B", "abc")) == "add-header <X-B> value-length=3"
    assert describe(ReplaceBody(b"body text")) == "replace-body length=9"


def test_M_BODY_1_body_spills_to_a_file_above_5_MiB_and_reads_back_in_pieces():
    body = BodyBuffer()
    chunk = bytes(range(256)) * 256  # 64 KiB
    for _ in range(90):  # 5.6 MiB
        body.append(chunk)
    assert body.spilled
    pieces = list(body.pieces(65535))
    assert all(len(piece) <= 65535 for piece in pieces)
    assert b"".join(pieces) == chunk * 90
    body.clear()
    body.append(b"replaced")
    assert body.getvalue() == b"replaced"
    body.close()


@pytest.mark.parametrize("kind", [POSTFIX, SENDMAIL])
def test_M_EOM_3_headers_only_added_give_the_edits_of_the_full_diff(kind):
    """The short way for headers only added after the MTA's (a tag header) gives exactly the edits the full
    simulation gives, names already there or not, slots or not (500 chains, by ``h`` or appended), and they
    reach the MTA unchanged; anything else is left to the full diff."""
    from milterman.manager.headers import Entry, _appended_edits, _diff_edits

    rng = random.Random(17)
    pool = ["X-Tag", "x-tag", "Subject", "Date", "Message-Id", "X-New", "Received", "X-Dup"]
    taken = 0
    for _ in range(500):
        headers = mta(kind)
        original = headers.snapshot()
        for _child in range(rng.randint(1, 3)):
            for _request in range(rng.randint(0, 3)):
                name, value = rng.choice(pool), f"v{rng.random():.3f}"
                if rng.random() < 0.5:
                    headers.add(name, value)  # Sendmail may fill a slot or insert before the name: not "appended"
                else:
                    headers.entries.append(Entry(name, value))
                    headers._visible = None
            headers.end_child()
        short = _appended_edits(original, headers)
        edits = header_edits(original, headers)
        assert edits == _diff_edits(original, headers), headers.entries
        assert replay(kind, edits).delivered() == headers.delivered()
        taken += short is not None
    assert taken >= 100  # the short way was taken in many of the chains
    changed = mta(kind)
    original = changed.snapshot()
    changed.change("Subject", 1, "changed")
    assert _appended_edits(original, changed) is None
