"""The built-in applicable conditions (M-AC-B1…B8) and the site facts they share with the predicates.

:class:`Site` holds what the tunables of B4 configure: the S25R lists, the local and
remote networks, the trusted envelope-from domains, the stress threshold, the DNSBL
zones and the clock. The same object answers the B5.1 predicates ``s25r``,
``client_local``, ``trusted_envelope_from_domain``, ``stressed``, ``dnsbl_listed`` and
``time``, so a built-in condition and its B8 rule form cannot drift apart.

A :class:`Condition` is what a child carries (``ChildDefinition.conditions``): a name
and one stopper per stage letter, ``stopper(scope) -> bool`` (True = stop, M-AC-1).
"""

from __future__ import annotations

import ipaddress
import os
import re
import socket
import struct
import time
from collections.abc import Callable, Mapping, Sequence
from functools import lru_cache

from ..config.builtins import (DNSBL_SERVICES, RESTRICT_FLAG, S25R_BLACKLIST, S25R_BLACKLIST_HOSTS, S25R_WHITELIST,
                               TRUST_DOMAINS)
from ..config.model import Configuration, RestrictAccounts
from ..config.values import DnsblService
from ..log import INFO, Logger
from ..log import logger as default_logger
from .predicates import Client, Scope, authenticated, is_postfix, strip_brackets

Stopper = Callable[[Scope], bool]
#: ``resolve(names, timeout) -> {name: addresses}``; a name left out got no answer in time (M-AC-B7)
Resolver = Callable[[Sequence[str], float], Mapping[str, Sequence[str]]]


class Condition:
    """An applicable condition as attached to a child (M-AC-1): ``stoppers`` maps a stage letter to
    ``stopper(scope) -> bool``; ``reads`` are the MTA stages and ``macros`` the macros it needs (D-2)."""

    __slots__ = ("name", "stoppers", "reads", "macros")

    def __init__(self, name: str, stoppers: Mapping[str, Stopper], reads: frozenset[str] | None = None,
                 macros: Mapping[str, tuple[str, ...]] | None = None) -> None:
        self.name = name
        self.stoppers = dict(stoppers)
        self.reads = frozenset(self.stoppers) | (reads or frozenset())
        self.macros = dict(macros or {})

    def stop(self, scope: Scope) -> bool:
        """M-AC-2: does this condition stop the child for the scope's stage?"""
        stopper = self.stoppers.get(scope.letter)
        return stopper is not None and bool(stopper(scope))

    def __repr__(self) -> str:
        return f"Condition({self.name!r}, stages={''.join(sorted(self.stoppers))})"


# ============================================================================================ site facts

_PRIVATE_V4 = tuple(ipaddress.ip_network(text) for text in ("127.0.0.0/8", "10.0.0.0/8", "172.16.0.0/12",
                                                            "192.168.0.0/16"))
_LOCAL_V6 = (ipaddress.ip_network("::1/128"), ipaddress.ip_network("fe80::/10"))
_TRUST_ADDRESS = re.compile(r"\A<(.+?)@(.+?)>\Z")
_DNSBL_CACHE_SECONDS = 60.0
#: a zone that did not answer in time counts as "not listed" for this long (the other children of the
#: session, evaluated one after the other, do not wait for it again)
_DNSBL_FAILURE_SECONDS = 10.0
_DNSBL_CACHE_SIZE = 4096


class Site:
    """The built-in conditions' tunables (B4) turned into answers, with per-process caches."""

    def __init__(self, configuration: Configuration, *, resolver: Resolver | None = None,
                 clock: Callable[[], time.struct_time] | None = None, stress_threshold: int | None = None,
                 logger: Logger | None = None) -> None:
        self.logger = logger or default_logger
        self.now = clock or time.localtime
        s25r = configuration.s25r
        defaults = s25r.use_default_lists
        self.check_only_ipv4 = s25r.check_only_ipv4
        self.whitelist = tuple(regex.compiled for regex in (S25R_WHITELIST if defaults else ()) + s25r.whitelist)
        self.whitelist_hosts = frozenset(s25r.whitelist_hosts)
        self.blacklist = tuple(regex.compiled for regex in (S25R_BLACKLIST if defaults else ()) + s25r.blacklist)
        self.blacklist_hosts = frozenset((S25R_BLACKLIST_HOSTS if defaults else ()) + s25r.blacklist_hosts)
        self.local_addresses = configuration.remote_network.local_addresses
        self.remote_addresses = configuration.remote_network.remote_addresses
        trust = configuration.trust
        self.trusted_domains = frozenset((TRUST_DOMAINS if trust.use_default_domains else ())
                                         + trust.envelope_from_domains + trust.file_domains)
        self.trusted_patterns = tuple(regex.compiled for regex in
                                      trust.envelope_from_domain_patterns + trust.file_patterns)
        configured = configuration.stress.threshold_n_connections
        self._threshold = stress_threshold if stress_threshold is not None else (configured if configured >= 0
                                                                                 else None)
        self.dnsbl = Dnsbl(configuration, resolver, self.logger)
        self._s25r = lru_cache(maxsize=4096)(self._s25r_uncached)
        self._locality = lru_cache(maxsize=4096)(self._locality_uncached)
        self._trusted = lru_cache(maxsize=4096)(self._trusted_uncached)

    # -- M-AC-B1 S25R

    def s25r_applies(self, client: Client) -> bool:
        """M-AC-B1: True when the client looks dynamic ("apply"), False when S25R says "stop"."""
        return self._s25r(client.host, client.family)

    def _s25r_uncached(self, host: str, family: str) -> bool:
        if self.check_only_ipv4 and family != "inet":
            return False
        if host in self.whitelist_hosts or any(pattern.search(host) for pattern in self.whitelist):
            return False
        return host in self.blacklist_hosts or any(pattern.search(host) for pattern in self.blacklist)

    # -- M-AC-B2 Remote Network

    def locality(self, client: Client | None) -> bool | None:
        """M-AC-B2: True local, False remote, None neither (unknown family)."""
        if client is None:
            return None
        return self._locality(client.family, client.ip)

    def _locality_uncached(self, family: str, ip) -> bool | None:
        if family == "unix":
            return True
        if family not in ("inet", "inet6") or ip is None:
            return None
        if any(ip in network for network in self.remote_addresses):
            return False
        builtin = _PRIVATE_V4 if ip.version == 4 else _LOCAL_V6
        if any(ip in network for network in builtin):
            return True
        return any(ip in network for network in self.local_addresses)

    # -- M-AC-B6 Trust

    def trusted_sender(self, sender: str | None) -> bool:
        """M-AC-B6: ``<user@domain>`` whose lower-cased domain is trusted (string exact, regex search)."""
        if not sender:
            return False
        found = _TRUST_ADDRESS.match(sender)
        return found is not None and self._trusted(found.group(2).lower())

    def _trusted_uncached(self, domain: str) -> bool:
        return domain in self.trusted_domains or any(pattern.search(domain) for pattern in self.trusted_patterns)

    # -- M-AC-B5 stress

    @property
    def stress_threshold(self) -> int:
        """``[stress] threshold_n_connections``, or the once-per-process detection for -1 (M-AC-B5)."""
        if self._threshold is None:
            self._threshold = detected_stress_threshold(self.logger)
        return self._threshold

    def stressed(self, facts) -> bool:
        """M-AC-B5: threshold > 0 and threshold ≤ sessions being processed in this process."""
        threshold = self.stress_threshold
        return threshold > 0 and threshold <= facts.sessions_processing

    # -- M-AC-B7 DNSBL

    def dnsbl_listed(self, ip, zones: tuple[str, ...] | None = None) -> bool:
        """M-AC-B7: listed in any configured zone (or any of ``zones``); IPv4 only; failure = not listed."""
        return self.dnsbl.listed(ip, zones)


# ============================================================================================ M-AC-B5 detection

_detected_threshold: int | None = None


def detected_stress_threshold(logger: Logger | None = None, proc: str = "/proc") -> int:
    """M-AC-B5 auto-detection, once per process (reads files only, runs no command)."""
    global _detected_threshold
    if _detected_threshold is None:
        _detected_threshold = detect_stress_threshold(proc, logger or default_logger)
    return _detected_threshold


def reset_detected_stress_threshold() -> None:
    """Forget the detected threshold (tests; a re-detection after a reload is not wanted otherwise)."""
    global _detected_threshold
    _detected_threshold = None


def postfix_master_command(proc: str = "/proc") -> list[str] | None:
    """The argv of a running Postfix ``master`` process: program named ``master``, ``postfix`` in its
    command line (M-AC-B5; stricter than ``ps ax`` grepping, which also matched ``vi master.cf``)."""
    try:
        entries = os.listdir(proc)
    except OSError:
        return None
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(os.path.join(proc, entry, "cmdline"), "rb") as stream:
                raw = stream.read()
        except OSError:
            continue
        argv = [part.decode("utf-8", "replace") for part in raw.split(b"\0") if part]
        if argv and os.path.basename(argv[0].split()[0]) == "master" and "postfix" in " ".join(argv).lower():
            return argv
    return None


def postfix_process_limit(config_directory: str) -> int:
    """``maxproc`` of the first ``smtp`` service in master.cf; ``-``/absent → ``default_process_limit``
    of main.cf (Postfix's default 100 when unset)."""
    maxproc = None
    try:
        with open(os.path.join(config_directory, "master.cf"), encoding="utf-8", errors="replace") as stream:
            for line in stream:
                if line.startswith("#"):
                    continue
                fields = re.split(r"\s+", line, maxsplit=7)
                if fields[0] != "smtp" or len(fields) < 7:
                    continue
                if fields[6] != "-":
                    maxproc = int(fields[6]) if fields[6].isdigit() else 0
                break
    except OSError:
        pass
    if maxproc is not None:
        return maxproc
    limit = 100
    try:
        with open(os.path.join(config_directory, "main.cf"), encoding="utf-8", errors="replace") as stream:
            for line in stream:
                found = re.match(r"\Adefault_process_limit\s*=\s*(\d+)\s*\Z", line)
                if found:
                    limit = int(found.group(1))
    except OSError:
        pass
    return limit


def detect_stress_threshold(proc: str = "/proc", logger: Logger | None = None) -> int:
    """M-AC-B5: Postfix running → 75 % (integer part) of the smtp service's process limit; else 0."""
    logger = logger or default_logger
    argv = postfix_master_command(proc)
    if argv is None:
        logger.info("[breaker][detect][error][threshold] can't detect MTA")
        return 0
    config_directory = "/etc/postfix"
    if "-c" in argv[1:-1]:
        config_directory = argv[argv.index("-c", 1) + 1]
    threshold = int(postfix_process_limit(config_directory) * 0.75)
    if logger.enabled(INFO):
        logger.info(f"[breaker][detect][threshold][postfix] <{threshold}>")
    return threshold


# ============================================================================================ M-AC-B7 DNSBL


class Dnsbl:
    """M-AC-B7: ``<reversed-ip>.<zone>`` A lookups in parallel, ``[dnsbl] timeout``; answers are cached
    60 s per address and zone, missing answers 10 s."""

    def __init__(self, configuration: Configuration, resolver: Resolver | None, logger: Logger) -> None:
        settings = configuration.dnsbl
        self.services = (DNSBL_SERVICES if settings.use_default_services else ()) + settings.services
        self.by_zone = {service.zone: service for service in self.services}
        self.timeout = settings.timeout
        if resolver is None:
            resolver = name_server_resolver(settings.name_servers) if settings.name_servers else system_resolver
        self.resolver = resolver
        self.logger = logger
        self._cache: dict[tuple[str, str], tuple[float, bool]] = {}

    def listed(self, ip, zones: tuple[str, ...] | None = None) -> bool:
        """Any zone answers the expected address (any address when no expectation); errors → False."""
        if ip is None or ip.version != 4:
            return False
        if zones is None:
            services = self.services
        else:
            services = tuple(self.by_zone.get(zone) or DnsblService(zone) for zone in zones)
        address = str(ip)
        now = time.monotonic()
        pending = {}
        reversed_ip = ".".join(reversed(address.split(".")))
        for service in services:
            cached = self._cache.get((address, service.zone))
            if cached is not None and cached[0] > now:
                if cached[1]:
                    return True
                continue
            pending[f"{reversed_ip}.{service.zone}"] = service
        if not pending:
            return False
        try:
            answers = self.resolver(list(pending), self.timeout)
        except Exception as error:  # C-COND-1: cannot be evaluated → not listed
            self.logger.error(f"[dnsbl][error] {address}: {error!r}")
            return False
        if len(self._cache) > _DNSBL_CACHE_SIZE:
            self._cache.clear()
        listed = False
        for name, service in pending.items():
            addresses = answers.get(name)
            if addresses is None:  # no answer in time: not listed (C-COND-1), remembered briefly
                self._cache[(address, service.zone)] = (now + _DNSBL_FAILURE_SECONDS, False)
                continue
            hit = _expected(addresses, service.expect)
            self._cache[(address, service.zone)] = (now + _DNSBL_CACHE_SECONDS, hit)
            listed = listed or hit
        return listed


def _expected(addresses: Sequence[str], expect) -> bool:
    if expect is None:
        return bool(addresses)
    for text in addresses:
        try:
            if ipaddress.ip_address(text) in expect:
                return True
        except ValueError:
            continue
    return False


def _gethostbyname_ex(name: str) -> tuple[str, ...] | None:
    """One A lookup through the C library: addresses, () for "no such name", None for a failure."""
    try:
        return tuple(socket.gethostbyname_ex(name)[2])
    except socket.gaierror as error:
        if error.errno in (socket.EAI_NONAME, getattr(socket, "EAI_NODATA", socket.EAI_NONAME)):
            return ()
        return None
    except (OSError, UnicodeError):
        return None


def wait_at_most(jobs: Sequence, timeout: float) -> None:
    """Wait for ``jobs`` until all are done or ``timeout`` seconds of real time have passed (M-AC-B7).

    gevent's wait timer counts from the loop's cached time, set when the hub last polled, unless it is started
    from the hub's own callback run. A worker that ran (or blocked) longer than ``timeout`` since its last
    poll would see the wait end at once, every zone unanswered; refreshing the loop's time first prevents it.
    """
    import gevent

    gevent.get_hub().loop.update_now()
    gevent.wait(jobs, timeout=timeout)


def system_resolver(names: Sequence[str], timeout: float) -> dict[str, tuple[str, ...]]:
    """The system resolver, each name in a thread of gevent's pool, all waited for at most ``timeout``."""
    import gevent

    pool = gevent.get_hub().threadpool
    jobs = [(name, pool.spawn(_gethostbyname_ex, name)) for name in names]
    wait_at_most([job for _name, job in jobs], timeout)
    return {name: job.value for name, job in jobs
            if job.ready() and job.successful() and job.value is not None}


def dns_query(name: str, ident: int) -> bytes:
    """A recursive DNS query for the A records of ``name`` (RFC 1035 section 4.1)."""
    labels = b"".join(bytes([len(label)]) + label for label in name.encode("ascii").split(b".") if label)
    return struct.pack("!HHHHHH", ident, 0x0100, 1, 0, 0, 0) + labels + b"\0" + struct.pack("!HH", 1, 1)


def _skip_name(data: bytes, offset: int) -> int:
    while True:
        length = data[offset]
        if length == 0:
            return offset + 1
        if length & 0xC0 == 0xC0:
            return offset + 2
        offset += 1 + length


def parse_dns_reply(data: bytes, ident: int) -> tuple[str, ...] | None:
    """The A addresses of a DNS reply; () for NXDOMAIN; None when it is not a usable answer to ``ident``."""
    try:
        rid, flags, questions, answers, _ns, _ar = struct.unpack_from("!HHHHHH", data)
        if rid != ident or not flags & 0x8000:
            return None
        rcode = flags & 0x000F
        if rcode == 3:
            return ()
        if rcode != 0:
            return None
        offset = 12
        for _ in range(questions):
            offset = _skip_name(data, offset) + 4
        found = []
        for _ in range(answers):
            offset = _skip_name(data, offset)
            kind, klass, _ttl, length = struct.unpack_from("!HHIH", data, offset)
            offset += 10
            if kind == 1 and klass == 1 and length == 4:
                found.append(socket.inet_ntoa(data[offset:offset + 4]))
            offset += length
        return tuple(found)
    except (struct.error, IndexError):
        return None


def name_server_resolver(servers: Sequence[str], port: int = 53) -> Resolver:
    """``[dnsbl] name_servers``: plain UDP queries to these servers, in order, each name in its own greenlet."""

    def ask(name: str, deadline: float) -> tuple[str, ...] | None:
        from gevent import socket as gsocket

        for server in servers:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            ident = int.from_bytes(os.urandom(2), "big")
            family = gsocket.AF_INET6 if ":" in server else gsocket.AF_INET
            with gsocket.socket(family, gsocket.SOCK_DGRAM) as sock:
                sock.settimeout(remaining)
                try:
                    sock.sendto(dns_query(name, ident), (server, port))
                    while True:
                        data, source = sock.recvfrom(4096)
                        if source[0] != server and ipaddress.ip_address(source[0]) != ipaddress.ip_address(server):
                            continue
                        answer = parse_dns_reply(data, ident)
                        if answer is not None:
                            return answer
                        break
                except (OSError, ValueError):
                    continue
        return None

    def resolve(names: Sequence[str], timeout: float) -> dict[str, tuple[str, ...]]:
        import gevent

        deadline = time.monotonic() + timeout
        jobs = [(name, gevent.spawn(ask, name, deadline)) for name in names]
        wait_at_most([job for _name, job in jobs], timeout)
        result = {}
        for name, job in jobs:
            if job.ready() and job.successful() and job.value is not None:
                result[name] = job.value
            else:
                job.kill(block=False)
        return result

    return resolve


# ============================================================================================ the built-ins

#: M-AC-B4 macros read at connect and envelope-from (D-2)
SENDMAIL_COMPATIBLE_MACROS = {"C": ("v", "daemon_addr", "daemon_port", "j", "if_addr", "if_name"), "M": ("i",)}


def _sendmail_compatible_connect(scope: Scope) -> bool:
    """M-AC-B4 connect, without network access: Postfix's own macros stand in for the netstat lookup.

    ``if_addr`` ← ``{daemon_addr}`` and ``if_name`` ← ``j`` ($myhostname, instead of a reverse DNS
    lookup), each only when the child has no value yet and the source macro exists. ``daemon_port``
    is Postfix's own ``{daemon_port}`` macro: it is requested from the MTA (D-2) and passed on as is.
    """
    if is_postfix(scope):
        for target, source in (("if_addr", "daemon_addr"), ("if_name", "j")):
            if scope.macro(target) is not None:
                continue
            value = scope.macro(source)
            if value is not None:
                scope.set_macro(target, value)
    return False


def _sendmail_compatible_from(scope: Scope) -> bool:
    """M-AC-B4 envelope-from: ``i`` = ``dummy-id`` when Postfix sent none."""
    if is_postfix(scope) and scope.macro("i") is None:
        scope.set_macro("i", "dummy-id")
    return False


def builtin_conditions(site: Site) -> dict[str, Condition]:
    """The ten always-defined conditions of B4 (M-AC-B1…B7), sharing ``site``."""

    def s25r(scope: Scope) -> bool:
        client = scope.client()
        return client is None or not site.s25r_applies(client)  # M-AC-B1: stop = not applied

    def remote_network(scope: Scope) -> bool:
        return site.locality(scope.client()) is not False  # M-AC-B2: stop unless remote

    def stress_notify(scope: Scope) -> bool:
        if site.stressed(scope.facts):
            scope.set_macro("stress", "yes")  # M-AC-B5
        return False

    def no_stress(scope: Scope) -> bool:
        return site.stressed(scope.facts)

    def trust(scope: Scope) -> bool:
        if site.trusted_sender(scope.command.address):
            scope.set_macro("trusted_domain", "yes")  # M-AC-B6
        return False

    def listed(scope: Scope) -> bool:
        client = scope.client()
        return site.dnsbl_listed(client.ip if client is not None else None)

    auth_macros = {"M": ("auth_type", "auth_authen")}
    return {condition.name: condition for condition in (
        Condition("S25R", {"C": s25r}),
        Condition("Remote Network", {"C": remote_network}),
        Condition("Authenticated", {"M": lambda scope: not authenticated(scope)}, macros=auth_macros),
        Condition("Unauthenticated", {"M": authenticated}, macros=auth_macros),
        Condition("Sendmail Compatible", {"C": _sendmail_compatible_connect, "M": _sendmail_compatible_from},
                  macros=SENDMAIL_COMPATIBLE_MACROS),
        Condition("Stress Notify", {"C": stress_notify}),
        Condition("No Stress", {"C": no_stress}),
        Condition("Trust", {"M": trust}),
        Condition("DNSBL Listed", {"C": lambda scope: not listed(scope)}),
        Condition("Not DNSBL Listed", {"C": listed}),
    )}


def restrict_accounts_condition(restriction: RestrictAccounts) -> Condition:
    """M-AC-B8 with the M-AC-7 fix (the data stop only takes the child out of the message).

    envelope-recipient: strip one pair of ``<>``; an exact account or a pattern match → apply;
    otherwise the child is marked for this transaction (and gets the macro
    ``have-not-restricted-account=true``; the transaction flag of the same name is set too,
    as the B8 rule form does) and stopped for this recipient. data: stop a marked child.
    """
    accounts = frozenset(restriction.accounts)
    patterns = tuple(regex.compiled for regex in restriction.account_patterns)

    def mark(scope: Scope) -> str:
        return f"{RESTRICT_FLAG}\0{scope.child.name}"

    def recipient(scope: Scope) -> bool:
        address = strip_brackets(scope.command.address)
        if address in accounts or any(pattern.search(address) for pattern in patterns):
            return False
        scope.set_macro(RESTRICT_FLAG, "true")
        scope.facts.flags.add(RESTRICT_FLAG)
        scope.facts.flags.add(mark(scope))
        return True

    def data(scope: Scope) -> bool:
        return mark(scope) in scope.facts.flags

    return Condition(restriction.condition_name, {"R": recipient, "T": data})
