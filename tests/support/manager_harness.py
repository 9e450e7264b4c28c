"""Run the real ``milter-manager`` against scripted children and talk to it as an MTA would.

``ManagerProcess``
    ``python -m milterman.cli.manager -c DIR --no-detect`` as a subprocess in its own
    session, its standard output collected by a reader thread; bounded wait until
    its unix socket accepts; stopped with SIGTERM (the exit status is returned).
``ManagerEnv``
    One test's world: scripted child milters (``tests/support/scripted_milter.py``,
    unix sockets), the TOML configuration naming them, the manager process and the
    MTA connections opened to it. ``close()`` stops everything and reports what
    went wrong (exit status, leftover processes, milter thread errors).
``Mta``
    A plain blocking socket speaking the MTA side of the protocol to the manager.
    Every packet the manager sends is decoded and kept, so a test can assert the
    exact sequence (``i 2 X-C1`` then ``r``…); reads are bounded.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import psutil

from milterman.protocol import (ABORT, DATA, END_OF_HEADER, END_OF_MESSAGE, QUIT, QUIT_NEW_CONNECTION, Body,
                                Command, Connect, Family, Header, Helo, Macro, Mail, Negotiate, NegotiateReply,
                                Rcpt, Reply, ReplyDecoder, Unknown)
from milterman.protocol.negotiation import Options

from scripted_milter import ScriptedMilter, short_dir

#: subprocesses start outside the checkout, so they import the installed package (issue 8)
RUN_DIR = "/"
PYTHON = sys.executable

#: the MTA's offer of manager.md §16: v6, every action, every protocol bit
OFFER = Negotiate(6, 0x1FF, 0x1FFFFF)


def clean_env(**extra: str) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items()
           if not key.startswith(("MILTER_", "LISTEN_")) and key not in ("TERM", "COLUMNS", "NOTIFY_SOCKET")}
    env.update(extra)
    return env


def wait_until(predicate: Callable[[], object], timeout: float, what: str, interval: float = 0.02):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


# ------------------------------------------------------------------------------------------ TOML


def toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(item) for item in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{key} = {toml_value(item)}" for key, item in value.items()) + " }"
    raise TypeError(value)


def toml_table(header: str, table: dict) -> list[str]:
    return [header, *(f"{key} = {toml_value(value)}" for key, value in table.items()), ""]


def configuration_text(manager: dict, milters: list[dict], log: dict | None = None, extra: str = "") -> str:
    lines = ["version = 1", ""]
    lines += toml_table("[manager]", manager)
    lines += toml_table("[log]", {"use_syslog": False, **(log or {})})
    for milter in milters:
        lines += toml_table("[[milter]]", milter)
    return "\n".join(lines) + extra


# ------------------------------------------------------------------------------------------ the manager


class ManagerProcess:
    """A running milter-manager (master and, with n_workers > 0, its workers)."""

    def __init__(self, config_dir: Path, socket_path: Path, env: dict[str, str] | None = None) -> None:
        self.config_dir = config_dir
        self.socket_path = socket_path
        self.argv = [PYTHON, "-m", "milterman.cli.manager", "-c", str(config_dir), "--no-detect"]
        self._lines: list[str] = []
        self._lock = threading.Lock()
        self.proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, env=env or clean_env(), cwd=RUN_DIR,
                                     start_new_session=True)
        #: every process of this manager we saw (psutil objects check for pid reuse when killing)
        self.known: dict[int, psutil.Process] = {self.proc.pid: psutil.Process(self.proc.pid)}
        self._reader = threading.Thread(target=self._read, name="manager-output", daemon=True)
        self._reader.start()
        self.returncode: int | None = None

    def _read(self) -> None:
        for raw in iter(self.proc.stdout.readline, b""):
            with self._lock:
                self._lines.append(raw.decode("utf-8", "surrogateescape"))
        self.proc.stdout.close()

    @property
    def output(self) -> str:
        with self._lock:
            return "".join(self._lines)

    def remember_children(self) -> list[int]:
        try:
            children = self.known[self.proc.pid].children(recursive=True)
        except psutil.Error:
            return []
        for child in children:
            self.known.setdefault(child.pid, child)
        return [child.pid for child in children]

    def wait_listening(self, timeout: float = 15.0, n_workers: int = 0) -> None:
        def connected() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"milter-manager exited with {self.proc.returncode}: {self.output}")
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
                probe.settimeout(1)
                try:
                    probe.connect(str(self.socket_path))
                    return True
                except OSError:
                    return False

        wait_until(connected, timeout, f"milter-manager to listen on {self.socket_path}: {self.output}")
        if n_workers:
            wait_until(lambda: len(self.remember_children()) >= n_workers, timeout,
                       f"{n_workers} workers: {self.output}")

    def wait_output(self, text: str, timeout: float = 10.0, count: int = 1) -> str:
        return wait_until(lambda: self.output if self.output.count(text) >= count else None, timeout,
                          f"{text!r} in the manager's output:\n{self.output}")

    def stop(self, timeout: float = 15.0) -> int:
        """SIGTERM to the master; wait for it and every worker; the master's exit status."""
        self.remember_children()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            self.returncode = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"milter-manager did not exit within {timeout} s of SIGTERM:\n{self.output}") \
                from None
        deadline = time.monotonic() + 5
        leftovers = self._alive()
        while leftovers and time.monotonic() < deadline:
            time.sleep(0.05)
            leftovers = self._alive()
        if leftovers:
            self.kill()
            raise AssertionError(f"milter-manager left processes behind: {leftovers}")
        self._reader.join(5)
        return self.returncode

    def _alive(self) -> list[int]:
        alive = []
        for pid, process in self.known.items():
            try:
                if process.is_running() and process.status() != psutil.STATUS_ZOMBIE:
                    alive.append(pid)
            except psutil.Error:
                pass
        return alive

    def kill(self) -> None:
        """Last resort at teardown: SIGKILL every process of this manager we know (by pid)."""
        self.remember_children()
        for process in self.known.values():
            try:
                if process.is_running():
                    process.kill()
            except psutil.Error:
                pass
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            pass
        self._reader.join(5)


# ------------------------------------------------------------------------------------------ the MTA side


class Mta:
    """One MTA connection to the manager; ``packets`` is everything the manager sent, in order."""

    def __init__(self, path: Path, timeout: float = 10.0) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(str(path))
        self.timeout = timeout
        self.decoder = ReplyDecoder()
        self.packets: list[Reply] = []
        self.options: Options | None = None
        self.closed_by_peer = False

    # ------------------------------------------------------------ raw I/O

    def send(self, command: Command, macros: dict[str, str] | None = None) -> None:
        data = b""
        if macros:
            data += Macro(command.LETTER, tuple(macros.items())).encode()
        self.sock.sendall(data + command.encode())

    def _next_packet(self, deadline: float) -> Reply | None:
        while True:
            packet = self.decoder.next_message()
            if packet is not None:
                self.packets.append(packet)
                return packet
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            self.sock.settimeout(remaining)
            try:
                data = self.sock.recv(262144)
            except TimeoutError:
                return None
            except OSError:
                self.closed_by_peer = True
                return None
            if not data:
                self.closed_by_peer = True
                return None
            self.decoder.feed(data)

    def read_reply(self, timeout: float | None = None) -> list[Reply]:
        """Packets up to and including the next final reply (modifications and progress come first)."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        got: list[Reply] = []
        while True:
            packet = self._next_packet(deadline)
            if packet is None:
                raise AssertionError(f"no final reply within the timeout (closed: {self.closed_by_peer}); "
                                     f"so far: {got}")
            got.append(packet)
            if packet.FINAL:
                return got

    def silence(self, seconds: float = 0.3) -> list[Reply]:
        """What arrives within ``seconds`` (a test asserts it is nothing)."""
        deadline = time.monotonic() + seconds
        got = []
        while True:
            packet = self._next_packet(deadline)
            if packet is None:
                return got
            got.append(packet)

    def exchange(self, command: Command, macros: dict[str, str] | None = None,
                 timeout: float | None = None) -> list[Reply]:
        self.send(command, macros)
        return self.read_reply(timeout)

    # ------------------------------------------------------------ commands

    def negotiate(self, offer: Negotiate = OFFER, timeout: float | None = None) -> NegotiateReply:
        packets = self.exchange(offer, timeout=timeout)
        assert len(packets) == 1 and isinstance(packets[0], NegotiateReply), packets
        reply = packets[0]
        self.options = Options(reply.version, reply.actions, reply.protocol, reply.macro_lists)
        return reply

    def sends(self, letter: str) -> bool:
        return self.options is None or letter in self.options.sent

    def connect(self, host: str = "mx.example.net", address: str = "192.0.2.1", macros=None) -> list[Reply]:
        return self.exchange(Connect(host, Family.INET, 4321, address), macros)

    def helo(self, name: str = "client.example.net", macros=None) -> list[Reply]:
        return self.exchange(Helo(name), macros)

    def mail(self, sender: str = "<sender@example.org>", macros=None) -> list[Reply]:
        return self.exchange(Mail(sender), macros)

    def rcpt(self, recipient: str = "<rcpt@example.org>", macros=None) -> list[Reply]:
        return self.exchange(Rcpt(recipient), macros)

    def data(self, macros=None) -> list[Reply]:
        return self.exchange(DATA, macros)

    def header(self, name: str, value: str, macros=None) -> list[Reply]:
        return self.exchange(Header(name, value), macros)

    def end_of_header(self, macros=None) -> list[Reply]:
        return self.exchange(END_OF_HEADER, macros)

    def body(self, chunk: bytes, macros=None) -> list[Reply]:
        return self.exchange(Body(chunk), macros)

    def end_of_message(self, macros=None, timeout: float | None = None) -> list[Reply]:
        return self.exchange(END_OF_MESSAGE, macros, timeout)

    def unknown(self, text: str = "HELP") -> list[Reply]:
        return self.exchange(Unknown(text))

    def abort(self) -> None:
        self.send(ABORT)

    def quit(self) -> None:
        try:
            self.send(QUIT)
        except OSError:
            pass

    def quit_new_connection(self) -> None:
        self.send(QUIT_NEW_CONNECTION)

    def session_start(self) -> None:
        """negotiate, connect, helo, each answered ``c``."""
        self.negotiate()
        assert letters(self.connect()) == ["c"]
        assert letters(self.helo()) == ["c"]

    def envelope(self, sender: str = "<sender@example.org>",
                 recipients: Iterable[str] = ("<rcpt@example.org>",)) -> None:
        assert letters(self.mail(sender)) == ["c"]
        for recipient in recipients:
            assert letters(self.rcpt(recipient)) == ["c"]

    def content(self, headers: Iterable[tuple[str, str]] = (("Subject", "hello"),),
                body: Iterable[bytes] = (b"body\r\n",)) -> list[Reply]:
        """DATA, headers, EOH, body chunks (each answered ``c``), then EOM: its packets."""
        assert letters(self.data()) == ["c"]
        for name, value in headers:
            assert letters(self.header(name, value)) == ["c"], (name, value)
        assert letters(self.end_of_header()) == ["c"]
        for chunk in body:
            assert letters(self.body(chunk)) == ["c"]
        return self.end_of_message()

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


def letters(packets: Iterable[Reply]) -> list[str]:
    return [packet.LETTER for packet in packets]


def one_session(env: "ManagerEnv") -> None:
    """One mail through the manager that every child continues; then quit."""
    mta = env.mta()
    mta.session_start()
    assert letters(mta.mail()) == ["c"]
    mta.quit()
    mta.close()


# ------------------------------------------------------------------------------------------ one test's world


class ManagerEnv:
    """Scripted children, a configuration, the manager and MTA connections, with one teardown."""

    def __init__(self, tmp_path: Path) -> None:
        self.dir = short_dir(tmp_path)
        self.milters: dict[str, ScriptedMilter] = {}
        self.manager: ManagerProcess | None = None
        self.mtas: list[Mta] = []
        self.socket_path = self.dir / "manager.sock"
        self.n_workers = 0

    def milter(self, name: str) -> ScriptedMilter:
        """A scripted child listening on ``DIR/NAME.sock`` (its script may be set until a session starts)."""
        scripted = ScriptedMilter(self.dir / f"{name}.sock")
        self.milters[name] = scripted
        return scripted

    def start(self, milters: list[dict], manager: dict | None = None, log: dict | None = None,
              extra: str = "", n_workers: int = 0, env: dict[str, str] | None = None) -> ManagerProcess:
        """Write ``milter-manager.toml`` and start the manager (bounded wait until it listens).

        Each milter dict needs ``name``; ``connection_spec`` defaults to the scripted child of that name.
        """
        entries = []
        for milter in milters:
            entry = dict(milter)
            if "connection_spec" not in entry and "python" not in entry:  # python: an in-process child
                entry["connection_spec"] = self.milters[entry["name"]].spec
            entries.append(entry)
        manager_table = {"connection_spec": f"unix:{self.socket_path}", "n_workers": n_workers,
                         "graceful_timeout": 5.0, **(manager or {})}
        text = configuration_text(manager_table, entries, log, extra)
        (self.dir / "milter-manager.toml").write_text(text)
        self.n_workers = manager_table["n_workers"]
        self.manager = ManagerProcess(self.dir, self.socket_path, env)
        self.manager.wait_listening(n_workers=self.n_workers)
        return self.manager

    def mta(self, timeout: float = 10.0) -> Mta:
        connection = Mta(self.socket_path, timeout)
        self.mtas.append(connection)
        return connection

    def close(self) -> list[str]:
        """Stop everything; the list of problems found (empty when all went well)."""
        problems = []
        for connection in self.mtas:
            connection.close()
        if self.manager is not None:
            try:
                code = self.manager.stop()
                if code != 0:
                    problems.append(f"milter-manager exited with {code}:\n{self.manager.output[-3000:]}")
            except AssertionError as error:
                problems.append(str(error))
        for name, scripted in self.milters.items():
            scripted.stop()
            if scripted.thread.is_alive():
                problems.append(f"the thread of scripted milter {name} did not stop")
            if scripted.thread_error is not None:
                problems.append(f"scripted milter {name} failed: {scripted.thread_error!r}")
            errors = [record.error for record in scripted.sessions if record.error is not None]
            if errors:
                problems.append(f"scripted milter {name}: MilterSession.run() raised {errors!r}")
        return problems
