"""Shared macro-name rule of the tools (tools.md §0.4, SH-MAC-1)."""

from __future__ import annotations

import pytest

from tools_support import LOG_LINE, run_tool


@pytest.mark.parametrize("name", ["daemon_name", "{daemon_name}"])
def test_SH_MAC_1_braced_on_the_wire(milter, run_server, name):
    run = run_server("-s", milter.spec, f"--connect-macro={name}:custom")
    assert run.returncode == 0 and run.lines[0] == "status: pass"
    session = milter.session
    # both spellings are one key (§1.2 AMBIG, settled): the user value replaces the default
    assert session.macros("C")["daemon_name"] == "custom"
    connect_packet = next(packet for packet in session.macro_packets if packet.stage == "C")
    assert [name for name, _ in connect_packet.macros].count("daemon_name") == 1
    assert b"{daemon_name}\0custom\0" in session.raw
    assert session.raw.count(b"daemon_name") == 1
    assert b"{{daemon_name}}" not in session.raw


@pytest.mark.parametrize("name", ["daemon_name", "{daemon_name}"])
def test_SH_MAC_1_test_client_prints_stripped_name(start_client, name):
    client = start_client()
    run = run_tool("test_server", "-s", client.spec, f"--connect-macro={name}:custom")
    assert run.returncode == 0
    client.wait_finished(1)
    assert client.stop() == 0
    events = "".join(line for line in client.stdout.splitlines(keepends=True) if not LOG_LINE.match(line))
    connect_block = events.split("connect: ", 1)[1].split("helo: ", 1)[0]
    assert "  daemon_name=custom\n" in connect_block
    assert "{" not in connect_block.split("macros:", 1)[1]
