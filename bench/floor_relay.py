#!/usr/bin/env python3
"""The floor: the least any manager written in Python on gevent can cost on this machine.

A relay with no logic at all, run by ``make bench`` as a peer in the same alternated rounds as
milter-manager, so that the manager's CPU and latency figures can be read against what the bytes'
journey alone costs here: accepting the MTA's connection, a connection per child, every packet
written to each child that gets it, every reply read (waiting on the event loop only when it is not
there yet), one reply to the MTA.
It does what the manager does with the packets, in the same order, and nothing else:

- the envelope commands (connect, HELO, MAIL, RCPT, DATA) go to every child at once, and the
  replies are read once all are written (as the manager's fan-out does);
- the message commands (header, end of header, body) go to the first child only, and the others
  get them all at end of message, one command and one reply at a time (as the manager's replay);
- macros leave in the same write as their command; QUIT and abort are written without a reply.

There are no rules, no state machines, no timeouts, no logging and no checks: it is an instrument,
never a milter to run in front of mail. Packets are split by their length prefix only (no codec),
because decoding them is part of the work being measured against. It speaks to milters that
answer every command (as bench/cmilter does) and passes the first child's replies to the MTA.

    floor_relay.py LISTEN_PATH CHILD_PATH [CHILD_PATH ...]      (unix socket paths)
"""

from __future__ import annotations

import os
import socket
import sys
import tempfile
from collections.abc import Sequence

from greenlet import getcurrent

ENVELOPE = frozenset(b"CHMRT")
MESSAGE = frozenset(b"LNB")
NO_REPLY = frozenset(b"AQK")


class Peer:
    """One connection: whole packets out of a byte stream; a read that finds nothing waits on the event loop.

    As in the manager, a read is tried before any wait, and the socket's read watcher stays started for the
    connection's life (its callback wakes the greenlet only when one waits): starting and stopping a watcher
    between loop iterations would cost an ``epoll_ctl`` per wait, which the manager does not pay either.
    """

    __slots__ = ("sock", "pending", "readable", "hub", "waiter")

    def __init__(self, sock: socket.socket, hub) -> None:
        self.sock = sock
        self.pending = b""
        self.hub = hub
        self.waiter = None
        self.readable = hub.loop.io(sock.fileno(), 1)
        self.readable.start(self._ready)

    def _ready(self) -> None:
        waiter, self.waiter = self.waiter, None
        if waiter is not None:
            waiter.switch()

    def packet(self) -> bytes:
        """The next whole packet, length prefix included."""
        while True:
            pending = self.pending
            if len(pending) >= 4:
                end = 4 + int.from_bytes(pending[:4], "big")
                if len(pending) >= end:
                    self.pending = pending[end:]
                    return pending[:end]
            try:
                data = self.sock.recv(65536)
            except BlockingIOError:
                self.waiter = getcurrent()
                self.hub.switch()
                continue
            if not data:
                raise EOFError
            self.pending = pending + data if pending else data

    def close(self) -> None:
        self.readable.close()
        self.sock.close()


def relay(mta_socket: socket.socket, child_paths: Sequence[str], hub) -> None:
    """One MTA session, relayed to a fresh connection per child."""
    mta_socket.setblocking(False)
    mta = Peer(mta_socket, hub)
    children: list[Peer] = []
    replay: list[bytes] = []
    try:
        while True:
            packet = mta.packet()
            letter = packet[4]
            if letter == ord("D"):  # macros: they leave in the same write as their command
                command = mta.packet()
                letter = command[4]
                packet += command
            if letter == ord("O"):
                for path in child_paths:
                    child_socket = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_NONBLOCK)
                    child_socket.connect(path)  # a unix socket's listener takes it at once or refuses
                    children.append(Peer(child_socket, hub))
                letter = ord("C")  # the negotiation goes to every child, as the envelope does
            if letter in ENVELOPE:
                for child in children:
                    child.sock.send(packet)
                replies = [child.packet() for child in children]
                mta.sock.send(replies[0])
            elif letter in MESSAGE:
                replay.append(packet)
                children[0].sock.send(packet)
                mta.sock.send(children[0].packet())
            elif letter == ord("E"):
                children[0].sock.send(packet)
                reply = children[0].packet()
                for child in children[1:]:
                    for earlier in replay:
                        child.sock.send(earlier)
                        child.packet()
                    child.sock.send(packet)
                    child.packet()
                replay.clear()
                mta.sock.send(reply)
            elif letter in NO_REPLY:
                replay.clear()
                for child in children:
                    child.sock.send(packet)
                if letter != ord("A"):
                    return
            else:
                raise RuntimeError(f"floor relay: command {chr(letter)!r} is not relayed")
    except EOFError:
        pass
    finally:
        for child in children:
            child.close()
        mta.close()


def serve(listen_path: str, child_paths: Sequence[str]) -> None:
    """Accept forever, one greenlet per MTA session."""
    import gevent

    hub = gevent.get_hub()
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(listen_path)
    listener.listen(128)
    listener.setblocking(False)
    acceptable = hub.loop.io(listener.fileno(), 1)
    while True:
        hub.wait(acceptable)
        while True:
            try:
                connection, _ = listener.accept()
            except BlockingIOError:
                break
            gevent.spawn(relay, connection, child_paths, hub)


def measure_floor(directory: str, n_children: int, sessions: int, concurrency: int) -> dict:
    """The floor relay with ``n_children`` libmilter C children, measured as the manager is (bench/harness.py)."""
    from harness import child_command, measure, start_milter, stop, wait_for_path

    place = tempfile.mkdtemp(prefix=f"floor-{n_children}-", dir=directory)
    children, paths = [], []
    try:
        for number in range(n_children):
            path = f"{place}/child{number}.sock"
            children.append(start_milter(child_command("c", path), path))
            paths.append(path)
        listen = f"{place}/relay.sock"
        label = f"floor relay (no logic), {n_children} libmilter C child{'ren' if n_children > 1 else ''}"
        result = measure(label, [sys.executable, os.path.abspath(__file__), listen, *paths], f"unix:{listen}",
                         sessions, concurrency, lambda process: wait_for_path(listen, process), helpers=children)
        result["children"] = n_children
        return result
    finally:
        for child in children:
            stop(child, timeout=10)


if __name__ == "__main__":
    if len(sys.argv) < 3:
        raise SystemExit(__doc__.rstrip().splitlines()[-1].strip())
    serve(sys.argv[1], sys.argv[2:])
