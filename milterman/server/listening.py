"""A listening socket served by a thread of the master, one connection at a time (controller, metrics).

Standard library only: the master never imports gevent, and these threads serve whether the
master supervises workers or serves sessions itself.
"""

from __future__ import annotations

import socket
import threading

from ..log import Logger
from ..log import logger as default_logger
from ..net.sockets import bind_listener, remove_unix_socket
from ..net.spec import ConnectionSpec


class ListeningThread:
    """Binds ``spec`` (a unix socket with its mode and group, or an inet address) and serves it in a thread.

    ``name`` is the log tag (``[NAME][listen]``); ``setting`` names the key that removes a stale socket.
    """

    name = "listener"

    def __init__(self, spec: ConnectionSpec, *, unix_mode: int = 0o660, unix_group: str | None = None,
                 remove_on_create: bool = True, remove_on_close: bool = True, setting: str,
                 logger: Logger = default_logger) -> None:
        self.spec = spec
        self.logger = logger
        self.listener = bind_listener(spec, backlog=16, unix_mode=unix_mode, unix_group=unix_group,
                                      remove_stale=remove_on_create, setting=setting)
        self.listener.set_inheritable(False)
        self.remove_on_close = remove_on_close
        self._stopping = False
        self._thread = threading.Thread(target=self._serve, name=self.name, daemon=True)

    def start(self) -> None:
        self._thread.start()
        self.logger.info(f"[{self.name}][listen] {self.spec}")

    def close(self) -> None:
        self._stopping = True
        try:
            self.listener.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.listener.close()
        if self.remove_on_close:
            problem = remove_unix_socket(self.spec)
            if problem:
                self.logger.warning(f"[{self.name}][stop][warning] {problem}")

    def _serve(self) -> None:
        while not self._stopping:
            try:
                client, address = self.listener.accept()
            except OSError:
                return
            with client:
                try:
                    self.serve_client(client, address)
                except OSError:
                    pass

    def serve_client(self, client: socket.socket, address: object) -> None:
        """Answer one accepted connection (closed afterwards)."""
        raise NotImplementedError
