"""[[milter]] python = "module:Class": a Milter subclass run inside the manager's workers, with the semantics
of a socket child (negotiated stages, fallback status, timeouts, conditions, statistics lines)."""

from __future__ import annotations

import re
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from manager_harness import clean_env, letters, wait_until
from milterman.config import ConfigurationError, load_string
from milterman.protocol import (DATA, END_OF_HEADER, END_OF_MESSAGE, AddHeader, Body, Connect, Family, Header,
                                Helo, Mail, Rcpt, Reject, ReplaceBody, ReplyCode, TempFail)

TAG = (Path(__file__).resolve().parents[1] / "support" / "tag.py").read_text() + """

class Broken(Milter):
    def envelope_recipient(self, recipient, parameters):
        raise RuntimeError("directory unreachable")

class Slow(Milter):
    def envelope_recipient(self, recipient, parameters):
        import gevent
        gevent.sleep(5)
        return CONTINUE

class Shadowed(Milter):
    def __init__(self):
        self.header = None

    def header(self, name, value):
        return CONTINUE

class StopFromX:
    def envelope_from(self, facts):
        return facts.envelope_from == "<x@example.test>"
"""

LOG = {"level": "all"}


def write_module(env, name: str = "site_milters") -> str:
    (env.dir / f"{name}.py").write_text(textwrap.dedent(TAG))
    return name


@pytest.mark.parametrize("n_workers", [0, 2], ids=lambda n: f"n_workers={n}")
def test_in_process_child_beside_a_socket_child(env, n_workers):
    """The Tag milter in process: carol refused at RCPT, X-Tagged added, one [milter][end] line; the socket
    child beside it gets every stage while the in-process one was asked only for RCPT and EOM."""
    module = write_module(env)
    env.milter("c1")
    manager = env.start([{"name": "c1"}, {"name": "tag", "python": f"{module}:Tag"}], log=LOG, n_workers=n_workers)
    mta = env.mta()
    mta.session_start()
    assert letters(mta.mail()) == ["c"]
    assert letters(mta.rcpt("<alice@example.test>")) == ["c"]
    assert letters(mta.rcpt("<carol@example.test>")) == ["r"]
    packets = mta.content()
    assert AddHeader("X-Tagged", "yes") in packets and packets[-1].LETTER == "c"
    mta.quit()
    output = manager.wait_output("[manager][child][end] [tag]")
    assert '[manager][start] child milter "tag": python site_milters:Tag (in process)' in output
    assert "[milter][end][end-of-message][pass]" in output
    assert "[milter][header][add]" in output and "<X-Tagged>=<yes>: tag" in output
    assert env.milters["c1"].session.letters[:5] == ["O", "C", "H", "M", "R"]


def test_a_failing_callback_counts_the_fallback_status(env):
    module = write_module(env)
    manager = env.start([{"name": "broken", "python": f"{module}:Broken", "fallback_status": "reject"}], log=LOG)
    mta = env.mta()
    mta.session_start()
    assert letters(mta.mail()) == ["c"]
    assert letters(mta.rcpt("<alice@example.test>")) == ["r"]
    mta.quit()
    output = manager.wait_output("[manager][child][error] [broken]")
    assert "[milter][error][callback] RuntimeError: directory unreachable" in output
    assert "the milter failed: RuntimeError: directory unreachable" in output


def test_a_callback_past_the_reading_timeout_counts_the_fallback_status(env):
    module = write_module(env)
    manager = env.start([{"name": "slow", "python": f"{module}:Slow", "fallback_status": "temporary-failure",
                          "reading_timeout": 0.5}], log=LOG)
    mta = env.mta()
    mta.session_start()
    assert letters(mta.mail()) == ["c"]
    started = time.monotonic()
    assert letters(mta.rcpt("<alice@example.test>")) == ["t"]
    assert time.monotonic() - started < 3
    mta.quit()
    assert "reading timeout" in manager.wait_output("[manager][child][error] [slow]")


def test_conditions_stop_an_in_process_child(env):
    module = write_module(env)
    env.milter("c1")
    manager = env.start([{"name": "c1"}, {"name": "tag", "python": f"{module}:Tag",
                                          "applicable_conditions": ["not-x"]}], log=LOG,
                        extra=f'\n[[condition]]\nname = "not-x"\npython = "{module}:StopFromX"\n')
    for sender, tagged in (("<x@example.test>", False), ("<y@example.test>", True)):
        mta = env.mta()
        mta.session_start()
        assert letters(mta.mail(sender)) == ["c"]
        assert letters(mta.rcpt("<alice@example.test>")) == ["c"]
        packets = mta.content()
        assert (AddHeader("X-Tagged", "yes") in packets) is tagged, (sender, packets)
        mta.quit()
        mta.close()
    output = manager.wait_output("[milter][end][end-of-message][pass]", count=2)
    assert re.search(r"\[milter\]\[end\]\[envelope-from\]\[pass\]\[[0-9.e-]+\]\(\d+\): tag\n", output), output


EXAMPLES = Path(__file__).resolve().parents[2] / "examples"

#: one SMTP session of four transactions: (sender, recipients, header fields, body chunks); the second one loses
#: its only recipient to recipient_policy and is aborted (footer, which does not see RCPT, gives its empty body
#: a footer); footer leaves the HTML one alone and replaces the long one's body in two packets
TRANSACTIONS = (
    ("<s@example.test>", ("<alice@example.test>", "<Former@example.test>", "<bob@example.test>"),
     (("Subject", "hi"), ("Content-Type", "text/plain; charset=utf-8")), (b"Hello,\r\n", b"see you.\r\n")),
    ("<s@example.test>", ("<former@example.test>",), (), ()),
    ("<t@example.test>", ("<carol@example.test>",), (("Content-Type", "text/html"),), (b"<p>hi</p>\r\n",)),
    ("<u@example.test>", ("<dave@example.test>",), (("Subject", "long"),), (b"x" * 65535, b"x" * 4465 + b"\r\n")),
)


def play(mta) -> list:
    """The session above through the manager: what it answered to each command the MTA sends."""
    answers: list = [mta.negotiate()]

    def step(command, macros=None) -> list:
        if not mta.sends(command.LETTER):
            return []
        packets = mta.exchange(command, macros)
        answers.append((command.LETTER, packets))
        return packets

    step(Connect("mx.example.net", Family.INET, 25, "192.0.2.1"), {"j": "mx.example.test", "{daemon_name}": "smtpd"})
    step(Helo("client.example.net"))
    for number, (sender, recipients, headers, body) in enumerate(TRANSACTIONS):
        step(Mail(sender), {"i": f"QUEUE{number}", "{mail_addr}": sender.strip("<>")})
        refused = 0
        for recipient in recipients:
            packets = step(Rcpt(recipient), {"{rcpt_addr}": recipient.strip("<>")})
            refused += bool(packets) and isinstance(packets[-1], (Reject, TempFail, ReplyCode))
        if refused == len(recipients):
            mta.abort()
            continue
        step(DATA)
        for name, value in headers:
            step(Header(name, value))
        step(END_OF_HEADER)
        for chunk in body:
            step(Body(chunk))
        step(END_OF_MESSAGE, {"i": f"QUEUE{number}"})
    mta.quit()
    return answers


class MilterRun:
    """``milter-run MODULE:CLASS`` on a unix socket in ``directory`` (the module is there)."""

    def __init__(self, directory: Path, reference: str) -> None:
        self.path = directory / "example.sock"
        self.process = subprocess.Popen([sys.executable, "-m", "milterman.cli.milter_run", reference, "-s",
                                         f"unix:{self.path}"], cwd=directory, env=clean_env(),
                                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

        def listening() -> bool:
            assert self.process.poll() is None, self.process.stdout.read()
            with socket.socket(socket.AF_UNIX) as probe:
                return probe.connect_ex(str(self.path)) == 0

        wait_until(listening, 20, f"milter-run to listen on {self.path}")

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        output, _ = self.process.communicate(timeout=30)
        assert self.process.returncode == 0, output


@pytest.mark.parametrize("reference,edit", [("recipient_policy:RecipientPolicy", AddHeader),
                                            ("footer:Footer", ReplaceBody)])
def test_an_example_gives_the_same_transactions_in_process_and_behind_milter_run(env, reference, edit):
    """What the MTA gets from the manager, command by command (negotiation, replies, every modification packet),
    is the same whether the example runs in the manager or is served by milter-run on a unix socket."""
    module = reference.partition(":")[0]
    shutil.copy(EXAMPLES / f"{module}.py", env.dir / f"{module}.py")
    manager = env.start([{"name": module, "python": reference}], log=LOG)
    in_process = play(env.mta())
    assert f'child milter "{module}": python {reference} (in process)' in manager.output
    assert manager.stop() == 0
    server = MilterRun(env.dir, reference)
    try:
        env.start([{"name": module, "connection_spec": f"unix:{server.path}"}], log=LOG)
        behind_a_socket = play(env.mta())
    finally:
        env.manager.stop()
        server.stop()
    assert in_process == behind_a_socket
    edits = [packet for letter, packets in in_process[1:] if letter == "E" for packet in packets
             if isinstance(packet, edit)]
    assert edits, in_process  # the example did change the mail
    if edit is ReplaceBody:  # the two short bodies in one packet each, the long one in two; HTML left alone
        assert len(edits) == 4 and len(edits[2].chunk) == 65535, edits


HEAD = 'version = 1\n[log]\nuse_syslog = false\n'


def test_python_and_connection_spec_together_are_refused(tmp_path, monkeypatch):
    (tmp_path / "both_site.py").write_text(textwrap.dedent(TAG))
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ConfigurationError) as raised:
        load_string(HEAD + '[[milter]]\nname = "both"\npython = "both_site:Tag"\n'
                    'connection_spec = "unix:/tmp/x.sock"\n')
    assert 'milter "both"' in str(raised.value)
    assert "python and connection_spec exclude each other" in str(raised.value)


@pytest.mark.parametrize("setting", ['command = "/usr/sbin/tag-milter"', 'connection_timeout = 5',
                                     'writing_timeout = 5', 'retry_delay = 1', 'user_name = "nobody"',
                                     'reuse_connection = true'])
def test_socket_only_settings_beside_python_are_refused_D_17(tmp_path, monkeypatch, setting):
    (tmp_path / "socket_only_site.py").write_text(textwrap.dedent(TAG))
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ConfigurationError) as raised:
        load_string(HEAD + f'[[milter]]\nname = "inside"\npython = "socket_only_site:Tag"\n{setting}\n')
    assert 'milter "inside"' in str(raised.value)
    assert f"{setting.split()[0]}: only for a child behind a socket" in str(raised.value)


def test_a_shadowed_stage_is_refused_when_the_configuration_loads(tmp_path, monkeypatch):
    (tmp_path / "shadow_site.py").write_text(textwrap.dedent(TAG))
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ConfigurationError) as raised:
        load_string(HEAD + '[[milter]]\nname = "s"\npython = "shadow_site:Shadowed"\n')
    assert 'milter "s": python' in str(raised.value)
    assert "attribute 'header' would hide the stage method" in str(raised.value)
