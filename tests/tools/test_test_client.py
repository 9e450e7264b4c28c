"""Behaviour tests of milter-test-client (tools.md §2.5, TC-*).

The client runs as a real subprocess listening on a unix socket; it is driven by
milter-test-server subprocesses (or, where a peer must do something the test
server never does, by a small raw MTA over a plain socket), stopped with a
signal, and its stdout and exit status are checked.
"""

from __future__ import annotations

import os
import signal
import socket

import pytest

from milterman.protocol import (ABORT, QUIT, Action, Connect, Family, Helo, Macro, Mail, Negotiate,
                                NegotiateReply, ReplyDecoder, Step)

from tools_support import ELAPSED_LINE, LOG_LINE, clean_env, run_tool

ALL_ACTIONS = ("add-headers|change-body|add-envelope-recipient|delete-envelope-recipient|change-headers|"
               "quarantine|change-envelope-from|add-envelope-recipient-with-parameters|set-symbol-list")
ALL_STEPS = ("no-connect|no-helo|no-envelope-from|no-envelope-recipient|no-body|no-headers|no-end-of-header|"
             "no-reply-header|no-unknown|no-data|skip|envelope-recipient-rejected|no-reply-connect|no-reply-helo|"
             "no-reply-envelope-from|no-reply-envelope-recipient|no-reply-data|no-reply-unknown|"
             "no-reply-end-of-header|no-reply-body|header-value-with-leading-space")

#: tools.md §2.3 example: a default milter-test-server run as the test client prints it
DEFAULT_EXCHANGE = f"""\
negotiate: version=<6>, action=<{ALL_ACTIONS}>, step=<{ALL_STEPS}>
connect: host=<mx.example.net>, address=<inet:50443@[192.168.123.123]>
macros:
  daemon_name=milter-test-server
  if_addr=127.0.0.1
  if_name=localhost
  j=mail.example.com
helo: <delian>
macros:
  cert_issuer=cert_issuer
  cert_subject=cert_subject
  cipher=0
  cipher_bits=0
  tls_version=0
envelope-from: <<sender@example.com>>
macros:
  mail_addr=mail_addr
  mail_host=mail_host
  mail_mailer=mail_mailer
envelope-recipient: <<receiver@example.org>>
macros:
  rcpt_addr=<receiver@example.org>
  rcpt_host=rcpt_host
  rcpt_mailer=rcpt_mailer
data
macros:
  i=i
header: <From: <sender@example.com>>
header: <To: <receiver@example.org>>
end-of-header
macros:
  i=i
body: <La de da de da 1.
La de da de da 2.
La de da de da 3.
La de da de da 4.>
end-of-message
macros:
  i=i
finished
"""
RCPT_MACROS = "macros:\n  rcpt_addr=<receiver@example.org>\n  rcpt_host=rcpt_host\n  rcpt_mailer=rcpt_mailer\n"


def split_output(stdout: str) -> tuple[str, list[str]]:
    """(event text, logger lines): logger lines start with ``[TIMESTAMP]: `` (logging.md §2)."""
    events, logs = [], []
    for line in stdout.splitlines(keepends=True):
        (logs if LOG_LINE.match(line) else events).append(line)
    return "".join(events), [line.rstrip("\n") for line in logs]


def blocks(events: str) -> list[tuple[str, frozenset[str]]]:
    """Event lines with the set of their macro lines (TC-OUT-1 compares macros as sets)."""
    result: list[tuple[str, set[str]]] = []
    for line in events.splitlines():
        if line.startswith("  ") and result:
            result[-1][1].add(line)
        elif line == "macros:" and result:
            continue
        else:
            result.append((line, set()))
    return [(line, frozenset(macros)) for line, macros in result]


def serve_once(client, *args: str):
    """One milter-test-server run against ``client``; waits until the client logged the session's end."""
    before = client.stdout.count("[sessions][finished]")
    run = run_tool("test_server", "-s", client.spec, *args)
    assert run.returncode == 0, run.stdout
    client.wait_finished(before + 1)
    return run


class RawMta:
    """A minimal MTA over a plain socket, for what milter-test-server never does (abort, bare negotiation)."""

    def __init__(self, path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(5)
        self.sock.connect(str(path))
        self.decoder = ReplyDecoder()

    def send(self, *commands) -> None:
        self.sock.sendall(b"".join(command.encode() for command in commands))

    def reply(self):
        while True:
            message = self.decoder.next_message()
            if message is not None:
                return message
            data = self.sock.recv(65536)
            if not data:
                return None
            self.decoder.feed(data)

    def close(self) -> None:
        self.sock.close()


def unix_path(client) -> str:
    assert client.spec.startswith("unix:")
    return client.spec[len("unix:"):]


# ------------------------------------------------------------------------------------------ output


def test_TC_OUT_1_default_exchange(start_client):
    client = start_client()
    run = serve_once(client)
    assert run.lines[0] == "status: pass" and ELAPSED_LINE.match(run.lines[1])
    assert client.stop() == 0
    events, logs = split_output(client.stdout)
    assert blocks(events) == blocks(DEFAULT_EXCHANGE)
    # the settled choice: macros in wire order, which is sorted by name, so the whole text matches
    assert events == DEFAULT_EXCHANGE
    finished = [line for line in logs if "[sessions][finished]" in line]
    assert len(finished) == 1
    assert finished[0].endswith("]: [sessions][finished] 1(+1) 0")


def test_TC_OUT_2_no_report_request(start_client):
    client = start_client("--no-report-request")
    serve_once(client)
    serve_once(client, "--unknown=HELP")
    assert client.stop() == 0
    events, logs = split_output(client.stdout)
    assert events == ""
    assert [line for line in logs if "[sessions][finished]" in line][-1].endswith(
        "[sessions][finished] 2(+1) 0")


def test_TC_OUT_3_unknown_between_rcpt_and_data(start_client):
    client = start_client()
    serve_once(client, "--unknown=HELP")
    assert client.stop() == 0
    events, _ = split_output(client.stdout)
    # unknown reuses the macro context of the previous command (RCPT), so its macros repeat
    expected = ("envelope-recipient: <<receiver@example.org>>\n" + RCPT_MACROS
                + "unknown: <HELP>\n" + RCPT_MACROS
                + "data\nmacros:\n  i=i\n")
    assert expected in events


def test_TC_OUT_4_abort_then_finished(start_client):
    client = start_client()
    mta = RawMta(unix_path(client))
    try:
        mta.send(Negotiate(6, int(Action.ALL), int(Step.ALL)))
        assert isinstance(mta.reply(), NegotiateReply)
        mta.send(Macro("C", (("daemon_name", "raw-mta"),)), Connect("raw-host", Family.INET, 25, "10.0.0.1"))
        assert mta.reply().LETTER == "c"
        mta.send(Helo("raw-helo"))
        assert mta.reply().LETTER == "c"
        mta.send(Macro("M", (("mail_addr", "a@example.com"),)), Mail("<a@example.com>"))
        assert mta.reply().LETTER == "c"
        mta.send(ABORT, QUIT)
        assert mta.reply() is None  # no reply to abort/quit; the client closes
    finally:
        mta.close()
    client.wait_finished(1)
    assert client.stop() == 0
    events, _ = split_output(client.stdout)
    # abort reuses the previous command's macro context (tools.md §2.3), then the session ends
    assert events.endswith("envelope-from: <<a@example.com>>\nmacros:\n  mail_addr=a@example.com\n"
                           "abort\nmacros:\n  mail_addr=a@example.com\n"
                           "finished\n"), events
    assert "connect: host=<raw-host>, address=<inet:25@[10.0.0.1]>\nmacros:\n  daemon_name=raw-mta\n" in events


def test_TC_OUT_5_user_connect_macro(start_client):
    client = start_client()
    serve_once(client, "--connect-macro", "client_connections:1")
    assert client.stop() == 0
    events, _ = split_output(client.stdout)
    connect_block = events.split("connect: ", 1)[1].split("helo: ", 1)[0]
    assert connect_block.splitlines()[1:] == ["macros:", "  client_connections=1", "  daemon_name=milter-test-server",
                                              "  if_addr=127.0.0.1", "  if_name=localhost", "  j=mail.example.com"]


# ------------------------------------------------------------------------------------------ negotiation


def test_TC_NEG_1_reply_asks_for_every_command(start_client):
    client = start_client()
    mta = RawMta(unix_path(client))
    try:
        mta.send(Negotiate(6, int(Action.ALL), int(Step.ALL)))
        reply = mta.reply()
    finally:
        mta.close()
    assert isinstance(reply, NegotiateReply)
    assert reply.version == 6
    assert reply.actions == int(Action.ALL)                 # the offered actions, echoed
    # every no-* step removed, and envelope-recipient-rejected / header-value-with-leading-space too
    assert reply.protocol == int(Step.SKIP)
    # and the peer then sends every command: all of them reach the client
    serve_once(client, "--unknown=HELP")
    assert client.stop() == 0
    events, _ = split_output(client.stdout)
    for prefix in ("connect: ", "helo: ", "envelope-from: ", "envelope-recipient: ", "unknown: ", "data\n",
                   "header: ", "end-of-header\n", "body: ", "end-of-message\n", "finished\n"):
        assert prefix in events, prefix


def test_TC_NEG_1_reply_to_a_small_offer(start_client):
    client = start_client()
    mta = RawMta(unix_path(client))
    try:
        mta.send(Negotiate(2, int(Action.ADD_HEADERS | Action.CHANGE_BODY), int(Step.NO_CONNECT | Step.NO_HELO)))
        reply = mta.reply()
    finally:
        mta.close()
    assert (reply.version, reply.actions, reply.protocol) == (2, int(Action.ADD_HEADERS | Action.CHANGE_BODY), 0)
    assert client.stop() == 0
    events, _ = split_output(client.stdout)
    assert events.startswith("negotiate: version=<2>, action=<add-headers|change-body>, "
                             "step=<no-connect|no-helo>\n")


# ------------------------------------------------------------------------------------------ spec


def port_is_free(port: int) -> bool:
    """Nobody listens on 127.0.0.1:PORT (SO_REUSEADDR, as the client binds: TIME_WAIT does not count)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def test_TC_SPEC_1_environment_variable(start_client, socket_dir):
    path = socket_dir / "from-env.sock"
    client = start_client(spec=False, env=clean_env(MILTER_DEFAULT_CONNECTION_SPEC=f"unix:{path}"), probe=path)
    client.spec = f"unix:{path}"
    serve_once(client)
    assert client.stop() == 0
    assert "connect: host=<mx.example.net>" in client.stdout


def test_TC_SPEC_1_default_spec(start_client):
    if not port_is_free(10025):
        pytest.skip("port 10025 on 127.0.0.1 is in use; the default spec inet:10025@[127.0.0.1] cannot be tried")
    client = start_client(spec=False, probe=("127.0.0.1", 10025))
    client.spec = "inet:10025@[127.0.0.1]"
    serve_once(client)
    assert client.stop() == 0
    assert "connect: host=<mx.example.net>" in client.stdout
    assert port_is_free(10025)  # released on exit


# ------------------------------------------------------------------------------------------ signals, exit


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_TC_SIG_1_signal_exits_zero(start_client, sig):
    client = start_client()
    serve_once(client)
    assert client.stop(sig) == 0
    assert client.stdout.count("finished\n") == 1
    assert not os.path.exists(unix_path(client))  # the unix socket is removed on the way out (D-5)


def test_TC_SIG_1_signal_while_idle(start_client):
    client = start_client()
    assert client.stop(signal.SIGTERM) == 0
    events, _ = split_output(client.stdout)
    assert events == ""


def test_TC_EXIT_1_bad_spec():
    run = run_tool("test_client", "-s", "xxxx:10025")
    assert run.returncode == 1
    assert run.stdout == "--connection-spec: protocol must be 'unix', 'inet' or 'inet6': <xxxx:10025>: <xxxx>\n"


def test_TC_EXIT_1_bad_port():
    run = run_tool("test_client", "-s", "inet:99999@[127.0.0.1]")
    assert run.returncode == 1
    assert run.stdout == ("--connection-spec: port number should be less than 65536: "
                          "<inet:99999@[127.0.0.1]>: <99999>\n")


def test_TC_EXIT_1_port_in_use():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        run = run_tool("test_client", "-s", f"inet:{port}@[127.0.0.1]", timeout=20)
    assert run.returncode == 1
    assert run.stdout.splitlines()[-1] == f"failed to listen on inet:{port}@[127.0.0.1]: Address already in use"


def test_TC_EXIT_1_regular_file_in_the_way(socket_dir):
    path = socket_dir / "not-a-socket"
    path.write_text("precious\n")
    run = run_tool("test_client", "-s", f"unix:{path}", timeout=20)
    assert run.returncode == 1
    assert str(path) in run.stdout
    assert path.read_text() == "precious\n"  # never deleted
