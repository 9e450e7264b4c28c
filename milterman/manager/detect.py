"""Milter detection on Debian (D-9): which packaged milters run, and on which socket.

For each milter of :data:`MILTERS` the detector asks three questions of a file tree
(``root``, ``/`` for the running system, a fake tree in tests) and reads files only —
no process is run, nothing is resolved, nothing is connected to:

* **installed?** ``var/lib/dpkg/status`` says ``Status: … installed`` for the package
  (without a status file: ``var/lib/dpkg/info/<package>.list`` exists). Milters that
  are not installed are left out silently.
* **enabled?** The service is not masked and is enabled the way the init system in
  use sees it: a symlink ``etc/systemd/system/*.wants/<service>.service`` when systemd
  runs a unit of the package, else an ``etc/rc[2-5].d/S??<service>`` link (what
  systemd's sysv generator and sysvinit both read), and, for init scripts that have
  one, the ``/etc/default`` switch (``ENABLED=0`` of milter-greylist).
* **which socket?** What the daemon will really listen on, read from the same places
  and with the same precedence as the package: the command line of the systemd unit
  (drop-ins included) or of the init script as assembled from ``/etc/default``, then
  the milter's configuration file, then the program's own default. The result is a
  milterman connection spec; the file it came from is kept for
  ``--show-config``.

systemd is taken to be the init system when ``run/systemd/system`` exists or
``sbin/init`` is missing or points at systemd (Debian's default); a ``sbin/init``
that is something else means sysvinit, where ``/etc/default`` files are read by the
init scripts.

A milter whose configuration cannot be read or whose socket cannot be determined is
skipped with a reason (:func:`detect_with_reasons`; :func:`detect` logs the reasons as
warnings). Sockets that listen on every address are connected to on the loopback
address of their family.

Reading the host (dpkg, services, unit and sh files, rspamd's UCL) is
:mod:`milterman.manager.debian_host`; this module is the per-milter knowledge.
The facts per milter (Debian 12 "bookworm" packages unless noted, read from the
packages' shipped files) are in the docstring of each ``_socket_*`` function; the
table :data:`MILTERS` ties them to names, services and default applicable conditions.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field

from milterman.log import logger

from .debian_host import (DebianHost, DetectionError, first_positional, keyword_setting, option_value, split_words,
                          ucl_parse)

#: the conditions the original's Debian defaults give each kind of milter
NO_CONDITIONS: tuple[str, ...] = ()
GREYLIST_CONDITIONS = ("Sendmail Compatible", "Stress Notify", "Trust", "Remote Network", "S25R", "Unauthenticated")
FILTER_CONDITIONS = ("Remote Network", "Unauthenticated", "No Stress")

DEFAULT_SUFFIX = " (package default)"



@dataclass(frozen=True)
class DetectedMilter:
    """One installed milter, ready to become a ``[[milter]]`` (B3).

    ``source`` is the file the socket came from; when the package's own default was
    used it names where that default lives, followed by ``(package default)``.
    ``command`` starts the service (D-10: an argv, never a shell line).
    """

    name: str
    connection_spec: str
    enabled: bool
    source: str
    command: tuple[str, ...] | None
    applicable_conditions: tuple[str, ...]
    description: str


@dataclass(frozen=True)
class SkippedMilter:
    """An installed milter that was not registered, and why."""

    name: str
    reason: str


@dataclass(frozen=True)
class _Found:
    """What a ``_socket_*`` function found: the socket as the milter writes it, and where."""

    socket: str
    source: str
    style: str = "libmilter"          # or "rspamd": which converter reads ``socket``
    enabled_flag: bool | None = None  # an /etc/default switch, when the init script has one


@dataclass(frozen=True)
class MilterKnowledge:
    """Everything the detector knows about one milter; one row of :data:`MILTERS`."""

    name: str
    package: str
    service: str
    description: str
    applicable_conditions: tuple[str, ...]
    find_socket: Callable[[DebianHost], _Found] = field(repr=False)


# -- socket syntax conversion ---------------------------------------------------------------------------------------


def _loopback_if_wildcard(family: str, host: str) -> str:
    """A host to connect to: the loopback address instead of "every address"."""
    if host in ("", "*", "0.0.0.0", "::", "[0.0.0.0]", "[::]"):
        return "[127.0.0.1]" if family == "inet" else "[::1]"
    return host


def _bracket_literal(family: str, host: str, original: str) -> str:
    """``[ADDR]`` for an address literal (bracketed or not), the host name unchanged otherwise."""
    bare = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        address = ipaddress.IPv4Address(bare) if family == "inet" else ipaddress.IPv6Address(bare)
    except ValueError:
        if host.startswith("[") or ":" in bare or not re.fullmatch(r"[A-Za-z0-9.-]+", bare):
            raise DetectionError(f"invalid {family} host in socket {original!r}: {host!r}") from None
        return bare
    return f"[{address}]"


def _check_port(port: str, original: str) -> str:
    if not port.isdigit() or not port.isascii() or not 0 < int(port) < 65536:
        raise DetectionError(f"invalid port in socket {original!r}: {port!r}")
    return str(int(port))


def libmilter_socket_to_spec(text: str) -> str:
    """Convert a libmilter/Sendmail socket (``inet:PORT@HOST``, ``inet6:…``, ``local:``/``unix:PATH``, ``/PATH``).

    Hosts are kept as written (looked up only when the manager connects, see :mod:`milterman.spec`),
    address literals are bracketed, and a socket on every address (no host, ``0.0.0.0``,
    ``::``) becomes the loopback address. Raises :class:`DetectionError` for forms a
    manager cannot connect to (relative paths, ``fd:`` sockets handed over by systemd).
    """
    original = text
    text = text.strip()
    if not text:
        raise DetectionError("the socket is empty")
    if text.startswith("/"):
        return f"unix:{text}"
    protocol, colon, rest = text.partition(":")
    protocol = protocol.lower()
    if not colon:
        raise DetectionError(f"socket {original!r} is a relative path")
    if protocol in ("unix", "local"):
        if not rest.startswith("/"):
            raise DetectionError(f"socket {original!r} is not an absolute path")
        return f"unix:{rest}"
    if protocol in ("inet", "inet6"):
        port, _, host = rest.partition("@")
        port = _check_port(port, original)
        host = _loopback_if_wildcard(protocol, host.strip())
        return f"{protocol}:{port}@{_bracket_literal(protocol, host, original)}"
    if protocol == "fd":
        raise DetectionError(f"socket {original!r} is passed in by systemd socket activation; its address is unknown")
    raise DetectionError(f"socket {original!r} has an unknown protocol {protocol!r}")


def rspamd_socket_to_spec(text: str) -> str:
    """Convert an rspamd ``bind_socket`` (``HOST:PORT``, ``*:PORT``, ``[ADDR6]:PORT``, ``/PATH [mode=…]``)."""
    original = text
    words = text.split()
    if not words:
        raise DetectionError("the bind_socket is empty")
    text = words[0]  # a unix socket may be followed by mode=, owner=, group=
    if text.startswith("/"):
        return f"unix:{text}"
    if text.startswith("systemd:"):
        raise DetectionError(f"bind_socket {original!r} is passed in by systemd; its address is unknown")
    if text.startswith("["):
        address, bracket, port = text[1:].partition("]")
        if not bracket or not port.startswith(":"):
            raise DetectionError(f"bind_socket {original!r} has no port")
        host = _loopback_if_wildcard("inet6", address)
        return f"inet6:{_check_port(port[1:], original)}@{_bracket_literal('inet6', host, original)}"
    host, colon, port = text.rpartition(":")
    if not colon:
        raise DetectionError(f"bind_socket {original!r} has no port")
    port = _check_port(port, original)
    if ":" in host:  # a bare IPv6 address
        return f"inet6:{port}@{_bracket_literal('inet6', _loopback_if_wildcard('inet6', host), original)}"
    return f"inet:{port}@{_bracket_literal('inet', _loopback_if_wildcard('inet', host), original)}"


_CONVERTERS: dict[str, Callable[[str], str]] = {"libmilter": libmilter_socket_to_spec,
                                                 "rspamd": rspamd_socket_to_spec}


# -- one function per milter ----------------------------------------------------------------------------------------


def _opendkim_family(system: DebianHost, name: str, *, config_option: str,
                     init_defaults: dict[str, str]) -> _Found:
    """opendkim and opendmarc: same packaging, same rules (see :func:`_socket_opendkim`)."""
    config = f"/etc/{name}.conf"
    if system.runs_unit(name):
        argv = system.exec_start(name)
    else:
        init = f"/etc/init.d/{name}"
        variables = {"NAME": (name, init), "RUNDIR": (f"/run/{name}", init)}
        variables.update({key: (value, init + DEFAULT_SUFFIX) for key, value in init_defaults.items()})
        variables = system.shell_file(f"/etc/default/{name}", variables)
        # the init script passes -p $SOCKET only when /etc/NAME.conf has no Socket line
        config_text = system.read_optional(config)
        config_socket = keyword_setting(config_text, "Socket") if config_text is not None else None
        argv = [(f"/usr/sbin/{name}", init)]
        socket, socket_source = variables.get("SOCKET", ("", ""))
        if socket and not config_socket:
            argv += [("-p", socket_source), (socket, socket_source)]
        options, options_source = variables.get("DAEMON_OPTS", ("", ""))
        argv += [(word, options_source) for word in split_words(options)]
    socket_option = option_value(argv, "-p")
    if socket_option:  # the command line wins over the configuration file (opendkim(8), opendmarc(8))
        return _Found(*socket_option)
    config_option_value = option_value(argv, config_option)
    config = config_option_value[0] if config_option_value else config
    config_text = system.read_optional(config)
    if config_text is None:
        raise DetectionError(f"{config} does not exist and the command line has no -p (the socket is mandatory)")
    socket = keyword_setting(config_text, "Socket")
    if not socket:
        raise DetectionError(f"{config} sets no Socket and the command line has no -p (the socket is mandatory)")
    return _Found(socket, config)


def _socket_opendkim(system: DebianHost) -> _Found:
    """opendkim 2.11.0~beta2-8 (bookworm).

    * ``/etc/opendkim.conf`` (``-x FILE`` on the command line names another), key
      ``Socket``, "NAME  value" lines, ``#`` comments. Debian ships
      ``Socket local:/run/opendkim/opendkim.sock``. No built-in default: the socket is
      mandatory (opendkim.conf(5)).
    * ``-p SOCKET`` on the command line overrides the file (opendkim(8)).
    * systemd: ``opendkim.service`` runs ``ExecStart=/usr/sbin/opendkim`` (no options);
      ``/lib/opendkim/opendkim.service.generate`` turns ``/etc/default/opendkim`` into a
      drop-in ``/etc/systemd/system/opendkim.service.d/override.conf`` whose ExecStart has
      ``-p $SOCKET``. ``/etc/default/opendkim`` itself is "not used by the systemd service".
    * sysvinit: ``/etc/init.d/opendkim`` sources ``/etc/default/opendkim`` (Debian's:
      ``RUNDIR=/run/opendkim``, ``SOCKET=local:$RUNDIR/opendkim.sock``) and passes
      ``-p $SOCKET`` only when opendkim.conf has no ``Socket`` line; ``DAEMON_OPTS`` follows.
    """
    return _opendkim_family(system, "opendkim", config_option="-x", init_defaults={})


def _socket_opendmarc(system: DebianHost) -> _Found:
    """opendmarc 1.4.2-2 (bookworm): packaged exactly like opendkim.

    ``/etc/opendmarc.conf`` (``-c FILE`` names another), key ``Socket``; Debian ships
    ``Socket local:/run/opendmarc/opendmarc.sock``; mandatory, no built-in default.
    ``-p`` overrides. systemd: ``ExecStart=/usr/sbin/opendmarc`` (drop-ins from
    ``/lib/opendmarc/opendmarc.service.generate``). sysvinit: ``/etc/init.d/opendmarc``
    sets ``SOCKET=local:$RUNDIR/$NAME.sock`` itself, sources ``/etc/default/opendmarc``
    and passes ``-p $SOCKET`` only when opendmarc.conf has no ``Socket`` line.
    """
    return _opendkim_family(system, "opendmarc", config_option="-c",
                            init_defaults={"SOCKET": "local:/run/opendmarc/opendmarc.sock"})


def _socket_spamass_milter(system: DebianHost) -> _Found:
    """spamass-milter 0.4.0-2 (bookworm): an init script only (systemd runs it through its sysv generator).

    ``/etc/init.d/spamass-milter`` runs ``spamass-milter -P PIDFILE -f -p $SOCKET $OPTIONS``
    (a ``-p`` in ``OPTIONS`` comes last and wins). ``SOCKET`` defaults to
    ``/var/run/spamass/spamass.sock``; to ``/var/run/sendmail/spamass.sock`` when
    ``/etc/mail/sendmail.cf`` still uses that old socket; to
    ``/var/spool/postfix/spamass/spamass.sock`` when ``/usr/sbin/postfix`` is executable.
    Then ``/etc/default/spamass-milter`` is sourced: ``OPTIONS="-u spamass-milter -i
    127.0.0.1"``, ``SOCKET=`` commented out. The socket is a path (libmilter forms work too).
    """
    init = "/etc/init.d/spamass-milter"
    socket = "/var/run/spamass/spamass.sock"
    sendmail_cf = system.read_optional("/etc/mail/sendmail.cf") or ""
    if re.search(r"X.+S=local:/var/run/sendmail/spamass\.sock", sendmail_cf):
        socket = "/var/run/sendmail/spamass.sock"
    if system.executable("/usr/sbin/postfix"):
        socket = "/var/spool/postfix/spamass/spamass.sock"
    variables = system.shell_file("/etc/default/spamass-milter", {"SOCKET": (socket, init + DEFAULT_SUFFIX),
                                                                 "OPTIONS": ("", init)})
    socket_value, socket_source = variables["SOCKET"]
    options, options_source = variables["OPTIONS"]
    argv = [("/usr/sbin/spamass-milter", init), ("-f", init), ("-p", socket_source), (socket_value, socket_source)]
    argv += [(word, options_source) for word in split_words(options)]
    found = option_value(argv, "-p") or (socket_value, socket_source)
    return _Found(*found)


def _socket_clamav_milter(system: DebianHost) -> _Found:
    """clamav-milter 1.4.6+dfsg-0+deb12u1 (bookworm): an init script only.

    ``/etc/clamav/clamav-milter.conf``, key ``MilterSocket`` ("Name value" lines, ``#``
    comments; ``[[unix|local]:]/path``, ``inet:port@host``, ``inet6:…``). The package does
    not ship the file: its postinst writes it from debconf, whose default is
    ``MilterSocket /var/run/clamav/clamav-milter.ctl``. No built-in default: without
    ``MilterSocket`` the init script refuses to start, and an uncommented ``Example`` line
    (as in the upstream sample) makes clamav-milter refuse its configuration.
    """
    config = "/etc/clamav/clamav-milter.conf"
    text = system.read(config)
    if re.search(r"^\s*Example\b", text, re.M):
        raise DetectionError(f"{config} still has the 'Example' line; clamav-milter refuses such a file")
    socket = keyword_setting(text, "MilterSocket")
    if not socket:
        raise DetectionError(f"{config} sets no MilterSocket (it is mandatory)")
    return _Found(socket, config)


def _socket_amavisd_milter(system: DebianHost) -> _Found:
    """amavisd-milter 1.7.2-1 (bookworm): an init script only.

    ``/etc/init.d/amavisd-milter`` sources ``/etc/default/amavisd-milter`` (everything
    commented out in Debian's) and adds ``-s $MILTERSOCKET`` when ``MILTERSOCKET`` is set,
    then ``$EXTRAPARAMS``. Without ``-s`` the program's built-in default is
    ``/var/lib/amavis/amavisd-milter.sock`` (``{unix|local}:PATH``, ``inet:…`` accepted).
    """
    default = "/etc/default/amavisd-milter"
    variables = system.shell_file(default, {})
    argv = [("/usr/sbin/amavisd-milter", "/etc/init.d/amavisd-milter")]
    socket, socket_source = variables.get("MILTERSOCKET", ("", ""))
    if socket:
        argv += [("-s", socket_source), (socket, socket_source)]
    extra, extra_source = variables.get("EXTRAPARAMS", ("", ""))
    argv += [(word, extra_source) for word in split_words(extra)]
    found = option_value(argv, "-s")
    if found:
        return _Found(*found)
    return _Found("/var/lib/amavis/amavisd-milter.sock", "/usr/sbin/amavisd-milter" + DEFAULT_SUFFIX)


def _socket_dkimpy_milter(system: DebianHost) -> _Found:
    """dkimpy-milter 1.2.3-1 (bookworm).

    systemd: ``ExecStart=/usr/bin/dkimpy-milter /etc/dkimpy-milter/dkimpy-milter.conf -P
    /run/dkimpy-milter/dkimpy-milter.pid``: the first argument is the configuration file
    (without one the program reads ``/usr/local/etc/dkimpy-milter.conf``). sysvinit:
    ``/etc/init.d/dkimpy-milter`` passes ``/etc/dkimpy-milter/dkimpy-milter.conf``.
    Key ``Socket`` ("Name value", ``#`` comments); Debian's file has it commented out, so
    the built-in default applies: ``local:/var/run/dkimpy-milter/dkimpy-milter.sock``.
    """
    config = "/etc/dkimpy-milter/dkimpy-milter.conf"
    if system.runs_unit("dkimpy-milter"):
        argument = first_positional(system.exec_start("dkimpy-milter"))
        config = argument[0] if argument else "/usr/local/etc/dkimpy-milter.conf"
    text = system.read_optional(config)
    socket = keyword_setting(text, "Socket") if text is not None else None
    if socket:
        return _Found(socket, config)
    return _Found("local:/var/run/dkimpy-milter/dkimpy-milter.sock", "/usr/bin/dkimpy-milter" + DEFAULT_SUFFIX)


def _socket_pyspf_milter(system: DebianHost) -> _Found:
    """pyspf-milter 3.0.4-2 (bookworm; the code is in python3-spf-engine).

    systemd: ``ExecStart=/usr/bin/pyspf-milter /etc/pyspf-milter/pyspf-milter.conf``
    (without an argument the program reads ``/etc/python-policyd-spf/policyd-spf.conf``).
    Key ``Socket`` in "Name = value" lines (``#`` comments; a line with a second ``=`` is
    ignored). Debian's file sets ``Socket = inet:8893@localhost``; the built-in default is
    ``local:/run/pyspf-milter/pyspf-milter.sock``.
    """
    config = "/etc/pyspf-milter/pyspf-milter.conf"
    if system.runs_unit("pyspf-milter"):
        argument = first_positional(system.exec_start("pyspf-milter"))
        config = argument[0] if argument else "/etc/python-policyd-spf/policyd-spf.conf"
    text = system.read_optional(config)
    socket = keyword_setting(text, "Socket", separator="=") if text is not None else None
    if socket:
        return _Found(socket, config)
    return _Found("local:/run/pyspf-milter/pyspf-milter.sock", "/usr/bin/pyspf-milter" + DEFAULT_SUFFIX)


def _socket_milter_greylist(system: DebianHost) -> _Found:
    """milter-greylist 4.6.4-4 (Debian trixie; in bullseye as 4.6.2-3, not in bookworm).

    ``/etc/milter-greylist/greylist.conf`` (``-f FILE`` names another), ``socket "PATH"
    [MODE]``; Debian ships ``socket "/var/run/milter-greylist/milter-greylist.sock"``.
    ``-p SOCKET`` on the command line overrides the file.
    systemd: ``ExecStart=/usr/sbin/milter-greylist`` (no options), so the file decides.
    sysvinit: ``/etc/init.d/milter-greylist`` sets ``ENABLED=0`` and
    ``SOCKET=/var/run/milter-greylist/milter-greylist.sock``, sources
    ``/etc/default/milter-greylist`` (Debian's only has comments) and runs
    ``milter-greylist $OPTIONS -P … -u … -p $SOCKET``, so there ``SOCKET`` decides, and
    the script does nothing while ``ENABLED`` is ``0``.
    """
    init = "/etc/init.d/milter-greylist"
    enabled_flag = None
    if system.runs_unit("milter-greylist"):
        argv = system.exec_start("milter-greylist")
    else:
        variables = system.shell_file("/etc/default/milter-greylist", {
            "ENABLED": ("0", init), "OPTIONS": ("", init),
            "SOCKET": ("/var/run/milter-greylist/milter-greylist.sock", init + DEFAULT_SUFFIX)})
        enabled_flag = variables["ENABLED"][0] != "0"
        options, options_source = variables["OPTIONS"]
        socket, socket_source = variables["SOCKET"]
        argv = [("/usr/sbin/milter-greylist", init)] + [(word, options_source) for word in split_words(options)]
        argv += [("-p", socket_source), (socket, socket_source)]
    found = option_value(argv, "-p")
    if found:
        return _Found(found[0], found[1], enabled_flag=enabled_flag)
    config_option = option_value(argv, "-f")
    config = config_option[0] if config_option else "/etc/milter-greylist/greylist.conf"
    socket = keyword_setting(system.read(config), "socket", quoted=True)
    if not socket:
        raise DetectionError(f"{config} sets no socket and the command line has no -p (the socket is mandatory)")
    return _Found(socket, config, enabled_flag=enabled_flag)


def _socket_rspamd(system: DebianHost) -> _Found:
    """rspamd 3.4-1 (bookworm): the proxy worker in milter mode.

    ``/etc/rspamd/rspamd.conf`` defines ``worker "rspamd_proxy" { bind_socket =
    "localhost:11332"; … }`` and includes, inside that block, ``$CONFDIR/worker-proxy.inc``
    (Debian's: ``milter = yes;``, no bind_socket), ``$LOCAL_CONFDIR/local.d/worker-proxy.inc``
    at priority 1 and ``$LOCAL_CONFDIR/override.d/worker-proxy.inc`` at priority 10
    (both directories are ``/etc/rspamd``). A key from a higher priority wins; within one
    priority the first ``bind_socket`` is taken (rspamd binds them all). Forms:
    ``HOST:PORT``, ``*:PORT`` (every address), ``[ADDR6]:PORT``, ``/PATH mode=…``.
    The worker is skipped when ``milter`` is not true, ``enabled = false`` or ``count``
    is negative (rspamd.conf's "Disable by default" idiom). ``rspamd.conf.local`` and
    ``rspamd.conf.override`` are not read.
    """
    config = "/etc/rspamd/rspamd.conf"
    entries = ucl_parse(system.read(config), config)
    worker = next((value for key, name, value, _ in entries
                   if key == "worker" and name == "rspamd_proxy" and isinstance(value, list)), None)
    if worker is None:
        raise DetectionError(f'{config} has no worker "rspamd_proxy"')
    settings: dict[str, tuple[int, object, str]] = {}

    def collect(items: list, priority: int, source: str) -> None:
        for key, _name, value, params in items:
            if key == ".include":
                path = value.replace("$LOCAL_CONFDIR", "/etc/rspamd").replace("$CONFDIR", "/etc/rspamd")
                path = path.replace("${LOCAL_CONFDIR}", "/etc/rspamd").replace("${CONFDIR}", "/etc/rspamd")
                if params.get("try") == "true" and not os.path.exists(system.path(path)):
                    continue
                try:
                    include_priority = int(params.get("priority", "0"))
                except ValueError:
                    raise DetectionError(f"{source}: bad priority in .include of {path}") from None
                collect(ucl_parse(system.read(path), path), include_priority, path)
            elif key not in settings or priority > settings[key][0]:
                settings[key] = (priority, value, source)

    collect(worker, 0, config)

    def scalar(key: str) -> str | None:
        value = settings.get(key, (0, None, ""))[1]
        if isinstance(value, list):
            value = value[0] if value and isinstance(value[0], str) else None
        return value if isinstance(value, str) else None

    if (scalar("milter") or "false").lower() not in ("yes", "true", "on", "1"):
        raise DetectionError("rspamd's proxy worker is not in milter mode (milter is not set to yes)")
    if (scalar("enabled") or "true").lower() in ("no", "false", "off", "0"):
        raise DetectionError("rspamd's proxy worker is disabled (enabled = false)")
    if re.fullmatch(r"-\d+", scalar("count") or ""):
        raise DetectionError("rspamd's proxy worker is disabled (negative count)")
    bind_socket = scalar("bind_socket")
    if not bind_socket:
        raise DetectionError("rspamd's proxy worker has no bind_socket")
    return _Found(bind_socket, settings["bind_socket"][2], style="rspamd")




# -- the table ------------------------------------------------------------------------------------------------------

#: The milters detected, in the order they are registered (which is the order they see mail).
MILTERS: tuple[MilterKnowledge, ...] = (
    MilterKnowledge("milter-greylist", "milter-greylist", "milter-greylist", "Greylisting (milter-greylist)",
                    GREYLIST_CONDITIONS, _socket_milter_greylist),
    MilterKnowledge("clamav-milter", "clamav-milter", "clamav-milter", "ClamAV virus scanning (clamav-milter)",
                    NO_CONDITIONS, _socket_clamav_milter),
    MilterKnowledge("opendkim", "opendkim", "opendkim", "DKIM signing and verification (OpenDKIM)",
                    NO_CONDITIONS, _socket_opendkim),
    MilterKnowledge("dkimpy-milter", "dkimpy-milter", "dkimpy-milter", "DKIM signing and verification (dkimpy-milter)",
                    NO_CONDITIONS, _socket_dkimpy_milter),
    MilterKnowledge("pyspf-milter", "pyspf-milter", "pyspf-milter", "SPF verification (pyspf-milter)",
                    FILTER_CONDITIONS, _socket_pyspf_milter),
    MilterKnowledge("opendmarc", "opendmarc", "opendmarc", "DMARC verification (OpenDMARC)",
                    NO_CONDITIONS, _socket_opendmarc),
    MilterKnowledge("spamass-milter", "spamass-milter", "spamass-milter", "SpamAssassin (spamass-milter)",
                    FILTER_CONDITIONS, _socket_spamass_milter),
    MilterKnowledge("rspamd", "rspamd", "rspamd", "Rspamd, milter mode of its proxy worker",
                    FILTER_CONDITIONS, _socket_rspamd),
    MilterKnowledge("amavisd-milter", "amavisd-milter", "amavisd-milter", "amavisd-new (amavisd-milter)",
                    NO_CONDITIONS, _socket_amavisd_milter),
)


def _detect_one(system: DebianHost, milter: MilterKnowledge) -> DetectedMilter:
    found = milter.find_socket(system)
    spec = _CONVERTERS[found.style](found.socket)
    enabled = system.service_enabled(milter.service) and found.enabled_flag is not False
    return DetectedMilter(name=milter.name, connection_spec=spec, enabled=enabled, source=found.source,
                          command=system.command(milter.service),
                          applicable_conditions=milter.applicable_conditions, description=milter.description)


def detect_with_reasons(root: str = "/",
                        milters: tuple[MilterKnowledge, ...] = MILTERS
                        ) -> tuple[list[DetectedMilter], list[SkippedMilter]]:
    """Detect the installed milters under ``root``: those registered, and those skipped with a reason."""
    system = DebianHost(root)
    detected: list[DetectedMilter] = []
    skipped: list[SkippedMilter] = []
    for milter in milters:
        if not system.installed(milter.package):
            continue
        try:
            detected.append(_detect_one(system, milter))
        except DetectionError as error:
            skipped.append(SkippedMilter(milter.name, str(error)))
    return detected, skipped


def detect(root: str = "/") -> list[DetectedMilter]:
    """The installed milters under ``root`` (enabled or not); each skipped one is logged as a warning."""
    detected, skipped = detect_with_reasons(root)
    for item in skipped:
        logger.warning(f"[detect] {item.name} not registered: {item.reason}")
    return detected
