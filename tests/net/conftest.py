"""A MilterSession server for the tests of milterman.net: a gevent StreamServer in a background thread.

The thread runs its own gevent hub (hubs are per thread; nothing is
monkey-patched). Each accepted connection is served by a real
:class:`milterman.net.MilterSession`; the tests talk to it with plain blocking
sockets and look at what the handler saw and what the session logged.
"""

from __future__ import annotations

import io
import os
import socket
import tempfile
import threading
import time
from pathlib import Path

import pytest

from milterman.log import Logger
from milterman.net import MilterHandler, MilterSession, Wanted, bind_listener, parse_spec
from milterman.protocol import ReplyDecoder


def short_dir(tmp_path: Path) -> Path:
    """``tmp_path``, or a short directory when unix socket paths would get too long."""
    if len(str(tmp_path)) < 80:
        return tmp_path
    return Path(tempfile.mkdtemp(prefix="mn-", dir="/tmp"))


class RecordingHandler(MilterHandler):
    """Records every callback; ``fail_at`` names a stage method that raises RuntimeError."""

    def __init__(self, session, server: "SessionServer") -> None:
        super().__init__(session)
        self.calls: list[str] = []
        self.fail_at = server.fail_at
        server.handlers.append(self)

    def _call(self, name: str):
        self.calls.append(name)
        if name == self.fail_at:
            raise RuntimeError(f"scripted failure in {name}")
        return None

    def negotiate(self, offer) -> Wanted:
        self._call("negotiate")
        return Wanted(actions=offer.actions)

    def connect(self, command):
        return self._call("connect")

    def helo(self, command):
        return self._call("helo")

    def envelope_from(self, command):
        return self._call("envelope_from")

    def envelope_recipient(self, command):
        return self._call("envelope_recipient")

    def data(self, command):
        return self._call("data")

    def header(self, command):
        return self._call("header")

    def end_of_header(self, command):
        return self._call("end_of_header")

    def body(self, command):
        return self._call("body")

    def end_of_message(self, command):
        return self._call("end_of_message")

    def abort(self) -> None:
        self._call("abort")

    def close(self) -> None:
        self._call("close")


class SessionServer:
    """Serves MilterSession on a unix socket from a background thread with its own gevent hub."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.fail_at: str | None = None
        self.handlers: list[RecordingHandler] = []
        self.raised: list[BaseException] = []
        self.finished = 0
        self.log = io.StringIO()
        self.logger = Logger(stream=self.log)
        self.stopping = threading.Event()
        self._changed = threading.Condition()
        self._ready = threading.Event()
        self.thread_error: BaseException | None = None
        self.listener = bind_listener(parse_spec(f"unix:{path}"))
        self.thread = threading.Thread(target=self._serve, name="session-server", daemon=True)
        self.thread.start()
        assert self._ready.wait(10)

    def _serve(self) -> None:
        try:
            import gevent
            from gevent import socket as gsocket
            from gevent.server import StreamServer

            hub = gevent.get_hub()
            listener = self.listener
            sock = gsocket.socket(listener.family, listener.type, listener.proto, fileno=os.dup(listener.fileno()))
            server = StreamServer(sock, self._handle)

            def watch() -> None:
                while not self.stopping.is_set():
                    gevent.sleep(0.02)
                server.stop(timeout=2)

            gevent.spawn(watch)
            self._ready.set()
            server.serve_forever()
            sock.close()
            hub.destroy(destroy_loop=True)
        except BaseException as error:
            self.thread_error = error
            self._ready.set()

    def _handle(self, sock, address) -> None:
        try:
            MilterSession(sock, lambda session: RecordingHandler(session, self), logger=self.logger,
                          idle_timeout=10).run()
        except BaseException as error:  # run() must never raise; recorded for the tests
            self.raised.append(error)
        finally:
            with self._changed:
                self.finished += 1
                self._changed.notify_all()

    def wait_finished(self, count: int, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        with self._changed:
            while self.finished < count:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(f"expected {count} finished sessions, have {self.finished}")
                self._changed.wait(min(remaining, 0.1))

    def stop(self) -> None:
        self.stopping.set()
        self.thread.join(10)
        self.listener.close()
        if self.path.is_socket():
            self.path.unlink()


@pytest.fixture
def session_server(tmp_path):
    server = SessionServer(short_dir(tmp_path) / "session.sock")
    yield server
    server.stop()
    assert not server.thread.is_alive()
    assert server.thread_error is None, repr(server.thread_error)


class RawMta:
    """A blocking MTA-side socket: send raw bytes, read replies, see EOF."""

    def __init__(self, path: Path, timeout: float = 5.0) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(str(path))
        self.decoder = ReplyDecoder()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def reply(self):
        """The next reply, or None at EOF (a timeout fails the test)."""
        while True:
            message = self.decoder.next_message()
            if message is not None:
                return message
            data = self.sock.recv(65536)
            if not data:
                return None
            self.decoder.feed(data)

    def read_to_eof(self) -> bytes:
        """Everything until the peer closes (bounded by the socket timeout)."""
        chunks = []
        while True:
            data = self.sock.recv(65536)
            if not data:
                return b"".join(chunks)
            chunks.append(data)

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def raw_mta(session_server):
    opened: list[RawMta] = []

    def connect() -> RawMta:
        mta = RawMta(session_server.path)
        opened.append(mta)
        return mta

    yield connect
    for mta in opened:
        mta.close()
