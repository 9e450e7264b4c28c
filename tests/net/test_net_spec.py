"""Connection specs (tools.md §0.1): SH-SPEC-1 (every error row, exact text) and SH-SPEC-2."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from milterman.net import ConnectionSpec, SpecError, format_sockaddr, parse_spec
from milterman.net.spec import look_up_all, resolve
from milterman.spec import SpecText, parse

SUPPORT = str(Path(__file__).resolve().parents[1] / "support")
if SUPPORT not in sys.path:
    sys.path.insert(0, SUPPORT)

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


@pytest.fixture
def sandbox(tmp_path):
    """A network namespace whose name server knows ``child.test`` and answers NXDOMAIN for the rest."""
    from name_sandbox import NameSandbox, missing_tools

    missing = missing_tools()
    if missing:
        if os.environ.get("CI") == "true":
            pytest.fail(f"the name sandbox needs {', '.join(missing)} (.ci/system-packages: dnsmasq-base, iproute2)")
        pytest.skip(f"the name sandbox needs {', '.join(missing)}")
    world = NameSandbox(tmp_path, {"child.test": "127.0.0.1"})
    yield world
    world.close()


_IN_SANDBOX = """
import sys
from milterman.net import SpecError, parse_spec
for text in sys.argv[1:]:
    try:
        print(parse_spec(text))
    except SpecError as error:
        print(error)
"""


def test_SH_SPEC_1_name_lookup_failure(sandbox):
    result = subprocess.run(sandbox.wrap([sys.executable, "-c", _IN_SANDBOX, "inet:10025@no-such-host.invalid",
                                          "inet:10025@child.test"]),
                            capture_output=True, text=True, timeout=30, cwd="/")
    failure, found = result.stdout.splitlines()
    prefix = "invalid host address: <inet:10025@no-such-host.invalid>: <no-such-host.invalid>: "
    assert failure.startswith(prefix)
    assert len(failure) > len(prefix)  # the resolver's error text follows
    assert found == "inet:10025@[127.0.0.1]"
    assert "no-such-host.invalid" in sandbox.queries()


def test_the_grammar_looks_no_name_up():
    # issue 11: config parses specs at load without asking the name service; net looks the name up later
    spec = parse("inet:10025@no-such-host.invalid")
    assert (spec.family, spec.port, spec.host, spec.address, spec.needs_lookup) == (
        "inet", 10025, "no-such-host.invalid", "", True)
    assert str(spec) == "inet:10025@no-such-host.invalid"
    with pytest.raises(SpecError, match="not looked up yet"):
        _ = spec.sockaddr
    text = SpecText("inet:10025@no-such-host.invalid")
    assert text == "inet:10025@no-such-host.invalid" and text.spec == spec
    literal = parse("inet6:10025@[::1]")
    assert not literal.needs_lookup and resolve(literal) is literal


def test_look_up_all_is_bounded_and_names_each_spec():
    release = threading.Event()

    def slow_getaddrinfo(host, port, family, kind):
        if host == "slow.example":
            release.wait(10)
        if host == "gone.example":
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return [(family, kind, 6, "", ("192.0.2.7", port))]

    specs = [parse("inet:1@slow.example"), parse("inet:2@gone.example"), parse("inet:3@fine.example"),
             parse("unix:/run/x.sock")]
    started = time.monotonic()
    slow, gone, fine, unix = look_up_all(specs, timeout=0.3, getaddrinfo=slow_getaddrinfo)
    release.set()
    assert time.monotonic() - started < 2
    assert str(slow) == ("invalid host address: <inet:1@slow.example>: <slow.example>: no answer from the name "
                         "service within 0.3 s")
    assert str(gone) == "invalid host address: <inet:2@gone.example>: <gone.example>: Name or service not known"
    assert fine.address == "192.0.2.7" and str(fine) == "inet:3@[192.0.2.7]"
    assert unix is specs[3]


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


def test_net_looks_the_name_up_when_it_binds_and_connects():
    # issue 11: the spec stays a name until net needs the address (localhost: from /etc/hosts, no DNS)
    from milterman.net import bind_listener, connect

    listener = bind_listener(parse("inet:0@localhost"))
    try:
        port = listener.getsockname()[1]
        sock = connect(parse(f"inet:{port}@localhost"), timeout=5)
        try:
            assert sock.getpeername() == ("127.0.0.1", port)
        finally:
            sock.close()
    finally:
        listener.close()
