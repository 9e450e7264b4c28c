"""The built-in condition names and their default data (A9, M-AC-B1…B7, B4).

These are facts of the original ``applicable-conditions/*.conf`` (with the code's
lists, not the documentation's: A12), translated to Python regex syntax
(``\\z`` → ``\\Z``, ``re.ASCII``, ``(?i)`` where Ruby used ``/i``).
"""

from __future__ import annotations

import ipaddress
import re

from .values import DnsblService, Regex

#: B4: "The ten built-in names of A9 are always defined"
BUILTIN_CONDITIONS = ("S25R", "Remote Network", "Authenticated", "Unauthenticated", "Sendmail Compatible",
                      "Stress Notify", "No Stress", "Trust", "DNSBL Listed", "Not DNSBL Listed")

#: M-AC-B1 default whitelist (regexes)
S25R_WHITELIST = tuple(Regex(text) for text in (
    r"\.google\.com\Z", r"\.obsmtp\.com\Z", r"\.smtp-out\.amazonses\.com\Z", r"\.slack\.com\Z",
    r"\.mg\.gitlab\.com\Z", r"\.sendgrid\.net\Z"))
#: M-AC-B1 default blacklist: the exact host "unknown" first, then these regexes, in order
S25R_BLACKLIST_HOSTS = ("unknown",)
S25R_BLACKLIST = tuple(Regex(text) for text in (
    r"\A\[.+\]\Z", r"\A[^.]*\d[^\d.]+\d.*\.", r"\A[^.]*\d{5}", r"(?i)\A(?:[^.]+\.)?\d[^.]*\.[^.]+\..+\.[a-z]",
    r"\A[^.]*\d\.[^.]*\d-\d", r"\A[^.]*\d\.[^.]*\d\.[^.]+\..+\.", r"(?i)\A(?:dhcp|dialup|ppp|[achrsvx]?dsl)[^.]*\d"))

#: M-AC-B6 default trusted envelope-from domains
TRUST_DOMAINS = ("gmail.com", "hotmail.com", "msn.com", "yahoo.co.jp", "softbank.ne.jp", "ezweb.ne.jp",
                 "docomo.ne.jp", "clear-code.com")

#: M-AC-B7 default DNSBL zones and their "listed" answers
DNSBL_SERVICES = (
    DnsblService("zen.spamhaus.org", ipaddress.ip_network("127.0.0.10/31")),
    DnsblService("dnsbl.sorbs.net", ipaddress.ip_network("127.0.0.10/32")),
    DnsblService("bl.spamcop.net", ipaddress.ip_network("127.0.0.2/32")),
    DnsblService("b.barracudacentral.org", ipaddress.ip_network("127.0.0.2/32")),
)

#: M-AC-B8 the flag (and macro) a restricted-accounts condition sets on a child
RESTRICT_FLAG = "have-not-restricted-account"


def restrict_accounts_default_name(accounts: tuple[str, ...], patterns: tuple[Regex, ...]) -> str:
    """M-AC-B8 default condition name, shaped like Ruby's ``inspect`` of the account list."""
    items = [f'"{account}"' for account in accounts] + [f"/{pattern.text}/" for pattern in patterns]
    return f"Restrict Accounts by List: [{', '.join(items)}]"


def parse_trust_domain_lines(text: str) -> tuple[tuple[str, ...], tuple[tuple[int, str], ...]]:
    """M-AC-B6 ``load_envelope_from_domains`` format: blank and ``#`` lines skipped, ``/re/`` a case-insensitive
    regex, any other line a lower-cased domain. Returns domains and ``(line number, regex text)`` pairs."""
    domains, patterns = [], []
    for number, line in enumerate(text.splitlines(), start=1):
        entry = line.strip()
        if not entry or entry.startswith("#"):
            continue
        if len(entry) >= 2 and entry.startswith("/") and entry.endswith("/"):
            patterns.append((number, entry[1:-1]))
        else:
            domains.append(entry.lower())
    return tuple(domains), tuple(patterns)


TRUST_PATTERN_FLAGS = re.IGNORECASE
