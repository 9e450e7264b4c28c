"""The real-milter rig, made once per test run of this directory (see sandbox.py for the namespace's
design).

``realmilters`` (package scope: taken down when this directory's tests are done, so no other test
runs in the private network) builds, in this order, and takes down in reverse:

1. the DKIM keys (opendkim-genkey, dknewkey) and the DNS records of mails.py;
2. the :class:`sandbox.Sandbox` (network namespace + dnsmasq); the test process's main thread
   joins its network namespace, so everything below lives in the private network;
3. every milter of daemons.py, each on its own loopback port (spamass-milter: a unix socket);
4. an SMTP sink, a Postfix instance chaining the milters (``smtpd_milters`` in order), milterman's
   milter-manager (the installed package, configuration written by hand listing the same milters
   in the same order, detection left to the configuration as a site would run it) and a second
   Postfix instance with only the manager in ``smtpd_milters``.

A missing program, Postfix or root skips the tests, and fails them under CI=true.  The rig's
directory (every configuration and log) is removed at the end unless MILTERMAN_KEEP_REALMILTERS is
set in the environment.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

_HERE = Path(__file__).resolve().parent
for _path in (str(_HERE.parent), str(_HERE)):
    if _path not in sys.path:
        sys.path.insert(0, _path)

import daemons  # noqa: E402
import mails  # noqa: E402
import rig  # noqa: E402
from manager_processes import ManagerProcess  # noqa: E402
from postfix_harness import PostfixInstance, postfix_usable, require_real  # noqa: E402
from sandbox import Sandbox, sandbox_usable  # noqa: E402
from smtp_sink import SmtpSink  # noqa: E402

#: Postfix's milter timeouts (connect, command, content): generous, spamd and rspamd scan in them.
MILTER_TIMEOUTS = (10, 60, 120)
POSTFIX_MAIN_CF = {"mynetworks": f"127.0.0.0/8 {rig.CLIENT_ADDRESS}/32"}


class RealMilters:
    """The running rig: ``run(mail)`` gives (chain outcome, manager outcome)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.keys = daemons.Keys(directory)
        self.sandbox = Sandbox(directory / "dns", mails.dns_records(self.keys.records), mails.HOSTS)
        self.milters: list[daemons.Milter] = []
        self.sink: SmtpSink | None = None
        self.manager: ManagerProcess | None = None
        self.postfixes: list[PostfixInstance] = []
        #: a manager whose children keep their connections, behind its own Postfix (started on first use)
        self._kept: tuple[ManagerProcess, PostfixInstance] | None = None

    def start(self) -> None:
        self.sandbox.start()
        self.milters = daemons.start_all(self.directory, self.sandbox, self.keys)
        self.sink = SmtpSink()
        self.chain = self._postfix("chain", [m.postfix_spec for m in self.milters])
        self.manager = ManagerProcess(self.directory, self.children(), detect=True)
        self.managed = self._postfix("manager", [self.manager.postfix_spec])
        self.mails = mails.build(lambda data: rig.dkim_sign(self.sandbox, data, "in", "good.test",
                                                            self.keys.inbound_rsa))

    def children(self) -> list[dict[str, object]]:
        """The hand-written ``[[milter]]`` list: Postfix's chain order; a failing child answers
        tempfail and replies are awaited as long as Postfix's milter_default_action and
        milter_command_timeout do, so a failure would look the same on both sides."""
        return [{"name": m.name, "connection_spec": m.spec, "fallback_status": "temporary-failure",
                 "reading_timeout": float(MILTER_TIMEOUTS[1]), "end_of_message_timeout": float(MILTER_TIMEOUTS[2])}
                for m in self.milters]

    def kept(self) -> tuple[ManagerProcess, PostfixInstance]:
        """The same children with ``reuse_connection = true`` behind a third Postfix (P-CMD-14)."""
        if self._kept is None:
            manager = ManagerProcess(self.directory, [{**child, "reuse_connection": True}
                                                      for child in self.children()], detect=True)
            try:
                self._kept = (manager, self._postfix("kept", [manager.postfix_spec]))
            except BaseException:
                manager.stop()
                raise
        return self._kept

    def _postfix(self, name: str, milters: list[str]) -> PostfixInstance:
        assert self.sink is not None
        directory = self.directory / f"postfix-{name}"
        directory.mkdir()
        os.chmod(directory, 0o755)
        instance = PostfixInstance(directory, milters, self.sink.port, extra_main_cf=POSTFIX_MAIN_CF,
                                   milter_timeouts=MILTER_TIMEOUTS)
        self.postfixes.append(instance)
        instance.start()
        return instance

    def run(self, mail: rig.TestMail) -> tuple[rig.Outcome, rig.Outcome]:
        assert self.sink is not None
        assert self.manager is not None
        chained = rig.observe(self.chain, self.sink, self.sandbox, mail)
        log_start = len(self.manager.log())
        managed = rig.observe(self.managed, self.sink, self.sandbox, mail)
        managed.manager_log = self.manager.log()[log_start:]
        managed.manager_log_offset = log_start
        return chained, managed

    def describe(self) -> str:
        """The logs a failing comparison needs."""
        parts = [m.logs() for m in self.milters]
        if self.manager:
            parts.append(self.manager.describe())
        return "\n".join(parts)[-20000:]

    def stop(self) -> None:
        errors = []
        for instance in reversed(self.postfixes):
            try:
                instance.stop()
            except Exception as exc:  # keep stopping the rest
                errors.append(repr(exc))
        if self.manager:
            self.manager.stop()
        if self._kept is not None:
            self._kept[0].stop()
        if self.sink:
            self.sink.close()
        daemons.stop_all(self.milters)
        self.sandbox.stop()
        if errors:
            raise RuntimeError("; ".join(errors))


@pytest.fixture(scope="package")
def realmilters() -> Iterator[RealMilters]:
    usable, reason = postfix_usable()
    require_real("postfix", usable, reason)
    usable, reason = sandbox_usable()
    require_real("the network sandbox", usable, reason)
    missing = daemons.missing_programs()
    require_real("every real milter", not missing, "missing: " + ", ".join(missing))
    directory = Path(tempfile.mkdtemp(prefix="milterman-realmilters-"))
    os.chmod(directory, 0o755)
    setup = RealMilters(directory)
    try:
        setup.start()
        yield setup
    finally:
        setup.stop()
        if os.environ.get("MILTERMAN_KEEP_REALMILTERS") is None:
            shutil.rmtree(directory, ignore_errors=True)
