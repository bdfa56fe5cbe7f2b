"""Block attack sources on the balancers: add, remove, list, and propose blocks from access logs.

Every change is an evidence run (``block-add``, ``block-remove``, ``block-from-logs``) whose
steps are the safety check, the playbook's tasks (``playbooks/block_sources.yml``, run through
:func:`resilience.control.ansible.run_playbook`, in check mode for ``dry_run``) and the
resulting set content. Listing is read-only and reads nftables over SSH directly.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from ..control import accesslog, blocking
from ..control.ssh import SSH, quote, raise_for, target_for
from ..errors import ResilienceError, UsageError

if TYPE_CHECKING:
    from ..config import Config
    from ..evidence import Ledger
    from ..evidence.run import Run

PLAYBOOK = "block_sources.yml"
TABLE = "resilience_block"
DEFAULT_ACCESS_LOG = "/var/log/nginx/access.log"
COMMENT_BYTES = 120


def balancer_hosts(cfg: Config, site: str | None = None) -> list[str]:
    """The hosts blocks go to: the site's ``balancer.host``, or every site's (deduplicated)."""
    sites = {site: cfg.site(site)} if site else cfg.sites
    hosts = sorted({s.balancer.host for s in sites.values() if s.balancer})
    if not hosts:
        where = f"site {site!r}" if site else "no site"
        raise UsageError(f"{where} has a balancer (sites.NAME.balancer.host): nowhere to block")
    return hosts


def _comment(reason: str, run_id: str) -> str:
    """The nft element comment: the reason (cut to fit) and the run that added it."""
    tail = f" [{run_id}]"
    budget = COMMENT_BYTES - len(tail.encode())
    raw = reason.encode("utf-8")
    if len(raw) > budget:
        reason = raw[:budget - 3].decode("utf-8", "ignore") + "..."
    return reason + tail


def _check(run: Run, cfg: Config, nets: list[blocking.Network]) -> list[blocking.Protected]:
    with run.step("check CIDRs against protected networks") as step:
        protected = blocking.protected_networks(cfg)
        step.details.update(cidrs=[str(n) for n in nets], protected=blocking.extravar_protected(protected))
        blocking.refuse_protected(nets, protected)
    return protected


def _apply(cfg: Config, run: Run, hosts: list[str], protected: list[blocking.Protected],
           dry_run: bool, **vars: Any) -> dict[str, dict]:
    """Run the playbook on ``hosts``; return each host's published ``block`` result."""
    from ..control.ansible import run_playbook

    extravars = {"block_hosts": ",".join(hosts), "block_table": TABLE,
                 "block_protected": blocking.extravar_protected(protected), **vars}
    result = run_playbook(cfg, PLAYBOOK, limit=hosts, extravars=extravars, check=dry_run, run=run)
    per_host = {h: dict((result.facts.get(h) or {}).get("block") or {}) for h in hosts}
    with run.step("blocks after the change" if not dry_run else "blocks after the change (check mode)") as step:
        step.details.update({h: {"elements": r.get("elements", []), "changed": r.get("changed")}
                             for h, r in per_host.items()})
    return per_host


def add(cfg: Config, ledger: Ledger, cidrs: list[str], *, ttl: str, reason: str,
        site: str | None = None, dry_run: bool = False) -> dict[str, Any]:
    """Block ``cidrs`` for ``ttl`` on the balancers. UsageError (exit 2) before anything runs
    for a bad or protected CIDR, ttl or reason; PlaybookError if the playbook fails."""
    nets = blocking.parse_cidrs(cidrs)
    seconds = blocking.parse_ttl(ttl)
    reason = blocking.clean_reason(reason)
    hosts = balancer_hosts(cfg, site)
    protected = blocking.protected_networks(cfg)
    blocking.refuse_protected(nets, protected)  # refuse before a run is even recorded
    params = {"cidrs": [str(n) for n in nets], "ttl_s": seconds, "reason": reason, "hosts": hosts}
    with ledger.start_run("block-add", params, dry_run=dry_run) as run:
        _check(run, cfg, nets)
        comment = _comment(reason, run.id)
        per_host = _apply(cfg, run, hosts, protected, dry_run,
                          block_add=[{"cidr": str(n), "timeout": seconds, "comment": comment} for n in nets])
        run.details.update(hosts={h: _summary(r) for h, r in per_host.items()})
    return {"run": run.id, "dry_run": dry_run, "ttl_s": seconds, "reason": reason,
            "cidrs": [str(n) for n in nets], "hosts": per_host}


def remove(cfg: Config, ledger: Ledger, cidrs: list[str], *, all_: bool = False,
           site: str | None = None, dry_run: bool = False) -> dict[str, Any]:
    """Unblock ``cidrs`` (every element inside each) or, with ``all_``, everything."""
    if all_ and cidrs:
        raise UsageError("give CIDRs or --all, not both")
    nets = [] if all_ else blocking.parse_cidrs(cidrs)
    hosts = balancer_hosts(cfg, site)
    params = {"cidrs": [str(n) for n in nets], "all": all_, "hosts": hosts}
    with ledger.start_run("block-remove", params, dry_run=dry_run) as run:
        protected = blocking.protected_networks(cfg)
        per_host = _apply(cfg, run, hosts, protected, dry_run,
                          block_remove=[str(n) for n in nets], block_remove_all=all_)
        run.details.update(hosts={h: _summary(r) for h, r in per_host.items()})
    return {"run": run.id, "dry_run": dry_run, "cidrs": [str(n) for n in nets], "all": all_,
            "hosts": per_host}


def _summary(r: dict) -> dict:
    keys = ("changed", "added", "removed", "unchanged", "replaced", "still_covered", "absent")
    return {k: r.get(k) for k in keys}


# listing -------------------------------------------------------------------------------------

def _val_cidr(val: Any) -> str:
    if isinstance(val, str):
        return str(ipaddress.ip_network(val))
    if isinstance(val, dict) and "prefix" in val:
        return str(ipaddress.ip_network(f"{val['prefix']['addr']}/{val['prefix']['len']}"))
    if isinstance(val, dict) and "range" in val:
        return f"{val['range'][0]}-{val['range'][1]}"
    return json.dumps(val)


def parse_nft_elements(listing: dict) -> list[dict]:
    """The elements of the ``v4``/``v6`` sets in a ``nft -j list table`` document:
    ``cidr``, ``family``, ``timeout``, ``expires`` (s), ``comment``, ``packets``, ``bytes``."""
    out = []
    for item in listing.get("nftables", []):
        s = item.get("set")
        if not s or s.get("name") not in ("v4", "v6"):
            continue
        for e in s.get("elem", []) or []:
            body = e.get("elem", e) if isinstance(e, dict) else e
            meta = body if isinstance(body, dict) and "val" in body else {"val": body}
            counter = meta.get("counter") or {}
            out.append({"cidr": _val_cidr(meta["val"]), "family": 4 if s["name"] == "v4" else 6,
                        "timeout": meta.get("timeout"), "expires": meta.get("expires"),
                        "comment": meta.get("comment", ""), "packets": counter.get("packets", 0),
                        "bytes": counter.get("bytes", 0)})
    return sorted(out, key=lambda e: (e["family"], e["cidr"]))


def listing(cfg: Config, site: str | None = None) -> dict[str, Any]:
    """The current blocks on each balancer (read over SSH, nothing changes)."""
    hosts = balancer_hosts(cfg, site)
    out: dict[str, Any] = {}
    with SSH() as ssh:
        for h in hosts:
            t = target_for(cfg, h)
            proc = ssh.run(t, f"nft -j list table inet {TABLE}", check=False, timeout=30)
            if proc.returncode != 0 and b"No such file or directory" in proc.stderr:
                out[h] = {"table": False, "elements": []}
                continue
            raise_for(t, proc.returncode, proc.stderr)
            try:
                doc = json.loads(proc.stdout)
            except ValueError:
                raise ResilienceError(f"{h}: nft printed no JSON") from None
            out[h] = {"table": True, "elements": parse_nft_elements(doc)}
    return {"table": f"inet {TABLE}", "hosts": out}


# from-logs -----------------------------------------------------------------------------------

def _log_command(path: str, since: datetime) -> str:
    """Shell command printing the log and, when it holds lines of the window, its first
    rotation (``PATH.1``; compressed older rotations are not read)."""
    rotated = quote(path + ".1")
    epoch = int(since.timestamp())
    return (f"if [ -f {rotated} ] && [ -n \"$(find {rotated} -newermt @{epoch} 2>/dev/null)\" ]; "
            f"then cat -- {rotated}; fi; cat -- {quote(path)}")


def read_logs(cfg: Config, run: Run, hosts: list[str], since: datetime
              ) -> tuple[dict[str, accesslog.SourceStats], dict[str, dict]]:
    """Parse each host's access log (inventory var ``nginx_access_log``) within the window;
    one evidence step per host with the bytes read and their sha256."""
    from ..inventory import load_inventory

    inv = load_inventory(cfg.inventory) if cfg.inventory else None
    stats: dict[str, accesslog.SourceStats] = {}
    per_host: dict[str, dict] = {}
    with SSH() as ssh:
        for h in hosts:
            path = str((inv.host(h) if inv else {}).get("nginx_access_log") or DEFAULT_ACCESS_LOG)
            with run.step("read access log", host=h) as step:
                t = target_for(cfg, h)
                proc = ssh.run(t, _log_command(path, since), timeout=600)
                counts: Counter = Counter()
                text = proc.stdout.decode("utf-8", "replace")
                accesslog.collect(text.splitlines(), h, since, stats, counts)
                info = {"path": path, "bytes": len(proc.stdout),
                        "sha256": hashlib.sha256(proc.stdout).hexdigest(),
                        **{k: counts.get(k, 0) for k in ("lines", "entries", "older", "malformed")}}
                step.details.update(info)
                per_host[h] = info
    return stats, per_host


def from_logs(cfg: Config, ledger: Ledger, site: str, *, since: str = "1h", top: int = 10,
              apply: bool = False, ttl: str = blocking.DEFAULT_TTL, reason: str | None = None,
              thresholds: accesslog.Thresholds | None = None, dry_run: bool = False,
              exclude: list[str] | None = None, now: datetime | None = None) -> dict[str, Any]:
    """Rank the sources in ``site``'s members' access logs over the last ``since`` and propose
    blocks (never of a protected address, nor of one inside ``exclude``: an operator's
    allow-list for this run); with ``apply``, block the proposals for ``ttl``."""
    from ..config import parse_duration

    sc = cfg.site(site)
    if sc.files is None or not sc.files.hosts or sc.files.hosts == ["localhost"]:
        raise UsageError(f"site {site!r} has no remote web hosts (files.hosts) to read logs from")
    try:
        window = parse_duration(since)
    except ValueError as exc:
        raise UsageError(f"--since: {exc}") from None
    if top < 1:
        raise UsageError("--top: must be at least 1")
    seconds = blocking.parse_ttl(ttl)
    excluded = [blocking.Protected(n, "--exclude") for n in
                (blocking.parse_cidrs(exclude) if exclude else [])]
    t = thresholds or accesslog.Thresholds()
    hosts = balancer_hosts(cfg, site)
    start = (now or datetime.now(UTC)) - timedelta(seconds=window)
    params = {"site": site, "since": since, "top": top, "apply": apply, "ttl_s": seconds,
              "thresholds": vars(t), "exclude": [str(e.network) for e in excluded]}
    with ledger.start_run("block-from-logs", params, dry_run=dry_run) as run:
        stats, logs = read_logs(cfg, run, list(sc.files.hosts), start)
        protected = blocking.protected_networks(cfg)
        with run.step("rank sources") as step:
            ranked = accesslog.rank(stats, protected + excluded, t, top)
            step.details.update(sources=len(stats), proposals=[p["cidr"] for p in ranked["proposals"]],
                                skipped_protected=[s["addr"] for s in ranked["skipped_protected"]])
            step.artifact("proposals.json", data=json.dumps(ranked, indent=2, default=str).encode())
        result: dict[str, Any] = {"run": run.id, "site": site, "since": start.isoformat(), "logs": logs,
                                  "sources": len(stats), **ranked, "applied": None, "dry_run": dry_run}
        cidrs = [p["cidr"] for p in ranked["proposals"]]
        if apply and cidrs:
            nets = [blocking.parse_cidr(c) for c in cidrs]
            _check(run, cfg, nets)
            why = reason or f"from-logs {site}"
            elements = [{"cidr": p["cidr"], "timeout": seconds,
                         "comment": _comment(f"{why}: {'; '.join(p['reasons'])}", run.id)}
                        for p in ranked["proposals"]]
            result["applied"] = _apply(cfg, run, hosts, protected, dry_run, block_add=elements)
            run.details.update(applied={h: _summary(r) for h, r in result["applied"].items()})
        run.details.update(proposals=cidrs)
    return result
