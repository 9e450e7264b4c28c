"""A child milter that runs inside the worker: ``[[milter]] python = "module:Class"``.

Everything the leader uses of a :class:`~milterman.manager.child.Child` stays as it is: the
child's client is an :class:`~milterman.milter.inprocess.InProcessClient`, which calls the
class's callbacks with the leader's command objects (no packets, no second state machine) and
answers in ``begin``; ``collect`` hands the answer out. Negotiation (only the stages the class
implements), macros per stage, replies, fallback status on a failure, the reading and
end-of-message timeouts, conditions, the statistics lines and the metrics are those of a socket
child, without the connection, the system calls and the second process per message.
"""

from __future__ import annotations

from ..log import Logger
from ..net import MilterIOError
from ..protocol import Negotiate, ProtocolError
from .child import Child, ChildDefinition, ChildFailure


class InProcessChild(Child):
    """A child whose milter is a Milter subclass run in this process (no socket, no connect)."""

    __slots__ = ()

    def connect(self, offer: Negotiate) -> None:
        """A new connection context of the class, negotiated with the MTA's offer as a socket child is (M-NEG-1)."""
        definition = self.definition
        self.stage = "negotiate"
        self.client = _client_class()(definition.milter_class, offer, timeouts=definition.timeouts,
                                      logger=self.logger, session_id=self.id)
        try:
            self.client.negotiate()
        except (MilterIOError, ProtocolError) as error:
            self.client.close(send_quit=False)
            raise ChildFailure(f"negotiation failed: {error}") from None
        self.negotiated = True


_CLIENT_CLASS: list = []


def _client_class():
    """InProcessClient, imported when the first in-process child starts (it needs gevent: workers only)."""
    if not _CLIENT_CLASS:
        from ..milter.inprocess import InProcessClient

        _CLIENT_CLASS.append(InProcessClient)
    return _CLIENT_CLASS[0]


def make_child(definition: ChildDefinition, logger: Logger) -> Child:
    """The child of one MTA session for ``definition``: in process or behind a socket."""
    if definition.milter_class is not None:
        return InProcessChild(definition, logger)
    return Child(definition, logger)
