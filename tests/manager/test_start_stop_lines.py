"""What the manager says at start and stop (issue 8, the admin's first hour).

At start: one line per child milter it will use (name, spec, where it came from), or one
line saying there is none; then no per-mail error when there simply is no child; a line at stop.
"""

from __future__ import annotations

import re

from milterman.protocol import ACCEPT


def test_one_line_per_child_at_start_and_a_line_at_stop(env):
    env.milter("c1")
    env.milter("c2")
    manager = env.start([{"name": "c1"}, {"name": "c2", "evaluation_mode": True},
                         {"name": "off", "connection_spec": "unix:/nonexistent.sock", "enabled": False}])
    config = env.dir / "milter-manager.toml"
    manager.wait_output("[manager][start]", count=2)
    lines = [line for line in manager.output.splitlines() if "[manager][start]" in line]
    assert [re.sub(r"^\[[^]]*\]: ", "", line) for line in lines] == [
        f'[manager][start] child milter "c1": unix:{env.dir}/c1.sock (defined in {config})',
        f'[manager][start] child milter "c2": unix:{env.dir}/c2.sock (defined in {config}; evaluation mode)']
    assert manager.stop() == 0
    assert re.search(r"^\[[^]]*\]: \[manager\]\[stop\] milter-manager stopped$", manager.output, re.M), \
        manager.output


def test_no_child_is_said_once_not_for_every_mail(env):
    manager = env.start([], manager={"fallback_status": "accept"})
    for _ in range(3):
        mta = env.mta()
        mta.negotiate()
        assert mta.connect() == [ACCEPT]
        mta.close()
    assert manager.stop() == 0
    output = manager.output
    assert output.count("[manager][start] no child milter configured: every session gets "
                        "manager.fallback_status (accept)") == 1, output
    assert "no longer alive" not in output, output
    assert "[manager][error]" not in output, output


def test_a_detected_child_names_the_file_it_was_detected_from():
    from milterman.config import load_string
    from milterman.config.model import MilterSettings
    from milterman.config.schema import MILTER
    from milterman.log import MESSAGE
    from milterman.manager.app import announcement

    values = {setting.name: setting.default for setting in MILTER}
    values.update(name="opendkim", connection_spec="unix:/run/opendkim/opendkim.sock")
    detected = MilterSettings(**values, source="detected from /etc/opendkim.conf")
    configuration = load_string("version = 1\n", detected=[detected])
    assert announcement(configuration) == [
        (MESSAGE, 'child milter "opendkim": unix:/run/opendkim/opendkim.sock (detected from /etc/opendkim.conf)')]
