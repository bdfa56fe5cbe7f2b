"""``resilience isolate`` and ``resilience rejoin``: take a member out of its site and put it
back, through the playbooks, as one recorded run each.

Isolate: refuse to take out the last serving member (unless forced) → keep the balancer's and
the firewall's state → collect the host's logs into the evidence (sha256 per file) → DRAIN,
bounded wait, MAINT on every balancer of its sites → nftables quarantine → keep the states
after. Nothing changes on a host before its logs are safe.

Rejoin, one playbook run per site: lift the quarantine → check from the balancer that the
member serves the site's checks (status, text, sha256; else the quarantine goes back on and the
run fails) → READY on the balancer; then check the site through its URL (the VIP) and that the
balancer sees the member UP.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

from ..checks import run_checks
from ..config import Config
from ..control import cluster
from ..control.ansible import run_playbook
from ..control.ssh import SSH
from ..errors import PlaybookError, ResilienceError, UsageError
from ..evidence import Ledger
from ..evidence.run import Run

PLAYBOOK_TIMEOUT = 300
#: rejoin.yml's task that checks the member from the balancer (its failure keeps it out).
CHECK_TASK = "Check the member serves"


def isolate(cfg: Config, ledger: Ledger, host: str, reason: str, *, dry_run: bool = False,
            force: bool = False, drain_timeout: int = 30, quiet: bool = False) -> dict[str, Any]:
    """Isolate ``host`` (see the module doc). Returns what was (or would be) done. Raises
    UsageError (exit 2) for an unknown member, an empty reason, or the last serving member
    without ``force``; PlaybookError when a playbook fails."""
    if not reason or not reason.strip():
        raise UsageError("give a --reason for the isolation (it goes into the evidence)")
    sites = cluster.balanced_sites(cfg, host)
    result: dict[str, Any] = {"host": host, "reason": reason, "sites": sites, "dry_run": dry_run,
                              "balancer": {}, "logs": [], "changed": False}
    with SSH() as ssh:
        before = {site: cluster.balancer_stats(cfg, site, ssh) for site in sites}
        for site, servers in before.items():
            _refuse_last_member(site, host, servers, force)
        run = ledger.start_run("isolate", {"host": host, "reason": reason, "force": force, "sites": sites},
                               dry_run=dry_run)
        result["run"] = run.id
        with run:
            result["quarantined_before"] = _keep_state(cfg, run, host, sites, ssh, "before")
            ops = [str(a) for a in cfg.control.ops_addresses]
            dest = Path(tempfile.mkdtemp(prefix="resilience-logs-"))
            try:
                for i, site in enumerate(sites):
                    # The logs come first, in the same playbook run as the first balancer: the
                    # run stops before any change when none is found.
                    bal = cfg.site(site).balancer
                    steps = ["balancer"] + (["quarantine"] if i == len(sites) - 1 else [])
                    res = _run_isolate(cfg, run, host, dest if i == 0 else None,
                                       {"balancer": bal.host, "backend": bal.backend, "drain_timeout": drain_timeout,
                                        "force": force, "ops_addresses": ops, "isolate_steps": steps},
                                       dry_run, quiet, result, timeout=PLAYBOOK_TIMEOUT + drain_timeout)
                    pub = res.facts.get(bal.host, {}).get("balancer", {})
                    result["balancer"][site] = {"balancer": bal.host, "backend": bal.backend,
                                                "before": before[site].get(host, {}).get("status"),
                                                "after": pub.get("after"),
                                                "sessions_left": pub.get("sessions_left")}
            finally:
                shutil.rmtree(dest, ignore_errors=True)
            result["quarantined"] = _keep_state(cfg, run, host, sites, ssh, "after")
            if dry_run:
                result["would_change"] = {
                    "balancer": [s for s, b in result["balancer"].items() if not str(b["before"]).startswith("MAINT")],
                    "quarantine": not result["quarantined_before"]}
                result["changed"] = False
            run.details.update(changed=result["changed"], quarantined=result["quarantined"])
    return result


def rejoin(cfg: Config, ledger: Ledger, host: str, *, dry_run: bool = False,
           quiet: bool = False) -> dict[str, Any]:
    """Rejoin ``host`` (see the module doc). Idempotent: a serving, unquarantined member is
    left as it is (``changed`` False). Raises ResilienceError when the member does not serve
    the expected content (its quarantine is restored) or the site fails its checks after."""
    sites = cluster.balanced_sites(cfg, host)
    result: dict[str, Any] = {"host": host, "sites": sites, "dry_run": dry_run, "balancer": {},
                              "checks": {}, "changed": False}
    with SSH() as ssh:
        run = ledger.start_run("rejoin", {"host": host, "sites": sites}, dry_run=dry_run)
        result["run"] = run.id
        with run:
            quarantined = _keep_state(cfg, run, host, sites, ssh, "before")
            result["quarantined_before"] = quarantined
            for i, site in enumerate(sites):
                # One playbook run: lift the quarantine, check the member from the balancer
                # (status, text, sha256), READY. A member that fails its checks never gets READY.
                bal = cfg.site(site).balancer
                res = _ready(cfg, run, host, site, ["unquarantine"] * (i == 0) + ["ready"], dry_run, quiet)
                result["changed"] |= res.changed
                pub = res.facts.get(bal.host, {}).get("balancer", {})
                result["balancer"][site] = {"balancer": bal.host, "backend": bal.backend,
                                            "before": pub.get("before"), "after": pub.get("after")}
                if not dry_run:
                    result["checks"][f"{host} from {bal.host}"] = pub.get("checks", [])
                    _confirm_site(cfg, run, host, site, ssh, result)
            result["quarantined"] = _keep_state(cfg, run, host, sites, ssh, "after")
            if dry_run:
                result["would_change"] = {
                    "quarantine": quarantined,
                    "balancer": [s for s, b in result["balancer"].items() if str(b["before"]) != "UP"]}
                result["changed"] = False
            run.details.update(changed=result["changed"])
    return result


def _ready(cfg: Config, run: Run, host: str, site: str, steps: list[str], dry_run: bool, quiet: bool):
    """Run rejoin.yml's ``steps`` for ``host`` in ``site``; when the member fails its checks,
    put the quarantine back on and raise ResilienceError."""
    bal = cfg.site(site).balancer
    checks = [{"path": c.path, "status": c.status, "contains": c.contains, "sha256": c.sha256}
              for c in cfg.site(site).checks]
    try:
        return run_playbook(cfg, "rejoin", check=dry_run, run=run, quiet=quiet, timeout=PLAYBOOK_TIMEOUT,
                            extravars={"target": host, "balancer": bal.host, "backend": bal.backend,
                                       "member_checks": checks, "rejoin_steps": steps})
    except PlaybookError as exc:
        bad = [f for f in (exc.result.failures if exc.result else []) if f.get("task", "").startswith(CHECK_TASK)]
        if not bad or dry_run:
            raise
        # A member that does not serve what it should stays cut off.
        run_playbook(cfg, "isolate", run=run, quiet=quiet, timeout=PLAYBOOK_TIMEOUT,
                     extravars={"target": host, "isolate_steps": ["quarantine"],
                                "ops_addresses": [str(a) for a in cfg.control.ops_addresses]})
        raise ResilienceError(f"{host} does not serve the expected content ({bad[0].get('message') or 'check failed'}); "
                              f"quarantine restored, it stays out of the balancer") from None


def _refuse_last_member(site: str, host: str, servers: dict[str, dict], force: bool) -> None:
    if host not in servers:
        raise UsageError(f"{host} is not a server of site {site!r}'s backend on its balancer")
    if not cluster.serving(servers[host]["status"]):
        return  # already out: nothing is taken away
    others = [h for h, s in servers.items() if h != host and cluster.serving(s["status"])]
    if not others and not force:
        raise UsageError(f"{host} is the last serving member of site {site!r}: isolating it takes the "
                         f"site down; refusing without --force")


def _keep_state(cfg: Config, run: Run, host: str, sites: list[str], ssh: SSH, when: str) -> bool:
    """Keep the balancers' and the host's firewall state as artifacts; return whether the
    host is quarantined."""
    with run.step(f"state {when}", host=host) as step:
        for site in sites:
            stat, state = cluster.balancer_raw(cfg, site, ssh)
            bal = cfg.site(site).balancer
            step.artifact(f"balancer-{site}-{when}.txt", data=f"# {bal.host} show stat\n{stat}\n"
                          f"# {bal.host} show servers state {bal.backend}\n{state}".encode())
            step.details[f"{site}_status"] = cluster.parse_show_stat(stat, bal.backend).get(host, {}).get("status")
        step.artifact(f"nft-{host}-{when}.txt", data=cluster.ruleset(cfg, host, ssh).encode())
        q = cluster.quarantined(cfg, host, ssh)
        step.details["quarantined"] = q
    return q


def _run_isolate(cfg: Config, run: Run, host: str, dest: Path | None, extravars: dict[str, Any], dry_run: bool,
                 quiet: bool, result: dict[str, Any], timeout: float = PLAYBOOK_TIMEOUT):
    """Run isolate.yml, or with ``dest`` isolate_member.yml: the host's logs fetched into
    ``dest`` first and kept as artifacts (sha256, size) in ``result["logs"]``; in a dry run
    they are only listed."""
    book = "isolate" if dest is None else "isolate_member"
    extra = {"target": host, **extravars, **({"collect_dest": str(dest)} if dest is not None else {})}
    res = run_playbook(cfg, book, check=dry_run, run=run, quiet=quiet, timeout=timeout, extravars=extra)
    result["changed"] |= res.changed
    if dest is None:
        return res
    if dry_run:
        result["logs"] = [{"path": f["path"], "size": f.get("size")} for f in res.facts.get(host, {}).get("logs", [])]
        return res
    with run.step("keep logs", host=host) as step:
        root = dest / host
        for f in sorted(p for p in root.rglob("*") if p.is_file()):
            remote = "/" + str(f.relative_to(root))
            entry = step.artifact(f"logs-{host}{remote.replace('/', '_')}", path=f)
            result["logs"].append({"path": remote, "size": entry["size"], "sha256": entry["sha256"],
                                   "artifact": entry["path"]})
        step.details["files"] = len(result["logs"])
    return res


def _confirm_site(cfg: Config, run: Run, host: str, site: str, ssh: SSH, result: dict) -> None:
    s = cfg.site(site)
    with run.step("confirm through the balancer", host=host) as step:
        state = cluster.balancer_stats(cfg, site, ssh).get(host, {}).get("status")
        step.details["balancer_state"] = state
        if not cluster.serving(state or ""):
            raise ResilienceError(f"{host}: the balancer of site {site!r} reports it {state}, not UP")
        if s.url:
            checks = run_checks(s.url, s.checks, retries=6, delay=0.5)
            result["checks"][site] = [c.as_dict() for c in checks]
            step.details["checks"] = [c.as_dict() for c in checks]
            bad = [c for c in checks if not c.ok]
            if bad:
                raise ResilienceError(f"site {site!r} fails its check through {s.url}: {bad[0].url}: {bad[0].error}")
