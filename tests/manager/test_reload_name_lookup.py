"""A reload whose connection spec names a host that does not resolve is refused, and the master's signal
loop never waits for the name service meanwhile (C-TOML-4, D-5; issue 11).

The manager runs inside a private network namespace with its own name server
(``tests/support/name_sandbox.py``: dnsmasq answering NXDOMAIN, and a name whose look-up
waits until the resolver gives up); nothing leaves the machine.
"""

from __future__ import annotations

import os
import signal
import time

import pytest
from manager_harness import configuration_text, one_session
from name_sandbox import SLOW_NAME, NameSandbox, missing_tools

import manager_harness
from milterman.server.control import request
from milterman.spec import parse

RESOLVER_TIMEOUT = 3  # seconds the sandbox's resolver waits for the silent name server


@pytest.fixture
def sandbox(tmp_path, monkeypatch):
    missing = missing_tools()
    if missing:
        if os.environ.get("CI") == "true":
            pytest.fail(f"the name sandbox needs {', '.join(missing)} (.ci/system-packages: dnsmasq-base, iproute2)")
        pytest.skip(f"the name sandbox needs {', '.join(missing)}")
    directory = tmp_path / "dns"
    directory.mkdir()
    world = NameSandbox(directory, {"child.test": "127.0.0.1"}, timeout=RESOLVER_TIMEOUT)
    wrapper = tmp_path / "python-in-sandbox"
    wrapper.write_text("#!/bin/sh\nexec " + " ".join(world.wrap([manager_harness.PYTHON])) + ' "$@"\n')
    wrapper.chmod(0o755)
    monkeypatch.setattr(manager_harness, "PYTHON", str(wrapper))  # the manager starts inside the sandbox
    yield world
    world.close()


def write(env, milter_spec: str) -> None:
    manager = {"connection_spec": f"unix:{env.socket_path}", "n_workers": 1, "graceful_timeout": 5.0}
    controller = f'\n[controller]\nconnection_spec = "unix:{env.dir}/controller.sock"\n'
    (env.dir / "milter-manager.toml").write_text(
        configuration_text(manager, [{"name": "c1", "connection_spec": milter_spec}], extra=controller))


def test_reload_with_a_host_that_does_not_resolve_is_refused_without_blocking_other_signals(env, sandbox):
    env.milter("c1")
    manager = env.start([{"name": "c1"}], n_workers=1,
                        extra=f'\n[controller]\nconnection_spec = "unix:{env.dir}/controller.sock"\n')
    path = env.dir / "milter-manager.toml"
    one_session(env)

    # NXDOMAIN: refused with the value and its FILE: KEY; the old configuration keeps serving
    write(env, "inet:10025@nosuch.test")
    os.kill(manager.proc.pid, signal.SIGHUP)
    manager.wait_output("[server][reload][error]")
    assert (f'[server][reload][error] {path}: milter "c1": connection_spec: invalid spec "inet:10025@nosuch.test": '
            f"invalid host address: <inet:10025@nosuch.test>: <nosuch.test>: ") in manager.output
    assert "the previous configuration stays in use" in manager.output
    assert "nosuch.test" in sandbox.queries()  # asked of the sandbox's name server, nothing else
    one_session(env)

    # a name server that does not answer: while the reload waits for it, the master handles other signals
    write(env, f"inet:10025@{SLOW_NAME}")
    started = time.monotonic()
    os.kill(manager.proc.pid, signal.SIGHUP)
    time.sleep(0.3)
    os.kill(manager.proc.pid, signal.SIGTTIN)
    manager.wait_output("[server][workers] 2 workers (SIGTTIN)", timeout=RESOLVER_TIMEOUT - 1)
    answered_within = time.monotonic() - started
    answer, payload = request(parse(f"unix:{env.dir}/controller.sock"), "status", timeout=RESOLVER_TIMEOUT)
    assert answer == "status" and '"n_workers": 2' in payload, payload  # the controller answers too
    assert manager.output.count("[server][reload][error]") == 1  # the look-up is still going on
    manager.wait_output("[server][reload][error]", count=2, timeout=RESOLVER_TIMEOUT + 10)
    refused_after = time.monotonic() - started
    assert answered_within < RESOLVER_TIMEOUT - 1 < refused_after
    assert (f'{path}: milter "c1": connection_spec: invalid spec "inet:10025@{SLOW_NAME}": invalid host address: '
            f"<inet:10025@{SLOW_NAME}>: <{SLOW_NAME}>: ") in manager.output
    one_session(env)

    # a name that resolves is taken
    write(env, "inet:10025@child.test")
    os.kill(manager.proc.pid, signal.SIGHUP)
    manager.wait_output("[server][reload] configuration reloaded")

    # SIGTERM while a look-up is pending: the master stops at once, the pending reload is dropped
    write(env, f"inet:10025@{SLOW_NAME}")
    os.kill(manager.proc.pid, signal.SIGHUP)
    time.sleep(0.3)
    stop_started = time.monotonic()
    assert manager.stop() == 0
    assert time.monotonic() - stop_started < RESOLVER_TIMEOUT - 1
    env.manager = None


def test_serving_in_the_master_goes_on_while_a_reload_looks_a_name_up(env, sandbox):
    """n_workers = 0: the master serves in its own process; a slow look-up holds neither sessions nor signals."""
    env.milter("c1")
    manager = env.start([{"name": "c1"}], n_workers=0)
    path = env.dir / "milter-manager.toml"
    (path).write_text(path.read_text().replace(env.milters["c1"].spec, f"inet:10025@{SLOW_NAME}"))
    started = time.monotonic()
    os.kill(manager.proc.pid, signal.SIGHUP)
    time.sleep(0.3)
    one_session(env)  # served by the old configuration while the name is being looked up
    served_within = time.monotonic() - started
    assert "[server][reload][error]" not in manager.output
    manager.wait_output("[server][reload][error]", timeout=RESOLVER_TIMEOUT + 10)
    assert served_within < RESOLVER_TIMEOUT - 1 < time.monotonic() - started
    assert f'milter "c1": connection_spec: invalid spec "inet:10025@{SLOW_NAME}"' in manager.output
    one_session(env)


def test_check_config_and_the_start_refuse_a_name_that_does_not_resolve(tmp_path, sandbox):
    import subprocess
    import sys

    directory = tmp_path / "etc"
    directory.mkdir()
    config = directory / "milter-manager.toml"
    config.write_text(configuration_text({"connection_spec": f"unix:{tmp_path}/m.sock"},
                                         [{"name": "c1", "connection_spec": "inet:10025@nosuch.test"}]))
    expected = (f'{config}: milter "c1": connection_spec: invalid spec "inet:10025@nosuch.test": invalid host '
                f"address: <inet:10025@nosuch.test>: <nosuch.test>: ")
    for extra in (["--check-config"], []):
        run = subprocess.run(sandbox.wrap([sys.executable, "-m", "milterman.cli.manager", "-c", str(directory),
                                           "--no-detect", *extra]), capture_output=True, text=True, timeout=60,
                             cwd="/")
        assert run.returncode == 1, run
        assert expected in run.stdout, run
