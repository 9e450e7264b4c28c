"""milter-performance-check: send mails to an MTA over SMTP and measure MTA + milters.

Each mail is one whole SMTP session (:mod:`.smtp_client`); its response time runs from before
connecting to after the connection closed. Sessions run as greenlets in the parallel,
``--interval``/``--period`` and ``--flood`` modes; ``--n-workers`` forks processes before
any gevent hub exists, each sending the whole list and streaming one JSON line per finished mail
back to the parent, which does all the reporting (periodic lines, the progress line on a
terminal, the statistics CSV and the final report of the manual, plus p50/p90/p99 and ``--report=json``).
"""

from __future__ import annotations

import email.utils
import json
import os
import random
import re
import secrets
import signal
import socket
import string
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TextIO

import gevent  # imported before fork() is fine: each process makes its own hub when it first needs one
import gevent.socket
from gevent.event import Event
from gevent.pool import Group

from .smtp_client import SmtpClient, SmtpError, SmtpReplyError, SmtpUnsupportedError, normalize_line_ends
from .performance_report import PERIODIC_HEADER, Collector, render_json, render_report

DEFAULT_FROM = "from@example.com"
DEFAULT_RECIPIENT = "to@example.com"
ADDITIONAL_LINE = "0123456789 abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ"
DURATION = re.compile(r"^(\d+(?:\.\d+)?)(s|sec|second|seconds|m|min|minute|minutes|h|hour|hours)?$", re.IGNORECASE)
UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600}


class SourceError(ValueError):
    """A mail file, directory or map that cannot be used; the message names it."""


def parse_duration(text: str) -> float:
    """``NUMBER[UNIT]`` → seconds: ``5``, ``50s``, ``10m``, ``0.5h``; anything else is refused."""
    match = DURATION.match(text.strip())
    if not match:
        raise ValueError("invalid period format")
    unit = (match.group(2) or "s")[0].lower()
    return float(match.group(1)) * UNIT_SECONDS[unit]


def parse_auth_map(path: str) -> dict[tuple[str, int], tuple[str, str]]:
    """``--auth-map``: lines ``SERVER:PORT USER:PASSWORD`` (``#`` comments); PORT may be a service name."""
    entries: dict[tuple[str, int], tuple[str, str]] = {}
    try:
        with open(path, encoding="utf-8") as stream:
            lines = stream.read().splitlines()
    except OSError as error:
        raise SourceError(f"{path}: {error.strerror}") from None
    for number, line in enumerate(lines, 1):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        fields = text.split(None, 1)  # the password may hold blanks
        server, _, port_text = fields[0].rpartition(":")
        user, colon, password = fields[1].strip().partition(":") if len(fields) == 2 else ("", "", "")
        port = _port(port_text)
        if len(fields) != 2 or not server or not user or not colon or port is None:
            raise SourceError(f"invalid format: {path}:{number}: <{line}>")
        entries[(server, port)] = (user, password)
    return entries


def _port(text: str) -> int | None:
    if text.isdigit():
        return int(text) if 0 < int(text) < 65536 else None
    try:
        return socket.getservbyname(text, "tcp") if text else None
    except OSError:
        return None


@dataclass
class Settings:
    """Every option of the manual after validation (the CLI builds it)."""

    smtp_server: str = "localhost"
    smtp_port: int = 25
    connect_host: str | None = None
    connect_address: str | None = None
    helo_fqdn: str = "localhost.localdomain"
    starttls: str = "auto"
    auth_user: str | None = None
    auth_password: str | None = None
    auth_mechanism: str = "auto"
    senders: list[str] = field(default_factory=lambda: [DEFAULT_FROM])
    force_from: str | None = None
    recipients: list[str] = field(default_factory=lambda: [DEFAULT_RECIPIENT])
    force_recipients: list[str] = field(default_factory=list)
    reading_timeout: float = 60.0
    n_mails: int = 100
    n_additional_lines: int = 0
    n_concurrent_connections: int = 1
    n_workers: int = 1
    period: float | None = None
    interval: float | None = None
    flood: bool = False
    flood_period: float | None = None
    shuffle: bool = False
    report_failure_responses: bool = False
    report_periodically: float | None = None
    statistics_data: str | None = None
    report: str | None = None


# ------------------------------------------------------------------------------------------ mail sources


@dataclass
class MailSource:
    """One mail to send: a file's bytes, stdin's (fresh Message-Ids per send) or the generated mail."""

    label: str | None
    data: bytes | None = None
    from_stdin: bool = False


def collect_sources(arguments: list[str], stdin: Callable[[], bytes]) -> list[MailSource]:
    """Positional arguments → sources: files, directories searched recursively, ``-``."""
    paths: list[str] = []
    use_stdin = False
    for argument in arguments:
        if argument == "-" and not os.path.exists("-"):
            use_stdin = True
        elif os.path.isdir(argument):
            for directory, subdirectories, names in os.walk(argument):
                subdirectories.sort()
                paths.extend(os.path.join(directory, name) for name in names
                             if os.path.isfile(os.path.join(directory, name)))
        elif os.path.isfile(argument):
            paths.append(argument)
        else:
            raise SourceError(f"no such file or directory: <{argument}>")
    sources = []
    for path in sorted(paths):
        try:
            with open(path, "rb") as stream:
                sources.append(MailSource(path, stream.read()))
        except OSError as error:
            raise SourceError(f"{path}: {error.strerror}") from None
    if use_stdin:
        sources.append(MailSource("-", stdin(), from_stdin=True))
        sources.sort(key=lambda source: source.label or "")
    return sources


def mail_list(sources: list[MailSource], n_mails: int) -> list[MailSource]:
    """none → the generated mail N times; one → it N times; several → each once."""
    if not sources:
        return [MailSource(None)] * n_mails
    if len(sources) == 1:
        return sources * n_mails
    return list(sources)


def message_id() -> str:
    return f"<{secrets.token_hex(32)}@mail.example.com>"


def replace_message_ids(data: bytes) -> bytes:
    """Each ``Message-Id:`` field of the header (with its folded lines) gets a fresh id."""
    match = re.search(rb"\r?\n\r?\n", data)
    end = match.start() if match else len(data)
    fresh = re.sub(rb"(?im)^Message-Id:[^\r\n]*(\r?\n[ \t][^\r\n]*)*",
                   lambda _: b"Message-Id: " + message_id().encode("ascii"), data[:end])
    return fresh + data[end:]


def generate_mail(sender: str, recipients: list[str], helo_fqdn: str, n_additional_lines: int) -> bytes:
    """The generated test mail of the manual, CRLF line ends."""
    date = email.utils.formatdate(localtime=True)
    queue_id = "".join(secrets.choice(string.ascii_letters + string.digits) for _ in range(10))
    lines = [f"Return-Path: <{sender}>",
             f"Received: from {helo_fqdn} ({helo_fqdn} [192.168.1.1])",
             f"\tby mail.example.com with ESMTP id {queue_id};",
             f"\t{date}",
             "MIME-Version: 1.0",
             "Content-Transfer-Encoding: 7bit",
             "Content-Type: text/plain; charset=US-ASCII",
             "X-Mailer: milter-performance-check",
             f"Message-Id: {message_id()}",
             "Subject: test mail",
             f"From: {sender}",
             f"To: {', '.join(recipients)}",
             f"Date: {date}",
             "",
             "Hello,",
             "",
             "This is a test mail.",
             *[ADDITIONAL_LINE] * n_additional_lines]
    return ("\r\n".join(lines) + "\r\n").encode("utf-8")


def header_fields(data: bytes) -> list[tuple[str, str]]:
    """The header of a message as (lower-case name, unfolded value)."""
    match = re.search(rb"\r?\n\r?\n", data)
    head = data[:match.start()] if match else data
    fields: list[tuple[str, str]] = []
    for line in head.decode("utf-8", "replace").splitlines():
        if line[:1] in (" ", "\t") and fields:
            fields[-1] = (fields[-1][0], fields[-1][1] + " " + line.strip())
        elif ":" in line:
            name, value = line.split(":", 1)
            fields.append((name.strip().lower(), value.strip()))
    return fields


def addresses(values: list[str]) -> list[str]:
    """The addresses of address header values: ``<…>`` contents, else the value without comments.

    (a defect of the original fixed: it used the raw comma-split items.)
    """
    return [address for _, address in email.utils.getaddresses(values) if address]


@dataclass
class Envelope:
    """What one session says besides the message: the HELO name, MAIL FROM and the RCPT TOs."""

    helo: str
    sender: str
    recipients: list[str]


def strip_brackets(address: str) -> str:
    address = address.strip()
    return address[1:-1] if address.startswith("<") and address.endswith(">") else address


def envelope_for(data: bytes, settings: Settings, default_sender: str, *, helo: str | None = None) -> Envelope:
    """HELO from the first Received:, sender from From:, recipients from To: + Cc:."""
    fields = header_fields(data)
    if helo is None:
        helo = settings.helo_fqdn
        received = next((value for name, value in fields if name == "received"), None)
        match = re.match(r"from ([A-Za-z.]+)", received or "")
        if match:
            helo = match.group(1)
    senders = addresses([value for name, value in fields if name == "from"])
    recipients = addresses([value for name, value in fields if name in ("to", "cc")])
    return Envelope(helo=helo,
                    sender=strip_brackets(settings.force_from or (senders[0] if senders else default_sender)),
                    recipients=[strip_brackets(rcpt) for rcpt in
                                (settings.force_recipients or recipients or settings.recipients)])


# ------------------------------------------------------------------------------------------ one mail


class Sender:
    """Prepares and sends mails; a record (a JSON-able dict) per mail."""

    def __init__(self, settings: Settings, auth: tuple[str, str] | None) -> None:
        self.settings = settings
        self.auth = auth
        self.count = 0

    def prepare(self, source: MailSource) -> tuple[bytes, Envelope]:
        settings = self.settings
        default_sender = settings.senders[self.count % len(settings.senders)]
        self.count += 1
        if source.data is None:
            data = generate_mail(strip_brackets(default_sender), [strip_brackets(r) for r in settings.recipients],
                                 settings.helo_fqdn, settings.n_additional_lines)
            return data, envelope_for(data, settings, default_sender, helo=settings.helo_fqdn)
        data = replace_message_ids(source.data) if source.from_stdin else source.data
        return data, envelope_for(data, settings, default_sender)

    def session(self, client: SmtpClient, envelope: Envelope, message: bytes) -> None:
        """connect, EHLO, [STARTTLS + EHLO], [XCLIENT + EHLO], [AUTH], MAIL, RCPT…, DATA, QUIT."""
        settings = self.settings
        client.connect()
        client.ehlo(envelope.helo)
        if settings.starttls == "always" or (settings.starttls == "auto" and "STARTTLS" in client.extensions):
            client.starttls()
            client.ehlo(envelope.helo)
        attributes = [(name, value) for name, value in (("NAME", settings.connect_host),
                                                        ("ADDR", settings.connect_address)) if value]
        if attributes:
            client.xclient(attributes)
            client.ehlo(envelope.helo)
        if self.auth is not None:
            client.auth(self.auth[0], self.auth[1], settings.auth_mechanism)
        client.mail(envelope.sender)
        for recipient in envelope.recipients:
            client.rcpt(recipient)
        client.data(message)

    def send(self, source: MailSource) -> dict:
        """One mail, one session; the outcome classified per the manual."""
        message, envelope = self.prepare(source)
        client = SmtpClient(self.settings.smtp_server, self.settings.smtp_port, timeout=self.settings.reading_timeout)
        record: dict = {"path": source.label, "status": "success", "response": None,
                        "size": len(normalize_line_ends(message))}
        started = time.monotonic()
        try:
            self.session(client, envelope, message)
            client.quit()
        except SmtpReplyError as error:
            record.update(status="temporary-failure" if error.temporary else "reject",
                          response=error.reply.first_line)
            client.quit()
        except (SmtpError, OSError) as error:
            record.update(status="error", response=f"{type(error).__name__}: {error}")
            if client.sock is None:  # the connection itself failed: see unreachable()
                record["unreachable"] = getattr(error, "strerror", None) or str(error)
            if isinstance(error, SmtpUnsupportedError):
                client.quit()
        finally:
            client.close()
        record["elapsed"] = time.monotonic() - started
        record["finished"] = time.time()
        return record


# ------------------------------------------------------------------------------------------ scheduling


def send_all(settings: Settings, mails: list[MailSource], sender: Sender, emit: Callable[[dict], None],
             stop: Event) -> None:
    """Send ``mails`` in the mode the settings ask for until done or ``stop`` (a gevent Event) is set.

    On ``stop`` (Ctrl-C) no new mail starts; the sessions in progress finish, bounded by the reading
    timeout, so every mail the MTA accepted is in the report ("stops sending and still prints
    the report").
    """
    group = Group()
    done = Event()

    def one(source: MailSource) -> None:
        if not stop.is_set():
            emit(sender.send(source))

    def parallel() -> None:
        queue = list(reversed(mails))

        def pull() -> None:
            while queue and not stop.is_set():
                one(queue.pop())
        workers = [group.spawn(pull) for _ in range(min(len(mails), settings.n_concurrent_connections))]
        gevent.joinall(workers)

    def spaced(interval: float) -> None:
        for index, source in enumerate(mails):
            if index:
                gevent.sleep(interval)
            if stop.is_set():
                break
            group.spawn(one, source)
        group.join()

    def flood() -> None:
        deadline = None if settings.flood_period is None else time.monotonic() + settings.flood_period

        def loop() -> None:
            while mails:
                for source in mails:
                    if stop.is_set() or (deadline is not None and time.monotonic() >= deadline):
                        return
                    one(source)
        gevent.joinall([group.spawn(loop) for _ in range(settings.n_concurrent_connections)])

    if settings.flood:
        runner = gevent.spawn(flood)
    elif settings.interval is not None or settings.period is not None:
        interval = settings.interval if settings.interval is not None else settings.period / max(1, len(mails))
        runner = gevent.spawn(spaced, interval)
    else:
        runner = gevent.spawn(parallel)
    runner.link(lambda _: done.set())
    gevent.wait([done, stop], count=1)
    if not done.is_set():
        gevent.sleep(0)  # let the loops see stop before they start another mail
        if not done.wait(settings.reading_timeout):
            runner.kill()
            group.kill()


# ------------------------------------------------------------------------------------------ running


def _worker(settings: Settings, mails: list[MailSource], auth: tuple[str, str] | None, fd: int) -> int:
    """A forked worker (``--n-workers`` > 1): sends the whole list, one JSON line per mail to the parent."""
    channel = gevent.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM, fileno=fd)
    stop = Event()
    handler = gevent.signal_handler(signal.SIGINT, stop.set)
    if settings.shuffle:
        random.shuffle(mails)
    try:
        send_all(settings, mails, Sender(settings, auth),
                 lambda record: channel.sendall(json.dumps(record).encode("utf-8") + b"\n"), stop)
    finally:
        handler.cancel()
        channel.close()
    return 0


def _fork_workers(settings: Settings, mails: list[MailSource], auth: tuple[str, str] | None,
                  err: TextIO) -> list[tuple[int, socket.socket]]:
    """Fork the workers before this process has a gevent hub; each gets one end of a socket pair."""
    sys.stdout.flush()
    err.flush()
    children: list[tuple[int, socket.socket]] = []
    for _ in range(settings.n_workers):
        parent_end, child_end = socket.socketpair()
        pid = os.fork()
        if pid == 0:  # the worker
            status = 1
            try:
                parent_end.close()
                for _, other in children:
                    other.close()
                status = _worker(settings, list(mails), auth, child_end.detach())
            except BaseException:  # noqa: BLE001 - report and leave without running the parent's code
                import traceback

                traceback.print_exc()
            finally:
                os._exit(status)
        child_end.close()
        children.append((pid, parent_end))
    return children


def run(settings: Settings, sources: list[MailSource], auth: tuple[str, str] | None, *,
        out: TextIO, err: TextIO) -> int:
    """Send, report, return the exit status: 0, or 1 when a worker process crashed or no mail could connect."""
    mails = mail_list(sources, settings.n_mails)
    workers = settings.n_workers if settings.n_workers > 1 else 0
    expected = None if settings.flood else len(mails) * max(1, workers)
    collector = Collector(settings, out, err, expected)  # before forking: a bad CSV path is an option error
    started = time.monotonic()
    children = _fork_workers(settings, mails, auth, err) if workers else []
    stop = Event()

    def interrupted() -> None:
        stop.set()
        for pid, _ in children:
            try:
                os.kill(pid, signal.SIGINT)
            except ProcessLookupError:
                pass

    handler = gevent.signal_handler(signal.SIGINT, interrupted)
    helpers = []
    if settings.report_periodically is not None:
        out.write(PERIODIC_HEADER + "\n")
        out.flush()

        def periodically(seconds: float) -> None:
            tick = time.monotonic()
            while True:
                tick += seconds
                gevent.sleep(max(0.0, tick - time.monotonic()))
                collector.periodic(time.time(), seconds)
        helpers.append(gevent.spawn(periodically, settings.report_periodically))
    if collector.progress:
        def progress() -> None:
            while True:
                collector.show_progress()
                gevent.sleep(0.5)
        helpers.append(gevent.spawn(progress))

    status = 0
    try:
        if workers:
            status = _collect_workers(children, collector)
        else:
            if settings.shuffle:
                random.shuffle(mails)
            send_all(settings, mails, Sender(settings, auth), collector.add, stop)
        elapsed = time.monotonic() - started
    finally:
        handler.cancel()
        gevent.killall(helpers)
    if settings.report_periodically is not None:
        if collector.pending:  # the mails of the last, partial interval
            collector.periodic(time.time(), time.monotonic() - collector.last_tick)
        out.write("\n")
    collector.close()
    if settings.report == "json":
        out.write(render_json(collector.records, elapsed))
    else:
        out.write(render_report(collector.records, elapsed, with_files=bool(sources),
                                failure_responses=settings.report_failure_responses))
    out.flush()
    problem = unreachable(settings, collector.records)
    if problem:
        err.write(f"milter-performance-check: {problem}\n")
        err.flush()
        status = 1
    return status


def unreachable(settings: Settings, records: list[dict]) -> str | None:
    """When no mail could even connect, the run measured nothing: say where it tried (exit status 1)."""
    if not records or not all("unreachable" in record for record in records):
        return None
    return (f"cannot connect to the SMTP server {settings.smtp_server}:{settings.smtp_port}: "
            f"{records[0]['unreachable']} (all {len(records)} mails failed)")


def _collect_workers(children: list[tuple[int, socket.socket]], collector: Collector) -> int:
    """Read every worker's records until it closes its end, then reap it; 1 if one of them failed."""
    def read(raw: socket.socket) -> None:
        channel = gevent.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM, fileno=raw.detach())
        buffer = b""
        try:
            while True:
                chunk = channel.recv(65536)
                if not chunk:
                    return
                buffer += chunk
                *lines, buffer = buffer.split(b"\n")
                for line in lines:
                    collector.add(json.loads(line))
        finally:
            channel.close()

    gevent.joinall([gevent.spawn(read, raw) for _, raw in children])
    status = 0
    for pid, _ in children:
        _, wait_status = os.waitpid(pid, 0)
        if os.waitstatus_to_exitcode(wait_status) != 0:
            collector.clear_progress()
            collector.err.write(f"worker process {pid} failed: exit status "
                                f"{os.waitstatus_to_exitcode(wait_status)}\n")
            status = 1
    return status
