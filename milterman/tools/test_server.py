"""milter-test-server: play the MTA side of one SMTP transaction against a milter.

The session itself is :func:`milterman.testing.transaction.play_transaction`; this module builds the
transaction from the settings (defaults, macros, ``--mail-file``), applies the
milter's modifications to a copy of the message and renders the result. Beyond the original it drives load:
``n_sessions`` sessions with
``concurrency`` at a time, and a JSON report that doubles as the benchmark driver.
"""

from __future__ import annotations

import json
import re
import sys
import time
from dataclasses import dataclass, field
from typing import TextIO

from ..net import MilterIOError, MtaClient
from ..protocol import Negotiate, unescape_percent
# the engine shared with milterman.testing (re-exported: the command and its tests use these names)
from ..testing.engine import (DEFAULT_BODY, MailFileError, Message, ParsedMail, ServerSettings,  # noqa: F401
                              apply_modifications, build_transaction, connect_command, extract_address,
                              make_offer, normalize_address, parse_mail)
from ..testing.transaction import PreparedTransaction, Transaction, TransactionResult, play_transaction, \
    prepare_transaction

BAR_WIDTH = 39
RED = "\x1b[01;31m"
GREEN = "\x1b[01;32m"
NORMAL = "\x1b[00m"


class ConnectFailure(Exception):
    """The milter could not be reached; the message is what the tool prints (exit 1)."""


def run_session(settings: ServerSettings, transaction: Transaction | PreparedTransaction | None = None,
                offer: Negotiate | None = None) -> TransactionResult:
    """Connect and play one session; :class:`ConnectFailure` when no connection was made.

    Load mode passes the transaction prepared and the offer made once for all its sessions."""
    transaction = transaction or build_transaction(settings)
    try:
        client = MtaClient.open(settings.spec, offer or make_offer(settings.negotiate_version),
                                timeouts=settings.timeouts)
    except MilterIOError as error:
        if error.kind == "connection timeout":
            raise ConnectFailure(f"Failed to connect to {settings.spec}: connection timeout") from None
        raise ConnectFailure(str(error)) from None
    return play_transaction(client, transaction)


# ------------------------------------------------------------------------------------- result message


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
    """Run ``n_sessions`` sessions, ``concurrency`` at a time, in greenlets; exit status per the manual.

    The transaction is built and encoded once, and ``concurrency`` greenlets each play one session after
    another (a greenlet per session costs its creation and a stack of its own each time)."""
    import gevent

    transaction = build_transaction(settings)
    prepared = prepare_transaction(transaction)
    offer = make_offer(settings.negotiate_version)
    load = LoadReport()

    def one(number: int) -> None:
        started = time.monotonic()
        try:
            result = run_session(settings, prepared, offer)
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

    numbers = iter(range(1, n_sessions + 1))  # shared: each greenlet takes the next session number

    def play() -> None:
        hub = gevent.get_hub()
        for number in numbers:
            try:
                one(number)
            except Exception:  # a fault of ours, not the milter's: reported as for any greenlet, the run goes on
                hub.handle_error(gevent.getcurrent(), *sys.exc_info())

    started = time.monotonic()
    gevent.joinall([gevent.spawn(play) for _ in range(max(1, min(concurrency, n_sessions)))])
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
