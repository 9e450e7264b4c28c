"""Finding the main file (C-TOML-2), includes (C-TOML-3) and merging (B6, row by row), with real files."""

from __future__ import annotations

import dataclasses
import ipaddress

import pytest

from milterman.config import ConfigurationError, load, load_string, render
from milterman.config import loader as loader_module

MILTER = '[[milter]]\nname = "{name}"\nconnection_spec = "unix:/run/{name}.sock"\n'


def test_C_TOML_2_search_order(tmp_path, monkeypatch):
    given, environment, system = (tmp_path / name for name in ("given", "environment", "system"))
    for directory, workers in ((given, 1), (environment, 2), (system, 3)):
        directory.mkdir()
        (directory / "milter-manager.toml").write_text(f"version = 1\n[manager]\nn_workers = {workers}\n")
    monkeypatch.setattr(loader_module, "DEFAULT_CONFIG_DIR", str(system))
    environ = {"MILTER_MANAGER_CONFIG_DIR": str(environment)}
    assert load(given, environ=environ).manager.n_workers == 1  # --config-dir first
    assert load(None, environ=environ).manager.n_workers == 2  # then $MILTER_MANAGER_CONFIG_DIR
    assert load(None, environ={}).manager.n_workers == 3  # then sysconfdir
    # C-FILE-1: a --config-dir without the file falls through to the next directory
    assert load(tmp_path / "empty", environ=environ).manager.n_workers == 2
    # a file may be named directly
    assert load(given / "milter-manager.toml", environ={}).manager.n_workers == 1


def test_C_TOML_2_nothing_found_names_the_directories(tmp_path, monkeypatch):
    monkeypatch.setattr(loader_module, "DEFAULT_CONFIG_DIR", str(tmp_path / "etc"))
    with pytest.raises(ConfigurationError) as raised:
        load(tmp_path / "nowhere", environ={})
    assert str(raised.value) == (f"{tmp_path / 'nowhere'}: no milter-manager.toml found in: "
                                 f"{tmp_path / 'nowhere'}, {tmp_path / 'etc'}")


def test_C_TOML_2_relative_paths_are_relative_to_their_file(write, tmp_path):
    write("milter-manager.toml", 'version = 1\ninclude = ["sub/extra.toml"]\n[manager]\npid_file = "run/m.pid"\n')
    write("sub/extra.toml", '[log]\npath = "logs/manager.log"\n')
    configuration = load(tmp_path)
    assert configuration.manager.pid_file == str(tmp_path / "run/m.pid")
    assert configuration.log.path == str(tmp_path / "sub/logs/manager.log")


def test_C_TOML_3_includes_sorted_globs_depth_first(write, tmp_path):
    write("milter-manager.toml", 'version = 1\ninclude = ["conf.d/*.toml", "local.toml"]\n' +
          MILTER.format(name="main"))
    write("conf.d/20-b.toml", MILTER.format(name="b"))
    write("conf.d/10-a.toml", 'include = ["nested/*.toml"]\n' + MILTER.format(name="a"))
    write("conf.d/nested/x.toml", MILTER.format(name="nested"))
    write("conf.d/ignored.txt", MILTER.format(name="not-toml"))
    write("local.toml", MILTER.format(name="local"))
    configuration = load(tmp_path)
    assert [milter.name for milter in configuration.milters] == ["main", "a", "nested", "b", "local"]
    assert configuration.files == tuple(str(tmp_path / name) for name in (
        "milter-manager.toml", "conf.d/10-a.toml", "conf.d/nested/x.toml", "conf.d/20-b.toml", "local.toml"))


def test_C_TOML_3_missing_include_ignored_missing_required_is_an_error(write, tmp_path):
    write("milter-manager.toml", 'version = 1\ninclude = ["absent.toml", "none/*.toml"]\n')
    assert load(tmp_path).milters == ()
    main = write("milter-manager.toml", 'version = 1\ninclude_required = ["absent.toml", "none/*.toml"]\n')
    with pytest.raises(ConfigurationError) as raised:
        load(tmp_path)
    assert str(raised.value).splitlines() == [
        f'{main}: include_required[0]: "absent.toml" matches no file ({tmp_path / "absent.toml"})',
        f'{main}: include_required[1]: "none/*.toml" matches no file ({tmp_path / "none/*.toml"})']


def test_C_TOML_3_cycles_and_repeated_files(write, tmp_path):
    main = write("milter-manager.toml", 'version = 1\ninclude = ["a.toml", "*.toml"]\n')
    a = write("a.toml", 'include = ["milter-manager.toml"]\n' + MILTER.format(name="a"))
    with pytest.raises(ConfigurationError) as raised:
        load(tmp_path)
    assert str(raised.value) == f'{a}: include[0]: include cycle: "{main}" is already being read'
    write("a.toml", MILTER.format(name="a"))
    configuration = load(tmp_path)  # a.toml matched twice: read once
    assert [milter.name for milter in configuration.milters] == ["a"]


def test_B6_scalars_later_file_wins(write, tmp_path):
    write("milter-manager.toml", 'version = 1\ninclude = ["local.toml"]\n[manager]\nn_workers = 2\n'
          'fallback_status = "reject"\nconnection_checkers = ["netstat"]\n[stress]\nthreshold_n_connections = 10\n'
          '[s25r]\ncheck_only_ipv4 = true\n')
    write("local.toml", '[manager]\nn_workers = 8\nconnection_checkers = ["python:os.path:exists"]\n'
          '[stress]\nthreshold_n_connections = 20\n[s25r]\ncheck_only_ipv4 = false\n')
    configuration = load(tmp_path)
    assert configuration.manager.n_workers == 8
    assert configuration.manager.fallback_status == "reject"  # kept: not set again
    assert configuration.manager.connection_checkers == ("python:os.path:exists",)  # [manager] arrays replace
    assert configuration.stress.threshold_n_connections == 20
    assert configuration.s25r.check_only_ipv4 is False


def test_B6_tunable_lists_concatenated_in_file_order(write, tmp_path):
    write("milter-manager.toml", 'version = 1\ninclude = ["local.toml"]\n[s25r]\nwhitelist = [\'a\\Z\']\n'
          '[remote_network]\nlocal_addresses = ["10.1.0.0/16"]\n[trust]\nenvelope_from_domains = ["a.example"]\n'
          '[dnsbl]\nservices = [{ zone = "one.example" }]\n')
    write("local.toml", '[s25r]\nwhitelist = [\'b\\Z\']\n[remote_network]\nlocal_addresses = ["10.2.0.0/16"]\n'
          '[trust]\nenvelope_from_domains = ["B.example"]\n[dnsbl]\nservices = [{ zone = "two.example", '
          'expect = "127.0.0.2" }]\n')
    configuration = load(tmp_path)
    assert [pattern.text for pattern in configuration.s25r.whitelist] == ["a\\Z", "b\\Z"]
    assert configuration.remote_network.local_addresses == (ipaddress.ip_network("10.1.0.0/16"),
                                                            ipaddress.ip_network("10.2.0.0/16"))
    assert configuration.trust.envelope_from_domains == ("a.example", "b.example")
    assert [service.zone for service in configuration.dnsbl.services] == ["one.example", "two.example"]
    assert configuration.dnsbl.services[1].expect == ipaddress.ip_network("127.0.0.2/32")


def test_B6_milters_new_appended_existing_overridden_in_place_C_Q_1(write, tmp_path):
    write("milter-manager.toml", 'version = 1\ninclude = ["local.toml"]\n' + MILTER.format(name="first") +
          'fallback_status = "reject"\nevaluation_mode = true\nreading_timeout = 30.0\n' + MILTER.format(name="second"))
    local = write("local.toml", '[[milter]]\nname = "third"\nconnection_spec = "unix:/run/third.sock"\n'
                  '[[milter]]\nname = "first"\ndescription = "changed locally"\n')
    configuration = load(tmp_path)
    assert [milter.name for milter in configuration.milters] == ["first", "second", "third"]
    first = configuration.milter("first")
    # C-Q-1 Py fix: fallback_status and evaluation_mode are kept, not reset
    assert (first.fallback_status, first.evaluation_mode, first.reading_timeout) == ("reject", True, 30.0)
    assert first.description == "changed locally" and first.connection_spec == "unix:/run/first.sock"
    assert first.source == f"defined in {tmp_path / 'milter-manager.toml'}; changed in {local}"
    assert f"# changed in {local}" in render(configuration)


def test_B6_condition_with_existing_name_replaced_entirely(write, tmp_path):
    write("milter-manager.toml", 'version = 1\ninclude = ["local.toml"]\n' + MILTER.format(name="m") +
          'applicable_conditions = ["mine"]\n[[condition]]\nname = "mine"\ndescription = "old"\n'
          '[[condition.rule]]\nstage = "connect"\naction = "stop"\n[[condition]]\nname = "other"\n')
    write("local.toml", '[[condition]]\nname = "mine"\n[[condition.rule]]\nstage = "helo"\naction = "apply"\n')
    configuration = load(tmp_path)
    assert [condition.name for condition in configuration.conditions] == ["mine", "other"]  # position kept
    mine = configuration.condition("mine")
    assert mine.description is None and [rule.stage for rule in mine.rules] == ["helo"]


def test_B6_patches_restrict_accounts_rules_concatenated(write, tmp_path):
    write("milter-manager.toml", 'version = 1\ninclude = ["local.toml"]\n' + MILTER.format(name="a") +
          MILTER.format(name="b") + '[[milter_patch]]\nnames = ["*"]\nreading_timeout = 20.0\n'
          '[[restrict_accounts]]\naccounts = ["x@example.com"]\nmilters = ["a"]\n'
          '[[rule]]\nstage = "connect"\naction = "accept"\n')
    write("local.toml", '[[milter_patch]]\nnames = ["b"]\nreading_timeout = 40.0\n'
          '[[restrict_accounts]]\ncondition_name = "R2"\naccounts = ["y@example.com"]\nmilters = ["b"]\n'
          '[[rule]]\nstage = "helo"\naction = "reject"\n')
    configuration = load(tmp_path)
    assert (configuration.milter("a").reading_timeout, configuration.milter("b").reading_timeout) == (20.0, 40.0)
    default_name = 'Restrict Accounts by List: ["x@example.com"]'  # M-AC-B8 default name
    assert [r.condition_name for r in configuration.restrict_accounts] == [default_name, "R2"]
    assert configuration.milter("a").applicable_conditions == (default_name,)
    assert configuration.milter("b").applicable_conditions == ("R2",)
    assert [rule.stage for rule in configuration.rules] == ["connect", "helo"]


def test_B6_remove_milters_concatenated_applied_last_with_globs(write, tmp_path):
    write("milter-manager.toml", 'version = 1\ninclude = ["local.toml"]\nremove_milters = ["spam*"]\n' +
          MILTER.format(name="spamass") + MILTER.format(name="clamav") + MILTER.format(name="dkim"))
    write("local.toml", 'remove_milters = ["clam?v"]\n' + MILTER.format(name="spam-late"))
    configuration = load(tmp_path)
    # "spam-late" comes from a later file than the remove_milters that matches it: removed all the same
    assert [milter.name for milter in configuration.milters] == ["dkim"]


def test_B3_milter_patch_order_and_condition_edits():
    configuration = load_string('''
        version = 1
        [[milter]]
        name = "greylist"
        connection_spec = "unix:/run/g.sock"
        applicable_conditions = ["S25R", "Trust"]
        [[milter]]
        name = "dkim"
        connection_spec = "unix:/run/d.sock"
        [[milter_patch]]
        names = ["grey*"]
        add_applicable_conditions = ["Trust", "No Stress"]
        remove_applicable_conditions = ["S25R"]
        [[milter_patch]]
        names = ["*"]
        fallback_status = "tempfail"
        [[milter_patch]]
        names = ["dkim"]
        applicable_conditions = ["Remote Network"]
        add_applicable_conditions = ["Unauthenticated"]
        '''.replace("\n        ", "\n"))
    assert configuration.milter("greylist").applicable_conditions == ("Trust", "No Stress")  # no duplicates
    assert configuration.milter("dkim").applicable_conditions == ("Remote Network", "Unauthenticated")
    assert {milter.fallback_status for milter in configuration.milters} == {"temporary-failure"}


def test_B5_attach_to_after_merging_before_patches(write, tmp_path):
    write("milter-manager.toml", 'version = 1\ninclude = ["late.toml"]\n' + MILTER.format(name="a") +
          '[[condition]]\nname = "attached"\nattach_to = ["*"]\n'
          '[[milter_patch]]\nnames = ["late"]\nremove_applicable_conditions = ["attached"]\n')
    write("late.toml", MILTER.format(name="late") + MILTER.format(name="b") + 'applicable_conditions = ["S25R"]\n')
    configuration = load(tmp_path)
    assert configuration.milter("a").applicable_conditions == ("attached",)
    assert configuration.milter("b").applicable_conditions == ("S25R", "attached")
    assert configuration.milter("late").applicable_conditions == ()  # the patch ran after attach_to
    # D-8: attachments are written into the milters, so rendering drops attach_to without changing anything
    assert load_string(render(configuration)) == configuration


def test_D_9_detected_milters_are_the_layer_below_the_files(write, tmp_path):
    from milterman.config import MilterSettings

    detected = tuple(MilterSettings(
        name=name, connection_spec=f"unix:/run/{name}/{name}.sock", description=None, enabled=True,
        fallback_status="accept", evaluation_mode=False, applicable_conditions=conditions, command=None,
        command_options=None, user_name=None, connection_timeout=297.0, writing_timeout=7.0, reading_timeout=7.0,
        end_of_message_timeout=297.0, retry_delay=5.0, source=f"detected from /etc/{name}.conf")
        for name, conditions in (("opendkim", ()), ("milter-greylist", ("S25R", "Trust")), ("spamass", ())))
    write("milter-manager.toml", 'version = 1\nremove_milters = ["spamass"]\n[[milter]]\nname = "milter-greylist"\n'
          'enabled = false\n' + MILTER.format(name="local"))
    configuration = load(tmp_path, detected=detected)
    assert [milter.name for milter in configuration.milters] == ["opendkim", "milter-greylist", "local"]
    greylist = configuration.milter("milter-greylist")
    assert greylist.enabled is False and greylist.applicable_conditions == ("S25R", "Trust")  # other keys kept
    text = render(configuration)
    assert "[[milter]]\n# detected from /etc/opendkim.conf\nname = \"opendkim\"" in text
    assert "# detected from /etc/milter-greylist.conf\n# changed in " in text
    assert load_string(text) == configuration  # D-8 with or without detection
    assert load_string(text, detected=detected) == configuration
    broken = (dataclasses.replace(detected[0], applicable_conditions=("Nope",)),)
    with pytest.raises(ConfigurationError) as raised:
        load(tmp_path, detected=broken)
    assert str(raised.value) == 'detected from /etc/opendkim.conf: milter "opendkim": unknown condition "Nope"'
