"""The controller socket (D-7, M-CTL-1): status, reload and the effective configuration.

Off unless a spec is configured; a unix socket (mode 0660 by default) or a loopback
inet address. Each message is a 4-byte big-endian length, then ``command\\0payload``.
Commands and answers:

* ``status`` → ``status\\0JSON`` (the master, its workers with their counters);
* ``reload`` → ``success\\0`` once the reload was requested (the same path as SIGHUP; the
  log says whether the new configuration was taken), or ``error\\0…``;
* ``get-configuration`` → ``configuration\\0TOML`` (the effective configuration);
* anything else, including ``set-configuration`` (not offered, D-7) → ``error\\0MESSAGE``.

It runs in a thread of the master with standard-library sockets, so it serves whether
the master supervises workers or serves sessions itself, and never touches gevent.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Callable

from ..log import Logger
from ..log import logger as default_logger
from ..net.framing import encode_fields, read_fields
from ..net.spec import ConnectionSpec
from .listening import ListeningThread

MAX_REQUEST = 1 << 20


def encode(command: str, payload: str = "") -> bytes:
    return encode_fields(command, payload)


def read_message(sock: socket.socket) -> tuple[str, str] | None:
    """One framed message → (command, payload); None at EOF or for an oversized frame."""
    fields = read_fields(sock, MAX_REQUEST)
    if fields is None:
        return None
    return fields[0], "\0".join(fields[1:])


def request(spec: ConnectionSpec, command: str, payload: str = "", timeout: float = 10.0) -> tuple[str, str]:
    """A client call (for tests and administrators' scripts)."""
    with socket.socket(spec.socket_family, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(spec.sockaddr)
        sock.sendall(encode(command, payload))
        answer = read_message(sock)
    if answer is None:
        raise ConnectionError("the controller closed the connection")
    return answer


class Controller(ListeningThread):
    """The controller's listening thread."""

    name = "controller"

    def __init__(self, spec: ConnectionSpec, *, status: Callable[[], dict], reload: Callable[[], None],
                 configuration: Callable[[], str], unix_mode: int = 0o660, unix_group: str | None = None,
                 logger: Logger = default_logger, remove_on_create: bool = True,
                 remove_on_close: bool = True) -> None:
        super().__init__(spec, unix_mode=unix_mode, unix_group=unix_group, remove_on_create=remove_on_create,
                         remove_on_close=remove_on_close, setting="controller.remove_unix_socket_on_create",
                         logger=logger)
        self.status = status
        self.reload = reload
        self.configuration = configuration

    def serve_client(self, client: socket.socket, address: object) -> None:
        client.settimeout(10.0)
        while True:
            message = read_message(client)
            if message is None:
                return
            command, _payload = message
            client.sendall(self._answer(command))

    def _answer(self, command: str) -> bytes:
        try:
            if command == "status":
                return encode("status", json.dumps(self.status(), sort_keys=True))
            if command == "reload":
                self.reload()
                return encode("success")
            if command == "get-configuration":
                return encode("configuration", self.configuration())
            if command == "set-configuration":
                return encode("error", "set-configuration is not offered (D-7): edit the files and reload")
            return encode("error", f"unknown command: <{command}>")
        except Exception as error:  # the answer is truthful even when something failed (M-CTL-1 Py)
            self.logger.error(f"[controller][error] {command}: {error!r}")
            return encode("error", f"{command} failed: {error}")
