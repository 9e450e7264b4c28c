"""One whole SMTP transaction played against a milter, the way milter-test-server does (TS-*).

:func:`play_transaction` negotiates, sends every stage the options allow with its
macros, stops at the first decision and returns every reply and modification; the
socket work is :class:`milterman.net.MtaClient`'s, the protocol rules its state
machine's. :func:`prepare_transaction` builds and encodes the commands and macro packets
once, for a transaction played many times (load mode).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ..net import MilterIOError, MtaClient, Response
from ..protocol import (ABORT, DATA, END_OF_HEADER, END_OF_MESSAGE, QUIT, Body, Command, Connect, Continue, Header,
                        Helo, Mail, Modification, Options, ProtocolError, Quarantine, Rcpt, Reject, Reply, ReplyCode,
                        Skip, TempFail, Unknown)
from ..protocol.macros import macro_packet
from ..protocol.stages import STAGE_NAMES

if TYPE_CHECKING:
    from ..milter.inprocess import InProcessClient


@dataclass(slots=True)
class Transaction:
    """One SMTP transaction as milter commands; macros per stage letter."""

    connect: Connect
    helo: str
    sender: str
    recipients: list[str]
    headers: list[tuple[str, str]]
    body: list[bytes]
    unknown: str | None = None
    macros: dict[str, dict[str, str]] = field(default_factory=dict)
    #: macros added to the RCPT stage per recipient (e.g. ``rcpt_addr``)
    recipient_macros: list[dict[str, str]] | None = None


@dataclass(slots=True)
class TransactionResult:
    """What a milter did to one transaction."""

    status: str = "pass"
    reply_code: ReplyCode | None = None
    last_stage: str = "start"
    responses: list[tuple[Command, Response]] = field(default_factory=list)
    modifications: list[Reply] = field(default_factory=list)
    quarantine_reason: str | None = None
    accepted_recipients: list[str] = field(default_factory=list)
    rejected_recipients: list[str] = field(default_factory=list)
    options: Options | None = None
    error: str | None = None
    elapsed: float = 0.0


#: status nick of each final reply letter; ``y`` depends on its code
REPLY_STATUS = {"c": "pass", "s": "pass", "a": "accept", "r": "reject", "t": "temporary-failure",
                "d": "discard", "4": "abort", "f": "error"}


def reply_status(reply: Reply) -> str:
    """The status nick of a final reply."""
    if isinstance(reply, ReplyCode):
        return "temporary-failure" if reply.is_temporary else "reject"
    return REPLY_STATUS.get(reply.LETTER, "error")


class _Stop(Exception):
    """Internal: the transaction ends here."""


@dataclass(frozen=True, slots=True)
class PreparedStep:
    """One command of a transaction with its macros, both encoded once for every session that plays it."""

    letter: str
    #: the stage name ``last_stage`` takes when the command is sent
    stage: str
    command: Command
    #: the command's packet, written as it is by a socket client
    packet: bytes
    #: the stage's macros (``None``: none to send) and their packet for a milter that asked for no list
    macros: dict[str, str] | None = None
    macro_packet: bytes = b""


@dataclass(frozen=True, slots=True)
class PreparedTransaction:
    """A :class:`Transaction` as the commands it sends: built once, played by any number of sessions
    (milter-test-server's load mode plays one transaction thousands of times)."""

    transaction: Transaction
    connect: PreparedStep
    helo: PreparedStep
    mail: PreparedStep
    recipients: tuple[PreparedStep, ...]
    unknown: PreparedStep | None
    data: PreparedStep
    headers: tuple[PreparedStep, ...]
    end_of_header: PreparedStep
    body: tuple[PreparedStep, ...]
    end_of_message: PreparedStep


def _prepare_step(transaction: Transaction, command: Command, extra: dict[str, str] | None = None) -> PreparedStep:
    """``command`` with its stage's macros (``extra``: a recipient's own), both encoded."""
    letter = command.LETTER
    macros = transaction.macros.get(letter, {})
    if extra:
        macros = {**macros, **extra}
    if not macros:
        return PreparedStep(letter, STAGE_NAMES[letter], command, command.encode())
    packet = macro_packet(None, letter, macros)  # every macro: not empty, as ``macros`` is not
    assert packet is not None
    return PreparedStep(letter, STAGE_NAMES[letter], command, command.encode(), macros, packet.encode())


def prepare_transaction(transaction: Transaction) -> PreparedTransaction:
    """Build and encode every command and macro packet of ``transaction`` once (what each session sends
    is still decided per session, by its milter's options and replies)."""
    extras = transaction.recipient_macros
    return PreparedTransaction(
        transaction=transaction,
        connect=_prepare_step(transaction, transaction.connect),
        helo=_prepare_step(transaction, Helo(transaction.helo)),
        mail=_prepare_step(transaction, Mail(transaction.sender)),
        recipients=tuple(_prepare_step(transaction, Rcpt(recipient), extras[index] if extras else None)
                         for index, recipient in enumerate(transaction.recipients)),
        unknown=None if transaction.unknown is None else _prepare_step(transaction, Unknown(transaction.unknown)),
        data=_prepare_step(transaction, DATA),
        headers=tuple(_prepare_step(transaction, Header(name, value)) for name, value in transaction.headers),
        end_of_header=_prepare_step(transaction, END_OF_HEADER),
        body=tuple(_prepare_step(transaction, Body(chunk)) for chunk in transaction.body),
        end_of_message=_prepare_step(transaction, END_OF_MESSAGE),
    )


def play_transaction(client: MtaClient | InProcessClient,
                     transaction: Transaction | PreparedTransaction) -> TransactionResult:
    """Negotiate and play ``transaction`` over a socket or in process; never raises for milter failures.

    Errors (timeouts, protocol errors, a closed connection) end up in
    ``result.error`` with ``status`` ``error``. A :class:`PreparedTransaction` is played as it is
    (every protocol check of the MTA side still runs per session).
    """
    prepared = transaction if isinstance(transaction, PreparedTransaction) else prepare_transaction(transaction)
    result = TransactionResult()
    started = time.monotonic()
    in_message = False
    will_send = client.will_send
    begin = client.begin
    encoded = isinstance(client, MtaClient)  # a socket client writes the packet made once
    # and waits for a reply before reading: the milter, in another process, has hardly ever answered yet
    collect = client.collect_waiting if encoded else client.collect

    def step(prepared_step: PreparedStep) -> Reply | None:
        letter = prepared_step.letter
        if not will_send(letter):
            return None
        macros = prepared_step.macros
        if macros is not None and not client.queue_encoded_macros(letter, prepared_step.macro_packet):
            client.queue_macros(letter, macros)  # the milter asked for a list of macros at this stage
        result.last_stage = prepared_step.stage
        command = prepared_step.command
        if not (begin(command, prepared_step.packet) if encoded else begin(command)):
            return None
        response = collect(letter)
        result.responses.append((command, response))
        if response.modifications:
            for modification in response.modifications:
                if isinstance(modification, Quarantine):
                    result.quarantine_reason = modification.reason
        final = response.final
        if isinstance(final, ReplyCode):
            result.reply_code = final
        return final

    def decide(reply: Reply | None) -> None:
        if reply is None or isinstance(reply, (Continue, Skip)):
            return
        result.status = reply_status(reply)
        raise _Stop

    try:
        result.last_stage = "negotiate"
        result.options = client.negotiate(wait_first=True) if encoded else client.negotiate()
        decide(step(prepared.connect))
        decide(step(prepared.helo))
        in_message = True
        decide(step(prepared.mail))
        remaining = 0
        last_refusal: Reply | None = None
        for recipient, recipient_step in zip(prepared.transaction.recipients, prepared.recipients, strict=True):
            reply = step(recipient_step)
            if isinstance(reply, (Reject, TempFail, ReplyCode)):
                result.rejected_recipients.append(recipient)
                last_refusal = reply
                continue
            decide(reply)
            result.accepted_recipients.append(recipient)
            remaining += 1
        if prepared.recipients and remaining == 0 and last_refusal is not None:
            decide(last_refusal)
        if prepared.unknown is not None and result.options.version >= 3:
            decide(step(prepared.unknown))
        decide(step(prepared.data))
        for header_step in prepared.headers:
            decide(step(header_step))
        decide(step(prepared.end_of_header))
        for body_step in prepared.body:
            reply = step(body_step)
            if isinstance(reply, Skip):
                break
            decide(reply)
        reply = step(prepared.end_of_message)
        in_message = False
        if result.responses and result.responses[-1][0].LETTER == "E":
            result.modifications = [m for m in result.responses[-1][1].modifications
                                    if isinstance(m, Modification) and not isinstance(m, Quarantine)]
        decide(reply)
        if result.quarantine_reason is not None:
            result.status = "quarantine"
    except _Stop:
        pass
    except MilterIOError as error:
        result.status = "error"
        result.error = str(error)
    except ProtocolError as error:
        result.status = "error"
        result.error = str(error)
    finally:
        result.elapsed = time.monotonic() - started
    try:
        if result.error is None:
            if in_message or client.state.message_step:
                client.send(ABORT)
            client.send(QUIT)
    except (MilterIOError, ProtocolError):
        pass
    client.close(send_quit=False)
    return result
