"""Looking up the host names of connection specs: the network side of :mod:`milterman.spec`.

The grammar lives in :mod:`milterman.spec` (no DNS). Here a host name becomes an
address, where one is needed: when listening and connecting (:mod:`.sockets`), when a
tool's ``-s`` option is read (:func:`parse_spec`: the tools report a name that does not
resolve at once, SH-SPEC-1), and when the manager checks a configuration
(:func:`look_up_all`, bounded in time so that a slow name server cannot hold a reload).
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Sequence

from ..spec import ConnectionSpec, SpecError, format_sockaddr, parse

__all__ = ["ConnectionSpec", "SpecError", "format_sockaddr", "parse", "parse_spec", "resolve", "look_up_all",
           "LOOKUP_TIMEOUT"]

#: seconds a configuration check waits for the name service (glibc's own default is 5 s × 2 tries)
LOOKUP_TIMEOUT = 10.0

Resolver = Callable[..., list]


def resolve(spec: ConnectionSpec, getaddrinfo: Resolver = socket.getaddrinfo) -> ConnectionSpec:
    """``spec`` with its host name's address (SH-SPEC-1 message when the look-up fails); others as they are.

    ``getaddrinfo`` is the standard library's (the master, tools) or gevent's (a serving process).
    """
    if not spec.needs_lookup:
        return spec
    family = socket.AF_INET if spec.family == "inet" else socket.AF_INET6
    try:
        infos = getaddrinfo(spec.host, spec.port, family, socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as error:
        reason = error.strerror if isinstance(error, socket.gaierror) else str(error)
        raise SpecError(f"invalid host address: <{spec.written}>: <{spec.host}>: {reason}") from None
    return spec.with_address(infos[0][4][0])


def parse_spec(text: str | None) -> ConnectionSpec:
    """Parse and look the host name up now (the tools' ``-s`` options: an error is reported at start)."""
    return resolve(parse(text))


def look_up_all(specs: Sequence[ConnectionSpec], timeout: float = LOOKUP_TIMEOUT,
                getaddrinfo: Resolver = socket.getaddrinfo) -> list[ConnectionSpec | SpecError]:
    """Look every spec up at once, each in its own thread, waiting ``timeout`` seconds in all.

    One result per spec, in order: the resolved spec or the :class:`SpecError` saying why not
    (``did not resolve within N s`` when the name service is slower than ``timeout``). A
    look-up that outlives the wait is left to finish in its daemon thread: ``getaddrinfo``
    cannot be cancelled.
    """
    results: list[ConnectionSpec | SpecError | None] = [None] * len(specs)

    def look_up(index: int, spec: ConnectionSpec) -> None:
        try:
            results[index] = resolve(spec, getaddrinfo)
        except SpecError as error:
            results[index] = error

    threads = []
    for index, spec in enumerate(specs):
        if not spec.needs_lookup:
            results[index] = spec
            continue
        thread = threading.Thread(target=look_up, args=(index, spec), name=f"look-up {spec.host}", daemon=True)
        thread.start()
        threads.append(thread)
    deadline = time.monotonic() + timeout
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    return [result if result is not None else
            SpecError(f"invalid host address: <{spec.written}>: <{spec.host}>: no answer from the name service "
                      f"within {timeout:g} s")
            for spec, result in zip(specs, results, strict=True)]
