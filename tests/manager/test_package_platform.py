"""``[package] platform`` asks for the detection of Debian's milters (D-9, D-17).

``platform = "debian"`` (the bundled configuration sets it): the milters installed and enabled
from Debian's packages are registered below the files; ``--no-detect`` still turns that off.
Without it, a configuration gets exactly the children it lists, in its order. Other
platforms and ``package.options`` are refused with a message.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

import milterman

from milterman.config import ConfigurationError
from milterman.manager.app import ManagerApplication
from test_detect import FakeDebian, install_opendkim

#: the bundled configuration of the package under test (installed, or the checkout)
BUNDLED = Path(milterman.__file__).resolve().parent / "data" / "milter-manager.toml"
LISTED = ('[[milter]]\nname = "second"\nconnection_spec = "unix:/run/second.sock"\n'
          '[[milter]]\nname = "first"\nconnection_spec = "unix:/run/first.sock"\n')


@pytest.fixture
def debian(tmp_path: Path) -> FakeDebian:
    system = FakeDebian(tmp_path / "root")
    install_opendkim(system)
    system.enable_unit("opendkim")
    return system


def names(config_dir: Path, debian: FakeDebian, detect: bool = True) -> list[str]:
    app = ManagerApplication(str(config_dir), {}, detect=detect, detect_root=str(debian.root))
    return [milter.name for milter in app.configuration().milters]


def write(config_dir: Path, text: str) -> Path:
    config_dir.mkdir(exist_ok=True)
    path = config_dir / "milter-manager.toml"
    path.write_text("version = 1\n" + text)
    return path


def test_hand_written_configuration_gets_exactly_its_milters_in_order_D_9(tmp_path, debian):
    write(tmp_path / "etc", LISTED)
    assert names(tmp_path / "etc", debian) == ["second", "first"]


def test_platform_debian_asks_for_detection_and_no_detect_turns_it_off_D_9(tmp_path, debian):
    write(tmp_path / "etc", '[package]\nplatform = "debian"\n' + LISTED)
    assert names(tmp_path / "etc", debian) == ["opendkim", "second", "first"]
    assert names(tmp_path / "etc", debian, detect=False) == ["second", "first"]


def test_bundled_configuration_asks_for_detection_D_9(tmp_path, debian):
    config_dir = tmp_path / "etc"
    config_dir.mkdir()
    shutil.copy(BUNDLED, config_dir / "milter-manager.toml")
    assert names(config_dir, debian) == ["opendkim"]
    assert names(config_dir, debian, detect=False) == []


@pytest.mark.parametrize("text, message", [
    ('[package]\nplatform = "redhat"\n', 'package.platform: "redhat" has no milter detection here: only Debian\'s '
     'milters are detected; leave [package] platform unset and list the milters as [[milter]] tables; '
     'accepted values: "debian"'),
    ('[package]\nplatform = "solaris"\n', 'package.platform: must be one of "debian", got "solaris"'),
    ('[package]\noptions = "prefix=/usr/pkg"\n', "package.options: is not used: it was extra input of milter "
     "manager 2.x's detectors (an rc.d prefix on pkgsrc); Debian's milters are found from their own files; remove "
     "the key"),
    ('[manager]\ncustom_configuration_directory = "/var/lib/milter-manager"\n',
     "manager.custom_configuration_directory: is not used: nothing writes configuration here (set-configuration "
     "is not offered, D-7); put site settings in a file named by `include` and reload"),
])
def test_refused_package_and_custom_directory_keys_name_the_key_D_17(tmp_path, debian, text, message):
    path = write(tmp_path / "etc", text)
    with pytest.raises(ConfigurationError) as raised:
        names(tmp_path / "etc", debian)
    assert str(raised.value) == f"{path}: {message}"


def test_real_opendkim_installed_and_enabled_leaves_a_hand_written_configuration_alone_D_9(tmp_path):
    """Issue 9 item 4 on the real system: Debian's opendkim is installed and enabled here (its unit
    linked in multi-user.target.wants), yet a hand-written configuration listing two children gets
    exactly those two, in its order, with no conditions and no commands attached — in the loaded
    configuration and in what ``--show-config`` prints (no ``--no-detect`` given)."""
    import os
    import subprocess
    import sys

    from milterman.manager.detect import detect

    found = [milter.name for milter in detect("/") if milter.enabled]
    if "opendkim" not in found:
        why = "Debian's opendkim is not installed and enabled here (.ci/system-packages installs it)"
        if os.environ.get("CI") == "true":
            pytest.fail(why)
        pytest.skip(why)
    config_dir = tmp_path / "etc"
    write(config_dir, LISTED)
    milters = ManagerApplication(str(config_dir), {}).configuration().milters
    assert [(milter.name, milter.connection_spec) for milter in milters] == [
        ("second", "unix:/run/second.sock"), ("first", "unix:/run/first.sock")]
    assert all(milter.applicable_conditions == () and milter.command is None for milter in milters)
    shown = subprocess.run([sys.executable, "-m", "milterman.cli.manager", "-c", str(config_dir), "--show-config"],
                           capture_output=True, text=True, timeout=60, cwd="/")
    assert shown.returncode == 0, shown.stdout + shown.stderr
    assert shown.stdout.count("[[milter]]") == 2
    assert shown.stdout.index('name = "second"') < shown.stdout.index('name = "first"')
    milter_tables = shown.stdout.split("[[milter]]", 1)[1]
    assert "detected from" not in shown.stdout and 'name = "opendkim"' not in shown.stdout
    assert "\ncommand = " not in milter_tables
    assert milter_tables.count("applicable_conditions = []") == 2
    # the same file asking for detection does get the real opendkim: the check above can fail
    asking = tmp_path / "asking"
    write(asking, '[package]\nplatform = "debian"\n' + LISTED)
    assert "opendkim" in [milter.name for milter in ManagerApplication(str(asking), {}).configuration().milters]
