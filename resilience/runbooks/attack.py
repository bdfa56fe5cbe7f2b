"""Runbook ``attack --site S``: assess → find the attacking ranges in the members' access
logs (``block from-logs``) → block them on the balancers (the runbook applies: running it is
the confirmation) → confirm the site answers → restart nginx where it is down → raise
monitoring (a notification to every configured channel)."""

from __future__ import annotations

from typing import Any

from ..errors import ResilienceError
from .common import need_site, restart_service, site_checks
from .engine import Context, Runbook, Skip, Step

KIND = "attack"


def validate(cfg, params: dict[str, Any]) -> dict[str, Any]:
    need_site(cfg, params, files=True, balancer=True)
    return params


def _assess(ctx: Context) -> dict[str, Any]:
    res = site_checks(ctx.cfg, ctx.params["site"])
    ctx.facts["site_down"] = res["ok"] is False
    return {"site_ok": res["ok"], "failed": [r["url"] for r in res["results"] if not r["ok"]]}


def _find(ctx: Context) -> dict[str, Any]:
    from ..actions.block import from_logs

    res = from_logs(ctx.cfg, ctx.ledger, ctx.params["site"], since=ctx.params.get("since") or ctx.cfg.runbooks.log_window,
                    apply=False, exclude=ctx.params.get("exclude") or None, dry_run=ctx.dry_run)
    ctx.link(res)
    props = [{"cidr": p["cidr"], "reasons": p.get("reasons")} for p in res["proposals"]]
    ctx.facts["ranges"] = [p["cidr"] for p in props]
    return {"run": res["run"], "sources": res.get("sources"), "proposals": props}


def _block(ctx: Context) -> dict[str, Any]:
    from ..actions.block import add

    cidrs = [p["cidr"] for p in ctx.results["find attacking ranges"]["proposals"]]
    if not cidrs:
        raise Skip("no attacking range found in the logs")
    res = add(ctx.cfg, ctx.ledger, cidrs, ttl=ctx.params.get("ttl") or "1h", reason=f"incident attack {ctx.run.id}",
              site=ctx.params["site"], dry_run=ctx.dry_run)
    ctx.link(res)
    return {"run": res["run"], "blocked": cidrs, "ttl_s": res["ttl_s"]}


def _confirm(ctx: Context) -> dict[str, Any]:
    res = site_checks(ctx.cfg, ctx.params["site"], retries=6)
    ctx.facts["answers_after_block"] = res["ok"]
    return {"site_ok": res["ok"]}


def _restart(ctx: Context) -> dict[str, Any]:
    site = ctx.cfg.site(ctx.params["site"])
    out = restart_service(ctx, list(site.files.hosts), "nginx")
    if not ctx.dry_run:
        res = site_checks(ctx.cfg, ctx.params["site"], retries=6)
        if res["ok"] is False:
            raise ResilienceError("the site still fails its checks after the blocks and the service check")
    return out


def _monitor(ctx: Context) -> dict[str, Any]:
    from .. import notify

    ev = notify.event("incident.attack", f"attack on site {ctx.params['site']}: blocked "
                      f"{', '.join(ctx.facts.get('ranges') or []) or 'nothing'}", severity="critical",
                      details={"run": ctx.run.id, "ranges": ctx.facts.get("ranges") or []})
    if ctx.dry_run:
        return {"would_notify": ev["event"]}
    sent = notify.send(ctx.cfg.notify, ev)
    return {"event": ev["event"], "channels": sent or "none configured"}


def steps(cfg, params: dict[str, Any]) -> list[Step]:
    return [Step("assess", _assess), Step("find attacking ranges", _find), Step("block", _block),
            Step("confirm site answers", _confirm), Step("restart services if needed", _restart),
            Step("raise monitoring", _monitor)]


def describe(ctx: Context, outcome: str) -> dict[str, Any]:
    ranges = ctx.facts.get("ranges") or []
    return {
        "title": f"attack on site {ctx.params['site']}",
        "scope": f"site {ctx.params['site']} ({'unavailable' if ctx.facts.get('site_down') else 'still answering'} "
                 f"when the runbook began)",
        "nature": "network attack (网络攻击): flooding or probing from " + (", ".join(ranges) or "no range identified"),
        "trend": f"contained: {len(ranges)} range(s) blocked, the site answers" if outcome == "ok" else None,
        "findings": {"blocked ranges": ", ".join(ranges) or "none"},
    }


RUNBOOK = Runbook(KIND, steps, validate, describe)
