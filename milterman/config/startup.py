"""What start-up would refuse, found before starting: users, groups and the directories sockets and files need.

``milter-manager --check-config`` runs every check here; loading for a start or a reload runs
:func:`account_issues` (users and groups), so a start with ``-u nosuch`` fails with the same
message. Users and groups are looked up by the functions start-up uses
(:mod:`milterman.accounts`).
Every problem names the value's origin as the user wrote it: ``command line: -u`` or
``FILE: security.effective_user``.
"""

from __future__ import annotations

import grp
import os
import pwd
from collections.abc import Callable
from pathlib import Path

from ..accounts import UnknownAccount, group_id, user_entry
from .errors import Issue, show
from .model import Configuration, MilterSettings


def origin(configuration: Configuration, key: str) -> tuple[str, str]:
    """(FILE, KEY) or ("command line", OPTION) of a section key; a built-in default is named as such."""
    return configuration.origins.get(key) or (f"{key} (built-in default)", "")


def milter_origin(milter: MilterSettings, name: str) -> tuple[str, str]:
    """A [[milter]] key as messages name it: the file the milter comes from, then ``milter "a": KEY``."""
    source = (milter.source or "").split("; ")[0]
    for prefix in ("defined in ", "detected from "):
        source = source.removeprefix(prefix)
    return source or "<milter>", f"milter {show(milter.name)}: {name}"


def _resolved(resolve: Callable[[str], object], where: tuple[str, str], value: str) -> Issue | None:
    try:
        resolve(value)
    except UnknownAccount as error:
        return Issue(where[0], where[1], str(error))
    return None


def account_issues(configuration: Configuration) -> list[Issue]:
    """Users and groups that do not exist (start-up would refuse them when dropping privileges or binding)."""
    issues = []
    security = configuration.security
    checks: list[tuple[Callable[[str], object], tuple[str, str], str | None]] = [
        (user_entry, origin(configuration, "security.effective_user"), security.effective_user),
        (group_id, origin(configuration, "security.effective_group"), security.effective_group),
    ]
    for section in ("manager", "controller"):
        group = getattr(configuration, section).unix_socket_group
        if group is not None and not str(group).isdigit():  # a numeric gid needs no entry to chown a socket
            checks.append((group_id, origin(configuration, f"{section}.unix_socket_group"), group))
    for milter in configuration.milters:
        if milter.enabled and milter.user_name:
            checks.append((user_entry, milter_origin(milter, "user_name"), milter.user_name))
    for resolve, where, value in checks:
        if value is not None:
            issue = _resolved(resolve, where, str(value))
            if issue is not None:
                issues.append(issue)
    return issues


class _Account:
    """Who needs a directory: a uid with its groups (root may write anywhere)."""

    def __init__(self, name: str, uid: int, gids: set[int]) -> None:
        self.name = name
        self.uid = uid
        self.gids = gids

    @classmethod
    def current(cls) -> _Account:
        uid = os.geteuid()
        try:
            name = pwd.getpwuid(uid).pw_name
        except KeyError:
            name = str(uid)
        return cls(f"user {name}", uid, {os.getegid(), *os.getgroups()})

    @classmethod
    def after_drop(cls, user: str | None, group: str | None) -> _Account | None:
        """The account after the privilege drop (D-5), or None when no user is set (the user stays)."""
        if user is None:
            return None
        try:
            entry = user_entry(user)
            gid = group_id(group) if group is not None else entry.pw_gid
        except UnknownAccount:
            return None  # already reported by account_issues
        gids = {gid} | {each.gr_gid for each in grp.getgrall() if entry.pw_name in each.gr_mem}
        return cls(f"user {entry.pw_name} (after the privilege drop)", entry.pw_uid, gids)

    def allowed(self, path: Path, bits: int) -> bool:
        """``bits`` (2 write, 1 search) granted on ``path`` by its mode for this account."""
        if self.uid == 0:
            return True
        info = path.stat()
        if info.st_uid == self.uid:
            mode = info.st_mode >> 6
        elif info.st_gid in self.gids:
            mode = info.st_mode >> 3
        else:
            mode = info.st_mode
        return mode & bits == bits

    def blocked(self, directory: Path) -> str | None:
        """Why this account cannot create or remove a file in ``directory``, or None."""
        for ancestor in reversed(directory.parents):
            if not self.allowed(ancestor, 1):
                return f"{ancestor} is not searchable for it"
        if not self.allowed(directory, 3):
            return f"{directory} is not writable for it"
        return None


def directory_problems(configuration: Configuration) -> tuple[list[str], list[str]]:
    """(errors, warnings) about the directories of the unix sockets, the pid file and the log file.

    Errors: what start-up would refuse (a missing directory; one the starting user, or for the
    controller socket the user after the privilege drop, cannot write). Warnings: what the user
    after the drop cannot remove at stop (the socket and the pid file stay behind).
    """
    errors: list[str] = []
    warnings: list[str] = []
    starter = _Account.current()
    dropped = _Account.after_drop(configuration.security.effective_user, configuration.security.effective_group)
    manager, controller = configuration.manager, configuration.controller
    items: list[tuple[str, str, str | None, bool]] = []  # key, what, path, removed at stop
    for key, spec, remove in (("manager.connection_spec", manager.connection_spec, manager.remove_unix_socket_on_close),
                              ("controller.connection_spec", controller.connection_spec,
                               controller.remove_unix_socket_on_close)):
        parsed = spec.spec if spec else None  # parsed at load
        if parsed is not None and parsed.family == "unix":
            items.append((key, f"unix:{parsed.path}", parsed.path, remove))
    items.append(("manager.pid_file", manager.pid_file or "", manager.pid_file, True))
    log_path = configuration.log.path if configuration.log.path not in (None, "-") else None
    items.append(("log.path", log_path or "", log_path, False))
    for key, what, path, removed in items:
        if not path:
            continue
        where = ": ".join(part for part in origin(configuration, key) if part)
        directory = Path(os.path.abspath(path)).parent
        if not directory.is_dir():
            errors.append(f"{where}: the directory of {what} does not exist: {directory}")
            continue
        creator = dropped if key == "controller.connection_spec" and dropped is not None else starter
        reusable = os.path.isfile(path) and os.access(path, os.W_OK)  # an existing file is opened, not created
        reason = None if reusable and creator is starter else creator.blocked(directory)
        if reason is not None:
            errors.append(f"{where}: {creator.name} cannot create {what}: {reason}")
            continue
        if removed and dropped is not None and creator is starter:
            reason = dropped.blocked(directory)
            if reason is not None:
                warnings.append(f"warning: {where}: {dropped.name} cannot remove {what} at stop: {reason}")
    return errors, warnings
