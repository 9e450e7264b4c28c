"""Fixtures for the interop tests that run a real Postfix (and real milters).

- ``smtp_sink``: an :class:`smtp_sink.SmtpSink` on 127.0.0.1 (closed at teardown).
- ``postfix_factory``: ``postfix_factory(milters, **kwargs)`` starts a private
  :class:`postfix_harness.PostfixInstance` in ``tmp_path`` relaying to ``smtp_sink`` and stops it
  at teardown.  It skips the test when Postfix cannot run here, and fails it under CI=true.
- ``sendmail_factory``: ``sendmail_factory(milters, **kwargs)`` starts a private
  :class:`sendmail_harness.SendmailInstance` (Sendmail unpacked from Debian's packages, run in
  the foreground) relaying to ``smtp_sink``; stopped at teardown; skips, or fails under CI=true,
  when Sendmail cannot run here.
- ``require_real(component, available, reason="")``: skip, or under CI=true fail, when a real
  component is missing (defined in postfix_harness; importable from there).
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path
from collections.abc import Callable, Iterator

import pytest

# The harness modules sit beside this file; make them importable whatever pytest's import mode.
_HERE = str(Path(__file__).resolve().parent)
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)

from postfix_harness import PostfixInstance, postfix_usable, require_real  # noqa: E402
from sendmail_harness import SendmailInstance, sendmail_usable  # noqa: E402
from smtp_sink import SmtpSink  # noqa: E402

__all__ = ["require_real"]


@pytest.fixture
def smtp_sink() -> Iterator[SmtpSink]:
    sink = SmtpSink()
    try:
        yield sink
    finally:
        sink.close()


@pytest.fixture
def postfix_factory(tmp_path: Path, smtp_sink: SmtpSink) -> Iterator[Callable[..., PostfixInstance]]:
    """A factory: ``postfix_factory(milters="", *, relay_port=None, start=True, **kwargs)``.

    ``milters`` is the smtpd_milters spec(s) in Postfix's syntax; ``relay_port`` defaults to the
    ``smtp_sink`` fixture's port; the other keyword arguments go to PostfixInstance
    (milter_default_action, extra_main_cf, milter_protocol, non_smtpd, milter_timeouts, ...).
    Each instance gets its own directory from :func:`tempfile.mkdtemp` (mode 0755, outside
    pytest's ``tmp_path``: pytest sets ``/tmp/pytest-of-root`` back to 0700 whenever another
    pytest run starts, which would lock Postfix's unprivileged daemons out mid-test).  Every
    instance made is stopped and its directory removed at teardown, even if the test failed.
    """
    usable, reason = postfix_usable()
    require_real("postfix", usable, reason)
    instances: list[PostfixInstance] = []
    directories: list[Path] = []

    def make(
        milters: list[str] | str = "",
        *,
        relay_port: int | None = None,
        start: bool = True,
        **kwargs: object,
    ) -> PostfixInstance:
        directory = Path(tempfile.mkdtemp(prefix=f"milterman-postfix-{len(instances)}-"))
        os.chmod(directory, 0o755)
        directories.append(directory)
        instance = PostfixInstance(
            directory, milters, smtp_sink.port if relay_port is None else relay_port, **kwargs  # type: ignore[arg-type]
        )
        instances.append(instance)
        if start:
            instance.start()
        return instance

    try:
        yield make
    finally:
        errors = []
        for instance in reversed(instances):
            try:
                instance.stop()
            except Exception as exc:  # keep stopping the others
                errors.append(f"{instance!r}: {exc}")
        if errors:
            raise RuntimeError("could not stop every Postfix instance:\n" + "\n".join(errors))
        for directory in directories:
            shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def sendmail_factory(smtp_sink: SmtpSink) -> Iterator[Callable[..., SendmailInstance]]:
    """A factory: ``sendmail_factory(milters=(), *, relay_port=None, start=True, **kwargs)``.

    ``milters`` are libmilter socket specs (``inet:PORT@127.0.0.1``) in Sendmail's order;
    ``relay_port`` defaults to the ``smtp_sink`` fixture's port; the other keyword arguments go
    to SendmailInstance (milter_timeouts, milter_macros, extra_mc, debug).  Each instance gets a
    directory of its own (mode 0755); every instance is stopped and its directory removed at
    teardown.  The first use fetches and unpacks Sendmail (cached; see sendmail_harness).
    """
    usable, reason = sendmail_usable()
    require_real("sendmail", usable, reason)
    instances: list[SendmailInstance] = []

    def make(milters: list[str] | str = (), *, relay_port: int | None = None, start: bool = True,
             **kwargs: object) -> SendmailInstance:
        directory = Path(tempfile.mkdtemp(prefix=f"milterman-sendmail-{len(instances)}-"))
        os.chmod(directory, 0o755)
        instance = SendmailInstance(directory, milters, smtp_sink.port if relay_port is None else relay_port,
                                    **kwargs)  # type: ignore[arg-type]
        instances.append(instance)
        if start:
            instance.start()
        return instance

    try:
        yield make
    finally:
        for instance in reversed(instances):
            instance.stop()
        for instance in instances:
            shutil.rmtree(instance.root, ignore_errors=True)


@pytest.fixture
def reachable_dir() -> Iterator[Path]:
    """A fresh directory (mode 0755, outside pytest's 0700 tree) that Postfix's daemons can cross.

    Put a milter's unix socket here; remember the socket itself needs mode 0666.
    """
    directory = Path(tempfile.mkdtemp(prefix="milterman-socket-"))
    os.chmod(directory, 0o755)
    try:
        yield directory
    finally:
        shutil.rmtree(directory, ignore_errors=True)
