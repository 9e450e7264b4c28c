"""The configuration, detection included, is read once at start (issue 11): the command line's load is the
start's, and Debian's milters are detected once the files ask for them (D-9)."""

from __future__ import annotations

import milterman.config as configuration_module
import milterman.manager.app as app_module
from milterman.manager.app import ManagerApplication


def test_files_and_detection_are_read_once_at_start(tmp_path, monkeypatch):
    (tmp_path / "milter-manager.toml").write_text('version = 1\n[package]\nplatform = "debian"\n')
    loads, detections = [], []
    real_load = configuration_module.load
    monkeypatch.setattr(configuration_module, "load", lambda *args, **kwargs: loads.append(args) or
                        real_load(*args, **kwargs))
    monkeypatch.setattr(app_module, "detected_milters", lambda root: detections.append(root) or [])
    app = ManagerApplication(str(tmp_path), {}, detect=True, detect_root=str(tmp_path))
    configuration = app.configuration()  # what milter-manager's command line loads (and checks the log settings of)
    assert (len(loads), detections) == (1, [str(tmp_path)])
    app.loaded = configuration
    started, _server = app.load()  # the master's start
    assert started is configuration
    assert (len(loads), detections) == (1, [str(tmp_path)])
    app.load()  # a reload reads the files (and detects) again
    assert (len(loads), detections) == (2, [str(tmp_path)] * 2)


def test_without_the_platform_key_nothing_is_detected(tmp_path, monkeypatch):
    (tmp_path / "milter-manager.toml").write_text("version = 1\n")
    detections = []
    monkeypatch.setattr(app_module, "detected_milters", lambda root: detections.append(root) or [])
    ManagerApplication(str(tmp_path), {}, detect=True).configuration()
    assert detections == []
