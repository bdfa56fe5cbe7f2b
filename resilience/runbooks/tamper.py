"""Runbook ``tamper --host H --site S``: a member's site content was changed.

assess → isolate (logs first) → {restore the member's files from the last good snapshot,
security updates, rotate admin passwords} (at the same time) → {analyse the access logs
(sources, first appearance of the planted files), rejoin} (at the same time) → verify.
"""

from __future__ import annotations

import shlex
from typing import Any

from ..errors import PartialFailure, UsageError
from .common import need_site, on_host, site_checks
from .engine import Context, Runbook, Skip, Step

KIND = "tamper"


def validate(cfg, params: dict[str, Any]) -> dict[str, Any]:
    need_site(cfg, params, files=True, balancer=True)
    host = params.get("host")
    if not host:
        raise UsageError("give --host (the tampered member)")
    members = cfg.site(params["site"]).files.hosts
    if host not in members:
        raise UsageError(f"{host}: not a member of site {params['site']!r} (members: {', '.join(members)})")
    return params


def _assess(ctx: Context) -> dict[str, Any]:
    site, host = ctx.params["site"], ctx.params["host"]
    public = site_checks(ctx.cfg, site)
    try:
        member = site_checks(ctx.cfg, site, host=host)
    except Exception as exc:  # noqa: BLE001 - an unreachable member is a finding, not a stop
        member = {"ok": False, "error": str(exc)}
    ctx.facts["public_affected"] = public["ok"] is False
    return {"balancer_checks_ok": public["ok"], "member_checks_ok": member.get("ok"),
            "failed_checks": [r["url"] for r in public["results"] + member.get("results", []) if not r["ok"]]}


def _isolate(ctx: Context) -> dict[str, Any]:
    from ..actions.isolate import isolate

    res = isolate(ctx.cfg, ctx.ledger, ctx.params["host"], f"incident tamper ({ctx.run.id})",
                  dry_run=ctx.dry_run, quiet=True)
    ctx.link(res)
    return {"run": res["run"], "logs_kept": len(res["logs"]), "quarantined": res.get("quarantined"),
            "logs": [{"path": x["path"], "sha256": x.get("sha256")} for x in res["logs"]]}


def _restore(ctx: Context) -> dict[str, Any]:
    from ..actions.restore_site import restore_site

    site, host = ctx.params["site"], ctx.params["host"]
    # The member is quarantined: only SSH from the ops host gets in, so its direct HTTP
    # check would time out by design; rejoin checks the member directly before it takes
    # traffic again.
    res = restore_site(ctx.cfg, ctx.ledger, site, hosts=[host], files=True, database=False,
                       dry_run=ctx.dry_run, check_members=False)
    ctx.link(res)
    m = res["members"].get(host, {})
    # What the attacker added (removed by the restore) and changed: the names analysed later.
    return {"run": res.get("run"), "snapshot": res.get("snapshot"), "snapshot_time": str(res.get("snapshot_time")),
            "added_by_attacker": m.get("remove", [])[:50], "changed_by_attacker": m.get("send", [])[:50],
            "changed": m.get("changed"), "removed": m.get("removed"), "verified": m.get("verified")}


def _updates(ctx: Context) -> dict[str, Any]:
    from ..control.ansible import run_playbook

    mode = ctx.cfg.runbooks.security_updates
    if mode == "off":
        raise Skip("security updates are off in this config (runbooks.security_updates)")
    host = ctx.params["host"]
    res = run_playbook(ctx.cfg, "security_updates", check=ctx.dry_run, run=ctx.run, quiet=True, timeout=1800,
                       extravars={"target": host, "security_updates": mode})
    got = res.facts.get(host, {}).get("security_updates", {})
    return {"mode": mode, "pending": got.get("pending", []), "applied": got.get("applied", False)}


def _rotate(ctx: Context) -> dict[str, Any]:
    try:
        from ..actions import creds  # built in parallel (issue 6 item 4); optional here
    except ImportError:
        raise Skip("creds module not available") from None
    rotate = getattr(creds, "rotate", None)
    if rotate is None:
        raise Skip("creds module not available")
    host, out = ctx.params["host"], {}
    if not ctx.cfg.runbooks.admin_users:
        raise Skip("no admin accounts configured (runbooks.admin_users)")
    for user in ctx.cfg.runbooks.admin_users:
        res = rotate(ctx.cfg, ctx.ledger, host, user, dry_run=ctx.dry_run)
        ctx.link(res if isinstance(res, dict) else None)
        # Only the run id and outcome: the new password never enters the runbook's records.
        out[user] = {"run": res.get("run") if isinstance(res, dict) else None, "rotated": not ctx.dry_run}
    return {"users": out}


def _analyse(ctx: Context) -> dict[str, Any]:
    from ..actions.block import from_logs
    from ..inventory import load_inventory

    site, host = ctx.params["site"], ctx.params["host"]
    res = from_logs(ctx.cfg, ctx.ledger, site, since=ctx.params.get("since") or ctx.cfg.runbooks.log_window,
                    apply=False, dry_run=ctx.dry_run)
    ctx.link(res)
    restored = ctx.results.get("restore files", {})
    names = [p for p in (restored.get("added_by_attacker") or []) + (restored.get("changed_by_attacker") or []) if p]
    inv = load_inventory(ctx.cfg.inventory)
    log = str(inv.host(host).get("nginx_access_log") or "/var/log/nginx/access.log")
    first: dict[str, str | None] = {}
    for name in names[:20]:
        base = name.rsplit("/", 1)[-1]
        proc = on_host(ctx.cfg, host, f"grep -hF -- {shlex.quote(base)} {shlex.quote(log)} 2>/dev/null | head -n 1",
                       check=False)
        first[name] = proc.stdout.decode("utf-8", "replace").strip() or None
    sources = [p["cidr"] for p in res.get("proposals", [])]
    ctx.facts.update(sources=sources, first_seen=first)
    return {"run": res["run"], "proposed_blocks": sources, "sources_seen": res.get("sources"),
            "first_appearance": first}


def _rejoin(ctx: Context) -> dict[str, Any]:
    from ..actions.isolate import rejoin

    res = rejoin(ctx.cfg, ctx.ledger, ctx.params["host"], dry_run=ctx.dry_run, quiet=True)
    ctx.link(res)
    return {"run": res["run"], "balancer": {s: b.get("after") for s, b in res["balancer"].items()}}


def _verify(ctx: Context) -> dict[str, Any]:
    if ctx.dry_run:
        raise Skip("dry run: nothing was changed to verify")
    site, host = ctx.params["site"], ctx.params["host"]
    public = site_checks(ctx.cfg, site, retries=6)
    member = site_checks(ctx.cfg, site, host=host, retries=2)
    if not (public["ok"] is not False and member["ok"]):
        bad = [r["url"] + ": " + str(r["error"]) for r in public["results"] + member["results"] if not r["ok"]]
        raise PartialFailure("the site still fails its checks: " + "; ".join(bad))
    return {"balancer_checks_ok": public["ok"], "member_checks_ok": member["ok"]}


def steps(cfg, params: dict[str, Any]) -> list[Step]:
    h = params.get("host")
    # Once the member is cut off and its logs kept, restoring it, checking its packages and
    # changing its passwords do not depend on each other: they run at the same time.
    return [Step("assess", _assess, h), Step("isolate", _isolate, h),
            Step("restore files", _restore, h, group="contained"), Step("security updates", _updates, h, group="contained"),
            Step("rotate admin passwords", _rotate, h, group="contained"),
            # The analysis only reads the kept logs and proposes blocks: the member, restored
            # and patched, need not wait for it to take traffic again.
            Step("analyse access logs", _analyse, h, group="back"), Step("rejoin", _rejoin, h, group="back"),
            Step("verify site", _verify)]


def describe(ctx: Context, outcome: str) -> dict[str, Any]:
    p, r = ctx.params, ctx.results
    restored = r.get("restore files", {})
    added, changed = restored.get("added_by_attacker") or [], restored.get("changed_by_attacker") or []
    public = "the defaced content was served through the public address" if ctx.facts.get("public_affected") \
        else "the balancer's checks passed (the other member kept serving the genuine site)"
    return {
        "title": f"tampering of {p['host']} (site {p['site']})",
        "scope": f"site {p['site']}, member {p['host']}: {len(changed)} file(s) changed, {len(added)} added; {public}",
        "nature": "web page tampering (网页篡改): unauthorised change of the site's files on a member"
                  + (f"; files planted: {', '.join(added[:5])}" if added else ""),
        "trend": f"contained: {p['host']} restored from snapshot {restored.get('snapshot', '?')[:12]}, verified, "
                 f"back in the balancer; watch the sources named below" if outcome == "ok" else None,
        "findings": {"proposed blocks (not applied)": ", ".join(ctx.facts.get("sources") or []) or "none",
                     "first appearance in the access log": ctx.facts.get("first_seen") or "n/a"},
    }


RUNBOOK = Runbook(KIND, steps, validate, describe)
