"""Fixtures for the behaviour tests of milter-test-server and milter-test-client (tools.md §1, §2).

``milter``
    A scripted milter built on our own :class:`milterman.net.MilterSession` and a
    :class:`milterman.net.MilterHandler` subclass, served by a gevent
    ``StreamServer`` inside a background thread that runs its own hub (gevent hubs
    are per thread; nothing is monkey-patched). It records every packet received
    (letter, decoded command, the macros of that stage) and the raw bytes, per
    session. A :class:`Script` decides what it answers, which steps it asks for
    in negotiation and where it stops answering.
``run_server``
    Runs ``milter-test-server`` as a real subprocess and returns a :class:`Run`.
``start_client``
    Starts ``milter-test-client`` as a real subprocess on a unix socket, waits
    (bounded) until it accepts connections, collects its stdout with a reader
    thread and stops it with a signal.
"""

from __future__ import annotations

import io
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from milterman.log import Logger
from milterman.net import MilterHandler, MilterSession, Wanted, bind_listener, parse_spec
from milterman.protocol import CommandDecoder, ConnectionFailure, Macro, Reply

from tools_support import REPO, STAGE_LETTERS, Run, Script, clean_env, run_tool, short_dir

# ------------------------------------------------------------------------------------ the scripted milter


@dataclass
class Received:
    """One packet the milter read: its letter, the decoded command and the macros of its stage."""

    letter: str
    command: object
    macros: dict[str, str] = field(default_factory=dict)


class SessionRecord:
    """Everything one milter session saw."""

    def __init__(self) -> None:
        self.received: list[Received] = []
        self.raw = bytearray()
        self.calls: list[str] = []          # handler callbacks: abort, close
        self.done = threading.Event()
        self.error: BaseException | None = None
        self.session: MilterSession | None = None

    def on_command(self, command) -> None:
        letter = command.LETTER
        macros = {}
        if letter in STAGE_LETTERS and self.session is not None:
            macros = dict(self.session.macros.stage(letter))
        self.received.append(Received(letter, command, macros))

    # ------------------------------------------------------------ queries used by the tests

    @property
    def letters(self) -> list[str]:
        """Command letters in arrival order, macro packets left out."""
        return [item.letter for item in self.received if item.letter != "D"]

    @property
    def letters_with_macros(self) -> list[str]:
        return [item.letter for item in self.received]

    def count(self, letter: str) -> int:
        return sum(1 for item in self.received if item.letter == letter)

    def commands(self, letter: str) -> list:
        return [item.command for item in self.received if item.letter == letter]

    def command(self, letter: str):
        found = self.commands(letter)
        assert len(found) == 1, f"expected one {letter!r}, got {len(found)}: {self.letters}"
        return found[0]

    def macros(self, letter: str, index: int = 0) -> dict[str, str]:
        """Macros of the ``index``-th command ``letter`` (brace-stripped names)."""
        return [item.macros for item in self.received if item.letter == letter][index]

    @property
    def macro_packets(self) -> list[Macro]:
        return [item.command for item in self.received if item.letter == "D"]


class RecordingDecoder(CommandDecoder):
    """The session's command decoder, recording raw bytes and every decoded packet."""

    __slots__ = ("record",)

    def __init__(self, record: SessionRecord, **kwargs) -> None:
        super().__init__(**kwargs)
        self.record = record

    def feed(self, data: bytes) -> None:
        self.record.raw += data
        super().feed(data)

    def __iter__(self):
        for command in super().__iter__():
            # The previous packet (a macro packet included) was fully handled before we resume,
            # so the stage macros of this command are already stored.
            self.record.on_command(command)
            yield command


class ScriptedSession(MilterSession):
    """A MilterSession that records what it reads and may send a scripted connection-failure reply."""

    def __init__(self, sock, handler_factory, record: SessionRecord, **kwargs) -> None:
        self.record = record
        super().__init__(sock, handler_factory, **kwargs)
        self.decoder = RecordingDecoder(record, max_data_size=self.decoder.max_data_size,
                                        strict=self.decoder.strict)
        record.session = self

    def queue(self, reply: Reply) -> None:
        if isinstance(reply, ConnectionFailure):
            # P-RPL-12 forbids a real milter to send `f`; the script sends it anyway to test the MTA side
            # (TS-REPLY-6, P-BAD-35), so the state check is bypassed for this one reply.
            self.state.awaiting = None
            self._outgoing.append(reply.encode())
            return
        super().queue(reply)


class ScriptedHandler(MilterHandler):
    def __init__(self, session: ScriptedSession, milter: "ScriptedMilter") -> None:
        super().__init__(session)
        self.milter = milter
        self.script = milter.script
        self.record = session.record
        self.seen: Counter[str] = Counter()

    def _maybe_hang(self, letter: str) -> None:
        if self.script.hang == letter:
            import gevent

            deadline = time.monotonic() + 60
            while not self.milter.stopping.is_set() and time.monotonic() < deadline:
                gevent.sleep(0.02)

    def _answer(self, letter: str, command) -> Reply | None:
        self._maybe_hang(letter)
        occurrence = self.seen[letter]
        self.seen[letter] += 1
        scripted = self.script.replies.get(letter)
        if scripted is None:
            return None
        if isinstance(scripted, list):
            return scripted[occurrence] if occurrence < len(scripted) else None
        if isinstance(scripted, Reply):
            return scripted
        return scripted(self.session, command)

    def negotiate(self, offer) -> Wanted:
        self._maybe_hang("O")
        script = self.script
        return Wanted(actions=offer.actions if script.actions is None else script.actions,
                      protocol=script.protocol, macro_lists=script.macro_lists)

    def connect(self, command):
        return self._answer("C", command)

    def helo(self, command):
        return self._answer("H", command)

    def envelope_from(self, command):
        return self._answer("M", command)

    def envelope_recipient(self, command):
        return self._answer("R", command)

    def data(self, command):
        return self._answer("T", command)

    def unknown(self, command):
        return self._answer("U", command)

    def header(self, command):
        return self._answer("L", command)

    def end_of_header(self, command):
        return self._answer("N", command)

    def body(self, command):
        return self._answer("B", command)

    def end_of_message(self, command):
        return self._answer("E", command)

    def abort(self) -> None:
        self.record.calls.append("abort")

    def close(self) -> None:
        self.record.calls.append("close")


class ScriptedMilter:
    """A milter on a unix socket, served from a background thread with its own gevent hub."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.spec = f"unix:{path}"
        self.script = Script()
        self.sessions: list[SessionRecord] = []
        self.stopping = threading.Event()
        self.log = io.StringIO()
        self.logger = Logger(stream=self.log)
        self._changed = threading.Condition()
        self._ready = threading.Event()
        self.thread_error: BaseException | None = None
        self.listener = bind_listener(parse_spec(self.spec))
        self.thread = threading.Thread(target=self._serve, name="scripted-milter", daemon=True)
        self.thread.start()
        assert self._ready.wait(10), "scripted milter thread did not start"

    def _serve(self) -> None:
        try:
            import gevent
            from gevent import socket as gsocket
            from gevent.server import StreamServer

            hub = gevent.get_hub()  # this thread's own hub
            listener = self.listener
            sock = gsocket.socket(listener.family, listener.type, listener.proto,
                                  fileno=os.dup(listener.fileno()))
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
        except BaseException as error:  # reported at teardown
            self.thread_error = error
            self._ready.set()

    def _handle(self, sock, address) -> None:
        record = SessionRecord()
        with self._changed:
            self.sessions.append(record)
        try:
            ScriptedSession(sock, self._factory, record, logger=self.logger).run()
        except Exception as error:
            record.error = error
        finally:
            record.done.set()
            with self._changed:
                self._changed.notify_all()

    def _factory(self, session: ScriptedSession) -> ScriptedHandler:
        return ScriptedHandler(session, self)

    def wait_sessions(self, count: int, timeout: float = 10.0) -> list[SessionRecord]:
        """The first ``count`` sessions, once each has finished (bounded wait)."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                if len(self.sessions) >= count and all(record.done.is_set() for record in self.sessions[:count]):
                    return list(self.sessions[:count])
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(f"expected {count} finished milter sessions, have "
                                         f"{sum(r.done.is_set() for r in self.sessions)} of {len(self.sessions)}")
                self._changed.wait(min(remaining, 0.1))

    @property
    def session(self) -> SessionRecord:
        """The one session of a single-session test."""
        records = self.wait_sessions(1)
        time.sleep(0.05)
        assert len(self.sessions) == 1, f"expected one milter session, got {len(self.sessions)}"
        return records[0]

    def stop(self) -> None:
        self.stopping.set()
        self.thread.join(10)
        self.listener.close()
        try:
            if self.path.is_socket():
                self.path.unlink()
        except OSError:
            pass


@pytest.fixture
def milter(tmp_path):
    scripted = ScriptedMilter(short_dir(tmp_path) / "milter.sock")
    yield scripted
    scripted.stop()
    assert not scripted.thread.is_alive(), "the scripted milter thread did not stop"
    assert scripted.thread_error is None, f"scripted milter thread failed: {scripted.thread_error!r}"
    errors = [record.error for record in scripted.sessions if record.error is not None]
    assert not errors, f"MilterSession.run() raised: {errors!r}"


# ------------------------------------------------------------------------------------ running the tools


@pytest.fixture
def run_server():
    """``run_server(*args, input=None, timeout=30, env=None)`` → :class:`Run` of milter-test-server."""

    def run(*args: str, **kwargs) -> Run:
        return run_tool("test_server", *args, **kwargs)

    return run


class ClientProcess:
    """A running milter-test-client; stdout is collected line by line by a reader thread."""

    def __init__(self, args: list[str], env: dict[str, str], probe: str | Path | tuple[str, int]) -> None:
        self.args = args
        self.probe = probe
        self.proc = subprocess.Popen([sys.executable, "-m", "milterman.cli.test_client", *args],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=REPO)
        self._lines: list[str] = []
        self._stderr: list[str] = []
        self._lock = threading.Lock()
        self._readers = [threading.Thread(target=self._read, args=(self.proc.stdout, self._lines), daemon=True),
                         threading.Thread(target=self._read, args=(self.proc.stderr, self._stderr), daemon=True)]
        for reader in self._readers:
            reader.start()

    def _read(self, stream, sink: list[str]) -> None:
        for raw in iter(stream.readline, b""):
            with self._lock:
                sink.append(raw.decode("utf-8", "surrogateescape"))
        stream.close()

    @property
    def stdout(self) -> str:
        with self._lock:
            return "".join(self._lines)

    @property
    def stderr(self) -> str:
        with self._lock:
            return "".join(self._stderr)

    def wait_ready(self, timeout: float = 10.0) -> None:
        """Bounded wait until the socket accepts a connection (the probe sends nothing)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"milter-test-client exited with {self.proc.returncode}: "
                                     f"{self.stdout!r} {self.stderr!r}")
            family = socket.AF_INET if isinstance(self.probe, tuple) else socket.AF_UNIX
            address = self.probe if isinstance(self.probe, tuple) else str(self.probe)
            with socket.socket(family, socket.SOCK_STREAM) as probe:
                probe.settimeout(1)
                try:
                    probe.connect(address)
                    return
                except OSError:
                    pass
            time.sleep(0.02)
        raise AssertionError(f"milter-test-client did not listen within {timeout} s: {self.stdout!r}")

    def wait_for(self, predicate: Callable[[str], bool], timeout: float = 10.0) -> str:
        """Bounded wait until ``predicate(stdout)`` holds; returns stdout."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.stdout
            if predicate(text):
                return text
            time.sleep(0.02)
        raise AssertionError(f"timed out waiting for milter-test-client output; have: {self.stdout!r}")

    def wait_finished(self, count: int = 1, timeout: float = 10.0) -> str:
        """Wait until ``count`` sessions printed ``finished`` and logged their statistics line."""
        return self.wait_for(lambda text: text.count("[sessions][finished]") >= count, timeout)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> int:
        """Send ``sig`` to the client (by its pid) and wait for it to exit; returns the exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
            raise AssertionError(f"milter-test-client did not exit within {timeout} s after signal {sig}") from None
        for reader in self._readers:
            reader.join(5)
        return code

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)
        for reader in self._readers:
            reader.join(5)


@pytest.fixture
def socket_dir(tmp_path) -> Path:
    return short_dir(tmp_path)


@pytest.fixture
def start_client(socket_dir):
    """``start_client(*args, spec=None, env=None, probe=None, ready=True)`` → a listening :class:`ClientProcess`.

    Without ``spec`` a unix socket in ``socket_dir`` is used (``-s unix:PATH``);
    ``spec=False`` passes no ``-s`` at all (``probe`` then says where to connect).
    """
    started: list[ClientProcess] = []

    def start(*args: str, spec: str | bool | None = None, env: dict[str, str] | None = None,
              probe=None, ready: bool = True) -> ClientProcess:
        arguments = list(args)
        if spec is None:
            path = socket_dir / f"client{len(started)}.sock"
            spec = f"unix:{path}"
            probe = probe or path
        if spec is not False:
            arguments = ["-s", spec, *arguments]
        client = ClientProcess(arguments, env or clean_env(), probe)
        client.spec = spec
        started.append(client)
        if ready:
            client.wait_ready()
        return client

    yield start
    for client in started:
        client.kill()
