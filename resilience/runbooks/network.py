"""Runbook ``network --site S``: check both lines → fail over when the active line is down
→ wait (bounded; ``--no-wait`` skips it) for the primary to answer again → fail back →
verify the site. Each switch is its own recorded line run, linked from this one."""

from __future__ import annotations

import time
from typing import Any

from ..errors import ResilienceError, UsageError
from .common import need_site, site_checks
from .engine import Context, Runbook, Skip, Step

KIND = "network"


def validate(cfg, params: dict[str, Any]) -> dict[str, Any]:
    need_site(cfg, params)
    if cfg.lines is None:
        raise UsageError("this config has no lines section: nothing to fail over")
    return params


def _check(ctx: Context) -> dict[str, Any]:
    from ..control import lines

    st = lines.status(ctx.cfg, rounds=3)
    healthy = {n: ln["healthy"] for n, ln in st["lines"].items()}
    ctx.facts.update(no_line=not any(healthy.values()), primary=st["policy"]["primary"], active_before=st["active"])
    return {"active": st["active"], "healthy": healthy}


def _failover(ctx: Context) -> dict[str, Any]:
    from ..control import lines

    chk = ctx.results["check lines"]
    active, healthy = chk["active"], chk["healthy"]
    if active and healthy.get(active):
        raise Skip(f"the active line {active} is healthy")
    to = next((n for n, ok in healthy.items() if ok and n != active), None)
    if to is None:
        raise ResilienceError("no healthy line to fail over to")
    res = lines.failover(ctx.cfg, ctx.ledger, to=to, dry_run=ctx.dry_run)
    ctx.link(res)
    ctx.facts["failed_over_to"] = to
    return {"run": res.get("run"), "to": to}


def _wait(ctx: Context) -> dict[str, Any]:
    from ..control import lines

    if not ctx.facts.get("failed_over_to"):
        raise Skip("no failover: nothing to fail back")
    limit = ctx.params.get("wait")
    limit = ctx.cfg.runbooks.repair_wait if limit is None else float(limit)
    if limit <= 0 or ctx.dry_run:
        raise Skip("not waiting for the repair (--no-wait or dry run)")
    primary, t0 = ctx.facts["primary"], time.monotonic()
    while time.monotonic() - t0 < limit:
        if lines.status(ctx.cfg, rounds=3)["lines"][primary]["healthy"]:
            return {"repaired_after_s": round(time.monotonic() - t0, 1)}
        time.sleep(2)
    raise ResilienceError(f"line {primary} still down after {limit:.0f} s; resume this run once it is repaired")


def _failback(ctx: Context) -> dict[str, Any]:
    from ..control import lines

    if "repaired_after_s" not in ctx.results.get("wait for repair", {}):
        raise Skip("the primary line was not seen repaired")
    res = lines.failback(ctx.cfg, ctx.ledger, dry_run=ctx.dry_run)
    ctx.link(res)
    return {"run": res.get("run")}


def _verify(ctx: Context) -> dict[str, Any]:
    from ..control import lines

    st = lines.status(ctx.cfg, rounds=2)
    res = site_checks(ctx.cfg, ctx.params["site"], retries=4)
    ctx.facts["active_after"] = st["active"]
    # The site's URL is checked from the ops host, inside: it answers whatever the lines do.
    # The outside's way in is the active line, so that line must reach its probe targets.
    active_ok = bool(st["active"]) and bool(st["lines"].get(st["active"], {}).get("healthy"))
    if not active_ok:
        raise ResilienceError(f"the active line {st['active'] or '(none)'} does not reach its probe targets")
    if res["ok"] is False:
        raise ResilienceError("the site fails its checks")
    return {"active": st["active"], "active_line_healthy": active_ok, "site_ok": res["ok"]}


def steps(cfg, params: dict[str, Any]) -> list[Step]:
    return [Step("check lines", _check), Step("fail over", _failover), Step("wait for repair", _wait),
            Step("fail back", _failback), Step("verify", _verify)]


def describe(ctx: Context, outcome: str) -> dict[str, Any]:
    f = ctx.facts
    return {
        "title": f"network line failure (site {ctx.params['site']})",
        "scope": f"site {ctx.params['site']}'s internet access; active line before: {f.get('active_before')}, "
                 f"after: {f.get('active_after')}",
        "nature": "network line failure (线路故障)" + (": no line was healthy" if f.get("no_line") else ""),
        "trend": (f"contained: traffic on {f.get('active_after')}"
                  + ("" if f.get("active_after") == f.get("primary") else "; fail back once the primary is repaired"))
        if outcome == "ok" else None,
    }


RUNBOOK = Runbook(KIND, steps, validate, describe)
