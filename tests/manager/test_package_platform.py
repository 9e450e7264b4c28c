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
