#!/usr/bin/env python3
"""make bench, memory part: RSS of milter-manager with many sessions held open at once.

The manager (3 children on unix sockets, n_workers 0 and 2) is warmed up, then ``--held``
sessions are opened at once and each is taken past negotiation, connect, HELO and MAIL FROM
and held there; then all are closed. The RSS of the manager's process tree is read idle
(after the warm-up), at the peak (all held) and again some seconds after they closed:
KiB per concurrent session is (peak - idle) / held, and after / idle says whether the memory
was given back. The serving processes (the workers, or the master with n_workers 0) are
shown on their own as well, since the master of a pre-fork server holds no session.

The MTA side is spoken through ``milterman.protocol`` (its codec and MTA-side state machine),
with one selectors loop in this process; every wait is bounded.
"""

from __future__ import annotations

import argparse
import os
import selectors
import signal
import socket
import subprocess
import sys
import tempfile
import time

import psutil
from harness import child_command, wait_for_path  # bench/harness.py, beside this file

HERE = os.path.dirname(os.path.abspath(__file__))

#: sessions being negotiated at once while the held set is built (the rest wait their turn)
OPENING_WINDOW = 100


class HeldSession:
    """One MTA connection driven to MAIL FROM and held there (the MTA side of P-SM-9)."""

    __slots__ = ("sock", "state", "decoder", "commands", "done")

    def __init__(self, path: str, number: int) -> None:
        from milterman.protocol import (Action, Connect, Family, Helo, Macro, Mail, MtaState, Negotiate, ReplyDecoder,
                                        Step)

        offer = Negotiate(6, int(Action.ALL), int(Step.ALL))
        self.state = MtaState(offer)
        self.decoder = ReplyDecoder()
        self.commands = [offer,
                         Macro("C", (("j", "mx.example.test"), ("daemon_name", "bench"), ("_", "client [127.0.0.1]"))),
                         Connect(f"client{number}.example.test", Family.INET, 40000 + number % 20000, "127.0.0.1"),
                         Helo("client.example.test"),
                         Macro("M", (("i", f"Q{number:08d}"), ("mail_addr", "sender@example.test"))),
                         Mail("<sender@example.test>", ("SIZE=1000",))]
        self.done = False
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(30)
        self.sock.connect(path)
        self.sock.setblocking(False)

    def advance(self) -> None:
        """Send the next commands up to one that is owed a reply (or to the end: held)."""
        while self.commands:
            command = self.commands.pop(0)
            owed = self.state.send(command)
            self.sock.sendall(command.encode())  # a few hundred bytes: a unix socket takes them at once
            if owed:
                return
        self.done = True

    def readable(self) -> None:
        """Read replies; a final one moves the session on."""
        data = self.sock.recv(65536)
        if not data:
            raise RuntimeError("the manager closed a held session")
        self.decoder.feed(data)
        while (reply := self.decoder.next_message()) is not None:
            if self.state.receive(reply):
                if reply.LETTER not in ("O", "c"):
                    raise RuntimeError(f"the manager answered {reply!r} to a held session")
                self.advance()

    def close(self) -> None:
        from milterman.protocol import QUIT

        try:
            if self.state.can_quit:
                self.state.send(QUIT)
                self.sock.sendall(QUIT.encode())
        except OSError:
            pass
        self.sock.close()


def hold_sessions(path: str, count: int, timeout: float = 120.0) -> list[HeldSession]:
    """Open ``count`` sessions to the manager at ``path`` and take each past MAIL FROM (bounded)."""
    selector = selectors.DefaultSelector()
    held: list[HeldSession] = []
    opening = 0
    started = 0
    deadline = time.monotonic() + timeout
    try:
        while len(held) < count:
            while opening < OPENING_WINDOW and started < count:
                session = HeldSession(path, started)
                started += 1
                opening += 1
                session.advance()
                selector.register(session.sock, selectors.EVENT_READ, session)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise RuntimeError(f"only {len(held)} of {count} sessions were held within {timeout:g} s")
            for key, _events in selector.select(min(remaining, 1.0)):
                session = key.data
                session.readable()
                if session.done:
                    selector.unregister(session.sock)
                    opening -= 1
                    held.append(session)
    except BaseException:
        for session in held:
            session.close()
        for key in list(selector.get_map().values()):
            key.data.close()
        raise
    finally:
        selector.close()
    return held


def release(held: list[HeldSession]) -> None:
    for session in held:
        session.close()


def rss_kb(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        try:
            total += psutil.Process(pid).memory_info().rss // 1024
        except psutil.Error:
            pass
    return total


def manager_pids(master: int) -> tuple[list[int], list[int]]:
    """The manager's whole tree, and the processes that serve sessions (workers, or the master alone)."""
    root = psutil.Process(master)
    tree = [root, *root.children(recursive=True)]
    workers = [process.pid for process in root.children() if "worker" in " ".join(_title(process))]
    return [process.pid for process in tree], workers or [master]


def _title(process: psutil.Process) -> list[str]:
    try:
        return process.cmdline()
    except psutil.Error:
        return []


def stop(process: subprocess.Popen) -> None:
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=5)


def measure_memory(directory: str, n_workers: int, held_count: int, *, n_children: int = 3, kind: str = "cmilter",
                   warm_up: int = 50, settle: float = 7.0) -> dict:
    """One manager: idle, peak with ``held_count`` sessions held, and after they closed (RSS in KiB)."""
    config = os.path.join(directory, f"memory-{n_workers}")
    os.makedirs(config, exist_ok=True)
    socket_path = f"{config}/manager.sock"
    lines = ["version = 1", "[manager]", f'connection_spec = "unix:{socket_path}"', f"n_workers = {n_workers}",
             "[log]", "use_syslog = false", 'level = "error"']
    children = []
    try:
        for number in range(n_children):
            path = f"{config}/child{number}.sock"
            command = child_command("c" if kind == "cmilter" else "client", path)
            children.append(subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=config))
            wait_for_path(path, children[-1])
            lines += ["[[milter]]", f'name = "child{number}"', f'connection_spec = "unix:{path}"']
        with open(f"{config}/milter-manager.toml", "w") as handle:
            handle.write("\n".join(lines) + "\n")
        # cwd: the installed package is measured, not a checkout that ``-m`` would find in the current directory
        manager = subprocess.Popen([sys.executable, "-m", "milterman.cli.manager", "-c", config, "--no-detect"],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=config)
        try:
            wait_for_path(socket_path, manager)
            if n_workers:
                _wait_workers(manager.pid, n_workers)
            release(hold_sessions(socket_path, warm_up))
            time.sleep(settle)
            tree, serving = manager_pids(manager.pid)
            idle, idle_serving = rss_kb(tree), rss_kb(serving)
            held = hold_sessions(socket_path, held_count)
            time.sleep(0.5)
            peak, peak_serving = rss_kb(tree), rss_kb(serving)
            release(held)
            time.sleep(settle)
            after, after_serving = rss_kb(tree), rss_kb(serving)
        finally:
            stop(manager)
    finally:
        for child in children:
            stop(child)
    return {"label": f"manager, {n_children} {kind} children, n_workers {n_workers}", "held": held_count,
            "idle_kb": idle, "peak_kb": peak, "after_kb": after, "serving_idle_kb": idle_serving,
            "serving_peak_kb": peak_serving, "serving_after_kb": after_serving,
            "kib_per_session": (peak - idle) / held_count, "after_over_idle": after / idle,
            "serving_after_over_idle": after_serving / idle_serving}


def _wait_workers(master: int, n_workers: int, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if len(manager_pids(master)[1]) >= n_workers and manager_pids(master)[1] != [master]:
            return
        time.sleep(0.1)
    raise RuntimeError(f"the manager did not start {n_workers} workers within {timeout:g} s")


def print_memory(title: str, rows: list[dict]) -> None:
    print(title)
    print(f"  {'measured':44} {'idle MB':>8} {'peak MB':>8} {'after MB':>8} {'KiB/sess':>8} {'after/idle':>10}"
          f"   serving: {'idle':>6} {'peak':>6} {'after':>6} {'after/idle':>10}")
    for row in rows:
        print(f"  {row['label']:44} {row['idle_kb'] / 1024:8.1f} {row['peak_kb'] / 1024:8.1f} "
              f"{row['after_kb'] / 1024:8.1f} {row['kib_per_session']:8.1f} {row['after_over_idle']:10.2f}"
              f"   {'':9}{row['serving_idle_kb'] / 1024:6.1f} {row['serving_peak_kb'] / 1024:6.1f} "
              f"{row['serving_after_kb'] / 1024:6.1f} {row['serving_after_over_idle']:10.2f}")
    print("  targets: <= 16 KiB per concurrent session; after/idle <= 1.20")


def memory_part(directory: str, held: int = 1000, kind: str = "cmilter", settle: float = 7.0) -> list[dict]:
    """The rows of ``make bench`` (n_workers 0 and 2)."""
    if kind == "cmilter":
        result = subprocess.run(["make", "-s", "-C", HERE], capture_output=True, text=True)
        if result.returncode != 0:
            raise SystemExit(f"bench: building the C milter failed (libmilter-dev?):\n{result.stdout}{result.stderr}")
    rows = [measure_memory(directory, n_workers, held, kind=kind, settle=settle) for n_workers in (0, 2)]
    print_memory(f"\nMemory: {held} sessions held open at once (past MAIL FROM), then closed; RSS after "
                 f"{settle:g} s", rows)
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--held", type=int, default=1000, help="sessions held open at once")
    parser.add_argument("--children", choices=("cmilter", "test-client"), default="cmilter",
                        help="the 3 children: bench/cmilter (libmilter) or milter-test-client")
    parser.add_argument("--settle", type=float, default=7.0, help="seconds to wait before reading idle and after")
    parser.add_argument("--workers", type=int, action="append", help="n_workers to measure (default: 0 and 2)")
    options = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="milterman-memory-") as directory:
        if options.workers:
            if options.children == "cmilter":
                subprocess.run(["make", "-s", "-C", HERE], check=True)
            rows = [measure_memory(directory, n, options.held, kind=options.children, settle=options.settle)
                    for n in options.workers]
            print_memory(f"Memory: {options.held} sessions held", rows)
        else:
            memory_part(directory, options.held, options.children, options.settle)
    return 0


if __name__ == "__main__":
    sys.exit(main())
