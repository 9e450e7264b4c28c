"""The disconnect check (M-ERR-8): has the SMTP client gone while children are still working?

A greylisting child that tarpits (taRgrey) keeps the MTA waiting on purpose; a client
that gives up leaves the MTA with a dead SMTP connection. Every
``manager.connection_check_interval`` seconds while a leader waits for a child's reply,
each configured checker is asked; if one says the client has gone, the MTA is answered
``manager.fallback_status_at_disconnect``, the session's children are stopped and a
``[session][disconnected]`` line is logged.

The ``netstat`` checker (the original's name) reads the kernel's TCP tables,
``/proc/net/tcp`` and ``/proc/net/tcp6``, without starting a process. It applies only
when the MTA talks to the manager from this host (a unix socket, loopback or a private
address): only then is the MTA's SMTP connection in this host's tables. The MTA's end of
the SMTP connection (local address = the client's peer) is looked up by the client's
address and port from the connect command, and the MTA's own address and port from the
``{daemon_addr}``/``{if_addr}`` and ``{daemon_port}`` macros when the MTA sent them:

* found ``ESTABLISHED`` (or any state but the closing ones) → connected;
* found ``CLOSE_WAIT``, ``LAST_ACK``, ``CLOSING``, ``CLOSE`` or ``TIME_WAIT`` → gone;
* not found → gone only when the MTA's port is known and something listens on it in
  these tables (so the tables are the MTA's); otherwise connected (another network
  namespace, or not enough facts: never a false alarm).

``"python:module:function"`` checkers are called with a :class:`ConnectionFacts` and
return true while the client is connected.
"""

from __future__ import annotations

import ipaddress
import socket
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from ..net.milter import Interrupt

TCP_TABLES = ("/proc/net/tcp", "/proc/net/tcp6")
#: kernel TCP states (include/net/tcp_states.h) that mean the SMTP client is gone
GONE_STATES = frozenset({"06", "07", "08", "09", "0B"})  # TIME_WAIT, CLOSE, CLOSE_WAIT, LAST_ACK, CLOSING
LISTEN_STATE = "0A"

Address = tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, int]


class ClientDisconnected(Interrupt):
    """Raised into a leader's greenlet waiting for a child: the SMTP client has gone (M-ERR-8).

    A BaseException, so that no ``except Exception`` on the way turns it into a child failure;
    the session hands it to :meth:`Leader.interrupted`.
    """


@dataclass(frozen=True)
class ConnectionFacts:
    """What a checker knows about one MTA session (the original's checker context)."""

    #: the SMTP client's (address, port) as the MTA saw it, from the connect command
    smtp_client_address: tuple[str, int] | None
    #: the MTA's own SMTP (address, port) from ``{daemon_addr}``/``{if_addr}`` and ``{daemon_port}``
    smtp_server_address: tuple[str | None, int | None] | None
    #: the MTA's end of the milter connection: a unix path ("" when unnamed) or (host, port)
    mta_address: object
    #: the MTA's macros of the session so far (name without braces → value)
    macros: Mapping[str, str] = field(default_factory=dict)
    #: the MTA's name and version (macro ``v``)
    smtp_server_name: str | None = None


def _parse_address(text: str) -> Address:
    """``0100007F:0019`` (IPv4) or 32 hex digits (IPv6, four host-order words) → (address, port)."""
    address, _, port = text.partition(":")
    raw = bytes.fromhex(address)
    if len(raw) == 4:
        ip: ipaddress.IPv4Address | ipaddress.IPv6Address = ipaddress.IPv4Address(raw[::-1])
    else:
        words = b"".join(raw[index:index + 4][::-1] for index in range(0, 16, 4))
        ip = ipaddress.IPv6Address(words)
        if ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
    return ip, int(port, 16)


@dataclass(frozen=True)
class TcpEntry:
    local: Address
    remote: Address
    state: str


def read_tcp_tables(paths: tuple[str, ...] = TCP_TABLES) -> list[TcpEntry]:
    """Every socket of the kernel's TCP tables this process can see (missing tables are skipped)."""
    entries = []
    for path in paths:
        try:
            with open(path, encoding="ascii") as table:
                lines = table.read().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) < 4:
                continue
            try:
                entries.append(TcpEntry(_parse_address(fields[1]), _parse_address(fields[2]), fields[3].upper()))
            except ValueError:
                continue
    return entries


class TcpTables:
    """The TCP tables, read at most once per ``max_age`` seconds in a process (many sessions check)."""

    def __init__(self, max_age: float, reader: Callable[[], list[TcpEntry]] = read_tcp_tables) -> None:
        self.max_age = max_age
        self.reader = reader
        self._read_at = float("-inf")
        self._entries: list[TcpEntry] = []

    def entries(self) -> list[TcpEntry]:
        now = time.monotonic()
        if now - self._read_at >= self.max_age:
            self._entries = self.reader()
            self._read_at = now
        return self._entries


def _ip(text: str | None) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    if not text:
        return None
    text = text.strip()
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    if text.lower().startswith("ipv6:"):
        text = text[5:]
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def mta_is_local(mta_address: object) -> bool:
    """The MTA talks to us over a unix socket or from a loopback or private address (M-ERR-8)."""
    if isinstance(mta_address, (str, bytes)):
        return True
    if isinstance(mta_address, tuple) and mta_address:
        ip = _ip(str(mta_address[0]))
        return ip is not None and (ip.is_loopback or ip.is_private or ip.is_link_local)
    return False


def netstat_connected(facts: ConnectionFacts, tables: TcpTables) -> bool:
    """The ``netstat`` checker, from the kernel's TCP tables (see the module's description)."""
    if facts.smtp_client_address is None or not mta_is_local(facts.mta_address):
        return True
    client_ip, client_port = _ip(facts.smtp_client_address[0]), facts.smtp_client_address[1]
    if client_ip is None or not client_port:
        return True
    server_ip = server_port = None
    if facts.smtp_server_address is not None:
        server_ip, server_port = _ip(facts.smtp_server_address[0]), facts.smtp_server_address[1]
    entries = tables.entries()
    found = [entry for entry in entries if entry.remote == (client_ip, client_port)
             and (server_ip is None or entry.local[0] == server_ip)
             and (not server_port or entry.local[1] == server_port)]
    if found:
        return not all(entry.state in GONE_STATES for entry in found)
    if server_port:
        listening = any(entry.state == LISTEN_STATE and entry.local[1] == server_port for entry in entries)
        return not listening
    return True


#: the connect-stage macros the check reads: asked of the MTA when the check is on, as a condition's are (D-2)
CONNECTION_MACROS = ("daemon_addr", "if_addr", "daemon_port", "client_addr", "client_port", "v", "j")


def connection_facts(session, connect_command) -> ConnectionFacts:
    """The facts of a leader's session: the connect command, the macros, the milter socket's peer."""
    macros = {}
    for name in CONNECTION_MACROS:
        value = session.macros.get(name)
        if value is not None:
            macros[name] = value
    client = None
    if connect_command is not None and connect_command.address and connect_command.port:
        client = (connect_command.address, int(connect_command.port))
    elif macros.get("client_addr") and (macros.get("client_port") or "").isdigit():
        client = (macros["client_addr"], int(macros["client_port"]))
    server_host = macros.get("daemon_addr") or macros.get("if_addr")
    server_port = int(macros["daemon_port"]) if (macros.get("daemon_port") or "").isdigit() else None
    try:
        mta_address = session.sock.getpeername()
    except (OSError, AttributeError):
        mta_address = None
    if session.sock is not None and getattr(session.sock, "family", None) == socket.AF_UNIX and not mta_address:
        mta_address = ""
    return ConnectionFacts(client, (server_host, server_port) if server_host or server_port else None,
                           mta_address, macros, macros.get("v"))


@dataclass
class DisconnectCheck:
    """What a serving process's leaders share for the check: interval, checkers, the answer."""

    interval: float
    #: each takes a leader's ConnectionFacts and says whether the client is still connected
    checkers: tuple[Callable[[ConnectionFacts], bool], ...]
    #: the status the MTA gets when the client has gone (a Status)
    status: object


def build_check(interval: float, names: tuple[str, ...], status, resolve: Callable[[str], Callable]
                ) -> DisconnectCheck | None:
    """The check of ``manager.connection_check_interval`` / ``connection_checkers`` or None when off."""
    if interval <= 0 or not names:
        return None
    tables = TcpTables(max_age=min(1.0, interval))
    checkers: list[Callable[[ConnectionFacts], bool]] = []
    for name in names:
        if name == "netstat":
            checkers.append(lambda facts, tables=tables: netstat_connected(facts, tables))
        else:
            checkers.append(resolve(name[len("python:"):]))
    return DisconnectCheck(float(interval), tuple(checkers), status)


class Watch:
    """One session's watcher: a repeating timer that, each interval while the leader waits, asks the
    checkers in a greenlet of their own (a checker may wait on I/O); between checks the session holds
    no greenlet for it.

    The leader enters the watch (``with watch:``) around each wait for children; when a checker says
    the client has gone, :class:`ClientDisconnected` is raised in the waiting greenlet (never outside
    a wait: the watcher re-checks at the moment it raises).
    """

    def __init__(self, check: DisconnectCheck, facts: Callable[[], ConnectionFacts], logger, session_id) -> None:
        self.check = check
        self.facts = facts
        self.logger = logger
        self.session_id = session_id
        self.waiting = 0
        self.target = None
        #: the libev timer, made at the first wait and repeating until :meth:`close`
        self.timer = None
        #: the greenlet asking the checkers, while it runs
        self.checking = None
        self.fired = False

    def __enter__(self) -> Watch:
        import gevent

        self.waiting += 1
        self.target = gevent.getcurrent()
        if self.timer is None:
            interval = self.check.interval
            self.timer = gevent.get_hub().loop.timer(interval, interval)
            self.timer.start(self._tick)
        return self

    def __exit__(self, *exc_info) -> None:
        self.waiting -= 1

    def _connected(self) -> bool:
        facts = self.facts()
        for checker in self.check.checkers:
            try:
                if not checker(facts):
                    return False
            except Exception as error:  # a broken checker says "connected" (never a false alarm)
                self.logger.error(f"[{self.session_id}] [manager][connection-check][error] {error!r}")
        return True

    def _tick(self) -> None:
        """(a loop callback) An interval passed: while the leader waits, have the checkers asked."""
        if self.waiting and self.checking is None and not self.fired:
            import gevent

            self.checking = gevent.spawn(self._run)

    def _run(self) -> None:
        import gevent

        try:
            if self.waiting and not self._connected():
                self.fired = True
                gevent.get_hub().loop.run_callback(self._raise)
        finally:
            self.checking = None

    def _raise(self) -> None:
        target = self.target
        if self.waiting and target is not None and not target.dead:
            target.throw(ClientDisconnected())
        else:  # the wait ended meanwhile: check again at the next one
            self.fired = False

    def close(self) -> None:
        timer, self.timer = self.timer, None
        if timer is not None:
            timer.close()
        checking, self.checking = self.checking, None
        if checking is not None and not checking.dead:
            checking.kill(block=False)


class NoWatch:
    """The watch of a process without the disconnect check: costs nothing."""

    def __enter__(self) -> NoWatch:
        return self

    def __exit__(self, *exc_info) -> None:
        return None

    def close(self) -> None:
        return None


NO_WATCH = NoWatch()


def stop_child(child, status_nick: str) -> None:
    """Send ``A`` then ``Q`` to a child (even one we are waiting for) and close it (M-ERR-8)."""
    from ..net.sockets import send_all
    from ..protocol import ABORT, QUIT

    child.end_status = status_nick
    client = child.client
    if client is not None and not child.quitted:
        try:
            send_all(client.sock, ABORT.encode() + QUIT.encode())
        except OSError:
            pass
    child.quitted = True
    child.in_message = False
    if client is not None:
        client.close(send_quit=False)


def answer_disconnect(leader):
    """The leader's answer once the SMTP client has gone: the statistics line, the children stopped,
    ``manager.fallback_status_at_disconnect`` for the MTA's pending command (M-ERR-8)."""
    from ..log import STATISTICS
    from .status import Combined

    check = leader.manager.disconnect
    status = check.status
    elapsed = time.monotonic() - leader.started
    if leader.logger.enabled(STATISTICS):
        leader.logger.statistics(f"[session][disconnected][{elapsed:g}]({leader.session.id})")
    leader.logger.info(f"[{leader.session.id}] [manager][disconnected] the SMTP client has gone; answering "
                       f"{status.nick} and stopping the children")
    for child in leader.children:
        if not child.quitted:
            stop_child(child, status.nick)
            leader.milter_end(child)
    leader.end_message()
    combined = Combined()
    combined.add(status)
    return leader.reply(combined)
