"""The Debian package's conffile (issue 8, D-9): it loads, asks for detection, and keeps the bundled defaults.

``debian/milter-manager.toml`` becomes ``/etc/milter-manager/milter-manager.toml``; the
packaged test runs it as installed, this one checks what it says without building a package.
"""

from __future__ import annotations

from pathlib import Path

from milterman.config import load_string

REPO = Path(__file__).resolve().parents[2]
CONFFILE = REPO / "debian" / "milter-manager.toml"
BUNDLED = REPO / "milterman" / "data" / "milter-manager.toml"


def test_the_conffile_asks_for_the_detection_of_debian_milters_D_9():
    configuration = load_string(CONFFILE.read_text(encoding="utf-8"), filename=str(CONFFILE))
    assert configuration.package.platform == "debian"
    assert configuration.manager.connection_spec == "inet:10025@[127.0.0.1]"


def test_the_conffile_and_the_bundled_default_agree_on_detection_and_socket():
    packaged = load_string(CONFFILE.read_text(encoding="utf-8"), filename=str(CONFFILE))
    bundled = load_string(BUNDLED.read_text(encoding="utf-8"), filename=str(BUNDLED))
    assert packaged.package == bundled.package
    assert packaged.manager.connection_spec == bundled.manager.connection_spec
    assert packaged.manager.fallback_status == bundled.manager.fallback_status
