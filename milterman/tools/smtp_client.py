"""A small SMTP client on gevent sockets, for milter-performance-check.

Why not :mod:`smtplib`: it blocks the whole process unless the standard library is
monkey-patched, and the design forbids monkey-patching. This client speaks just what the
performance check needs: EHLO (falling back to HELO), STARTTLS (gevent's :mod:`ssl`),
XCLIENT, AUTH PLAIN / LOGIN / CRAM-MD5, MAIL, RCPT, DATA with dot-stuffing, RSET and QUIT.

Every reply outside the expected class raises: :class:`SmtpReplyError` for 4xx/5xx (the
performance check counts them as temporary failures and rejects) and the other
:class:`SmtpError` subclasses for what it counts as errors (a malformed or unexpected reply,
the server closing, a capability the server lacks). Timeouts are :class:`TimeoutError` and
socket failures the :class:`OSError` the system gave.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import socket
from dataclasses import dataclass, field

import gevent.socket
import gevent.ssl

from ..net.sockets import set_nodelay

#: Longest reply line we accept; a server sending more is broken (RFC 5321 says 512).
MAX_LINE = 65536
#: Mechanisms we can do, in the order ``auto`` prefers them.
MECHANISM_PREFERENCE = ("CRAM-MD5", "PLAIN", "LOGIN")
XCLIENT_MISSING = "XCLIENT isn't enabled. See smtpd_authorized_xclient_hosts parameter for Postfix."


class SmtpError(Exception):
    """Any failure of an SMTP session that is not a 4xx/5xx reply (counted as an error)."""


class SmtpReplyError(SmtpError):
    """The server answered 4xx or 5xx: a temporary failure or a reject."""

    def __init__(self, reply: Reply) -> None:
        super().__init__(reply.first_line)
        self.reply = reply

    @property
    def temporary(self) -> bool:
        return self.reply.code // 100 == 4


class SmtpProtocolError(SmtpError):
    """A reply that is malformed, or of a class the step does not allow (1xx, a 3xx out of place)."""


class SmtpDisconnected(SmtpError):
    """The server closed the connection before it answered."""


class SmtpUnsupportedError(SmtpError):
    """The server lacks what the options ask for: STARTTLS, XCLIENT, an AUTH mechanism."""


@dataclass
class Reply:
    """One (possibly multi-line) SMTP reply."""

    code: int
    lines: list[str] = field(default_factory=list)
    """The text of each line, without the code and separator."""

    @property
    def first_line(self) -> str:
        """``CODE TEXT`` of the first line: what the failure lists print."""
        return f"{self.code} {self.lines[0]}" if self.lines and self.lines[0] else str(self.code)

    @property
    def full(self) -> str:
        """Every line as the server sent it, joined with newlines."""
        last = len(self.lines) - 1
        return "\n".join(f"{self.code}{' ' if index == last else '-'}{text}" for index, text in enumerate(self.lines))


def normalize_line_ends(message: bytes) -> bytes:
    """The message as DATA carries it: CRLF line ends, ending with a line end."""
    normalized = re.sub(rb"\r?\n|\r", b"\r\n", message)
    return normalized if not normalized or normalized.endswith(b"\r\n") else normalized + b"\r\n"


def dot_stuff(message: bytes) -> bytes:
    """The DATA payload: CRLF line ends, a leading dot doubled, ending with ``CRLF.CRLF``."""
    return re.sub(rb"(?m)^\.", b"..", normalize_line_ends(message)) + b".\r\n"


def xtext(value: str) -> str:
    """RFC 1891 xtext, which XCLIENT attribute values use: ``+``, ``=``, controls and spaces as ``+HH``."""
    return "".join(char if 33 <= ord(char) <= 126 and char not in "+=" else
                   "".join(f"+{byte:02X}" for byte in char.encode("utf-8")) for char in value)


def cram_md5_response(user: str, password: str, challenge: bytes) -> bytes:
    """RFC 2195: ``user HEX(HMAC-MD5(password, challenge))``, base64-encoded."""
    digest = hmac.new(password.encode("utf-8"), challenge, hashlib.md5).hexdigest()
    return base64.b64encode(f"{user} {digest}".encode())


def choose_mechanism(offered: list[str], wanted: str) -> str:
    """The AUTH mechanism to use.

    ``wanted`` is ``auto`` or one of ours (``plain``, ``login``, ``cram_md5``, ``cram-md5``).
    ``auto`` takes CRAM-MD5, then PLAIN, then LOGIN among what the server offers.
    """
    offered_upper = [mechanism.upper() for mechanism in offered]
    if wanted != "auto":
        name = wanted.upper().replace("_", "-")
        if name not in offered_upper:
            raise SmtpUnsupportedError(f"specified mechanism isn't supported: {name} "
                                       f"(offered: [{', '.join(offered_upper)}])")
        return name
    if not offered_upper:
        raise SmtpUnsupportedError("authentication isn't capable")
    for name in MECHANISM_PREFERENCE:
        if name in offered_upper:
            return name
    raise SmtpUnsupportedError(f"all capable authentication mechanisms are not supported: "
                               f"[{', '.join(offered_upper)}]")


class SmtpClient:
    """One SMTP connection. Methods raise on anything but the expected reply class."""

    def __init__(self, host: str, port: int, *, timeout: float = 60.0) -> None:
        self.host = host
        self.port = port
        self.timeout = timeout
        self.sock: socket.socket | None = None
        self._buffer = b""
        self.esmtp = True
        self.extensions: dict[str, str] = {}
        self.tls = False

    # -- transport -------------------------------------------------------------------------------------

    def connect(self) -> Reply:
        """Open the connection (TCP_NODELAY, D-13) and read the greeting (220)."""
        try:
            self.sock = gevent.socket.create_connection((self.host, self.port), timeout=self.timeout)
        except TimeoutError:  # socket.timeout
            raise TimeoutError(f"connecting to {self.host}:{self.port} took longer than {self.timeout:g} s") from None
        set_nodelay(self.sock)
        self.sock.settimeout(self.timeout)
        return self.expect(2)

    def close(self) -> None:
        if self.sock is not None:
            try:
                self.sock.close()
            finally:
                self.sock = None

    def _send(self, data: bytes) -> None:
        if self.sock is None:
            raise SmtpDisconnected("not connected")
        try:
            self.sock.sendall(data)
        except TimeoutError:  # socket.timeout
            raise TimeoutError(f"writing took longer than {self.timeout:g} s") from None

    def _read_line(self) -> bytes:
        while True:
            end = self._buffer.find(b"\n")
            if end >= 0:
                line, self._buffer = self._buffer[:end + 1], self._buffer[end + 1:]
                return line.rstrip(b"\r\n")
            if len(self._buffer) > MAX_LINE:
                raise SmtpProtocolError(f"reply line longer than {MAX_LINE} bytes")
            assert self.sock is not None
            try:
                chunk = self.sock.recv(65536)
            except TimeoutError:  # socket.timeout
                raise TimeoutError(f"no reply within {self.timeout:g} s") from None
            if not chunk:
                raise SmtpDisconnected("connection closed by the server")
            self._buffer += chunk

    def read_reply(self) -> Reply:
        """One reply: lines ``CODE-text`` up to the line ``CODE text``."""
        reply: Reply | None = None
        while True:
            raw = self._read_line()
            text = raw.decode("utf-8", "replace")
            match = re.match(r"^([2-5][0-9][0-9]|1[0-9][0-9])(?:([ -])(.*))?$", text)
            if not match:
                raise SmtpProtocolError(f"malformed reply: <{text}>")
            code = int(match.group(1))
            if reply is None:
                reply = Reply(code)
            elif code != reply.code:
                raise SmtpProtocolError(f"reply code changed inside a multi-line reply: <{text}>")
            reply.lines.append(match.group(3) or "")
            if match.group(2) != "-":
                return reply

    def expect(self, *classes: int) -> Reply:
        """Read a reply; 4xx/5xx raise :class:`SmtpReplyError`, another class not in ``classes`` is a protocol error."""
        reply = self.read_reply()
        first = reply.code // 100
        if first in (4, 5):
            raise SmtpReplyError(reply)
        if first not in classes:
            raise SmtpProtocolError(f"unexpected reply: <{reply.first_line}>")
        return reply

    def command(self, line: str, *classes: int) -> Reply:
        """Send one command line and read its reply (2xx unless ``classes`` says otherwise)."""
        self._send(line.encode("utf-8") + b"\r\n")
        return self.expect(*(classes or (2,)))

    # -- session steps ---------------------------------------------------------------------------------

    def ehlo(self, name: str) -> Reply:
        """EHLO; when the server refuses it with 5xx, HELO (no extensions then), as Ruby's Net::SMTP does."""
        if self.esmtp:
            try:
                reply = self.command(f"EHLO {name}")
            except SmtpReplyError as error:
                if error.temporary:
                    raise
                self.esmtp = False
            else:
                self.extensions = {}
                for line in reply.lines[1:]:
                    if line.upper().startswith("AUTH="):  # the pre-RFC 4954 spelling some servers add
                        line = "AUTH " + line[5:]
                    keyword, _, parameters = line.partition(" ")
                    keyword = keyword.upper()
                    if keyword in self.extensions:
                        parameters = f"{self.extensions[keyword]} {parameters}"
                    self.extensions[keyword] = " ".join(parameters.split())
                return reply
        self.extensions = {}
        return self.command(f"HELO {name}")

    def starttls(self) -> None:
        """STARTTLS and the TLS handshake. Certificates are not checked: this is a load tool for test MTAs."""
        if "STARTTLS" not in self.extensions:
            raise SmtpUnsupportedError("STARTTLS isn't supported by the server")
        self.command("STARTTLS")
        if self._buffer:
            raise SmtpProtocolError("data after the STARTTLS reply before the TLS handshake")
        context = gevent.ssl.SSLContext(gevent.ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = gevent.ssl.CERT_NONE
        assert self.sock is not None
        try:
            self.sock = context.wrap_socket(self.sock, server_hostname=self.host)
        except TimeoutError:  # socket.timeout
            raise TimeoutError(f"TLS handshake took longer than {self.timeout:g} s") from None
        self.tls = True

    def xclient(self, attributes: list[tuple[str, str]]) -> Reply:
        """``XCLIENT NAME=… ADDR=…``; the server starts a new session (Postfix answers 220)."""
        if "XCLIENT" not in self.extensions:
            raise SmtpUnsupportedError(XCLIENT_MISSING)
        return self.command("XCLIENT " + " ".join(f"{name}={xtext(value)}" for name, value in attributes))

    @property
    def auth_mechanisms(self) -> list[str]:
        return list(dict.fromkeys(self.extensions.get("AUTH", "").upper().split()))

    def auth(self, user: str, password: str, mechanism: str = "auto") -> Reply:
        """Authenticate with the mechanism :func:`choose_mechanism` picks; 235 expected at the end."""
        name = choose_mechanism(self.auth_mechanisms, mechanism)
        if name == "PLAIN":
            token = base64.b64encode(f"\0{user}\0{password}".encode()).decode("ascii")
            return self.command(f"AUTH PLAIN {token}")
        if name == "LOGIN":
            self.command("AUTH LOGIN", 3)
            self.command(base64.b64encode(user.encode()).decode("ascii"), 3)
            return self.command(base64.b64encode(password.encode()).decode("ascii"))
        challenge_reply = self.command("AUTH CRAM-MD5", 3)
        try:
            challenge = base64.b64decode(challenge_reply.lines[0].strip(), validate=True)
        except ValueError:
            raise SmtpProtocolError(f"bad CRAM-MD5 challenge: <{challenge_reply.first_line}>") from None
        return self.command(cram_md5_response(user, password, challenge).decode("ascii"))

    def mail(self, sender: str) -> Reply:
        return self.command(f"MAIL FROM:<{sender}>")

    def rcpt(self, recipient: str) -> Reply:
        return self.command(f"RCPT TO:<{recipient}>")

    def data(self, message: bytes) -> Reply:
        """DATA (354), the dot-stuffed message, and the final reply."""
        self.command("DATA", 3)
        self._send(dot_stuff(message))
        return self.expect(2)

    def rset(self) -> Reply:
        return self.command("RSET")

    def quit(self) -> None:
        """QUIT and close; a server that already left is fine here."""
        try:
            if self.sock is not None:
                self.command("QUIT")
        except (SmtpError, OSError):
            pass
        finally:
            self.close()
