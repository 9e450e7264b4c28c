"""A tiny SMTP server that accepts every mail, for the interop tests.

Standard library only (sockets and threads; no ``smtpd``, which Python 3.12 removed, and no
aiosmtpd).  It listens on 127.0.0.1 on an ephemeral port, answers EHLO/HELO, MAIL, RCPT, DATA,
RSET, NOOP and QUIT, and keeps every message it received (envelope sender, recipients and the
raw data, dot-unstuffed) in a thread-safe list.

    with SmtpSink() as sink:
        ...  # let something relay to 127.0.0.1:sink.port
        [msg] = sink.wait_for(1, timeout=10)
        assert msg.mail_from == "alice@example.org"
"""

from __future__ import annotations

import dataclasses
import itertools
import socket
import threading
import time

__all__ = ["SmtpSink", "SinkMessage"]

#: Longest command line accepted (RFC 5321 says 512; be generous).
_MAX_LINE = 4096
#: Largest message accepted, so a runaway client cannot fill the memory.
_MAX_DATA = 64 * 1024 * 1024


@dataclasses.dataclass(frozen=True)
class SinkMessage:
    """One message the sink received."""

    mail_from: str
    """Envelope sender without the angle brackets ("" for the null sender)."""
    rcpt_tos: tuple[str, ...]
    """Envelope recipients without angle brackets, in the order given."""
    data: bytes
    """The message as sent after DATA: CRLF line ends, dot-unstuffed, without the final "."."""
    helo: str
    """The argument of the last EHLO/HELO."""
    mail_options: tuple[str, ...]
    """ESMTP parameters of MAIL FROM (e.g. "BODY=8BITMIME", "SIZE=123")."""
    rcpt_options: tuple[tuple[str, ...], ...]
    """ESMTP parameters of each RCPT TO, parallel to ``rcpt_tos``."""
    peer: tuple[str, int]
    """The client's address."""
    queue_id: str
    """The id the sink answered with ("250 2.0.0 Ok: queued as <queue_id>")."""

    @property
    def headers(self) -> list[tuple[str, str]]:
        """The header fields (name, unfolded value without leading blank), in order."""
        head = self.data.split(b"\r\n\r\n", 1)[0].decode("utf-8", "replace")
        fields: list[tuple[str, str]] = []
        for line in head.split("\r\n"):
            if line[:1] in (" ", "\t") and fields:
                name, value = fields[-1]
                fields[-1] = (name, value + "\r\n" + line)
            elif ":" in line:
                name, value = line.split(":", 1)
                fields.append((name, value.lstrip(" \t")))
        return fields

    def header(self, name: str) -> str | None:
        """The value of the first header field called ``name`` (any case), or None."""
        for field, value in self.headers:
            if field.lower() == name.lower():
                return value
        return None

    @property
    def body(self) -> bytes:
        """Everything after the blank line that ends the header."""
        parts = self.data.split(b"\r\n\r\n", 1)
        return parts[1] if len(parts) == 2 else b""


def _strip_path(arg: str) -> tuple[str, tuple[str, ...]]:
    """Split "<addr> PARAM=x ..." into the address (without brackets) and the parameters."""
    arg = arg.strip()
    if arg.startswith("<"):
        end = arg.find(">")
        if end < 0:
            return arg[1:], ()
        address, rest = arg[1:end], arg[end + 1 :]
    else:
        address, _, rest = arg.partition(" ")
    return address, tuple(rest.split())


class _LineReader:
    """Reads CRLF (or bare LF) terminated lines from a socket, bounded in length."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._buf = b""

    def readline(self) -> bytes | None:
        while True:
            pos = self._buf.find(b"\n")
            if pos >= 0:
                line, self._buf = self._buf[: pos + 1], self._buf[pos + 1 :]
                return line
            if len(self._buf) > _MAX_DATA:
                return None
            chunk = self._sock.recv(65536)
            if not chunk:
                return None
            self._buf += chunk


class SmtpSink:
    """An SMTP server on 127.0.0.1 that accepts and keeps every mail.

    ``host``/``port`` tell where it listens; ``messages`` is a snapshot of what arrived;
    ``wait_for(n, timeout)`` blocks until at least n messages arrived.  ``close()`` stops
    the server and waits for its threads (also done by leaving a ``with`` block).
    """

    hostname = "sink.milterman.test"

    def __init__(self, host: str = "127.0.0.1", port: int = 0, *, idle_timeout: float = 30.0) -> None:
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind((host, port))
        self._listener.listen(16)
        self._listener.settimeout(0.2)
        self.host, self.port = self._listener.getsockname()[:2]
        self.idle_timeout = idle_timeout
        self._messages: list[SinkMessage] = []
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._ids = itertools.count(1)
        self._threads: list[threading.Thread] = []
        self._conns: set[socket.socket] = set()
        self.connections = 0
        """How many SMTP connections were accepted so far."""
        self.errors: list[str] = []
        """Protocol errors seen (unknown commands, bad sequences): for debugging tests."""
        self._acceptor = threading.Thread(target=self._accept_loop, name=f"smtp-sink:{self.port}", daemon=True)
        self._acceptor.start()

    # -- public API ------------------------------------------------------------------------

    @property
    def address(self) -> tuple[str, int]:
        return (self.host, self.port)

    @property
    def messages(self) -> list[SinkMessage]:
        """A copy of the messages received so far, in arrival order."""
        with self._cond:
            return list(self._messages)

    def __len__(self) -> int:
        with self._cond:
            return len(self._messages)

    def wait_for(self, n: int = 1, timeout: float = 10.0) -> list[SinkMessage]:
        """Wait until at least ``n`` messages arrived; return them all.

        Raises TimeoutError (saying how many arrived) when ``timeout`` seconds pass first.
        """
        deadline = time.monotonic() + timeout
        with self._cond:
            while len(self._messages) < n:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(
                        f"smtp sink on port {self.port}: {len(self._messages)} of {n} message(s) "
                        f"arrived within {timeout:g}s"
                    )
                self._cond.wait(left)
            return list(self._messages)

    def clear(self) -> None:
        """Forget the messages received so far."""
        with self._cond:
            self._messages.clear()

    def close(self) -> None:
        """Stop listening, close open connections and wait for the threads to end."""
        if self._stop.is_set():
            return
        self._stop.set()
        self._acceptor.join(5)
        with self._cond:
            conns = list(self._conns)
        for conn in conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        for thread in list(self._threads):
            thread.join(5)
        self._listener.close()

    def __enter__(self) -> "SmtpSink":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<SmtpSink {self.host}:{self.port} messages={len(self)}>"

    # -- server ----------------------------------------------------------------------------

    def _accept_loop(self) -> None:
        while not self._stop.is_set():
            try:
                conn, peer = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                if self._stop.is_set():
                    return
                time.sleep(0.05)
                continue
            conn.settimeout(self.idle_timeout)
            with self._cond:
                self.connections += 1
                self._conns.add(conn)
                self._threads = [t for t in self._threads if t.is_alive()]
            thread = threading.Thread(
                target=self._serve, args=(conn, peer), name=f"smtp-sink:{self.port}:{peer[1]}", daemon=True
            )
            self._threads.append(thread)
            thread.start()

    def _serve(self, conn: socket.socket, peer: tuple[str, int]) -> None:
        try:
            self._session(conn, peer)
        except (OSError, UnicodeError) as exc:
            if not self._stop.is_set():
                self.errors.append(f"{peer}: {exc!r}")
        finally:
            with self._cond:
                self._conns.discard(conn)
            try:
                conn.close()
            except OSError:
                pass

    def _session(self, conn: socket.socket, peer: tuple[str, int]) -> None:
        reader = _LineReader(conn)

        def reply(text: str) -> None:
            conn.sendall(text.encode("utf-8") + b"\r\n")

        reply(f"220 {self.hostname} ESMTP milterman test sink")
        helo = ""
        mail_from: str | None = None
        mail_options: tuple[str, ...] = ()
        rcpts: list[str] = []
        rcpt_options: list[tuple[str, ...]] = []
        while not self._stop.is_set():
            raw = reader.readline()
            if raw is None:
                return
            line = raw.rstrip(b"\r\n").decode("utf-8", "surrogateescape")
            if len(raw) > _MAX_LINE:
                reply("500 5.5.2 Line too long")
                continue
            verb, _, arg = line.partition(" ")
            verb = verb.upper()
            if verb == "EHLO":
                helo = arg.strip()
                mail_from, rcpts, rcpt_options = None, [], []
                reply(
                    f"250-{self.hostname}\r\n250-PIPELINING\r\n250-SIZE {_MAX_DATA}\r\n"
                    "250-8BITMIME\r\n250-ENHANCEDSTATUSCODES\r\n250 SMTPUTF8"
                )
            elif verb == "HELO":
                helo = arg.strip()
                mail_from, rcpts, rcpt_options = None, [], []
                reply(f"250 {self.hostname}")
            elif verb == "MAIL":
                if not arg.upper().startswith("FROM:"):
                    reply("501 5.5.4 Syntax: MAIL FROM:<address>")
                    continue
                mail_from, mail_options = _strip_path(arg[5:])
                rcpts, rcpt_options = [], []
                reply("250 2.1.0 Ok")
            elif verb == "RCPT":
                if mail_from is None:
                    self.errors.append(f"{peer}: RCPT before MAIL")
                    reply("503 5.5.1 Error: need MAIL command")
                    continue
                if not arg.upper().startswith("TO:"):
                    reply("501 5.5.4 Syntax: RCPT TO:<address>")
                    continue
                address, options = _strip_path(arg[3:])
                rcpts.append(address)
                rcpt_options.append(options)
                reply("250 2.1.5 Ok")
            elif verb == "DATA":
                if mail_from is None or not rcpts:
                    self.errors.append(f"{peer}: DATA without MAIL/RCPT")
                    reply("503 5.5.1 Error: need RCPT command")
                    continue
                reply("354 End data with <CR><LF>.<CR><LF>")
                data = self._read_data(reader)
                if data is None:
                    return
                queue_id = f"SINK{next(self._ids):06d}"
                message = SinkMessage(
                    mail_from=mail_from,
                    rcpt_tos=tuple(rcpts),
                    data=data,
                    helo=helo,
                    mail_options=mail_options,
                    rcpt_options=tuple(rcpt_options),
                    peer=(str(peer[0]), int(peer[1])),
                    queue_id=queue_id,
                )
                with self._cond:
                    self._messages.append(message)
                    self._cond.notify_all()
                mail_from, rcpts, rcpt_options = None, [], []
                reply(f"250 2.0.0 Ok: queued as {queue_id}")
            elif verb == "RSET":
                mail_from, rcpts, rcpt_options = None, [], []
                reply("250 2.0.0 Ok")
            elif verb == "NOOP":
                reply("250 2.0.0 Ok")
            elif verb == "QUIT":
                reply("221 2.0.0 Bye")
                return
            else:
                self.errors.append(f"{peer}: unknown command {line[:80]!r}")
                reply("502 5.5.2 Error: command not recognized")

    @staticmethod
    def _read_data(reader: _LineReader) -> bytes | None:
        lines: list[bytes] = []
        size = 0
        while True:
            raw = reader.readline()
            if raw is None:
                return None
            if raw in (b".\r\n", b".\n"):
                return b"".join(lines)
            if raw.startswith(b"."):
                raw = raw[1:]
            size += len(raw)
            if size > _MAX_DATA:
                return None
            lines.append(raw)
