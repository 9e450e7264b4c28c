"""Readers for the spec's hex vectors and Postfix traces, copied into ``tests/protocol/data``.

Vector line format (``data/vectors/README.md``)::

    <sender> <hex>  # <label>

Trace line format (``data/traces/README.md``)::

    <DIR> <CMD> <HEX>      DIR is '>' (MTA -> milter) or '<' (milter -> MTA)

Both are turned into :class:`Packet` records with ``sender`` = ``"mta"`` or ``"milter"``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from milterman.protocol import COMMAND_TYPES, REPLY_TYPES, Message, decode_one

DATA = Path(__file__).resolve().parent / "data"
VECTORS = DATA / "vectors"
TRACES = DATA / "traces"

BAD_INPUT_FILE = "08-bad-input.hex"
TRANSCRIPT_FILES = ("03-v6-session-transcript.hex", "04-v6-noreply-symlist-transcript.hex",
                    "09-two-messages-transcript.hex")


@dataclass(frozen=True)
class Packet:
    file: str
    lineno: int
    sender: str          # "mta" or "milter"
    data: bytes
    label: str           # vector label, or the CMD column of a trace

    @property
    def id(self) -> str:
        return f"{self.file}:{self.lineno}"

    @property
    def types(self) -> dict:
        return COMMAND_TYPES if self.sender == "mta" else REPLY_TYPES

    def decode(self, *, strict: bool = True) -> Message:
        return decode_one(self.data, self.types, strict=strict)


def vector_files() -> list[str]:
    return sorted(path.name for path in VECTORS.glob("*.hex"))


def trace_files() -> list[str]:
    return sorted(path.name for path in TRACES.glob("*.hex"))


def read_vectors(name: str) -> list[Packet]:
    packets = []
    for lineno, line in enumerate((VECTORS / name).read_text().splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        packet, _, label = line.partition("  #")
        sender, hex_text = packet.split()
        if sender not in ("mta", "milter"):
            raise ValueError(f"{name}:{lineno}: unknown sender {sender!r}")
        packets.append(Packet(name, lineno, sender, bytes.fromhex(hex_text), label.strip()))
    return packets


def read_trace(name: str) -> list[Packet]:
    packets = []
    for lineno, line in enumerate((TRACES / name).read_text().splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        direction, letter, hex_text = line.split()
        sender = {">": "mta", "<": "milter"}[direction]
        packets.append(Packet(name, lineno, sender, bytes.fromhex(hex_text), letter))
    return packets


def well_formed_vectors() -> list[Packet]:
    """Every packet of every vector file except the bad-input catalogue."""
    return [packet for name in vector_files() if name != BAD_INPUT_FILE for packet in read_vectors(name)]
