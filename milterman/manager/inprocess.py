"""A child milter that runs inside the worker: ``[[milter]] python = "module:Class"``.

Everything the leader uses of a :class:`~milterman.manager.child.Child` stays as it is:
the child's client is an :class:`~milterman.milter.inprocess.InProcessClient`, the
ordinary MTA-side client whose socket is replaced by the milter session in memory. So
negotiation (only the stages the class implements), replies, fallback status on a
failure, the reading and end-of-message timeouts, conditions and the statistics lines
are those of a socket child, without the connection, the system calls and the second
process per message.
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
        from ..milter.inprocess import InProcessClient

        definition = self.definition
        self.stage = "negotiate"
        self.client = InProcessClient.start(definition.milter_class, offer, timeouts=definition.timeouts,
                                            logger=self.logger, check_reply_text=False, session_id=self.id)
        try:
            self.client.negotiate()
        except (MilterIOError, ProtocolError) as error:
            self.client.close(send_quit=False)
            raise ChildFailure(f"negotiation failed: {error}") from None
        self.negotiated = True


def make_child(definition: ChildDefinition, logger: Logger) -> Child:
    """The child of one MTA session for ``definition``: in process or behind a socket."""
    if definition.milter_class is not None:
        return InProcessChild(definition, logger)
    return Child(definition, logger)
