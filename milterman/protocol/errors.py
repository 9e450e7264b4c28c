"""The one exception family of the protocol core (P-BAD).

Every decoding or state error raises a subclass of :class:`ProtocolError`; the
decoder raises nothing else on any input. ``Remote*`` means the peer broke the
protocol (close the connection, apply the fallback); ``Local*`` means our own
code tried to send something the protocol forbids (a bug to report, never to
put on the wire).
"""

from __future__ import annotations


class ProtocolError(Exception):
    """Base of every milter protocol error; ``rule`` names the spec rule broken."""

    def __init__(self, message: str, rule: str | None = None) -> None:
        super().__init__(message)
        self.rule = rule

    def __str__(self) -> str:
        text = super().__str__()
        return f"{text} ({self.rule})" if self.rule else text


class RemoteProtocolError(ProtocolError):
    """The peer sent something malformed or out of place."""


class FramingError(RemoteProtocolError):
    """The packet frame itself is unusable: zero or oversized length, EOF inside a packet (P-FRM)."""


class MalformedPacket(RemoteProtocolError):
    """A complete packet whose command letter or payload layout is wrong."""


class UnexpectedMessage(RemoteProtocolError):
    """A well-formed packet the state machine does not allow at this point (P-SM-8, P-SM-10)."""


class NegotiationError(RemoteProtocolError):
    """Option negotiation cannot succeed (P-NEG-8, P-NEG-9, P-NEG-15)."""


class LocalProtocolError(ProtocolError):
    """Our side tried to send something the protocol or the negotiated options forbid."""
