"""Length-prefixed messages of NUL-separated fields: the launcher's and the controller's framing.

Both reuse the milter packet shape (a 4-byte big-endian length, then the data; M-LAU-1,
M-CTL-1), with the data split into NUL-separated text fields.
"""

from __future__ import annotations

import struct

_LENGTH = struct.Struct(">I")


def encode_fields(*fields: str) -> bytes:
    """One framed message: ``launch\\0LINE\\0USER``, ``status\\0JSON`` …"""
    data = b"\0".join(field.encode("utf-8", "surrogateescape") for field in fields)
    return _LENGTH.pack(len(data)) + data


def read_exactly(sock, size: int) -> bytes | None:
    """``size`` bytes from a blocking socket, or None at EOF."""
    data = b""
    while len(data) < size:
        piece = sock.recv(size - len(data))
        if not piece:
            return None
        data += piece
    return data


def read_fields(sock, limit: int) -> list[str] | None:
    """The fields of one framed message; None at EOF or for a frame above ``limit`` bytes."""
    header = read_exactly(sock, 4)
    if header is None:
        return None
    length = _LENGTH.unpack(header)[0]
    if length > limit:
        return None
    data = read_exactly(sock, length)
    if data is None:
        return None
    return data.decode("utf-8", "surrogateescape").split("\0")
