"""Command-line options as overrides (A11, C-FILE-4, B6 last row): applied after the files, on every load."""

from __future__ import annotations

import pytest
from docopt import docopt

from milterman.config import ConfigurationError, load, load_string, options_help, overrides_from_options

USAGE = "Usage: milter-manager [options]\n\nOptions:\n" + options_help()


def parse(*argv: str) -> dict:
    """The options through docopt with the generated ``Options:`` text, as the CLI will do it."""
    return overrides_from_options(docopt(USAGE, argv=list(argv), default_help=False))


def test_A11_every_option_maps_onto_its_setting():
    overrides = parse("-s", "inet:10025@[127.0.0.1]", "--pid-file=/run/m.pid", "--user-name=milter",
                      "--group-name=milter", "--socket-group-name=postfix", "--unix-socket-mode=0600", "--daemon",
                      "--log-level=error|warning", "--log-path=/var/log/m.log", "--event-loop-backend=libuv",
                      "--n-workers=4", "--packet-buffer-size=8192", "--max-pending-finished-sessions=3",
                      "--syslog", "--syslog-facility=local3")
    assert overrides == {
        "security.effective_user": "milter", "security.effective_group": "milter",
        "log.level": "error|warning", "log.path": "/var/log/m.log", "log.use_syslog": True,
        "log.syslog_facility": "local3", "manager.connection_spec": "inet:10025@[127.0.0.1]",
        "manager.unix_socket_mode": 0o600, "manager.unix_socket_group": "postfix", "manager.daemon": True,
        "manager.pid_file": "/run/m.pid", "manager.event_loop_backend": "libuv", "manager.n_workers": 4,
        "manager.packet_buffer_size": 8192, "manager.max_pending_finished_sessions": 3}


def test_A11_aliases_and_flags():
    assert parse("--user=u", "-g", "g") == {"security.effective_user": "u", "security.effective_group": "g"}
    assert parse("--unix-socket-group=mail") == {"manager.unix_socket_group": "mail"}
    assert parse("--no-daemon") == {"manager.daemon": False}
    assert parse("--daemon", "--no-daemon") == {"manager.daemon": False}  # decision: --no-daemon wins
    assert parse("--log-level=error", "--verbose") == {"log.level": "all"}  # --verbose / -q win over --log-level
    assert parse("-q") == {"log.level": "none"}
    assert parse() == {}  # nothing given: nothing overridden (no docopt defaults that would mask the files)


def test_A11_bad_option_values_name_the_option():
    with pytest.raises(ConfigurationError) as raised:
        parse("--n-workers=many", "--unix-socket-mode=rw")
    assert str(raised.value).splitlines() == [
        'command line: --unix-socket-mode: expected an octal mode such as 0660, got "rw"',
        'command line: --n-workers: expected an integer, got "many"']


def test_B6_overrides_checked_like_file_values():
    with pytest.raises(ConfigurationError) as raised:
        load_string("version = 1\n", overrides={"manager.n_workers": 5000, "manager.event_loop_backend": "glib",
                                               "manager.nothing": 1})
    assert str(raised.value).splitlines() == [
        "command line: manager.n_workers: must be 0..1000, got 5000",
        'command line: manager.event_loop_backend: "glib" is not available (the GLib loop of the original is not '
        'offered, D-15); accepted values: "default", "libev", "libuv"',
        "command line: manager.nothing: unknown setting"]


def test_C_FILE_4_overrides_after_files_and_again_after_a_reload(tmp_path):
    path = tmp_path / "milter-manager.toml"
    path.write_text('version = 1\n[manager]\nn_workers = 2\npid_file = "/run/a.pid"\ndaemon = true\n')
    overrides = parse("--n-workers=6", "--no-daemon")
    first = load(path, overrides=overrides)
    assert (first.manager.n_workers, first.manager.daemon, first.manager.pid_file) == (6, False, "/run/a.pid")
    assert set(first.command_line) == {"manager.n_workers", "manager.daemon"}
    # the file changes (SIGHUP): file values are re-read, the command line still wins
    path.write_text('version = 1\n[manager]\nn_workers = 9\npid_file = "/run/b.pid"\ndaemon = true\n')
    second = load(path, overrides=overrides)
    assert (second.manager.n_workers, second.manager.daemon, second.manager.pid_file) == (6, False, "/run/b.pid")
    assert load(path).manager.n_workers == 9  # without overrides (the controller's reload, A1): the file's value


def test_options_help_text():
    text = options_help()
    assert "  -s, --connection-spec=SPEC" in text
    assert "(default: inet:10025@[127.0.0.1]) (manager.connection_spec)" in text
    assert "--socket-group-name=GROUP" in text and "(deprecated)" in text
    assert "[default:" not in text  # docopt would turn it into a value that always overrides the files


def _run(command: str, *argv: str):
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-m", f"milterman.cli.{command}", *argv], capture_output=True, text=True,
                          timeout=60, cwd="/", env={"PATH": "/usr/bin:/bin"})


@pytest.mark.parametrize("argv, message", [
    (("--user-id", "abc"), "--user-id: invalid UID: <abc>"),
    (("--group-id", "x1"), "--group-id: invalid GID: <x1>"),
    (("--n-workers", "5000"), "--n-workers: must be 0..1000, got 5000"),
    (("--worker-timeout", "0"), "--worker-timeout: must be > 0, got 0.0"),
])
def test_one_server_settings_table_checks_both_commands_alike(tmp_path, argv, message):
    # issue 11: milter-manager and milter-test-client take the server options from the same table
    (tmp_path / "milter-manager.toml").write_text("version = 1\n")
    manager = _run("manager", "-c", str(tmp_path), "--no-detect", "--check-config", *argv)
    assert (manager.returncode, manager.stdout) == (1, f"command line: {message}\n"), manager
    client = _run("test_client", *argv)
    assert (client.returncode, client.stdout) == (1, f"{message}\n"), client


def test_worker_timeout_is_a_manager_option_and_key(tmp_path):
    from milterman.config.schema import SERVER_SETTINGS, find_setting
    from milterman.manager.app import server_config

    setting = find_setting("manager.worker_timeout")
    assert setting.default == 60.0 and setting.options[0].names == ("--worker-timeout",)
    assert all(find_setting(key) is not None for key in SERVER_SETTINGS.values())
    configuration = load_string("version = 1\n[manager]\nworker_timeout = 2.5\n",
                                overrides=parse("--worker-timeout=4"))
    assert server_config(configuration).worker_timeout == 4.0
