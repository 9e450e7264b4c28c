"""The status algebra of the manager (M-AGG-1, M-AGG-3) and reply codes (M-RC-1, M-RC-2, M-RC-3).

Children's answers to one MTA command combine by priority: discard > reject >
temporary-failure > continue > skip > accept > not-change. The combination then
becomes the one reply the MTA gets, carrying a child's SMTP text when that text
belongs to the winning status.
"""

from __future__ import annotations

import enum

from ..protocol import (ACCEPT, CONTINUE, DISCARD, REJECT, TEMPFAIL, MalformedPacket, Reply, ReplyCode,
                        parse_reply_text)


class Status(enum.IntEnum):
    """Priority order of M-AGG-1 (higher wins)."""

    NOT_CHANGE = 0
    ACCEPT = 1
    SKIP = 2
    CONTINUE = 3
    TEMPORARY_FAILURE = 4
    REJECT = 5
    DISCARD = 6

    @property
    def nick(self) -> str:
        """The status name of logs and configuration (``pass`` for continue and not-change)."""
        return _NICKS[self]

    @property
    def is_refusal(self) -> bool:
        return self >= Status.TEMPORARY_FAILURE


_NICKS = {Status.NOT_CHANGE: "pass", Status.ACCEPT: "accept", Status.SKIP: "skip", Status.CONTINUE: "pass",
          Status.TEMPORARY_FAILURE: "temporary-failure", Status.REJECT: "reject", Status.DISCARD: "discard"}
_BY_NAME = {"accept": Status.ACCEPT, "temporary-failure": Status.TEMPORARY_FAILURE,
            "tempfail": Status.TEMPORARY_FAILURE, "reject": Status.REJECT, "discard": Status.DISCARD,
            "continue": Status.CONTINUE, "pass": Status.CONTINUE}
_BY_LETTER = {"c": Status.CONTINUE, "a": Status.ACCEPT, "r": Status.REJECT, "t": Status.TEMPORARY_FAILURE,
              "d": Status.DISCARD, "s": Status.SKIP}
_REPLIES = {Status.NOT_CHANGE: CONTINUE, Status.CONTINUE: CONTINUE, Status.SKIP: CONTINUE, Status.ACCEPT: ACCEPT,
            Status.TEMPORARY_FAILURE: TEMPFAIL, Status.REJECT: REJECT, Status.DISCARD: DISCARD}


def status_named(name: str) -> Status:
    """``accept``, ``temporary-failure`` (``tempfail``), ``reject``, ``discard`` → Status (C-TOML-5)."""
    return _BY_NAME[name]


def status_of(reply: Reply) -> Status:
    """The status a child's final reply contributes (M-RC-1: a ``y`` by its first digit)."""
    if isinstance(reply, ReplyCode):
        return Status.TEMPORARY_FAILURE if reply.text[:1] == "4" else Status.REJECT
    return _BY_LETTER.get(reply.LETTER, Status.REJECT)


class Combined:
    """The running combination for one MTA command, with the reply text that may go with it.

    A new status replaces the current one only when strictly higher (M-AGG-1). The
    remembered text is per command (M-RC-3 fix): the caller makes a new ``Combined``
    for every MTA command.
    """

    __slots__ = ("status", "reply_code")

    def __init__(self) -> None:
        self.status = Status.NOT_CHANGE
        self.reply_code: ReplyCode | None = None

    def add(self, status: Status, reply: Reply | None = None) -> None:
        if isinstance(reply, ReplyCode):
            self.reply_code = reply  # the last code received during the stage (M-RC-1)
        if status > self.status:
            self.status = status

    def reply(self, logger=None, context: str = "") -> Reply:
        """The packet for the MTA (M-AGG-3, M-RC-1, M-RC-2)."""
        status = self.status
        code = self.reply_code
        if code is not None and status in (Status.TEMPORARY_FAILURE, Status.REJECT):
            wanted = "4" if status == Status.TEMPORARY_FAILURE else "5"
            if code.text[:1] == wanted:
                try:
                    parse_reply_text(code.text)
                    return code
                except MalformedPacket as error:
                    # M-RC-2 (fix of M-RC-2a): an invalid text gives the plain letter, never silence
                    if logger is not None:
                        logger.error(f"{context}[reply-code][invalid] <{code.text}>: {error}; sending the plain "
                                     f"status")
        return _REPLIES[status]


