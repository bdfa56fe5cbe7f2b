"""Read nginx/Apache *combined* access logs and rank the sources that look like attacks.

Pure: lines in, proposals out (reading the logs over SSH is ``resilience.actions.block``).

Parsing (:func:`parse_line`): ``addr ident user [time] "request" status bytes "referer" "agent"``
plus anything after (ignored). A line whose address, time or status does not parse is
*malformed*: skipped and counted, never fatal. A request line that is not ``METHOD PATH PROTO``
(e.g. a TLS handshake sent to port 80) is kept with its raw text as the path: that is itself a
scanner's signature.

Ranking (:func:`rank`; thresholds in :class:`Thresholds`, documented in docs/blocking.md): per
source address, the peak requests per minute, the 4xx/5xx ratio and *probes* (requests for
paths no visitor of this site asks for: ``wp-login.php``, ``.env``, ``/cgi-bin/``, ``.git/``,
traversal, SQL injection, …). A source is proposed when its peak rate, its error ratio (with
enough requests) or its probe count reaches a threshold; the score orders them. When several
proposed addresses share one /24 (IPv6: /64), the network is proposed instead. Protected
addresses are never proposed: they are listed apart with the reason.
"""

from __future__ import annotations

import ipaddress
import re
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from .blocking import Network, Protected, conflicts

_LINE = re.compile(
    r'^(?P<addr>\S+) \S+ \S+ \[(?P<time>[^\]]+)\] "(?P<request>(?:[^"\\]|\\.)*)" '
    r'(?P<status>\d{3}) (?P<bytes>\d+|-)(?: "(?P<referer>(?:[^"\\]|\\.)*)" "(?P<agent>(?:[^"\\]|\\.)*)")?'
)
_TIME_FORMAT = "%d/%b/%Y:%H:%M:%S %z"

# Paths a visitor of a static government portal never requests. Each pattern is a *kind* of
# probe; the evidence lists which kinds a source tried.
PROBES: dict[str, re.Pattern[str]] = {
    "wordpress": re.compile(r"wp-(?:login|admin|content|includes|config)|xmlrpc\.php", re.I),
    "dotfile": re.compile(r"/\.(?:env|git|svn|hg|aws|ssh|htpasswd|htaccess|DS_Store)(?:[/?.]|$)", re.I),
    "cgi": re.compile(r"/cgi-bin/|\.cgi(?:\?|$)", re.I),
    "admin-tools": re.compile(r"phpmyadmin|/pma/|adminer|/manager/html|/solr/|/actuator|/console", re.I),
    "php": re.compile(r"\.php\d?(?:\?|/|$)|eval-stdin", re.I),
    "traversal": re.compile(r"\.\./|\.\.%2f|%2e%2e|/etc/passwd|/proc/self|win\.ini", re.I),
    "sqli": re.compile(r"union(?:\s|\+|%20)+(?:all(?:\s|\+|%20)+)?select|'\s*or\s*'?1'?\s*=\s*'?1|"
                       r"(?:%27|')(?:\s|\+|%20)*(?:or|and)(?:\s|\+|%20)|sleep\(\d|benchmark\(|information_schema",
                       re.I),
    "xss": re.compile(r"<script|%3cscript|javascript:|onerror=", re.I),
}


@dataclass(frozen=True)
class Entry:
    """One parsed access-log line."""

    addr: str
    time: datetime
    method: str | None
    path: str
    status: int
    agent: str


@dataclass
class Thresholds:
    """When a source is proposed (any one rule suffices)."""

    rate: int = 120          # peak requests in one minute
    error_ratio: float = 0.5  # share of 4xx/5xx answers ...
    min_requests: int = 20    # ... counted only with at least this many requests
    probes: int = 3           # requests matching a probe pattern
    network_members: int = 3  # proposed addresses in one /24 (/64) that propose the network


def parse_line(line: str) -> Entry | None:
    """The entry of one combined-format line, or None when it is malformed."""
    m = _LINE.match(line.strip("\r\n"))
    if not m:
        return None
    try:
        addr = str(ipaddress.ip_address(m["addr"]))
        when = datetime.strptime(m["time"], _TIME_FORMAT)
    except ValueError:
        return None
    request = m["request"]
    parts = request.split(" ")
    if len(parts) == 3 and parts[0].isalpha() and parts[0].isupper():
        method, path = parts[0], parts[1]
    else:
        method, path = None, request
    return Entry(addr, when, method, path, int(m["status"]), m["agent"] or "")


def probe_kinds(entry: Entry) -> list[str]:
    """The probe kinds a request matches (empty for an ordinary request)."""
    kinds = [k for k, rx in PROBES.items() if rx.search(entry.path)]
    if entry.method is None:  # not "METHOD PATH PROTO": a scanner speaking TLS or garbage
        kinds.append("not-http")
    return kinds


@dataclass
class SourceStats:
    """What one address did within the window."""

    addr: str
    requests: int = 0
    errors: int = 0
    status: Counter = field(default_factory=Counter)
    per_minute: Counter = field(default_factory=Counter)
    probes: int = 0
    probe_kinds: Counter = field(default_factory=Counter)
    paths: Counter = field(default_factory=Counter)
    probe_paths: Counter = field(default_factory=Counter)
    hosts: set[str] = field(default_factory=set)
    first: datetime | None = None
    last: datetime | None = None

    def add(self, e: Entry, host: str) -> None:
        self.requests += 1
        self.errors += e.status >= 400
        self.status[f"{e.status // 100}xx"] += 1
        self.per_minute[int(e.time.timestamp()) // 60] += 1
        self.paths[e.path[:200]] += 1
        kinds = probe_kinds(e)
        if kinds:
            self.probes += 1
            self.probe_kinds.update(kinds)
            self.probe_paths[e.path[:200]] += 1
        self.hosts.add(host)
        self.first = e.time if self.first is None or e.time < self.first else self.first
        self.last = e.time if self.last is None or e.time > self.last else self.last

    @property
    def peak_rate(self) -> int:
        return max(self.per_minute.values(), default=0)

    @property
    def error_ratio(self) -> float:
        return self.errors / self.requests if self.requests else 0.0


def collect(lines: Iterable[str], host: str, since: datetime, stats: dict[str, SourceStats],
            counts: Counter) -> None:
    """Add the entries of ``lines`` (from ``host``) at or after ``since`` into ``stats``;
    count ``lines``, ``malformed`` and ``older`` in ``counts``."""
    for line in lines:
        if not line.strip():
            continue
        counts["lines"] += 1
        e = parse_line(line)
        if e is None:
            counts["malformed"] += 1
            continue
        if e.time < since:
            counts["older"] += 1
            continue
        counts["entries"] += 1
        stats.setdefault(e.addr, SourceStats(e.addr)).add(e, host)


def reasons(s: SourceStats, t: Thresholds) -> list[str]:
    """Why a source is proposed (empty: it is not)."""
    why = []
    if s.peak_rate >= t.rate:
        why.append(f"{s.peak_rate} requests in one minute (threshold {t.rate})")
    if s.requests >= t.min_requests and s.error_ratio >= t.error_ratio:
        why.append(f"{s.error_ratio:.0%} errors over {s.requests} requests")
    if s.probes >= t.probes:
        why.append(f"{s.probes} probes ({', '.join(sorted(s.probe_kinds))})")
    return why


def score(s: SourceStats, t: Thresholds) -> float:
    """Ordering of proposals: rate, probing and errors, each relative to its threshold."""
    errors = s.error_ratio / t.error_ratio if s.requests >= t.min_requests else 0.0
    return round(s.peak_rate / t.rate + s.probes / t.probes + len(s.probe_kinds) + errors, 3)


def evidence(s: SourceStats, t: Thresholds) -> dict[str, Any]:
    """The evidence of one source: counts, ratios, sample paths."""
    return {
        "requests": s.requests,
        "peak_per_minute": s.peak_rate,
        "errors": s.errors,
        "error_ratio": round(s.error_ratio, 3),
        "status": dict(sorted(s.status.items())),
        "probes": s.probes,
        "probe_kinds": dict(sorted(s.probe_kinds.items())),
        "sample_paths": [p for p, _ in (s.probe_paths or s.paths).most_common(5)],
        "hosts": sorted(s.hosts),
        "first": s.first.isoformat() if s.first else None,
        "last": s.last.isoformat() if s.last else None,
        "score": score(s, t),
    }


def _group_of(addr: str) -> Network:
    ip = ipaddress.ip_address(addr)
    return ipaddress.ip_network(f"{addr}/{24 if ip.version == 4 else 64}", strict=False)


def rank(stats: dict[str, SourceStats], protected: list[Protected], t: Thresholds,
         top: int) -> dict[str, Any]:
    """Proposals (at most ``top``, best first) and the protected sources left out.

    Each proposal: ``cidr``, ``reasons``, ``evidence`` (or ``members`` for a network)."""
    flagged: list[tuple[SourceStats, list[str]]] = []
    skipped = []
    for s in stats.values():
        why = reasons(s, t)
        if not why:
            continue
        hit = conflicts(ipaddress.ip_network(s.addr), protected)
        if hit:
            skipped.append({"addr": s.addr, "reasons": why, "protected": f"{hit[0].network}, {hit[0].why}"})
            continue
        flagged.append((s, why))

    by_group: dict[Network, list[tuple[SourceStats, list[str]]]] = defaultdict(list)
    for s, why in flagged:
        by_group[_group_of(s.addr)].append((s, why))
    proposals = []
    for group, members in by_group.items():
        if len(members) >= t.network_members and not conflicts(group, protected):
            total = sum(m[0].requests for m in members)
            proposals.append({
                "cidr": str(group),
                "reasons": [f"{len(members)} addresses of {group} flagged"],
                "score": round(sum(score(m[0], t) for m in members), 3),
                "evidence": {"requests": total, "addresses": len(members)},
                "members": [{"addr": m[0].addr, "reasons": m[1], "evidence": evidence(m[0], t)}
                            for m in sorted(members, key=lambda m: -score(m[0], t))],
            })
            continue
        for s, why in members:
            net = ipaddress.ip_network(s.addr)
            proposals.append({"cidr": str(net), "reasons": why, "score": score(s, t), "evidence": evidence(s, t)})
    proposals.sort(key=lambda p: (-p["score"], p["cidr"]))
    return {"proposals": proposals[:top], "more": max(0, len(proposals) - top),
            "skipped_protected": sorted(skipped, key=lambda x: x["addr"])}
