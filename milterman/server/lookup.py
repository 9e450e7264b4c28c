"""A reload's host-name look-up, run off the master's signal loop (standard library only).

Loading a configuration reads local files; looking up the host names its connection specs
name asks the name service, which may be slow or silent. The master must go on handling
signals (SIGTERM, SIGUSR1, SIGTTIN, a status request) meanwhile, so the application's
check runs in a thread; when it ends, ``on_done`` wakes the master (it raises SIGHUP again,
and that SIGHUP takes the result). The check is bounded by the application.
"""

from __future__ import annotations

import threading
from collections.abc import Callable


class NameLookup:
    """One pending look-up: ``loaded`` waits for ``check``; ``error`` is what refused it, if anything."""

    def __init__(self, loaded: tuple, check: Callable[[], None], on_done: Callable[[], None]) -> None:
        self.loaded = loaded
        self.error: Exception | None = None
        #: another reload was asked for while this one looked names up: it follows this one
        self.again = False
        self._done = threading.Event()
        self._check = check
        self._on_done = on_done
        threading.Thread(target=self._run, name="reload name look-up", daemon=True).start()

    @property
    def done(self) -> bool:
        return self._done.is_set()

    def _run(self) -> None:
        try:
            self._check()
        except Exception as error:  # the application's refusal (ConfigurationError) or a failure of the check
            self.error = error
        self._done.set()
        self._on_done()
