"""Runbook ``db-failure --site S``: start PostgreSQL if it is down → compare the live
database with the last good dump's row counts → restore the dump into scratch (the proof) →
restore it live when the live database differs (or ``--force-restore``) → restart the site's
services → verify through the balancer → collect the database logs.

A live restore replaces everything written since the dump, so it runs only when the live
database no longer matches the dump (a dropped or emptied table) or when forced; a stopped
server with intact data is only started again."""

from __future__ import annotations

import shlex
from typing import Any

from ..errors import ResilienceError
from .common import need_site, on_host, restart_service, site_checks
from .engine import Context, Runbook, Skip, Step

KIND = "db-failure"


def validate(cfg, params: dict[str, Any]) -> dict[str, Any]:
    need_site(cfg, params, database=True)
    return params


def _assess(ctx: Context) -> dict[str, Any]:
    res = site_checks(ctx.cfg, ctx.params["site"])
    ctx.facts["site_down"] = res["ok"] is False
    return {"site_ok": res["ok"]}


def _start(ctx: Context) -> dict[str, Any]:
    return restart_service(ctx, [ctx.cfg.site(ctx.params["site"]).database.host], "postgresql")


def _live_counts(ctx: Context) -> dict[str, int] | None:
    from ..inventory import load_inventory
    from ..sources.postgres import connect, read_db_password

    db = ctx.cfg.site(ctx.params["site"]).database
    address = load_inventory(ctx.cfg.inventory).address(db.host)
    with connect(address, db.port, db.name, db.user, read_db_password(db.password_file),
                 application="resilience-runbook") as conn:
        tables = conn.execute("SELECT schemaname, tablename FROM pg_tables WHERE schemaname NOT IN "
                              "('pg_catalog', 'information_schema')").fetchall()
        return {f"{s}.{t}": conn.execute(f'SELECT count(*) FROM "{s}"."{t}"').fetchone()[0] for s, t in tables}


def _compare(ctx: Context) -> dict[str, Any]:
    from ..actions.repository import opened

    with opened(ctx.cfg) as repo:
        snap = repo.find_snapshot("latest", site=ctx.params["site"], kind="database")
    want = snap.meta.get("row_counts") or {}
    have = _live_counts(ctx)
    differ = sorted(t for t in set(want) | set(have) if want.get(t) != have.get(t))
    ctx.facts["differs"] = differ
    return {"snapshot": snap.id, "snapshot_time": str(snap.time), "differs": differ[:50]}


def _restore(target: str):
    def fn(ctx: Context) -> dict[str, Any]:
        from ..actions.restore_site import restore_site

        if target == "live" and not ctx.results["compare with last dump"].get("differs") \
                and not ctx.params.get("force_restore"):
            raise Skip("the live database matches the last dump (row counts): not replaced")
        res = restore_site(ctx.cfg, ctx.ledger, ctx.params["site"], files=False, database=True, target=target,
                           dry_run=ctx.dry_run)
        ctx.link(res)
        if target == "live" and not ctx.dry_run:
            ctx.facts["live_restored"] = True
        db = res.get("database") or {}
        counts = db.get("live_counts") or db.get("actual_counts") or {}
        if db.get("kept_database"):
            # The damaged database stays on the server for the investigation: the report says
            # where, and how to drop it once done.
            ctx.facts.update(kept_database=db["kept_database"], drop_command=db.get("drop_command"))
        return {"run": res.get("run"), "target": target, "snapshot": db.get("snapshot"),
                "database": db.get("database"), "tables": len(counts), "rows": sum(counts.values()),
                "verified": bool(counts) and counts == db.get("expected_counts"),
                "kept_database": db.get("kept_database"), "drop_command": db.get("drop_command")}
    return fn


def _services(ctx: Context) -> dict[str, Any]:
    site = ctx.cfg.site(ctx.params["site"])
    if not site.files:
        raise Skip("the site has no web members")
    # Reload the web servers: their upstream connections to the old database are gone.
    return restart_service(ctx, list(site.files.hosts), "nginx", force=True)


def _verify(ctx: Context) -> dict[str, Any]:
    if ctx.dry_run:
        raise Skip("dry run")
    res = site_checks(ctx.cfg, ctx.params["site"], retries=6)
    if res["ok"] is False:
        raise ResilienceError("the site fails its checks through the balancer")
    return {"site_ok": res["ok"]}


def _logs(ctx: Context) -> dict[str, Any]:
    host = ctx.cfg.site(ctx.params["site"]).database.host
    kept = {}
    with ctx.run.step("keep database logs", host=host) as step:
        names = on_host(ctx.cfg, host, "ls -1 /var/log/postgresql/ 2>/dev/null", check=False).stdout.decode().split()
        for name in names[:20]:
            data = on_host(ctx.cfg, host, f"cat -- /var/log/postgresql/{shlex.quote(name)}", check=False).stdout
            kept[name] = step.artifact(f"postgresql-{name}", data=data)["sha256"]
    return {"logs_sha256": kept}


def steps(cfg, params: dict[str, Any]) -> list[Step]:
    h = cfg.site(params["site"]).database.host if params.get("site") and cfg.sites.get(params["site"]) \
        and cfg.site(params["site"]).database else None
    return [Step("assess", _assess), Step("start database", _start, h), Step("compare with last dump", _compare, h),
            Step("restore into scratch (proof)", _restore("scratch"), h), Step("restore live", _restore("live"), h),
            Step("restart site services", _services), Step("verify through the balancer", _verify),
            Step("collect database logs", _logs, h)]


def describe(ctx: Context, outcome: str) -> dict[str, Any]:
    differs = ctx.facts.get("differs") or []
    return {
        "title": f"database failure (site {ctx.params['site']})",
        "scope": f"site {ctx.params['site']}, database on {ctx.cfg.site(ctx.params['site']).database.host}; "
                 + (f"tables differing from the last dump: {', '.join(differs)}" if differs else "data intact"),
        "nature": "database failure (数据库故障)" + ("; data replaced from the last good dump"
                                                   if ctx.facts.get("live_restored") else ""),
        "trend": "contained: the database answers and the site passes its checks" if outcome == "ok" else None,
        "findings": {"previous database kept as": ctx.facts.get("kept_database") or "none (not replaced)",
                     "drop it when the investigation is done": ctx.facts.get("drop_command") or "n/a"},
    }


RUNBOOK = Runbook(KIND, steps, validate, describe)
