"""The members of a balanced site as the balancer and their firewalls see them (reads only).

Reads go over SSH (:mod:`resilience.control.ssh`, host keys verified): one command per host,
much faster than a playbook, and a quarantined member still takes the ops host's SSH. Changes
go through the playbooks (:mod:`resilience.actions.isolate`).

HAProxy's server names are the inventory names of the members (as in the lab's config).
"""

from __future__ import annotations

import csv
import io
from typing import Any

from ..config import Config
from ..errors import UsageError
from .ssh import SSH, quote, target_for

QUARANTINE_TABLE = "inet resilience_quarantine"


def parse_show_stat(text: str, backend: str) -> dict[str, dict[str, Any]]:
    """Servers of ``backend`` from HAProxy's ``show stat`` CSV: name -> {status, sessions,
    address, check}. Pure: unit-testable."""
    lines = [ln for ln in text.splitlines() if ln.strip()]
    if not lines:
        return {}
    header = lines[0].lstrip("# ").split(",")
    servers: dict[str, dict[str, Any]] = {}
    for row in csv.DictReader(io.StringIO("\n".join(lines[1:])), fieldnames=header):
        if row.get("pxname") != backend or row.get("svname") in ("FRONTEND", "BACKEND"):
            continue
        servers[row["svname"]] = {
            "status": row.get("status") or "",
            "sessions": int(row.get("scur") or 0),
            "address": row.get("addr") or None,
            "check": row.get("check_status") or None,
        }
    return servers


def serving(status: str) -> bool:
    """Whether a ``show stat`` status means the balancer sends it traffic (UP, or UP going
    down, "UP 1/2")."""
    return status.startswith("UP")


def balanced_sites(cfg: Config, host: str) -> list[str]:
    """Names of the sites that have ``host`` as a member behind a balancer; UsageError if
    there are none."""
    names = [n for n, s in sorted(cfg.sites.items())
             if s.balancer is not None and s.files is not None and host in s.files.hosts]
    if not names:
        members = sorted({h for s in cfg.sites.values() if s.balancer and s.files for h in s.files.hosts})
        raise UsageError(f"{host!r} is not a member of a balanced site "
                         f"(members: {', '.join(members) or 'none configured'})")
    return names


def balancer_raw(cfg: Config, site: str, ssh: SSH) -> tuple[str, str]:
    """The balancer's ``show stat`` (servers of every proxy) and ``show servers state`` of the
    site's backend, as text. ``show stat NAME`` is not used: it picks a frontend of the same
    name."""
    bal = cfg.site(site).balancer
    if bal is None:
        raise UsageError(f"site {site!r} has no balancer")
    sock = quote(bal.socket)
    out = ssh.run(target_for(cfg, bal.host),
                  f"echo 'show stat -1 4 -1' | socat stdio {sock}; echo '@@'; "
                  f"echo {quote('show servers state ' + bal.backend)} | socat stdio {sock}", timeout=30)
    stat, _, state = out.stdout.decode("utf-8", "replace").partition("@@\n")
    return stat, state


def balancer_stats(cfg: Config, site: str, ssh: SSH) -> dict[str, dict[str, Any]]:
    """The servers of the site's backend (:func:`parse_show_stat`)."""
    bal = cfg.site(site).balancer
    return parse_show_stat(balancer_raw(cfg, site, ssh)[0], bal.backend if bal else "")


def quarantined(cfg: Config, host: str, ssh: SSH) -> bool:
    """Whether ``host`` has the quarantine table loaded."""
    out = ssh.run(target_for(cfg, host), f"nft list table {QUARANTINE_TABLE} >/dev/null 2>&1 && echo yes || echo no",
                  timeout=30)
    return out.stdout.strip() == b"yes"


def ruleset(cfg: Config, host: str, ssh: SSH) -> str:
    """The host's whole nftables ruleset (text)."""
    return ssh.run(target_for(cfg, host), "nft list ruleset", timeout=30).stdout.decode("utf-8", "replace")


def members(cfg: Config, site: str, ssh: SSH | None = None) -> list[dict[str, Any]]:
    """The site's members: ``{host, balancer_state, sessions, serving, quarantined}`` in the
    order of ``files.hosts``. ``balancer_state`` is HAProxy's status (UP, DOWN, DRAIN, MAINT…)
    or ``absent`` when the backend has no such server; ``quarantined`` is None when the host
    could not be asked."""
    s = cfg.site(site)
    if s.files is None or s.balancer is None:
        raise UsageError(f"site {site!r} needs 'files' and 'balancer' to have members")
    own = ssh is None
    ssh = ssh or SSH()
    try:
        stats = balancer_stats(cfg, site, ssh)
        out = []
        for host in s.files.hosts:
            st = stats.get(host, {})
            try:
                q: bool | None = quarantined(cfg, host, ssh)
            except Exception:  # noqa: BLE001 - an unreachable member is reported, not fatal
                q = None
            status = st.get("status", "absent")
            out.append({"host": host, "balancer": s.balancer.host, "backend": s.balancer.backend,
                        "balancer_state": status, "sessions": st.get("sessions", 0),
                        "serving": serving(status), "quarantined": q})
        return out
    finally:
        if own:
            ssh.close()
