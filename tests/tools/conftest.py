"""Fixtures for the behaviour tests of milter-test-server and milter-test-client (tools.md §1, §2).

``milter``
    The scripted milter of ``tests/support/scripted_milter.py`` (our own
    MilterSession served from a background thread with its own gevent hub,
    recording every packet; a :class:`Script` decides what it answers).
``run_server``
    Runs ``milter-test-server`` as a real subprocess and returns a :class:`Run`.
``start_client``
    Starts ``milter-test-client`` as a real subprocess on a unix socket, waits
    (bounded) until it accepts connections, collects its stdout with a reader
    thread and stops it with a signal.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tools_support import RUN_DIR, Run, clean_env, run_tool, short_dir

# tests/support/scripted_milter.py, put on sys.path by tools_support
from scripted_milter import ScriptedMilter  # noqa: E402

# ------------------------------------------------------------------------------------ the scripted milter


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
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=RUN_DIR)
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
