"""Test a milter as an MTA would drive it: in the same process, or over a socket.

:func:`run_milter` plays one SMTP transaction (negotiation, connect, HELO, MAIL, each
RCPT, DATA, the header fields, the body, end of message) with the engine of
milter-test-server and returns an :class:`Outcome`: the status, the reply of every
stage, the accepted and refused recipients, the changes, and the message as the MTA
would deliver it. The target is a :class:`~milterman.milter.Milter` subclass (run in
process: an exception in a callback reaches the test with its traceback) or a
connection spec such as ``unix:/path`` (any milter, in any language).
:func:`serve_milter` serves a class on a unix socket for the over-a-socket case; the
pytest fixture ``milter_tester`` (``pytest_plugins = ["milterman.testing.pytest_plugin"]``)
offers both and stops what it started.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass

from ..net import ConnectionSpec, MtaClient, Timeouts, parse_spec
from ..protocol import AddHeader, Modification, Reply, unescape_percent
from .transaction import Transaction, TransactionResult, play_transaction
from .engine import Message, ServerSettings, apply_modifications, build_transaction, make_offer, parse_mail

__all__ = ["run_milter", "serve_milter", "Outcome", "STAGE_LETTERS"]

#: stage names (as the Milter methods are called) → command letters, for ``macros=`` and :meth:`Outcome.reply`
STAGE_LETTERS: Mapping[str, str] = {
    "connect": "C", "helo": "H", "envelope_from": "M", "envelope_recipient": "R", "data": "T", "unknown": "U",
    "header": "L", "end_of_header": "N", "body": "B", "end_of_message": "E"}


@dataclass
class Outcome:
    """What the milter did to one transaction."""

    #: ``pass``, ``accept``, ``reject``, ``temporary-failure``, ``discard``, ``quarantine`` or ``error``
    status: str
    result: TransactionResult
    transaction: Transaction
    #: the message as the MTA would deliver it (recipients refused at RCPT removed, changes applied)
    message: Message

    @property
    def smtp_reply(self) -> str | None:
        """The custom SMTP reply of the decision (``"550 5.7.1 text"``), if the milter gave one."""
        code = self.result.reply_code
        return unescape_percent(code.text) if code is not None else None

    @property
    def accepted_recipients(self) -> list[str]:
        return list(self.result.accepted_recipients)

    @property
    def rejected_recipients(self) -> list[str]:
        return list(self.result.rejected_recipients)

    @property
    def modifications(self) -> list[Modification]:
        """The changes asked for at end of message, in order (protocol message objects)."""
        return list(self.result.modifications)

    @property
    def added_headers(self) -> list[tuple[str, str]]:
        """(name, value) of every header field the milter added, in order."""
        return [(change.name, change.value) for change in self.result.modifications if isinstance(change, AddHeader)]

    @property
    def quarantine_reason(self) -> str | None:
        return self.result.quarantine_reason

    @property
    def error(self) -> str | None:
        return self.result.error

    def replies(self, stage: str) -> list[Reply]:
        """Every final reply the milter gave at ``stage`` (``"envelope_recipient"``: one per recipient)."""
        letter = STAGE_LETTERS[stage]
        return [response.final for command, response in self.result.responses if command.LETTER == letter]

    def header(self, name: str) -> str | None:
        """The first header field called ``name`` in the delivered message (case-insensitive)."""
        for field_name, value in self.message.headers:
            if field_name.lower() == name.lower():
                return value
        return None

    @property
    def headers(self) -> list[tuple[str, str]]:
        return list(self.message.headers)

    @property
    def body(self) -> bytes:
        return self.message.body


def run_milter(target: type | str | ConnectionSpec, *, sender: str = "sender@example.com",
               recipients: Sequence[str] = ("receiver@example.org",),
               headers: Iterable[tuple[str, str]] = (), body: bytes | Sequence[bytes] | None = None,
               mail: bytes | None = None, hostname: str = "mx.example.net", address: str = "192.0.2.1",
               port: int = 50443, helo: str = "delian", unknown: str | None = None,
               macros: Mapping[str, Mapping[str, str]] | None = None, version: int = 6,
               timeouts: Timeouts | None = None) -> Outcome:
    """Play one transaction against ``target`` and return the :class:`Outcome`.

    ``mail`` is a whole message (header and body, as in a file); its ``From:`` and ``To:``
    give the envelope unless ``sender``/``recipients`` are passed too. ``body`` is bytes
    (one chunk per 65535 bytes) or a list of chunks as the MTA should send them.
    ``macros`` adds or overrides macros per stage name (``{"connect": {"j": "mx.test"}}``).
    """
    settings = ServerSettings(spec=None)  # type: ignore[arg-type]
    settings.connect_host = hostname
    settings.connect_address = ConnectionSpec("inet6" if ":" in address else "inet", port=port,
                                              host=f"[{address}]", address=address)
    settings.helo_fqdn = helo
    settings.envelope_from = sender
    settings.recipients = list(recipients)
    settings.headers = list(headers)
    settings.unknown = unknown
    settings.negotiate_version = version
    if mail is not None:
        settings.mail = parse_mail(mail)
        settings.explicit_from = sender != "sender@example.com"
        settings.explicit_recipients = tuple(recipients) != ("receiver@example.org",)
    if body is not None:
        settings.body = [body] if isinstance(body, (bytes, bytearray)) else list(body)
        if settings.body and len(settings.body[0]) > 65535:
            from ..protocol import chunk_body

            settings.body = [piece for chunk in settings.body for piece in chunk_body(bytes(chunk))]
    for stage, values in (macros or {}).items():
        settings.user_macros[STAGE_LETTERS[stage]] = list(values.items())
    transaction = build_transaction(settings)
    offer = make_offer(version)
    timeouts = timeouts or Timeouts()
    if isinstance(target, type):
        from ..milter.inprocess import InProcessClient

        client: MtaClient | InProcessClient = InProcessClient.start(target, offer, timeouts=timeouts, reraise=True)
    else:
        spec = target if isinstance(target, ConnectionSpec) else parse_spec(target)
        client = MtaClient.open(spec, offer, timeouts=timeouts)
    result = play_transaction(client, transaction)
    original = Message(transaction.sender, [rcpt for rcpt in transaction.recipients
                                            if rcpt not in result.rejected_recipients],
                       list(transaction.headers), b"".join(transaction.body))
    return Outcome(result.status, result, transaction, apply_modifications(original, result))


@contextlib.contextmanager
def serve_milter(cls: type, spec: str | None = None) -> Iterator[str]:
    """Serve ``cls`` on ``spec`` (default: a unix socket in a new temporary directory) while the block runs.

    The server runs in a greenlet of this thread: the sessions progress whenever the test
    waits on a gevent socket (as :func:`run_milter` does over a socket).
    """
    from gevent import socket as gsocket
    from gevent.server import StreamServer

    from ..milter.runner import handler_factory
    from ..net import MilterSession, bind_listener

    factory = handler_factory(cls)
    with contextlib.ExitStack() as stack:
        if spec is None:
            directory = stack.enter_context(tempfile.TemporaryDirectory(prefix="milter-test-"))
            spec = f"unix:{os.path.join(directory, 'milter.sock')}"
        plain = bind_listener(parse_spec(spec))
        listener = gsocket.socket(plain.family, plain.type, plain.proto, fileno=plain.detach())
        server = StreamServer(listener, lambda sock, address: MilterSession(sock, factory).run())
        server.start()
        try:
            yield spec
        finally:
            server.stop(timeout=5)

