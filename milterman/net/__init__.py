"""gevent I/O on top of the protocol core: specs, sockets, the milter-side runner, the MTA-side client."""

from .milter import MilterHandler, MilterSession, Wanted, next_id
from .mta import MilterIOError, MtaClient, Response, Timeouts
from .sockets import ListenError, bind_listener, connect, remove_unix_socket, set_nodelay
from .spec import ConnectionSpec, SpecError, format_sockaddr, parse_spec

__all__ = [name for name in dir() if not name.startswith("_")]
