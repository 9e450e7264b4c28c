"""Framing: an incremental decoder and the encoder (P-FRM-1 … P-FRM-5).

The decoder is fed whatever the socket returned and hands out complete,
typed messages. It checks the length field as soon as the four bytes are in
(never allocating for a hostile length, P-BAD-2) and raises only
:class:`ProtocolError` subclasses, whatever the input (P-BAD).
"""

from __future__ import annotations

import struct
from collections.abc import Iterator

from .errors import FramingError, MalformedPacket
from .flags import MAX_DATA_SIZE_1M
from .messages import COMMAND_TYPES, REPLY_TYPES, Body, Command, Message, ReceivedMacro, ReplyCode, _Empty

_LENGTH = struct.Struct(">I")


class _UncheckedReplyCode:
    from_payload = ReplyCode.from_payload_unchecked


_UNCHECKED_REPLY_TYPES = {**REPLY_TYPES, "y": _UncheckedReplyCode}
_CODE_TABLES: dict[int, tuple[dict, tuple, tuple]] = {}


def _code_tables(types: dict[str, type[Message]]) -> tuple[tuple, tuple]:
    """``types`` by command byte, and the payload-less ones' instance by command byte (what their
    ``from_payload`` gives for no data), ``None`` elsewhere: indexed per packet, no call; made once per table."""
    known = _CODE_TABLES.get(id(types))
    if known is None or known[0] is not types:
        by_code = tuple(types.get(chr(code)) for code in range(256))
        empty = tuple(kind.INSTANCE if kind is not None and issubclass(kind, _Empty) else None  # type: ignore[attr-defined]
                      for kind in by_code)
        known = _CODE_TABLES[id(types)] = (types, by_code, empty)
    return known[1], known[2]


def encode(message: Message) -> bytes:
    """The complete packet for ``message`` (length, letter, payload)."""
    return message.encode()


class Decoder:
    """Incremental packet reader for one direction of one connection.

    ``types`` maps command letters to message types (commands for a milter,
    replies for an MTA). ``max_data_size`` is the receive cap of P-FRM-4
    (default 1 MiB − 1 on both sides); ``strict`` selects strict or
    libmilter-compatible (lenient) payload reading.
    """

    __slots__ = ("_buffer", "_position", "_types", "max_data_size", "strict", "_eof", "_by_code", "_empty")

    def __init__(self, types: dict[str, type[Message]], *, max_data_size: int = MAX_DATA_SIZE_1M,
                 strict: bool = True) -> None:
        self._buffer = bytearray()
        self._position = 0
        self._types = types
        #: command byte → its type, and → the one instance of a payload-less type (read without a call)
        self._by_code, self._empty = _code_tables(types)
        self.max_data_size = max_data_size
        self.strict = strict
        self._eof = False

    def feed(self, data: bytes) -> None:
        """Add bytes received from the peer."""
        if self._position and self._position == len(self._buffer):
            self._buffer.clear()
            self._position = 0
        self._buffer += data

    def feed_eof(self) -> None:
        """The peer closed; EOF inside a packet is a framing error (P-FRM-5, P-BAD-4)."""
        self._eof = True
        if self.pending_bytes:
            raise FramingError(f"connection closed inside a packet ({self.pending_bytes} bytes pending)",
                               "P-FRM-5")

    @property
    def pending_bytes(self) -> int:
        """Bytes received but not yet part of a complete packet."""
        return len(self._buffer) - self._position

    def next_message(self) -> Message | None:
        """The next complete message, or ``None`` until more bytes arrive."""
        buffer = self._buffer
        position = self._position
        size = len(buffer)
        if size - position < 4:
            return None
        length = _LENGTH.unpack_from(buffer, position)[0]
        if length == 0 or length > self.max_data_size or length >= 0x80000000:  # the limits: _length names them
            length = self._length(buffer, position)
        end = position + 4 + length
        if end > size:
            return None
        code = buffer[position + 4]
        payload = bytes(buffer[position + 5:end]) if length > 1 else b""
        if end == size:  # the usual case: the buffer held this one packet (what _consume does for it)
            buffer.clear()
            self._position = 0
        else:
            self._consume(end)
        if length == 1:
            empty = self._empty[code]
            if empty is not None:  # no payload: a reply like continue is its type's one instance
                return empty
        message_type = self._by_code[code]
        if message_type is None:
            raise MalformedPacket(f"unknown command letter {chr(code)!r} (0x{code:02x})", "P-BAD-5")
        return message_type.from_payload(payload, self.strict)  # type: ignore[attr-defined]

    def _length(self, data: bytes | bytearray, position: int) -> int:
        """The length field at ``position``, checked before anything is allocated for it (P-FRM-2, P-FRM-4)."""
        length = _LENGTH.unpack_from(data, position)[0]
        if length == 0:
            raise FramingError("packet length 0", "P-FRM-2")
        if length - 1 > self.max_data_size or length >= 0x80000000:
            raise FramingError(f"packet of {length - 1} data bytes is above the limit of {self.max_data_size}",
                               "P-FRM-4")
        return length

    def _consume(self, end: int) -> None:
        """The buffer's packets up to ``end`` are read: forget them (the front is dropped past 64 KiB)."""
        buffer = self._buffer
        if end == len(buffer):
            buffer.clear()
            self._position = 0
        elif end > 65536:
            del buffer[:end]
            self._position = 0
        else:
            self._position = end

    def __iter__(self) -> Iterator[Message]:
        """Every complete message buffered so far."""
        while True:
            message = self.next_message()
            if message is None:
                return
            yield message


class CommandDecoder(Decoder):
    """Reads what an MTA sends (the milter side's input).

    A received block is read in place while nothing is buffered (the usual case: the MTA
    writes whole packets, then waits for a reply), so a payload costs one slice of it; only
    a packet cut by the end of a block goes through the buffer. Macro packets come out as
    :class:`ReceivedMacro` (kept whole, parsed when read); a body chunk that was the whole
    block keeps that block as its wire form, so relaying it copies nothing more.
    """

    __slots__ = ("_block", "_offset")

    def __init__(self, *, max_data_size: int = MAX_DATA_SIZE_1M, strict: bool = True) -> None:
        super().__init__(COMMAND_TYPES, max_data_size=max_data_size, strict=strict)
        self._block = b""
        self._offset = 0

    def feed(self, data: bytes) -> None:
        block = self._block
        if block and self._offset < len(block):  # an empty block has nothing left: no len() for it
            self._spill()
        buffer = self._buffer
        if buffer and self._position < len(buffer):
            super().feed(data)
        elif data:
            self._block = bytes(data)
            self._offset = 0

    def _spill(self) -> None:
        """Move what is left of the block into the buffer (a packet continues in the next block)."""
        rest = memoryview(self._block)[self._offset:]
        if self._position == len(self._buffer):
            self._buffer.clear()
            self._position = 0
        self._buffer += rest
        rest.release()
        self._block = b""
        self._offset = 0

    @property
    def pending_bytes(self) -> int:
        return len(self._block) - self._offset + len(self._buffer) - self._position

    def next_message(self) -> Command | None:  # type: ignore[override]
        """The next complete command, or ``None``; one call per command (the length check of :meth:`_length`
        and the reading of the packet are inline, the usual limits checked first)."""
        block = self._block
        if block:
            start = self._offset
            size = len(block)
            end = size + 1
            if size - start >= 4:
                length = _LENGTH.unpack_from(block, start)[0]
                if length == 0 or length > self.max_data_size or length >= 0x80000000:  # _length names them
                    length = self._length(block, start)
                end = start + 4 + length
            if end <= size:
                whole = start == 0 and end == size
                if end == size:
                    self._block = b""
                    self._offset = 0
                else:
                    self._offset = end
            elif start == size:
                self._block = b""
                self._offset = 0
                return None
            else:
                self._spill()
                block = None
        if not block:
            buffer = self._buffer
            if not buffer:
                return None
            position = self._position
            if len(buffer) - position < 4:
                return None
            end = position + 4 + self._length(buffer, position)
            if end > len(buffer):
                return None
            block = bytes(memoryview(buffer)[position:end])
            self._consume(end)
            start, end, whole = 0, end - position, True
        # the command in block[start:end]; macro packets and body chunks without a copy where possible
        code = block[start + 4]
        if code == 0x44:  # D
            if end - start == 5:
                raise MalformedPacket("macro packet without a stage letter", "P-BAD-17")
            return ReceivedMacro(block if whole else block[start:end])
        if end - start == 5:
            empty = self._empty[code]
            if empty is not None:  # no payload: DATA, EOH, ABORT, QUIT are their type's one instance
                return empty
        elif code == 0x42 and whole:  # B, the whole block: the block is its wire form
            return Body(block[5:], block)
        message_type = self._by_code[code]
        if message_type is None:
            raise MalformedPacket(f"unknown command letter {chr(code)!r} (0x{code:02x})", "P-BAD-5")
        return message_type.from_payload(block[start + 5:end], self.strict)  # type: ignore[attr-defined]


class ReplyDecoder(Decoder):
    """Reads what a milter sends (the MTA side's input)."""

    __slots__ = ()

    def __init__(self, *, max_data_size: int = MAX_DATA_SIZE_1M, strict: bool = True,
                 check_reply_text: bool = True) -> None:
        """``check_reply_text=False`` accepts any NUL-terminated SMFIR_REPLYCODE text (P-BAD-40 is then
        the reader's job: the manager relays a valid text and falls back to plain r/t otherwise, M-RC-2)."""
        types = REPLY_TYPES if check_reply_text else _UNCHECKED_REPLY_TYPES
        super().__init__(types, max_data_size=max_data_size, strict=strict)

    # next_message is Decoder's own (a Reply or None): no override, one call less per read


def decode_one(data: bytes, types: dict[str, type[Message]], *, strict: bool = True) -> Message:
    """Decode exactly one complete packet (for tests and tools reading recorded traffic)."""
    decoder = Decoder(types, strict=strict)
    decoder.feed(data)
    message = decoder.next_message()
    if message is None:
        raise FramingError(f"incomplete packet ({len(data)} bytes)", "P-FRM-5")
    if decoder.pending_bytes:
        raise FramingError(f"{decoder.pending_bytes} bytes after the packet", "P-FRM-1")
    return message
