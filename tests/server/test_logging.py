"""The logger (logging.md §1, §2, §4, §5): level expressions, line formats, paths, syslog facility."""

from __future__ import annotations

import io
import os
import re
import syslog

import pytest

from milterman import log
from milterman.log import Logger, LogLevelError, parse_level


@pytest.mark.parametrize(("expression", "names"), [
    ("all", {"critical", "error", "warning", "message", "info", "debug", "trace", "statistics", "profile"}),
    ("info", {"info"}),
    ("error|critical", {"critical", "error"}),
    ("+info|debug", {"critical", "error", "warning", "message", "info", "debug", "statistics"}),
    ("-error|warning", {"critical", "message", "statistics"}),
])
def test_LG_LVL_1_expressions(expression, names):
    bits = parse_level(expression)
    assert {name for name, bit in log.LEVELS.items() if bits & bit and name != "none"} == names


def test_LG_LVL_2_unknown_names_are_all_named():
    with pytest.raises(LogLevelError) as error:
        parse_level("foo|bar")
    assert str(error.value).startswith("unknown flag names: [<foo>|<bar>](<MilterLogLevelFlags>); valid levels: ")


def test_LG_LVL_3_below_the_target_set_nothing_is_written():
    stream = io.StringIO()
    logger = Logger(parse_level("error"), stream)
    logger.info("hidden")
    logger.error("shown")
    assert "hidden" not in stream.getvalue() and "shown" in stream.getvalue()
    stream = io.StringIO()
    quiet = Logger(parse_level("none"), stream)
    quiet.critical("nothing")
    assert stream.getvalue() == ""


def test_LG_FMT_1_default_line_and_the_pid_form_of_workers():
    stream = io.StringIO()
    logger = Logger(log.DEFAULT, stream)
    logger.statistics("[sessions][finished] 1(+1) 0")
    assert re.fullmatch(r"\[\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{6})?Z\]: \[sessions\]\[finished\] 1\(\+1\) 0\n",
                        stream.getvalue())
    stream = io.StringIO()
    logger = Logger(log.DEFAULT, stream)
    logger.with_pid = True
    logger.message("x")
    assert re.fullmatch(rf"\[[^]]+Z\] \[{os.getpid()}\]: x\n", stream.getvalue())


def test_timestamp_omits_a_zero_fraction():
    assert log.timestamp(1247619602.0) == "2009-07-15T01:00:02Z"
    assert log.timestamp(1247619602.812345) == "2009-07-15T01:00:02.812345Z"


def test_LG_FMT_3_path_appends_and_exists_before_any_message(tmp_path):
    path = tmp_path / "milter.log"
    path.write_text("old line\n")
    logger = Logger(log.DEFAULT)
    logger.set_path(str(path))
    assert path.read_text() == "old line\n"
    logger.error("new line")
    assert path.read_text().startswith("old line\n") and path.read_text().rstrip().endswith("new line")


def test_LG_FMT_4_unopenable_path_is_named(tmp_path):
    logger = Logger(log.DEFAULT)
    with pytest.raises(OSError) as error:
        logger.set_path(str(tmp_path / "missing" / "x.log"))
    assert str(error.value).startswith(f"failed to set log output path: <{tmp_path}/missing/x.log>: ")


def test_LG_CFG_2_reopen_after_rotation(tmp_path):
    path = tmp_path / "milter.log"
    logger = Logger(log.DEFAULT)
    logger.set_path(str(path))
    logger.error("before")
    path.rename(tmp_path / "milter.log.1")
    logger.reopen()
    logger.error("after")
    assert "after" in path.read_text() and "before" not in path.read_text()


def test_LG_SYS_3_facility_names_and_unknown_falls_back_to_mail():
    assert log.SYSLOG_FACILITIES["mail"] == syslog.LOG_MAIL
    assert log.SYSLOG_FACILITIES["local3"] == syslog.LOG_LOCAL3
    assert log.SYSLOG_FACILITIES.get("no-such-facility", syslog.LOG_MAIL) == syslog.LOG_MAIL


def test_LG_CFG_1_environment_level(monkeypatch):
    monkeypatch.setenv("MILTER_LOG_LEVEL", "all")
    assert log.level_from_environment() == log.ALL
    monkeypatch.setenv("MILTER_LOG_LEVEL", "bogus")
    assert log.level_from_environment() == log.DEFAULT
