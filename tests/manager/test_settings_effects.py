"""D-17: no setting is accepted and ignored.

``EFFECTS`` names, for every key of the schema (top-level keys, every section, every
array-of-tables key), the tests that show what the key does — or that it is refused with
a message. ``test_every_key_has_an_effect_test`` fails when a key is added to the schema
without an entry here, and ``test_every_named_test_exists`` when an entry names a test
that does not exist. Tests of this file show the plumbing the others rely on: a manager
key reaches the server settings, the leaders' context or the child definitions whose
effect the named server, net and leader tests show.
"""

from __future__ import annotations

import ast
import io
import os
import socket
import stat
import time
from pathlib import Path

import pytest

from milterman.config import load_string
from milterman.config.schema import ARRAYS, CONDITION_RULE, SECTIONS, TOP_LEVEL
from milterman.log import STATISTICS, Logger
from milterman.manager.app import ManagerApplication, build_context, child_definitions, server_config
from milterman.manager.status import Status
from milterman.net import MilterIOError, MtaClient
from milterman.protocol import Negotiate

ROOT = Path(__file__).resolve().parents[2]
HEAD = "version = 1\n"

M = "tests/manager/"
S = "tests/server/"
C = "tests/config/"
HERE = "tests/manager/test_settings_effects.py::"
TARGREY = (M + "test_disconnect_check.py::"
           "test_taRgrey_client_gone_while_child_tarpits_gets_fallback_at_disconnect_M_ERR_8")
TARGREY_POSTFIX = ("tests/interop/test_manager_postfix.py::"
                   "test_taRgrey_smtp_client_that_gives_up_during_a_tarpit_gets_the_fallback_at_disconnect")
HOOKS = M + "test_hooks.py::test_hooks_started_per_process_and_maintained_every_interval_get_database"

#: key → the tests that show its effect (or its refusal)
EFFECTS: dict[str, tuple[str, ...]] = {
    # top-level keys (B2)
    "version": (C + "test_config_errors.py::test_C_TOML_4_out_of_range",),
    "include": (C + "test_config_merge.py::test_C_TOML_3_includes_sorted_globs_depth_first",),
    "include_required": (
        C + "test_config_merge.py::test_C_TOML_3_missing_include_ignored_missing_required_is_an_error",),
    "remove_milters": (C + "test_config_merge.py::test_B6_remove_milters_concatenated_applied_last_with_globs",),
    # [package] (D-9)
    "package.platform": (
        M + "test_package_platform.py::test_platform_debian_asks_for_detection_and_no_detect_turns_it_off_D_9",
        M + "test_package_platform.py::test_hand_written_configuration_gets_exactly_its_milters_in_order_D_9",
        M + "test_package_platform.py::test_refused_package_and_custom_directory_keys_name_the_key_D_17"),
    "package.options": (
        M + "test_package_platform.py::test_refused_package_and_custom_directory_keys_name_the_key_D_17",),
    # [security]
    "security.privilege_mode": (HERE + "test_privilege_mode_keeps_the_launcher_root",
                                M + "test_launcher.py::test_command_started_as_its_user_name_M_LAU_1"),
    "security.effective_user": (HERE + "test_server_keys_reach_the_server_settings",
                                S + "test_daemon.py::test_daemon_drops_privileges_and_cleans_up"),
    "security.effective_group": (HERE + "test_server_keys_reach_the_server_settings",
                                 S + "test_daemon.py::test_daemon_drops_privileges_and_cleans_up"),
    # [log]
    "log.level": (M + "test_reload_settings.py::test_reload_applies_log_level_and_path",),
    "log.path": (M + "test_reload_settings.py::test_reload_applies_log_level_and_path",),
    "log.use_syslog": (M + "test_reload_settings.py::test_log_settings_switch_syslog_on_and_off",),
    "log.syslog_facility": (M + "test_reload_settings.py::test_log_settings_switch_syslog_on_and_off",),
    # [manager]
    "manager.connection_spec": (M + "test_scenarios.py::test_V1_reject_at_eom_after_add_header",
                                HERE + "test_server_keys_reach_the_server_settings"),
    "manager.unix_socket_mode": (HERE + "test_unix_socket_mode_and_group_of_manager_and_controller",),
    "manager.unix_socket_group": (HERE + "test_unix_socket_mode_and_group_of_manager_and_controller",),
    "manager.remove_unix_socket_on_create": (
        M + "test_remove_unix_socket_settings.py::test_remove_unix_socket_on_create_false_refuses_a_stale_socket",
        M + "test_remove_unix_socket_settings.py::test_remove_unix_socket_on_create_true_and_on_close"),
    "manager.remove_unix_socket_on_close": (
        M + "test_remove_unix_socket_settings.py::test_remove_unix_socket_on_create_true_and_on_close",),
    "manager.daemon": (HERE + "test_server_keys_reach_the_server_settings",
                       S + "test_daemon.py::test_daemon_drops_privileges_and_cleans_up"),
    "manager.pid_file": (HERE + "test_server_keys_reach_the_server_settings",
                         S + "test_daemon.py::test_daemon_drops_privileges_and_cleans_up"),
    "manager.maintenance_interval": (
        HOOKS,
                                     S + "test_limits.py::test_memory_profile_lines"),
    "manager.suspend_time_on_unacceptable": (
        M + "test_suspend_time.py::test_suspend_time_on_unacceptable_is_the_accept_pause_M_ACC_2",),
    "manager.max_connections": (M + "test_scenarios.py::test_V14_M_ACC_1a_max_connections_second_waits",
                                M + "test_scenarios.py::test_V14_D_6_max_connections_is_per_worker"),
    "manager.max_file_descriptors": (
        M + "test_suspend_time.py::test_suspend_time_on_unacceptable_is_the_accept_pause_M_ACC_2",
                                     S + "test_prefork.py::test_max_file_descriptors_sets_the_limit_in_every_process"),
    "manager.custom_configuration_directory": (
        M + "test_package_platform.py::test_refused_package_and_custom_directory_keys_name_the_key_D_17",),
    "manager.fallback_status": (M + "test_leader_rules.py::test_M_ERR_7a_no_alive_child_single_fallback_reply",),
    "manager.fallback_status_at_disconnect": (TARGREY, TARGREY_POSTFIX),
    "manager.event_loop_backend": (HERE + "test_event_loop_backend_selects_the_loop_of_the_serving_process",),
    "manager.n_workers": (M + "test_reload_settings.py::test_reload_changes_the_number_of_workers",
                          M + "test_reload_settings.py::test_reload_between_master_and_workers_is_refused_with_the_key",
                          M + "test_scenarios.py::test_V14_D_6_max_connections_is_per_worker"),
    "manager.packet_buffer_size": (HERE + "test_packet_buffer_size_writes_replies_once_that_many_bytes_wait",),
    "manager.chunk_size": (M + "test_leader_rules.py::test_M_BODY_2_chunk_size_for_replay_and_replacement",),
    "manager.max_pending_finished_sessions": (HERE + "test_max_pending_finished_sessions_batches_the_finished_line",),
    "manager.connection_check_interval": (
        TARGREY,
        M + "test_disconnect_check.py::test_without_checkers_the_tarpit_is_not_cut_M_ERR_8"),
    "manager.connection_checkers": (
        TARGREY,
        M + "test_disconnect_check.py::test_netstat_checker_reads_the_kernel_tcp_table_M_ERR_8",
        HERE + "test_python_connection_checker_is_called_with_the_session_facts"),
    "manager.report_memory_statistics": (
        HOOKS,
                                         S + "test_limits.py::test_memory_profile_lines"),
    "manager.worker_timeout": (HERE + "test_server_keys_reach_the_server_settings",
                               HERE + "test_worker_timeout_replaces_a_worker_whose_heartbeat_stopped"),
    "manager.graceful_timeout": (HERE + "test_server_keys_reach_the_server_settings",
                                 S + "test_reload.py::test_sigterm_cuts_sessions_after_the_graceful_timeout"),
    # [controller]
    "controller.connection_spec": (M + "test_controller.py::test_status_reports_workers_and_child_counters_D_7",),
    "controller.unix_socket_mode": (HERE + "test_unix_socket_mode_and_group_of_manager_and_controller",),
    "controller.unix_socket_group": (HERE + "test_unix_socket_mode_and_group_of_manager_and_controller",),
    "controller.remove_unix_socket_on_create": (
        M + "test_remove_unix_socket_settings.py::test_remove_unix_socket_on_create_false_refuses_a_stale_socket",
        M + "test_remove_unix_socket_settings.py::test_remove_unix_socket_on_create_true_and_on_close"),
    "controller.remove_unix_socket_on_close": (
        M + "test_remove_unix_socket_settings.py::test_remove_unix_socket_on_create_true_and_on_close",),
    "controller.metrics_spec": (
        M + "test_metrics.py::test_metrics_count_sessions_replies_fallbacks_timeouts_and_child_state",
        M + "test_metrics.py::test_metrics_with_workers_survive_restarts_and_count_reloads",
        M + "test_metrics.py::test_metrics_spec_is_off_by_default"),
    # [hooks], [database]
    "hooks.maintained": (HOOKS,
                         M + "test_hooks.py::test_hook_that_does_not_import_refuses_the_start_with_file_and_key"),
    "hooks.started": (HOOKS,),
    **{f"database.{name}": (HOOKS,)
       for name in ("type", "name", "host", "port", "path", "user", "password", "extra_options")},
    # built-in condition tunables (B4)
    "s25r.check_only_ipv4": (M + "test_conditions.py::test_m_ac_b1_s25r_tunables",),
    "s25r.use_default_lists": (M + "test_conditions.py::test_m_ac_b1_s25r_tunables",),
    "s25r.whitelist": (M + "test_conditions.py::test_m_ac_b1_s25r_tunables",),
    "s25r.whitelist_hosts": (M + "test_conditions.py::test_m_ac_b1_s25r_tunables",),
    "s25r.blacklist": (M + "test_conditions.py::test_m_ac_b1_s25r_tunables",),
    "s25r.blacklist_hosts": (M + "test_conditions.py::test_m_ac_b1_s25r_tunables",),
    "remote_network.local_addresses": (M + "test_conditions.py::test_m_ac_b2_remote_network",),
    "remote_network.remote_addresses": (M + "test_conditions.py::test_m_ac_b2_remote_network",),
    "stress.threshold_n_connections": (M + "test_conditions.py::test_m_ac_b5_threshold_from_configuration",
                                       M + "test_conditions.py::test_m_ac_b5_threshold_zero_never_stressed"),
    "trust.use_default_domains": (M + "test_conditions.py::test_m_ac_b6_trust_tunables",),
    "trust.envelope_from_domains": (M + "test_conditions.py::test_m_ac_b6_trust_tunables",),
    "trust.envelope_from_domain_patterns": (M + "test_conditions.py::test_m_ac_b6_trust_tunables",),
    "trust.envelope_from_domain_files": (M + "test_conditions.py::test_m_ac_b6_trust_tunables",),
    "dnsbl.use_default_services": (M + "test_conditions.py::test_m_ac_b7_configured_services",),
    "dnsbl.services": (M + "test_conditions.py::test_m_ac_b7_configured_services",),
    "dnsbl.name_servers": (M + "test_conditions.py::test_m_ac_b7_name_server_resolver_over_loopback",),
    "dnsbl.timeout": (HERE + "test_dnsbl_timeout_bounds_the_lookups",),
    # [[milter]]
    "milter.name": (M + "test_statistics_lines.py::test_LG_ST_formats_and_order",),
    "milter.connection_spec": (M + "test_scenarios.py::test_V1_reject_at_eom_after_add_header",),
    "milter.python": (M + "test_inprocess_child.py::test_in_process_child_beside_a_socket_child",
                      M + "test_inprocess_child.py::test_python_and_connection_spec_together_are_refused",
                      M + "test_inprocess_child.py::test_a_shadowed_stage_is_refused_when_the_configuration_loads"),
    "milter.description": (C + "test_config_render.py::test_D_9_source_field_is_a_comment_and_not_compared",
                           M + "test_manager_cli.py::test_check_config_and_show_config_round_trip_D_8"),
    "milter.enabled": (HERE + "test_session_keys_reach_the_leaders_and_children",),
    "milter.fallback_status": (M + "test_leader_rules.py::test_M_ERR_3_eom_timeout_tempfail_fallback_aborts_the_rest",
                               M + "test_leader_rules.py::test_D_14_M_NEG_5_unreachable_child_tempfail_fallback"),
    "milter.evaluation_mode": (M + "test_leader_rules.py::test_M_EVAL_1_evaluation_edits_ignored",),
    "milter.applicable_conditions": (M + "test_conditions.py::test_c_cond_1_conditions_in_order_first_stop_ends",),
    "milter.command": (M + "test_launcher.py::test_manager_launches_an_unreachable_child_in_the_background_M_CON_1",),
    "milter.command_options": (
        M + "test_launcher.py::test_manager_launches_an_unreachable_child_in_the_background_M_CON_1",
                               M + "test_launcher.py::test_command_line_joins_a_list_shell_escaped_M_LAU_1"),
    "milter.user_name": (M + "test_launcher.py::test_command_started_as_its_user_name_M_LAU_1",
                         HERE + "test_privilege_mode_keeps_the_launcher_root"),
    "milter.connection_timeout": (HERE + "test_milter_connection_and_writing_timeouts",),
    "milter.writing_timeout": (HERE + "test_milter_connection_and_writing_timeouts",),
    "milter.reading_timeout": (M + "test_leader_rules.py::test_M_ERR_3_rcpt_timeout_fallback_counts_at_parallel_stage",
        M + "test_review.py::test_M_ERR_2_each_child_has_its_own_reading_timeout_at_parallel_stages"),
    "milter.end_of_message_timeout": (
        M + "test_leader_rules.py::test_M_ERR_3_eom_timeout_tempfail_fallback_aborts_the_rest",),
    "milter.retry_delay": (
        M + "test_health.py::test_back_off_doubles_from_retry_delay_up_to_the_cap_one_launch_per_attempt",
        M + "test_child_health.py::test_a_down_child_with_fallback_accept_never_stalls_a_session_D_14"),
    "milter.reuse_connection": (
        M + "test_connection_reuse.py::test_P_CMD_14_a_kept_connection_serves_the_next_sessions_without_"
            "negotiating_again",
        M + "test_connection_reuse.py::test_a_kept_connection_that_fails_its_first_command_is_retried_on_a_fresh_"
            "one_in_the_same_stage"),
    # [[milter_patch]]
    "milter_patch.names": (C + "test_config_merge.py::test_B3_milter_patch_order_and_condition_edits",),
    "milter_patch.add_applicable_conditions": (
        C + "test_config_merge.py::test_B3_milter_patch_order_and_condition_edits",),
    "milter_patch.remove_applicable_conditions": (
        C + "test_config_merge.py::test_B3_milter_patch_order_and_condition_edits",),
    # [[restrict_accounts]]
    **{f"restrict_accounts.{name}": (M + "test_conditions.py::test_m_ac_b8_restrict_accounts_recipient_stage",)
       for name in ("condition_name", "accounts", "account_patterns", "milters")},
    # [[condition]] and [[condition.rule]]
    "condition.name": (M + "test_conditions.py::test_c_cond_1_conditions_in_order_first_stop_ends",),
    "condition.description": (C + "test_config_merge.py::test_B6_condition_with_existing_name_replaced_entirely",),
    "condition.attach_to": (C + "test_config_merge.py::test_B5_attach_to_after_merging_before_patches",),
    "condition.python": (
        M + "test_python_conditions.py::test_python_condition_stops_per_recipient_and_sees_the_session_facts",
        M + "test_python_conditions.py::test_import_error_is_refused_with_file_and_key",
        "tests/interop/test_python_condition_postfix.py::test_python_condition_keeps_the_child_away_from_one_domain"),
    "condition.rule": (M + "test_conditions.py::test_c_cond_1_first_matching_rule_decides",),
    "condition.rule.stage": (M + "test_conditions.py::test_c_cond_1_first_matching_rule_decides",),
    "condition.rule.match": (M + "test_conditions.py::test_b5_1_predicate",),
    "condition.rule.action": (M + "test_conditions.py::test_c_cond_1_first_matching_rule_decides",),
    "condition.rule.set_macros": (M + "test_conditions.py::test_m_mac_4_condition_macros_are_per_command",),
    "condition.rule.set_flags": (M + "test_conditions.py::test_b5_1_flag_set_by_an_earlier_stage",),
    # [[rule]] (B7)
    "rule.name": (M + "test_rules.py::test_c_rule_1_every_matching_rule_takes_effect_in_file_order",),
    "rule.stage": (M + "test_rules.py::test_c_rule_1_other_stages_and_no_match_give_none",),
    "rule.match": (M + "test_rules.py::test_c_rule_1_final_only_when_it_matches",),
    "rule.action": (M + "test_rules.py::test_c_rule_2_skip_and_only_globs",
                    M + "test_rules.py::test_c_rule_3_terminal_statuses_without_reply"),
    "rule.milters": (M + "test_rules.py::test_c_rule_2_skip_and_only_globs",),
    "rule.reply": (M + "test_rules.py::test_c_rule_3_reject_with_reply",),
    "rule.set_macros": (M + "test_rules.py::test_c_rule_4_set_macro_for_every_child_of_this_stage",),
    "rule.final": (M + "test_rules.py::test_c_rule_1_final_ends_the_chain",),
}


def schema_keys() -> set[str]:
    keys = {setting.key for setting in TOP_LEVEL}
    keys |= {setting.key for settings in SECTIONS.values() for setting in settings}
    for name, settings in ARRAYS.items():
        keys |= {f"{name}.{setting.name}" for setting in settings}
    keys |= {f"condition.rule.{setting.name}" for setting in CONDITION_RULE}
    return keys


def test_every_key_has_an_effect_test():
    """D-17: a key added to the schema needs a test of what it does (or of its refusal) named here."""
    keys = schema_keys()
    missing = sorted(keys - set(EFFECTS))
    unknown = sorted(set(EFFECTS) - keys)
    assert not missing, f"keys without a test of their effect: {missing}"
    assert not unknown, f"entries for keys the schema does not have: {unknown}"
    assert all(EFFECTS[key] for key in keys)


def _test_functions(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    return {node.name for node in tree.body if isinstance(node, ast.FunctionDef) and node.name.startswith("test")}


def test_every_named_test_exists():
    cache: dict[str, set[str]] = {}
    absent = []
    for key, tests in EFFECTS.items():
        for node in tests:
            file, _, function = node.partition("::")
            if file not in cache:
                cache[file] = _test_functions(ROOT / file) if (ROOT / file).exists() else set()
            if function not in cache[file]:
                absent.append(f"{key}: {node}")
    assert not absent, "named tests that do not exist:\n" + "\n".join(absent)


# ------------------------------------------------------------------------------ plumbing: where each key goes


def test_server_keys_reach_the_server_settings():
    configuration = load_string(HEAD + '''
[security]
effective_user = "nobody"
effective_group = "nogroup"
[manager]
connection_spec = "unix:/run/x/manager.sock"
unix_socket_mode = 0o640
unix_socket_group = "mail"
remove_unix_socket_on_create = false
remove_unix_socket_on_close = false
daemon = true
pid_file = "/run/x/manager.pid"
maintenance_interval = 7
suspend_time_on_unacceptable = 3
max_connections = 9
max_file_descriptors = 1234
event_loop_backend = "libuv"
n_workers = 3
graceful_timeout = 4.5
worker_timeout = 6.5
report_memory_statistics = true
''')
    config = server_config(configuration)
    assert config.worker_timeout == 6.5 and server_config(load_string(HEAD)).worker_timeout == 60.0
    assert (str(config.spec), config.unix_socket_mode, config.unix_socket_group) == \
        ("unix:/run/x/manager.sock", 0o640, "mail")
    assert (config.remove_unix_socket_on_create, config.remove_unix_socket_on_close) == (False, False)
    assert (config.user, config.group, config.daemon, config.pid_file) == \
        ("nobody", "nogroup", True, "/run/x/manager.pid")
    assert (config.maintenance_interval, config.suspend_time_on_unacceptable, config.max_connections,
            config.max_file_descriptors) == (7, 3, 9, 1234)
    assert (config.event_loop_backend, config.n_workers, config.graceful_timeout,
            config.report_memory_statistics) == ("libuv", 3, 4.5, True)
    assert server_config(load_string(HEAD)).event_loop_backend == "libev"  # "default" is libev (D-15)


def test_session_keys_reach_the_leaders_and_children():
    configuration = load_string(HEAD + '''
[manager]
fallback_status = "reject"
fallback_status_at_disconnect = "discard"
chunk_size = 1000
max_pending_finished_sessions = 5
connection_check_interval = 2
connection_checkers = ["netstat", "python:os.path:exists"]
[[milter]]
name = "on"
connection_spec = "unix:/run/on.sock"
fallback_status = "temporary-failure"
evaluation_mode = true
connection_timeout = 1.5
writing_timeout = 2.5
reading_timeout = 3.5
end_of_message_timeout = 4.5
retry_delay = 0.25
[[milter]]
name = "off"
connection_spec = "unix:/run/off.sock"
enabled = false
''')
    context = build_context(configuration)
    assert (context.fallback_status, context.chunk_size, context.max_pending_finished_sessions) == \
        (Status.REJECT, 1000, 5)
    assert context.disconnect is not None
    assert (context.disconnect.interval, len(context.disconnect.checkers), context.disconnect.status) == \
        (2.0, 2, Status.DISCARD)
    assert context.disconnect.checkers[1] is os.path.exists
    (definition,) = child_definitions(configuration)  # "off" is not enabled: no child (M-SES-2)
    assert (definition.name, str(definition.spec), definition.fallback_status, definition.evaluation_mode,
            definition.retry_delay) == ("on", "unix:/run/on.sock", Status.TEMPORARY_FAILURE, True, 0.25)
    timeouts = definition.timeouts
    assert (timeouts.connection, timeouts.writing, timeouts.reading, timeouts.end_of_message) == (1.5, 2.5, 3.5, 4.5)
    assert build_context(load_string(HEAD + "[manager]\nconnection_check_interval = 2\n")).disconnect is None


# ------------------------------------------------------------------------------ effects shown here


def test_max_pending_finished_sessions_batches_the_finished_line():
    """M-FIN-1: the [sessions][finished] line once more than N sessions finished; 0: after each one."""
    for pending, expected in ((0, ["1(+1) 0", "2(+1) 0", "3(+1) 0"]), (2, ["3(+3) 0"])):
        stream = io.StringIO()
        logger = Logger(level=STATISTICS, stream=stream)
        context = build_context(load_string(HEAD + f"[manager]\nmax_pending_finished_sessions = {pending}\n"),
                                 logger)
        for _ in range(3):
            context.session_finished()
        lines = [line.split("[sessions][finished] ", 1)[1] for line in stream.getvalue().splitlines()]
        assert lines == expected


def test_packet_buffer_size_writes_replies_once_that_many_bytes_wait(monkeypatch):
    """M-EOM-5: the manager hands packet_buffer_size to its MTA sessions; there, 0 writes once per batch of
    commands and N > 0 writes as soon as N bytes of replies wait."""
    import milterman.net as net
    from milterman.net import MilterHandler, MilterSession
    from milterman.protocol import (END_OF_HEADER, QUIT, Body, Connect, EndOfMessage, Family, Header, Helo, Mail,
                                    Rcpt, encode)

    seen = {}

    class Recording(MilterSession):
        def __init__(self, sock, factory, **kwargs) -> None:
            seen.update(kwargs)
            super().__init__(sock, factory, **kwargs)

    monkeypatch.setattr(net, "MilterSession", Recording)
    app = ManagerApplication(None, {}, detect=False)
    handle = app.make_handler(load_string(HEAD + "[manager]\npacket_buffer_size = 4096\n"))
    left, right = socket.socketpair()
    right.close()
    handle(left, None)
    assert seen["packet_buffer_size"] == 4096

    class FakeSocket:
        """The MTA's whole session arrives in one read; every write is counted."""

        def __init__(self, data: bytes) -> None:
            self.data = data
            self.writes: list[int] = []

        def settimeout(self, timeout) -> None:
            pass

        def recv(self, size: int) -> bytes:
            data, self.data = self.data, b""
            return data

        def send(self, data) -> int:
            self.writes.append(len(data))
            return len(data)

        def close(self) -> None:
            pass

    class Adder(MilterHandler):
        def end_of_message(self, command):
            for index in range(4):
                self.session.add_header(f"X-{index}", "v" * 20)

    commands = [Negotiate(6, 0x1FF, 0), Connect("mx", Family.INET, 25, "192.0.2.1"), Helo("h"), Mail("<a@b>"),
                Rcpt("<c@d>"), Header("Subject", "s"), END_OF_HEADER, Body(b"x"), EndOfMessage(b""), QUIT]
    stream = b"".join(encode(command) for command in commands)
    unbuffered = FakeSocket(stream)
    MilterSession(unbuffered, Adder, packet_buffer_size=0).run()
    assert len(unbuffered.writes) == 1  # every reply of the batch in one write
    buffered = FakeSocket(stream)
    MilterSession(buffered, Adder, packet_buffer_size=30).run()
    assert len(buffered.writes) > 4 and all(size >= 30 for size in buffered.writes[:-1]), buffered.writes
    assert sum(buffered.writes) == sum(unbuffered.writes)


def test_python_connection_checker_is_called_with_the_session_facts(tmp_path, monkeypatch):
    """A ``python:`` checker gets the session's facts and its false means "gone" (M-ERR-8)."""
    from milterman.manager.disconnect import ConnectionFacts, Watch

    calls = []

    def checker(facts: ConnectionFacts) -> bool:
        calls.append(facts)
        return False

    module = tmp_path / "sitechecks.py"
    module.write_text("CHECK = None\n\ndef gone(facts):\n    return CHECK(facts)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import sitechecks

    sitechecks.CHECK = checker
    configuration = load_string(HEAD + '[manager]\nconnection_check_interval = 1\n'
                                       'connection_checkers = ["python:sitechecks:gone"]\n')
    check = build_context(configuration).disconnect
    facts = ConnectionFacts(("192.0.2.1", 2525), ("192.0.2.25", 25), "", {"v": "Postfix 3.7"}, "Postfix 3.7")
    watch = Watch(check, lambda: facts, Logger(stream=io.StringIO()), 1)
    assert watch._connected() is False
    assert calls == [facts]


@pytest.mark.parametrize("backend", ["libuv", "default"])
def test_event_loop_backend_selects_the_loop_of_the_serving_process(env, backend):
    """D-15: libuv → the serving process loads gevent's libuv loop (a cffi module); default (libev) does not."""
    env.milter("c1")
    manager = env.start([{"name": "c1"}], manager={"event_loop_backend": backend})
    mta = env.mta()
    mta.session_start()
    mta.quit()
    with open(f"/proc/{manager.proc.pid}/maps") as maps:
        files = {line.split(None, 5)[5].strip() for line in maps if len(line.split(None, 5)) == 6}
    libuv = any("gevent/libuv" in name for name in files)
    assert libuv is (backend == "libuv"), sorted(name for name in files if "gevent" in name)


@pytest.mark.skipif(os.geteuid() != 0, reason="changing a socket's group needs root")
def test_worker_timeout_replaces_a_worker_whose_heartbeat_stopped(env):
    """D-5: a worker whose heartbeat stops for manager.worker_timeout seconds is killed and replaced."""
    import signal

    from manager_harness import one_session, wait_until

    env.milter("c1")
    manager = env.start([{"name": "c1"}], manager={"worker_timeout": 1.0}, n_workers=1)
    (worker,) = manager.remember_children()
    stopped = time.monotonic()
    os.kill(worker, signal.SIGSTOP)  # alive, but its heartbeat stops
    manager.wait_output(f"[server][worker][timeout] pid {worker} silent for", timeout=10)
    assert "(limit 1 s); killing it" in manager.output
    assert time.monotonic() - stopped < 5  # the default (60 s) would still wait
    wait_until(lambda: [pid for pid in manager.remember_children() if pid != worker and psutil_alive(pid)], 10,
               f"a new worker: {manager.output}")
    one_session(env)  # the new worker serves


def psutil_alive(pid: int) -> bool:
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def test_unix_socket_mode_and_group_of_manager_and_controller(env):
    import grp

    controller = env.dir / "controller.sock"
    env.start([], manager={"unix_socket_mode": 0o640, "unix_socket_group": "mail"},
              extra=f'\n[controller]\nconnection_spec = "unix:{controller}"\nunix_socket_mode = 0o600\n'
                    f'unix_socket_group = "nogroup"\n')
    deadline = time.monotonic() + 10  # the controller binds after the manager's socket listens
    while not controller.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    for path, mode, group in ((env.socket_path, 0o640, "mail"), (controller, 0o600, "nogroup")):
        info = os.stat(path)
        assert stat.S_IMODE(info.st_mode) == mode, (path, oct(info.st_mode))
        assert info.st_gid == grp.getgrnam(group).gr_gid, path


@pytest.mark.skipif(os.geteuid() != 0, reason="privilege mode keeps root only when started as root")
@pytest.mark.parametrize("privileged", [True, False])
def test_privilege_mode_keeps_the_launcher_root(monkeypatch, privileged):
    """M-LAU-1, D-10: in privilege mode the launcher keeps root (to start each command as its user_name);
    otherwise it runs as the manager's user."""
    import dataclasses

    import milterman.manager.launcher as launcher_module

    requested = []
    monkeypatch.setattr(launcher_module, "start_launcher", lambda logger, drop_to: requested.append(drop_to))
    configuration = load_string(HEAD + f'[security]\nprivilege_mode = {"true" if privileged else "false"}\n'
                                       '[[milter]]\nname = "m"\nconnection_spec = "unix:/run/m.sock"\n'
                                       'command = "/bin/true"\nuser_name = "nobody"\n')
    app = ManagerApplication(None, {}, detect=False)
    app.prepare(configuration, dataclasses.replace(server_config(configuration), user="nobody"))
    assert requested == [None if privileged else ("nobody", None)]


def test_milter_connection_and_writing_timeouts(tmp_path):
    """M-ERR-2: connection_timeout bounds the connect to a child whose backlog is full, writing_timeout a
    write to a child that reads nothing."""
    import gevent

    from milterman.net.mta import open_connection

    configuration = load_string(HEAD + f'''
[[milter]]
name = "slow"
connection_spec = "unix:{tmp_path}/slow.sock"
connection_timeout = 0.5
writing_timeout = 0.5
''')
    (definition,) = child_definitions(configuration)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(tmp_path / "slow.sock"))
    listener.listen(0)
    queued = []
    try:
        while True:  # fill the backlog: the next connect blocks
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.setblocking(False)
            try:
                sock.connect(str(tmp_path / "slow.sock"))
            except BlockingIOError:
                sock.close()
                break
            queued.append(sock)
            assert len(queued) < 100
        started = time.monotonic()
        with pytest.raises(MilterIOError, match="connection timeout"):
            gevent.spawn(MtaClient.open, definition.spec, Negotiate(6, 0x1FF, 0x1FFFFF),
                         timeouts=definition.timeouts).get(timeout=10)
        assert 0.4 <= time.monotonic() - started < 3
        # a child that accepted but reads nothing: the write blocks once the buffers are full
        for sock in queued:
            sock.close()
        queued.clear()
        listener.setblocking(False)
        try:
            while True:  # drain the backlog
                listener.accept()[0].close()
        except BlockingIOError:
            pass
        listener.setblocking(True)
        client_sock = gevent.spawn(open_connection, definition.spec, 5).get(timeout=10)
        peer, _ = listener.accept()
        client = MtaClient(client_sock, Negotiate(6, 0x1FF, 0x1FFFFF), timeouts=definition.timeouts)
        started = time.monotonic()
        with pytest.raises(MilterIOError, match="writing timeout"):
            gevent.spawn(client._write, b"x" * (16 << 20)).get(timeout=10)
        assert 0.4 <= time.monotonic() - started < 3
        peer.close()
        client_sock.close()
    finally:
        for sock in queued:
            sock.close()
        listener.close()


def test_dnsbl_timeout_bounds_the_lookups():
    """M-AC-B7: ``[dnsbl] timeout`` is what the resolver gets to wait for the zones' answers."""
    from test_conditions import builtin, play

    asked = []

    def resolver(names, timeout):
        asked.append(timeout)
        return {}

    assert play(builtin("DNSBL Listed", "[dnsbl]\ntimeout = 0.25\n", resolver=resolver), "connect") is True
    assert asked == [0.25]
