"""Users and groups by name or number: one look-up for start-up and for checking a configuration.

At the bottom beside :mod:`milterman.log` (standard library only) because the server
(dropping privileges, chowning a socket) and ``config`` (``--check-config`` and loading
refuse what start-up would refuse, with the same message) both need it, and ``config``
does not import ``server``.
"""

from __future__ import annotations

import grp
import pwd


class UnknownAccount(LookupError):
    """No such user or group; the message names the value: ``unknown user: <nosuch>``."""


def user_entry(value: str | int) -> pwd.struct_passwd:
    """A user name or numeric id → its passwd entry."""
    try:
        if isinstance(value, int) or str(value).isdigit():
            return pwd.getpwuid(int(value))
        return pwd.getpwnam(str(value))
    except KeyError:
        raise UnknownAccount(f"unknown user: <{value}>") from None


def group_id(value: str | int) -> int:
    """A group name or numeric id → its gid."""
    try:
        if isinstance(value, int) or str(value).isdigit():
            return grp.getgrgid(int(value)).gr_gid
        return grp.getgrnam(str(value)).gr_gid
    except KeyError:
        raise UnknownAccount(f"unknown group: <{value}>") from None
