"""Connection specs (tools.md §0.1): SH-SPEC-1 (every error row, exact text) and SH-SPEC-2."""

from __future__ import annotations

import socket

import pytest

from milterman.net import ConnectionSpec, SpecError, format_sockaddr, parse_spec

ERROR_ROWS = [
    pytest.param(None, "spec should not be NULL", id="missing"),
    pytest.param("inet", "spec doesn't have colon: <inet>", id="no-colon"),
    pytest.param("unix:", "spec doesn't have content: <unix:>", id="no-content"),
    pytest.param("xxxx:9999@localhost", "protocol must be 'unix', 'inet' or 'inet6': <xxxx:9999@localhost>: <xxxx>",
                 id="bad-protocol"),
    pytest.param("inet:10x25@localhost", "port number has invalid character: <inet:10x25@localhost>: <x>",
                 id="port-character"),
    pytest.param("inet6:-1", "port number has invalid character: <inet6:-1>: <->", id="port-character-inet6"),
    pytest.param("inet:99999@localhost", "port number should be less than 65536: <inet:99999@localhost>: <99999>",
                 id="port-too-big"),
    pytest.param("inet:65536", "port number should be less than 65536: <inet:65536>: <65536>", id="port-65536"),
    pytest.param("inet:10025@[127.0.0.1", "']' is missing: <inet:10025@[127.0.0.1>: <[127.0.0.1>",
                 id="bracket-missing"),
    pytest.param("inet6:10025@[::1", "']' is missing: <inet6:10025@[::1>: <[::1>", id="bracket-missing-inet6"),
    pytest.param("inet:10025@[127.0.0.300]", "invalid host address: <inet:10025@[127.0.0.300]>: <127.0.0.300>",
                 id="bad-literal"),
    pytest.param("inet:10025@[::1]", "invalid host address: <inet:10025@[::1]>: <::1>", id="ipv6-literal-for-inet"),
    pytest.param("inet6:10025@[1.2.3.4]", "invalid host address: <inet6:10025@[1.2.3.4]>: <1.2.3.4>",
                 id="ipv4-literal-for-inet6"),
]


@pytest.mark.parametrize("spec, message", ERROR_ROWS)
def test_SH_SPEC_1_error_messages(spec, message):
    with pytest.raises(SpecError) as raised:
        parse_spec(spec)
    assert str(raised.value) == message


def test_SH_SPEC_1_name_lookup_failure():
    spec = "inet:10025@no-such-host.invalid"
    with pytest.raises(SpecError) as raised:
        parse_spec(spec)
    prefix = "invalid host address: <inet:10025@no-such-host.invalid>: <no-such-host.invalid>: "
    message = str(raised.value)
    assert message.startswith(prefix)
    assert len(message) > len(prefix)  # the resolver's error text follows


def test_SH_SPEC_2_inet_without_host_accepted():
    spec = parse_spec("inet:10025")
    assert (spec.family, spec.port, spec.address) == ("inet", 10025, "")
    assert spec.sockaddr == ("0.0.0.0", 10025)
    assert str(spec) == "inet:10025@[0.0.0.0]"


def test_SH_SPEC_2_port_too_big_with_host():
    with pytest.raises(SpecError, match=r"^port number should be less than 65536: <inet:99999@localhost>: <99999>$"):
        parse_spec("inet:99999@localhost")


@pytest.mark.parametrize("text, family, port, address, rendered", [
    ("unix:/tmp/milter.sock", "unix", 0, "", "unix:/tmp/milter.sock"),
    ("local:/tmp/milter.sock", "unix", 0, "", "unix:/tmp/milter.sock"),
    ("inet:10025@[192.168.1.1]", "inet", 10025, "192.168.1.1", "inet:10025@[192.168.1.1]"),
    ("inet:10025@localhost", "inet", 10025, "127.0.0.1", "inet:10025@[127.0.0.1]"),
    ("inet:65535@[127.0.0.1]", "inet", 65535, "127.0.0.1", "inet:65535@[127.0.0.1]"),
    ("inet6:10025", "inet6", 10025, "", "inet6:10025@[::]"),
    ("inet6:10025@[::1]", "inet6", 10025, "::1", "inet6:10025@[::1]"),
])
def test_SH_SPEC_2_valid_specs_and_rendering(text, family, port, address, rendered):
    spec = parse_spec(text)
    assert isinstance(spec, ConnectionSpec)
    assert (spec.family, spec.port, spec.address) == (family, port, address)
    assert str(spec) == rendered
    if family == "unix":
        assert spec.path == "/tmp/milter.sock"


def test_SH_SPEC_2_socket_address_text():
    assert format_sockaddr(socket.AF_INET, ("10.0.0.1", 25)) == "inet:25@[10.0.0.1]"
    assert format_sockaddr(socket.AF_INET6, ("::1", 25, 0, 0)) == "inet6:25@[::1]"
    assert format_sockaddr(socket.AF_UNIX, "/run/milter.sock") == "unix:/run/milter.sock"
