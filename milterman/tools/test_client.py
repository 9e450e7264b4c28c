"""milter-test-client: a milter that answers continue and prints what it receives.

Used to see what an MTA (Postfix, milter-test-server, milter-manager) really sends,
macros included. The output format is the manual's; the per-session statistics
and memory lines go through the logger (ST-FINISHED).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import TextIO

from ..log import STATISTICS, Logger, logger as default_logger
from ..net import MilterHandler, MilterSession, Wanted
from ..protocol import Family, Negotiate, Step, action_names, step_names
from ..server import memory


def render_connect_address(command) -> str:
    """The address as the manual renders socket addresses."""
    if command.family == Family.INET:
        return f"inet:{command.port}@[{command.ip}]"
    if command.family == Family.INET6:
        return f"inet6:{command.port}@[{command.ip}]"
    if command.family == Family.UNIX:
        return f"unix:{command.address}"
    return "unknown"


@dataclass
class ClientSettings:
    """What the command line decides for the test client."""

    report_request: bool = True
    report_memory_profile: bool = False
    max_pending_finished_sessions: int = 0
    packet_buffer_size: int = 0


_SKIP = int(Step.SKIP)


class TestClient:
    """Shared state of every session: output stream, counters, the finished-session line."""

    __test__ = False  # not a pytest class

    def __init__(self, settings: ClientSettings, *, out: TextIO | None = None,
                 logger: Logger = default_logger) -> None:
        self.settings = settings
        self.out = out or sys.stdout
        self.logger = logger
        self.total_finished = 0
        self.pending_finished = 0
        self.processing = 0

    def handler_factory(self, session: MilterSession) -> "TestClientHandler":
        return TestClientHandler(session, self)

    def session_started(self) -> None:
        self.processing += 1

    def session_finished(self, session_id: int) -> None:
        """Count a finished session and emit ST-FINISHED in batches."""
        self.processing -= 1
        self.total_finished += 1
        self.pending_finished += 1
        batch = self.settings.max_pending_finished_sessions
        if self.pending_finished > batch or batch == 0:
            if self.logger.enabled(STATISTICS):
                self.logger.statistics(f"[sessions][finished] {self.total_finished}(+{self.pending_finished}) "
                                       f"{self.processing}")
            self.pending_finished = 0
        if self.settings.report_memory_profile and self.logger.enabled(STATISTICS):
            self.logger.statistics(memory.session_line(session_id))


class TestClientHandler(MilterHandler):
    """Prints each event and its macros, answers continue to everything."""

    def __init__(self, session: MilterSession, client: TestClient) -> None:
        super().__init__(session)
        self.client = client
        self.report = client.settings.report_request
        self.context: str | None = None
        #: the macros printed for the current context; abort and unknown repeat them
        self.context_macros: dict[str, str] = {}
        self.started = False

    def _start(self) -> None:
        if not self.started:
            self.started = True
            self.client.session_started()

    def _event(self, text: str, context: str | None) -> None:
        """Print one event line and the macros of its context (the previous one when ``None``)."""
        self._start()
        if context is not None:
            self.context = context
        if not self.report:
            return
        if context is not None:
            # Kept, not looked up again: an abort clears the message macros before abort() runs,
            # yet abort repeats the previous command's macros (TC-OUT-4).
            self.context_macros = self.session.macros.stage(context)
        lines = [text, "\n"]
        macros = self.context_macros
        if macros:
            lines.append("macros:\n")
            for name, value in macros.items():
                lines.append(f"  {name}={value}\n")
        out = self.client.out
        out.write("".join(lines))
        out.flush()

    def negotiate(self, offer: Negotiate) -> Wanted:
        """Echo the offered actions and ask for every event and reply."""
        if self.report:
            self._event(f"negotiate: version=<{offer.version}>, action=<{action_names(offer.actions)}>, "
                        f"step=<{step_names(offer.protocol)}>", None)
        else:
            self._start()
        return Wanted(actions=offer.actions, protocol=offer.protocol & _SKIP)

    def connect(self, command):
        self._event(f"connect: host=<{command.hostname}>, address=<{render_connect_address(command)}>", "C")

    def helo(self, command):
        self._event(f"helo: <{command.name}>", "H")

    def envelope_from(self, command):
        self._event(f"envelope-from: <{command.address}>", "M")

    def envelope_recipient(self, command):
        self._event(f"envelope-recipient: <{command.address}>", "R")

    def data(self, command):
        self._event("data", "T")

    def unknown(self, command):
        self._event(f"unknown: <{command.command}>", None)

    def header(self, command):
        self._event(f"header: <{command.name}: {command.value}>", "L")

    def end_of_header(self, command):
        self._event("end-of-header", "N")

    def body(self, command):
        self._event(f"body: <{command.chunk.decode('utf-8', 'surrogateescape')}>", "B")

    def end_of_message(self, command):
        if command.chunk:
            self._event(f"end-of-message: <{command.chunk.decode('utf-8', 'surrogateescape')}>", "E")
        else:
            self._event("end-of-message", "E")

    def abort(self):
        self._event("abort", None)

    def close(self):
        if not self.started:
            return
        if self.report:
            self.client.out.write("finished\n")
            self.client.out.flush()
        self.client.session_finished(self.session.id)

    def protocol_error(self, error):
        if self.report:
            self.client.out.write(f"ERROR: {error}\n")
            self.client.out.flush()
        return None
