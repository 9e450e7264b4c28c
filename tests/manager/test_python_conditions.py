"""[[condition]] python = "module:Class": stage methods as stoppers, the facts they see, failures."""

from __future__ import annotations

import io
import itertools
import textwrap

import pytest

import conditions_support
from conditions_support import POSTFIX, Driver
from milterman.config import ConfigurationError, load, load_string
from milterman.log import Logger
from milterman.manager.conditions import build

_numbers = itertools.count()

DOMAIN_STOPPER = """
class StopForDomain:
    seen = []

    def envelope_recipient(self, facts):
        StopForDomain.seen.append((facts.stage, facts.client_address, facts.client_name, facts.helo,
                                   facts.envelope_from, facts.envelope_recipient, facts.authenticated, facts.mta,
                                   facts.macros.get("auth_authen")))
        facts.shelf["rcpts"] = facts.shelf.get("rcpts", 0) + 1
        return facts.envelope_recipient.endswith("@stopped.example>")

    def data(self, facts):
        StopForDomain.seen.append(("data", facts.recipients, facts.shelf.get("rcpts")))
        return False

    def header(self, facts):
        return facts.header == ("X-Stop", "yes")
"""

FAILING = """
class Broken:
    calls = 0

    def envelope_from(self, facts):
        Broken.calls += 1
        raise RuntimeError("directory unreachable")

    def envelope_recipient(self, facts):
        Broken.calls += 1
        raise RuntimeError("directory unreachable")
"""


def site_module(tmp_path, monkeypatch, source: str) -> str:
    """Write a uniquely named module (imports are cached per name) and put its directory on the path."""
    name = f"site_conditions_{next(_numbers)}_{tmp_path.name.replace('-', '_')}"
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(source))
    monkeypatch.syspath_prepend(str(tmp_path))
    return name


def config_with(module: str, cls: str, attach: str = "m") -> str:
    return (f'version = 1\n[[milter]]\nname = "m"\nconnection_spec = "inet:20000@[127.0.0.1]"\n'
            f'applicable_conditions = ["site"]\n[[milter]]\nname = "other"\nconnection_spec = '
            f'"inet:20001@[127.0.0.1]"\n[[condition]]\nname = "site"\npython = "{module}:{cls}"\n')


def test_python_condition_stops_per_recipient_and_sees_the_session_facts(tmp_path, monkeypatch):
    module = site_module(tmp_path, monkeypatch, DOMAIN_STOPPER)
    driver = Driver(load_string(config_with(module, "StopForDomain")))
    driver.connect("mx.example.net", "192.0.2.7", macros=POSTFIX)
    driver.helo("mx.example.net")
    driver.mail("<alice@example.org>", macros={"auth_authen": "alice"})
    assert driver.rcpt("<bob@stopped.example>") == {"m": True, "other": False}
    driver.new_session()
    driver.connect("mx.example.net", "192.0.2.7", macros=POSTFIX)
    driver.helo("mx.example.net")
    driver.mail("<alice@example.org>")
    assert driver.rcpt("<carol@kept.example>") == {"m": False, "other": False}
    assert driver.data() == {"m": False, "other": False}
    seen = __import__(module).StopForDomain.seen
    assert seen[0] == ("envelope-recipient", "192.0.2.7", "mx.example.net", "mx.example.net", "<alice@example.org>",
                       "<bob@stopped.example>", True, "postfix", "alice")
    assert seen[1][6] is False  # the second session is not authenticated
    assert seen[2] == ("data", ("<carol@kept.example>",), 1)  # the shelf carries what the RCPT stage put there
    # a header method: stops at the header it is looking for
    assert driver.header("Subject", "x") == {"m": False, "other": False}
    assert driver.header("X-Stop", "yes") == {"m": True, "other": False}


def test_facts_are_read_only(tmp_path, monkeypatch):
    module = site_module(tmp_path, monkeypatch, """
        class Writer:
            def helo(self, facts):
                facts.helo = "changed"
                return True
        """)
    driver = Driver(load_string(config_with(module, "Writer")))
    driver.connect()
    assert driver.helo("mx.example.net")["m"] is False  # AttributeError → do not stop
    assert driver.leader.helo_name == "mx.example.net"


def test_exception_is_do_not_stop_and_logged_once_per_session_with_traceback(tmp_path, monkeypatch):
    module = site_module(tmp_path, monkeypatch, FAILING)
    stream = io.StringIO()
    logger = Logger(stream=stream)
    monkeypatch.setattr(conditions_support, "build", lambda config, **kw: build(config, logger=logger, **kw))
    driver = Driver(load_string(config_with(module, "Broken")))
    for _session in range(2):
        driver.new_session()
        driver.connect()
        driver.helo()
        assert driver.mail("<a@example.org>")["m"] is False
        assert driver.rcpt("<b@example.com>")["m"] is False
        assert driver.rcpt("<c@example.com>")["m"] is False
        driver.mail("<d@example.org>")  # a second transaction of the same session
    assert __import__(module).Broken.calls == 8
    errors = [line for line in stream.getvalue().splitlines() if "[condition][error]" in line]
    assert len(errors) == 2, stream.getvalue()  # once per session, not once per call
    assert "[site]" in errors[0] and f"{module}:Broken" in errors[0]
    assert "Traceback (most recent call last)" in stream.getvalue()
    assert "RuntimeError: directory unreachable" in stream.getvalue()


@pytest.mark.parametrize("reference, error", [
    ("no_such_site_module_xyz:Cls", "ModuleNotFoundError"),
    ("{module}:Missing", "AttributeError"),
])
def test_import_error_is_refused_with_file_and_key(tmp_path, monkeypatch, reference, error):
    module = site_module(tmp_path, monkeypatch, "class Present:\n    pass\n")
    path = tmp_path / "milter-manager.toml"
    path.write_text(config_with("x", "y").replace('"x:y"', '"' + reference.format(module=module) + '"'))
    with pytest.raises(ConfigurationError) as raised:
        load(str(tmp_path))
    assert f"{path}: condition[0].python" in str(raised.value) or f"{path}: condition \"site\"" in str(raised.value)
    assert "python" in str(raised.value) and error in str(raised.value)


def test_module_beside_the_configuration_is_found_and_reload_sees_edited_code(tmp_path):
    name = f"beside_{next(_numbers)}"
    (tmp_path / f"{name}.py").write_text("class C:\n    def helo(self, facts):\n        return True\n")
    (tmp_path / "milter-manager.toml").write_text(config_with(name, "C"))
    driver = Driver(load(str(tmp_path)))
    driver.connect()
    assert driver.helo()["m"] is True
    (tmp_path / f"{name}.py").write_text("class C:\n    def helo(self, facts):\n        return False\n")
    import importlib
    importlib.invalidate_caches()
    driver = Driver(load(str(tmp_path)))
    driver.connect()
    assert driver.helo()["m"] is False


def test_rules_and_python_together_are_refused(tmp_path, monkeypatch):
    module = site_module(tmp_path, monkeypatch, "class C:\n    pass\n")
    text = config_with(module, "C") + '  [[condition.rule]]\n  stage = "helo"\n  action = "stop"\n'
    with pytest.raises(ConfigurationError) as raised:
        load_string(text)
    assert "either rules or python" in str(raised.value)


def test_show_config_writes_the_python_key_back(tmp_path, monkeypatch):
    from milterman.config import render
    module = site_module(tmp_path, monkeypatch, "class C:\n    pass\n")
    shown = render(load_string(config_with(module, "C")))
    assert f'python = "{module}:C"' in shown
    assert load_string(shown).conditions[0].python == f"{module}:C"


def test_a_module_broken_before_a_reload_is_refused_and_the_old_configuration_serves(env):
    """SIGHUP with a module that no longer imports: FILE: condition[0].python in the reload error, still serving."""
    import os
    import signal

    name = f"reload_site_{next(_numbers)}"
    module = env.dir / f"{name}.py"
    module.write_text("class C:\n    def helo(self, facts):\n        return False\n")
    env.milter("c1")
    manager = env.start([{"name": "c1", "applicable_conditions": ["site"]}],
                        extra=f'\n[[condition]]\nname = "site"\npython = "{name}:C"\n')
    module.write_text("raise ImportError('broken on purpose')\n")
    os.kill(manager.proc.pid, signal.SIGHUP)
    manager.wait_output("[server][reload][error]")
    config = env.dir / "milter-manager.toml"
    assert (f'{config}: condition[0].python: cannot use "{name}:C": ImportError: broken on purpose'
            in manager.output), manager.output
    assert "unknown condition" not in manager.output  # one error, not a cascade
    mta = env.mta()  # the old configuration still serves
    mta.negotiate()
    assert [type(reply).__name__ for reply in mta.connect()] == ["Continue"]
    mta.close()


def test_in_the_real_manager_an_exception_lets_the_child_run_and_is_logged_once_per_session(env):
    """The real leader and child (a scripted milter): the child still gets RCPT; one traceback per session."""
    name = f"raising_site_{next(_numbers)}"
    (env.dir / f"{name}.py").write_text(
        "class Boom:\n    def envelope_recipient(self, facts):\n        raise LookupError('no directory')\n")
    child = env.milter("c1")
    manager = env.start([{"name": "c1", "applicable_conditions": ["site"]}],
                        extra=f'\n[[condition]]\nname = "site"\npython = "{name}:Boom"\n')
    for _session in range(2):
        mta = env.mta()
        mta.negotiate()
        mta.connect()
        mta.helo()
        mta.mail()
        mta.rcpt("<a@example.org>")
        mta.rcpt("<b@example.org>")
        mta.quit()
        mta.close()
    wait = manager.wait_output("LookupError: no directory", count=2)
    records = child.wait_sessions(2)
    assert [[command.address for command in record.commands("R")] for record in records] == \
        [["<a@example.org>", "<b@example.org>"]] * 2  # "do not stop": the child got every recipient
    errors = [line for line in wait.splitlines() if "[manager][condition][error]" in line]
    assert len(errors) == 2, wait
    assert wait.count("Traceback (most recent call last)") == 2
