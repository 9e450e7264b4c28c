"""Message state of the manager: the header diff (M-EOM-3 as real MTAs apply it) and the body buffer."""

from __future__ import annotations

from milterman.manager.message import BodyBuffer, Headers, header_diff
from milterman.protocol import AddHeader, ChangeHeader, InsertHeader


def test_M_EOM_3_verified_example_with_append_as_add_header():
    original = [("Subject", "orig"), ("X-Del", "x"), ("To", "t")]
    headers = Headers(original)
    headers.change("Subject", 1, "changed")
    headers.change("X-Del", 1, "")
    headers.append("X-C2", "v")
    assert header_diff(original, headers.items) == [ChangeHeader(1, "Subject", "changed"), AddHeader("X-C2", "v"),
                                                    ChangeHeader(1, "X-Del", "")]


def test_P_MOD_4_mid_list_insert_is_offset_for_postfix_and_trailing_ones_appended():
    original = [("From", "a"), ("To", "b")]
    final = [("From", "a"), ("X-Mid", "1"), ("X-Mid2", "2"), ("To", "b"), ("X-End", "3"), ("X-End2", "4")]
    sendmail = header_diff(original, final)
    postfix = header_diff(original, final, insert_offset=1)
    assert sendmail == [InsertHeader(1, "X-Mid", "1"), InsertHeader(2, "X-Mid2", "2"), AddHeader("X-End", "3"),
                        AddHeader("X-End2", "4")]
    assert postfix == [InsertHeader(2, "X-Mid", "1"), InsertHeader(3, "X-Mid2", "2"), AddHeader("X-End", "3"),
                       AddHeader("X-End2", "4")]


def test_replaying_the_diff_the_postfix_way_gives_the_final_order():
    """Apply the edits as Postfix does (its Received: first, ``i n`` before element n) and compare."""
    original = [("From", "a"), ("Subject", "s"), ("To", "b")]
    final = [("From", "a"), ("X-Top", "t"), ("Subject", "new"), ("To", "b"), ("X-Last", "l")]
    mta = [("Received", "postfix")] + list(original)
    for edit in header_diff(original, final, insert_offset=1):
        if isinstance(edit, AddHeader):
            mta.append((edit.name, edit.value))
        elif isinstance(edit, InsertHeader):
            mta.insert(edit.index, (edit.name, edit.value))
        else:
            positions = [i for i, (name, _) in enumerate(mta) if name == edit.name and name != "Received"]
            position = positions[edit.index - 1]
            if edit.value:
                mta[position] = (edit.name, edit.value)
            else:
                del mta[position]
    assert mta[1:] == final


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
