"""milter-test-server: play the MTA side of one SMTP transaction against a milter.

The session itself is :func:`milterman.tools.transaction.play_transaction`; this module builds the
transaction from the settings (defaults, macros, ``--mail-file``), applies the
milter's modifications to a copy of the message and renders the result. Beyond the original it drives load:
``n_sessions`` sessions with
``concurrency`` at a time, and a JSON report that doubles as the benchmark driver.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass, field
from typing import TextIO

from ..net import ConnectionSpec, MilterIOError, MtaClient, Timeouts
from ..protocol import (AddHeader, AddRcpt, AddRcptWithParameters, ChangeFrom, ChangeHeader, Connect, DeleteRcpt,
                        Family, InsertHeader, Negotiate, ReplaceBody, chunk_body, strip_braces,
                        unescape_percent)
from ..protocol.flags import Action, Step
from .transaction import Transaction, TransactionResult, play_transaction

DEFAULT_BODY = "\n".join(f"La de da de da {n}." for n in range(1, 5))
BAR_WIDTH = 39
RED = "\x1b[01;31m"
GREEN = "\x1b[01;32m"
NORMAL = "\x1b[00m"


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


class ConnectFailure(Exception):
    """The milter could not be reached; the message is what the tool prints (exit 1)."""


def run_session(settings: ServerSettings, transaction: Transaction | None = None) -> TransactionResult:
    """Connect and play one session; :class:`ConnectFailure` when no connection was made."""
    transaction = transaction or build_transaction(settings)
    try:
        client = MtaClient.open(settings.spec, make_offer(settings.negotiate_version), timeouts=settings.timeouts)
    except MilterIOError as error:
        if error.kind == "connection timeout":
            raise ConnectFailure(f"Failed to connect to {settings.spec}: connection timeout") from None
        raise ConnectFailure(str(error)) from None
    return play_transaction(client, transaction)


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


def _header_texts(name: str, value: str) -> list[str]:
    """``NAME: FIRSTLINE`` then each further line of a folded value; ``NAME:`` when empty."""
    parts = value.split("\n")
    first = f"{name}: {parts[0]}" if parts[0] or len(parts) > 1 else f"{name}:"
    return [first, *parts[1:]]


def diff_headers(original: list[tuple[str, str]], result: list[tuple[str, str]]) -> list[tuple[str, str, str]]:
    """Walk both header lists as the manual says; yields (mark, name, value)."""
    out: list[tuple[str, str, str]] = []
    i = j = 0
    while i < len(original) and j < len(result):
        if original[i] == result[j]:
            out.append((" ", *original[i]))
            i += 1
            j += 1
        elif result[j] not in original[i:]:
            out.append(("+", *result[j]))
            j += 1
        elif original[i] not in result[j:]:
            out.append(("-", *original[i]))
            i += 1
        elif original[i][0] == result[j][0]:
            out.append(("-", *original[i]))
            out.append(("+", *result[j]))
            i += 1
            j += 1
        else:
            out.append(("+", *result[j]))
            j += 1
    out.extend(("-", *header) for header in original[i:])
    out.extend(("+", *header) for header in result[j:])
    return out


_CHARSET = re.compile(r"""charset=(?:"([^"]*)"|'([^']*)'|([^;\s]*))""", re.IGNORECASE)


def render_body(message: Message) -> list[str]:
    """The body section, converted from the message's charset when it names one."""
    charset = None
    for name, value in message.headers:
        if name == "Content-Type":
            match = _CHARSET.search(value)
            if match:
                charset = next(group for group in match.groups() if group is not None)
    if charset:
        try:
            return [message.body.decode(charset)]
        except (LookupError, UnicodeDecodeError) as error:
            return ["Error:" + "-" * (BAR_WIDTH - 6), str(error), "-" * BAR_WIDTH,
                    message.body.decode("utf-8", "surrogateescape")]
    return [message.body.decode("utf-8", "surrogateescape")]


def render_message(original: Message, result: Message, color: bool) -> str:
    """The ``--output-message`` block."""
    lines: list[str] = []

    def emit(mark: str, text: str) -> None:
        line = f"{mark} {text}"
        if color and mark == "-":
            line = f"{RED}{line}{NORMAL}"
        elif color and mark == "+":
            line = f"{GREEN}{line}{NORMAL}"
        lines.append(line)

    lines.append("Envelope:" + "-" * (BAR_WIDTH - 9))
    if original.sender == result.sender:
        emit(" ", f"MAIL FROM:{original.sender}")
    else:
        emit("-", f"MAIL FROM:{original.sender}")
        emit("+", f"MAIL FROM:{result.sender}")
    for index in range(max(len(original.recipients), len(result.recipients))):
        before = original.recipients[index] if index < len(original.recipients) else None
        after = result.recipients[index] if index < len(result.recipients) else None
        if before == after:
            emit(" ", f"RCPT TO:{before}")
            continue
        if before is not None:
            emit("-", f"RCPT TO:{before}")
        if after is not None:
            emit("+", f"RCPT TO:{after}")
    lines.append("Header:" + "-" * (BAR_WIDTH - 7))
    for mark, name, value in diff_headers(original.headers, result.headers):
        for text in _header_texts(name, value):
            emit(mark, text)
    lines.append("Body:" + "-" * (BAR_WIDTH - 5))
    lines.extend(render_body(result))
    return "\n".join(lines) + "\n"


def status_line(result: TransactionResult) -> str:
    """``status: STATUS[ [CODE]<EXT>(TEXT)]``."""
    line = f"status: {result.status}"
    reply = result.reply_code
    if reply is not None:
        parsed = reply.parsed
        text = unescape_percent(parsed.message)
        line += f" [{parsed.code}]<{parsed.xcode or '(null)'}>({text or '(null)'})"
    return line


def render_result(settings: ServerSettings, transaction: Transaction, result: TransactionResult) -> str:
    """Everything one session prints."""
    if result.error is not None:
        return result.error + "\n"
    out = [status_line(result), f"elapsed-time: {result.elapsed:g} seconds"]
    if result.quarantine_reason is not None:
        out.append(f"Quarantine reason: <{result.quarantine_reason}>")
    text = "\n".join(out) + "\n"
    if settings.output_message:
        original = Message(transaction.sender, list(transaction.recipients), list(transaction.headers),
                           b"".join(transaction.body))
        kept = Message(original.sender, [rcpt for rcpt in original.recipients
                                         if rcpt not in result.rejected_recipients], original.headers, original.body)
        text += "\n" + render_message(original, apply_modifications(kept, result), settings.color)
    return text


# ------------------------------------------------------------------------------------------ load mode


def percentile(sorted_values: list[float], fraction: float) -> float:
    """Nearest-rank percentile of an already sorted list."""
    if not sorted_values:
        return 0.0
    rank = max(1, int(round(fraction * len(sorted_values) + 0.5)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


@dataclass
class LoadReport:
    """Per-session outcomes and totals of a run of many sessions."""

    sessions: list[dict] = field(default_factory=list)
    wall_time: float = 0.0
    connect_failures: int = 0

    def totals(self) -> dict:
        elapsed = sorted(session["elapsed"] for session in self.sessions if session.get("elapsed") is not None)
        statuses: dict[str, int] = {}
        for session in self.sessions:
            statuses[session["status"]] = statuses.get(session["status"], 0) + 1
        count = len(self.sessions)
        return {
            "sessions": count,
            "statuses": statuses,
            "errors": sum(1 for session in self.sessions if session["status"] in ("error", "connect-failure")),
            "wall_time": round(self.wall_time, 6),
            "sessions_per_second": round(count / self.wall_time, 3) if self.wall_time > 0 else 0.0,
            "latency": {"p50": percentile(elapsed, 0.50), "p90": percentile(elapsed, 0.90),
                        "p99": percentile(elapsed, 0.99), "max": elapsed[-1] if elapsed else 0.0},
        }


def run_load(settings: ServerSettings, n_sessions: int, concurrency: int, *, out: TextIO,
             report: str | None, print_blocks: bool) -> int:
    """Run ``n_sessions`` sessions, ``concurrency`` at a time, in greenlets; exit status per the manual."""
    import gevent
    from gevent.pool import Pool

    transaction = build_transaction(settings)
    load = LoadReport()
    pool = Pool(max(1, concurrency))

    def one(number: int) -> None:
        started = time.monotonic()
        try:
            result = run_session(settings, transaction)
        except ConnectFailure as error:
            load.connect_failures += 1
            load.sessions.append({"session": number, "status": "connect-failure", "error": str(error),
                                  "elapsed": None})
            if print_blocks:
                out.write(f"{error}\n")
            return
        entry = {"session": number, "status": result.status, "elapsed": round(result.elapsed, 6),
                 "total": round(time.monotonic() - started, 6)}
        if result.error is not None:
            entry["error"] = result.error
        load.sessions.append(entry)
        if print_blocks:
            out.write(render_result(settings, transaction, result))
            out.flush()

    started = time.monotonic()
    for number in range(1, n_sessions + 1):
        pool.spawn(one, number)
    pool.join()
    gevent.sleep(0)
    load.wall_time = time.monotonic() - started
    if report == "json":
        load.sessions.sort(key=lambda session: session["session"])
        out.write(json.dumps({"sessions": load.sessions, "totals": load.totals()}) + "\n")
    elif not print_blocks:
        totals = load.totals()
        latency = totals["latency"]
        out.write(f"sessions: {totals['sessions']} ({', '.join(f'{k}: {v}' for k, v in totals['statuses'].items())})\n"
                  f"sessions/s: {totals['sessions_per_second']:g}\n"
                  f"latency: p50={latency['p50']:g} p90={latency['p90']:g} p99={latency['p99']:g} seconds\n")
    out.flush()
    return 1 if load.connect_failures else 0
