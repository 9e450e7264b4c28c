"""The MTA side of a test transaction: the message, its envelope and macros, and the milter's changes applied.

milter-test-server and :mod:`milterman.testing` share this: :func:`build_transaction` makes the
commands and macros of one session from :class:`ServerSettings` (the defaults milter-test-server
documents), :func:`milterman.testing.transaction.play_transaction` plays them, and :func:`apply_modifications`
gives the message as the MTA would hold it afterwards.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..net import ConnectionSpec, Timeouts
from ..protocol import (AddHeader, AddRcpt, AddRcptWithParameters, ChangeFrom, ChangeHeader, Connect, DeleteRcpt,
                        Family, InsertHeader, Negotiate, ReplaceBody, chunk_body, strip_braces)
from ..protocol.flags import Action, Step
from .transaction import Transaction, TransactionResult

DEFAULT_BODY = "\n".join(f"La de da de da {n}." for n in range(1, 5))


class MailFileError(ValueError):
    """A ``--mail-file`` that cannot be used."""


def normalize_address(address: str) -> str:
    """``a@b`` → ``<a@b>``; an address already in angle brackets stays."""
    if address.startswith("<") and address.endswith(">"):
        return address
    return f"<{address}>"


def extract_address(value: str) -> str:
    """The address of a From/To header value."""
    start = value.find("<")
    if start >= 0:
        end = value.find(">", start)
        if end < 0:
            raise MailFileError(f"invalid mail address: <{value}>")
        return value[start:end + 1]
    token = value.split()[0] if value.split() else value
    return f"<{token}>"


@dataclass
class ParsedMail:
    """What ``--mail-file`` contributes: envelope, headers and body chunks."""

    sender: str | None = None
    recipients: list[str] = field(default_factory=list)
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: list[bytes] = field(default_factory=list)


def parse_mail(data: bytes) -> ParsedMail:
    """Split a message file into headers, envelope and body chunks."""
    lines = data.split(b"\n")
    if lines and lines[0].startswith(b"From "):
        lines = lines[1:]
    parsed = ParsedMail()
    index = 0
    headers: list[list[str]] = []
    while index < len(lines):
        raw = lines[index]
        index += 1
        had_cr = raw.endswith(b"\r")
        line = (raw[:-1] if had_cr else raw).decode("utf-8", "surrogateescape")
        if line == "":
            break
        if line[0].isascii() and line[0].isalnum() and ":" in line:
            name, _, value = line.partition(":")
            headers.append([name, value.lstrip(" \t")])
        elif line[0] in " \t" and headers:
            headers[-1][1] += ("\r\n" if had_cr else "\n") + line
        else:
            raise MailFileError(f"invalid header: <{line}>")
    else:
        lines = []
        index = 0
    parsed.headers = [(name, value) for name, value in headers]
    for name, value in parsed.headers:
        if name == "From":
            parsed.sender = extract_address(value)
        elif name == "To":
            parsed.recipients.append(extract_address(value))
    chunks: list[bytes] = []
    current = bytearray()
    for raw in lines[index:]:
        piece = raw + b"\n"
        if current and len(current) + len(piece) > 65535:
            chunks.append(bytes(current))
            current = bytearray()
        current += piece
    if current:
        chunks.append(bytes(current))
    if chunks and chunks[-1].endswith(b"\n"):
        chunks[-1] = chunks[-1][:-1]
        if not chunks[-1]:
            chunks.pop()
    parsed.body = [piece for chunk in chunks for piece in chunk_body(chunk)] if chunks else []
    return parsed


@dataclass
class ServerSettings:
    """Everything a test-server session needs."""

    spec: ConnectionSpec
    name: str = "milter-test-server"
    negotiate_version: int = 6
    connect_host: str = "mx.example.net"
    connect_address: ConnectionSpec | None = None
    helo_fqdn: str = "delian"
    envelope_from: str = "sender@example.com"
    recipients: list[str] = field(default_factory=lambda: ["receiver@example.org"])
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: list[bytes] | None = None
    unknown: str | None = None
    authenticated_name: str | None = None
    authenticated_type: str | None = None
    authenticated_author: str | None = None
    user_macros: dict[str, list[tuple[str, str]]] = field(default_factory=dict)
    mail: ParsedMail | None = None
    explicit_from: bool = False
    explicit_recipients: bool = False
    output_message: bool = False
    color: bool = False
    timeouts: Timeouts = field(default_factory=Timeouts)


def _default_connect_address() -> ConnectionSpec:
    return ConnectionSpec("inet", port=50443, host="[192.168.123.123]", address="192.168.123.123")


def connect_command(host: str, address: ConnectionSpec | None) -> Connect:
    """The CONNECT command for ``--connect-host``/``--connect-address`` (P-CON-1)."""
    address = address or _default_connect_address()
    if address.family == "unix":
        return Connect(host, Family.UNIX, 0, address.path)
    family = Family.INET if address.family == "inet" else Family.INET6
    literal = address.address or ("0.0.0.0" if address.family == "inet" else "::")
    return Connect(host, family, address.port, literal)


def _merge_macros(defaults: list[tuple[str, str]], extra: list[tuple[str, str]]) -> dict[str, str]:
    """Defaults overridden by user macros; ``x`` and ``{x}`` are one key (settled)."""
    merged = {strip_braces(name): value for name, value in defaults}
    for name, value in extra:
        merged[strip_braces(name)] = value
    return merged


def build_transaction(settings: ServerSettings) -> Transaction:
    """Settings → the commands and macros of one session."""
    mail = settings.mail
    sender = settings.envelope_from
    recipients = list(settings.recipients)
    headers = list(settings.headers)
    body = settings.body
    if mail is not None:
        if mail.sender is not None and not settings.explicit_from:
            sender = mail.sender
        if mail.recipients and not settings.explicit_recipients:
            recipients = list(mail.recipients)
        headers.extend(mail.headers)
        if body is None:
            body = list(mail.body)
    sender = normalize_address(sender)
    recipients = [normalize_address(recipient) for recipient in recipients]
    if body is None:
        body = [DEFAULT_BODY.encode()]
    if not any(name == "From" for name, _ in headers):
        headers.append(("From", sender))
    if recipients and not any(name == "To" for name, _ in headers):
        headers.append(("To", recipients[0]))
    user = settings.user_macros
    auth = [(name, value) for name, value in (("auth_authen", settings.authenticated_name),
                                              ("auth_type", settings.authenticated_type),
                                              ("auth_author", settings.authenticated_author)) if value is not None]
    macros = {
        "C": _merge_macros([("daemon_name", settings.name), ("if_name", "localhost"), ("if_addr", "127.0.0.1"),
                            ("j", "mail.example.com")], user.get("C", [])),
        "H": _merge_macros([("tls_version", "0"), ("cipher", "0"), ("cipher_bits", "0"),
                            ("cert_subject", "cert_subject"), ("cert_issuer", "cert_issuer")], user.get("H", [])),
        "M": _merge_macros([("mail_mailer", "mail_mailer"), ("mail_host", "mail_host"), ("mail_addr", "mail_addr"),
                            *auth], user.get("M", [])),
        "T": _merge_macros([("i", "i")], user.get("T", [])),
        "N": _merge_macros([("i", "i")], user.get("N", [])),
        "E": _merge_macros([("i", "i")], user.get("E", [])),
    }
    rcpt_defaults = [("rcpt_mailer", "rcpt_mailer"), ("rcpt_host", "rcpt_host")]
    recipient_macros = [_merge_macros([*rcpt_defaults, ("rcpt_addr", recipient)], user.get("R", []))
                        for recipient in recipients]
    return Transaction(connect=connect_command(settings.connect_host, settings.connect_address),
                       helo=settings.helo_fqdn, sender=sender, recipients=recipients, headers=headers,
                       body=list(body), unknown=settings.unknown, macros=macros, recipient_macros=recipient_macros)


def make_offer(version: int) -> Negotiate:
    """All nine actions and all 21 steps."""
    return Negotiate(version, int(Action.ALL), int(Step.ALL))



# ------------------------------------------------------------------------------------- result message


@dataclass
class Message:
    """The envelope, headers and body as the MTA would hold them after the milter."""

    sender: str
    recipients: list[str]
    headers: list[tuple[str, str]]
    body: bytes


def apply_modifications(original: Message, result: TransactionResult) -> Message:
    """Apply the end-of-message modifications to a copy."""
    message = Message(original.sender, list(original.recipients), list(original.headers), original.body)
    replaced: list[bytes] | None = None
    for modification in result.modifications:
        if isinstance(modification, AddHeader):
            message.headers.append((modification.name, modification.value))
        elif isinstance(modification, InsertHeader):
            message.headers.insert(min(modification.index, len(message.headers)),
                                   (modification.name, modification.value))
        elif isinstance(modification, ChangeHeader):
            _change_header(message.headers, modification)
        elif isinstance(modification, (AddRcpt, AddRcptWithParameters)):
            message.recipients.append(normalize_address(modification.recipient))
        elif isinstance(modification, DeleteRcpt):
            target = normalize_address(modification.recipient)
            message.recipients = [rcpt for rcpt in message.recipients if rcpt != target]
        elif isinstance(modification, ChangeFrom):
            message.sender = normalize_address(modification.sender)
        elif isinstance(modification, ReplaceBody):
            replaced = (replaced or []) + [modification.chunk]
    if replaced is not None:
        message.body = b"".join(replaced)
    return message


def _change_header(headers: list[tuple[str, str]], change: ChangeHeader) -> None:
    """Change or delete the index-th header of that name (1-based, case-insensitive, P-MOD-5)."""
    wanted = max(change.index, 1)
    seen = 0
    for position, (name, _) in enumerate(headers):
        if name.lower() == change.name.lower():
            seen += 1
            if seen == wanted:
                if change.value:
                    headers[position] = (name, change.value)
                else:
                    del headers[position]
                return
    if change.value:
        headers.append((change.name, change.value))
