"""One whole SMTP transaction played against a milter, the way milter-test-server does (TS-*).

:func:`play_transaction` negotiates, sends every stage the options allow with its
macros, stops at the first decision and returns every reply and modification; the
socket work is :class:`milterman.net.MtaClient`'s, the protocol rules its state
machine's.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ..net import MilterIOError, MtaClient, Response
from ..protocol import (ABORT, DATA, END_OF_HEADER, END_OF_MESSAGE, QUIT, Body, Command, Connect, Continue, Header,
                        Helo, Mail, Modification, Options, ProtocolError, Quarantine, Rcpt, Reject, Reply, ReplyCode,
                        Skip, TempFail, Unknown)
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


def play_transaction(client: MtaClient | InProcessClient, transaction: Transaction) -> TransactionResult:
    """Negotiate and play ``transaction`` over a socket or in process; never raises for milter failures.

    Errors (timeouts, protocol errors, a closed connection) end up in
    ``result.error`` with ``status`` ``error``.
    """
    result = TransactionResult()
    started = time.monotonic()
    in_message = False

    def exchange(command: Command) -> Reply | None:
        result.last_stage = STAGE_NAMES.get(command.LETTER, result.last_stage)
        response = client.send(command)
        if response is None:
            return None
        result.responses.append((command, response))
        for modification in response.modifications:
            if isinstance(modification, Quarantine):
                result.quarantine_reason = modification.reason
        if isinstance(response.final, ReplyCode):
            result.reply_code = response.final
        return response.final

    def step(command: Command, macros: dict[str, str] | None = None) -> Reply | None:
        letter = command.LETTER
        if not client.will_send(letter):
            return None
        stage_macros = transaction.macros.get(letter, {})
        if macros:
            stage_macros = {**stage_macros, **macros}
        if stage_macros:
            client.queue_macros(letter, stage_macros)
        return exchange(command)

    def decide(reply: Reply | None) -> None:
        if reply is None or isinstance(reply, (Continue, Skip)):
            return
        result.status = reply_status(reply)
        raise _Stop

    try:
        result.last_stage = "negotiate"
        result.options = client.negotiate()
        decide(step(transaction.connect))
        decide(step(Helo(transaction.helo)))
        in_message = True
        decide(step(Mail(transaction.sender)))
        remaining = 0
        last_refusal: Reply | None = None
        for index, recipient in enumerate(transaction.recipients):
            extra = transaction.recipient_macros[index] if transaction.recipient_macros else None
            reply = step(Rcpt(recipient), extra)
            if isinstance(reply, (Reject, TempFail, ReplyCode)):
                result.rejected_recipients.append(recipient)
                last_refusal = reply
                continue
            decide(reply)
            result.accepted_recipients.append(recipient)
            remaining += 1
        if transaction.recipients and remaining == 0 and last_refusal is not None:
            decide(last_refusal)
        if transaction.unknown is not None and result.options.version >= 3:
            decide(step(Unknown(transaction.unknown)))
        decide(step(DATA))
        for name, value in transaction.headers:
            decide(step(Header(name, value)))
        decide(step(END_OF_HEADER))
        for chunk in transaction.body:
            reply = step(Body(chunk))
            if isinstance(reply, Skip):
                break
            decide(reply)
        reply = step(END_OF_MESSAGE)
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
