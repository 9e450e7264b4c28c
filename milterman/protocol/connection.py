"""The milter side of one socket without I/O: bytes in, what to call out, replies back to bytes.

:class:`MilterConnection` feeds the :class:`~.state.MilterState` the way h11's
``Connection`` feeds its state machine: the network layer hands it received bytes,
asks it what each command means for the application, queues the application's
replies through it and writes what :meth:`MilterConnection.data_to_send` returns.
The protocol rules the application must not have to know live here: the implied
abort (P-SM-8), an abort only for an open message (P-SM-3), data on end of message
as a last body chunk (P-BAD-20) and answering the events the application asked not
to see (P-NEG-8 step 4).
"""

from __future__ import annotations

from collections.abc import Iterator

from .codec import CommandDecoder
from .flags import MAX_DATA_SIZE_1M
from .messages import Command, Negotiate, Reply
from .negotiation import Options
from .stages import ALL_SKIP_BITS, LETTERS, SKIP_BITS
from .state import INIT, MilterState

#: a stage command's handler calls: its own letter; end of message with data also calls body first
_CALLS = {letter: letter for letter in LETTERS}
BODY_THEN_END = "BE"

#: what :meth:`MilterConnection.events` yields per command: (command, abort first?, handler calls, reply owed?)
Event = tuple[Command, bool, str | None, bool]


class MilterConnection:
    """One MTA connection as the milter sees it, with no I/O (P-SM-8, P-FRM-6)."""

    __slots__ = ("state", "decoder", "unwanted", "outgoing", "pending_bytes", "commands_received")

    def __init__(self, *, strict: bool = True, max_data_size: int = MAX_DATA_SIZE_1M) -> None:
        self.state = MilterState(strict=strict)
        self.decoder = CommandDecoder(max_data_size=max_data_size, strict=strict)
        #: SMFIP_NO* bits the application asked for: those events are answered here, not by it
        self.unwanted = 0
        #: encoded packets waiting for :meth:`data_to_send` (replies leave in one write, P-FRM-6)
        self.outgoing: list[bytes] = []
        self.pending_bytes = 0
        #: commands received: a connection without any is no milter session (M-MNT-1)
        self.commands_received = 0

    @property
    def options(self) -> Options | None:
        return self.state.options

    def receive_data(self, data: bytes) -> None:
        """Bytes read from the MTA; ``b""`` is the end of the stream."""
        if data:
            self.decoder.feed(data)
        else:
            self.decoder.feed_eof()

    def events(self) -> Iterator[Event]:
        """For each complete command received: ``(command, abort, calls, owed)``.

        ``abort``: the application's abort is due before anything else — a new MAIL or
        HELO inside a message implies one (P-SM-8), ABORT only counts with an open
        message (P-SM-3). ``calls``: for a stage command the letters of the handler
        methods to call in order (``""``: answer it without the application, P-NEG-8
        step 4; ``"BE"``: lenient data on end of message is a last body chunk,
        P-BAD-20); ``None`` for the other commands (O, D, A, Q, K), which the caller
        dispatches by letter. ``owed``: a final reply must follow (CONTINUE when the
        application gives none). Raises :class:`RemoteProtocolError` for the MTA's
        mistakes.
        """
        state = self.state
        next_command = self.decoder.next_message  # read directly: no generator resumed per command
        while True:
            command = next_command()
            if command is None:
                return
            self.commands_received += 1
            letter = command.LETTER
            in_message = state.message_step != 0
            owed = state.receive(command)
            calls = letter if letter in _CALLS else None
            if calls is not None and (letter == "E" or self.unwanted):
                if letter == "E":
                    if command.chunk:  # type: ignore[attr-defined]
                        calls = BODY_THEN_END
                elif self.unwanted & SKIP_BITS[letter]:
                    calls = ""
            yield command, in_message and letter in "MHA", calls, owed

    def negotiate(self, offer: Negotiate, *, actions: int, protocol: int,
                  macro_lists: tuple[tuple[int, str], ...] = (), required_actions: int = 0) -> Options:
        """Answer the pending OPTNEG with what the application wants (P-NEG-8); the reply is queued."""
        reply = self.state.negotiate(offer, actions=actions, protocol=protocol, macro_lists=macro_lists,
                                     required_actions=required_actions)
        self.unwanted = int(protocol) & ALL_SKIP_BITS
        self.outgoing.append(reply.encode())
        options = self.state.options
        assert options is not None
        if options.max_data_size > self.decoder.max_data_size:
            self.decoder.max_data_size = options.max_data_size
        return options

    def send(self, reply: Reply) -> None:
        """Queue a reply or modification, checked against the protocol state (P-RPL-*, P-MOD-*)."""
        self.state.check_send(reply)
        data = reply.WIRE  # a payload-less reply's cached packet, without the encode() call
        if data is None:
            data = reply.encode()
        self.outgoing.append(data)
        self.pending_bytes += len(data)

    def last_word(self, reply: Reply) -> bool:
        """Replace what is queued with ``reply``, unchecked: the answer to the MTA's protocol error, sent just
        before the connection is closed; ``False`` (nothing queued) before negotiation, when no reply is read."""
        if self.state.phase == INIT:
            return False
        self.outgoing.clear()
        self.outgoing.append(reply.encode())
        return True

    def data_to_send(self) -> bytes:
        """Everything queued, as one packet stream (P-FRM-6); empties the queue."""
        data = b"".join(self.outgoing)
        self.outgoing.clear()
        self.pending_bytes = 0
        return data

    @property
    def message_open(self) -> bool:
        """A message is open: when the connection ends now, the application's abort is due (P-SM-3)."""
        return self.state.message_step != 0
