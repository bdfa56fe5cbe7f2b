"""Runbook ``illegal-content --site S (--path P… | --match REGEX)``.

locate (on every member: sha256, owner, times) → keep the access logs → quarantine the
digests (before anything is removed, so a concurrent restore cannot bring it back) → sweep
every member for more copies (same sha256 anywhere in the tree) → remove every copy from every
member at once → verify gone (sweep again, HTTP 404 through the balancer) → trace.

Removal is direct (``rm`` of the named files on all members in parallel), not staged like a
restore: deleting a file is atomic per file, and a snapshot restore would also undo every
other change since the snapshot. ``--match`` is a regular expression over paths relative to
the site root.
"""

from __future__ import annotations

import re
import shlex
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from ..checks import fetch
from ..errors import ResilienceError, UsageError
from . import quarantine
from .common import need_site, on_host
from .engine import Context, Runbook, Step

KIND = "illegal-content"
# One line per file: sha256, size, owner, mtime, ctime, path (relative, NUL-free by find's %P).
HASH_ALL = ("cd {root} && find . -type f -print0 | xargs -0 -r sh -c 'for f; do "
            "printf \"%s %s\\n\" \"$(sha256sum < \"$f\" | cut -c1-64)\" \"$(stat -c \"%s %U %Y %Z\" -- \"$f\")\"; "
            "printf \"%s\\n\" \"${{f#./}}\"; done' sh")


def validate(cfg, params: dict[str, Any]) -> dict[str, Any]:
    need_site(cfg, params, files=True)
    paths, match = params.get("paths") or [], params.get("match")
    if bool(paths) == bool(match):
        raise UsageError("give --path P (repeatable) or --match REGEX, not both")
    for p in paths:
        if p.startswith("/") or ".." in p.split("/") or not p.strip("/"):
            raise UsageError(f"--path {p!r}: give a path relative to the site root, without '..'")
    if match:
        try:
            re.compile(match)
        except re.error as exc:
            raise UsageError(f"--match: not a regular expression: {exc}") from None
    return params


def _tree(ctx: Context, host: str) -> dict[str, dict[str, Any]]:
    """{relative path: {sha256, size, owner, mtime, ctime}} of every file on ``host``."""
    root = ctx.cfg.site(ctx.params["site"]).files.path
    out = on_host(ctx.cfg, host, HASH_ALL.format(root=shlex.quote(root)), timeout=900).stdout.decode("utf-8", "replace")
    lines = out.splitlines()
    files = {}
    for meta, rel in zip(lines[0::2], lines[1::2], strict=False):
        digest, size, owner, mtime, ctime = meta.split(" ")
        files[rel] = {"sha256": digest, "size": int(size), "owner": owner, "mtime": int(mtime), "ctime": int(ctime)}
    return files


def _members(ctx: Context) -> list[str]:
    return list(ctx.cfg.site(ctx.params["site"]).files.hosts)


def _all_trees(ctx: Context) -> dict[str, dict[str, dict[str, Any]]]:
    hosts = _members(ctx)
    with ThreadPoolExecutor(len(hosts)) as pool:
        return dict(zip(hosts, pool.map(lambda h: _tree(ctx, h), hosts), strict=True))


def _locate(ctx: Context) -> dict[str, Any]:
    trees = _all_trees(ctx)
    rx = re.compile(ctx.params["match"]) if ctx.params.get("match") else None
    wanted = set(ctx.params.get("paths") or [])
    found = {h: {p: m for p, m in t.items() if (p in wanted if not rx else rx.search(p))} for h, t in trees.items()}
    if not any(found.values()):
        raise ResilienceError("none of the named content is on any member; nothing to do")
    digests = sorted({m["sha256"] for f in found.values() for m in f.values()})
    return {"found": found, "digests": digests}


def _keep_logs(ctx: Context) -> dict[str, Any]:
    from ..inventory import load_inventory

    inv = load_inventory(ctx.cfg.inventory)
    kept = {}
    with ctx.run.step("keep access logs") as step:
        for h in _members(ctx):
            log = str(inv.host(h).get("nginx_access_log") or "/var/log/nginx/access.log")
            data = on_host(ctx.cfg, h, f"cat -- {shlex.quote(log)}", check=False, timeout=300).stdout
            kept[h] = step.artifact(f"access-log-{h}.log", data=data)["sha256"]
    return {"logs_sha256": kept}


def _quarantine(ctx: Context) -> dict[str, Any]:
    loc = ctx.results["locate"]
    paths_by_digest: dict[str, list[str]] = {}
    for f in loc["found"].values():
        for p, m in f.items():
            paths_by_digest.setdefault(m["sha256"], []).append(p)
    if ctx.dry_run:
        return {"would_quarantine": loc["digests"], "file": str(quarantine.path())}
    quarantine.add({d: {"paths": ps, "site": ctx.params["site"], "run": ctx.run.id, "reason": KIND}
                    for d, ps in paths_by_digest.items()})
    return {"quarantined": loc["digests"], "file": str(quarantine.path())}


def _sweep(ctx: Context) -> dict[str, Any]:
    bad = set(ctx.results["locate"]["digests"])
    copies = {h: sorted(p for p, m in t.items() if m["sha256"] in bad) for h, t in _all_trees(ctx).items()}
    extra = {h: [p for p in ps if p not in ctx.results["locate"]["found"].get(h, {})] for h, ps in copies.items()}
    return {"copies": copies, "more_copies": {h: ps for h, ps in extra.items() if ps}}


def _remove(ctx: Context) -> dict[str, Any]:
    copies = ctx.results["sweep"]["copies"]
    root = ctx.cfg.site(ctx.params["site"]).files.path
    if ctx.dry_run:
        return {"would_remove": copies}

    def rm(host: str) -> int:
        rels = copies.get(host) or []
        if rels:
            on_host(ctx.cfg, host, f"cd {shlex.quote(root)} && xargs -0 -r rm -f --",
                    input=b"".join(r.encode() + b"\0" for r in rels))
        return len(rels)

    hosts = list(copies)
    with ThreadPoolExecutor(len(hosts)) as pool:  # every member at once
        removed = dict(zip(hosts, pool.map(rm, hosts), strict=True))
    return {"removed": removed}


def _verify(ctx: Context) -> dict[str, Any]:
    if ctx.dry_run:
        return {"dry_run": True}
    bad = set(ctx.results["locate"]["digests"])
    left = {h: sorted(p for p, m in t.items() if m["sha256"] in bad) for h, t in _all_trees(ctx).items()}
    if any(left.values()):
        raise ResilienceError(f"copies are still there: {left}")
    url = ctx.cfg.site(ctx.params["site"]).url
    served = {}
    if url:
        for f in ctx.results["locate"]["found"].values():
            for p in f:
                served[p] = fetch(f"{str(url).rstrip('/')}/{p}")[0]
    if any(s == 200 for s in served.values()):
        raise ResilienceError(f"still served through the balancer: {served}")
    return {"left": left, "http_status": served}


def _trace(ctx: Context) -> dict[str, Any]:
    from ..inventory import load_inventory

    inv = load_inventory(ctx.cfg.inventory)
    trace: dict[str, Any] = {}
    for h, files in ctx.results["locate"]["found"].items():
        log = str(inv.host(h).get("nginx_access_log") or "/var/log/nginx/access.log")
        for p, m in files.items():
            proc = on_host(ctx.cfg, h, f"grep -hF -- {shlex.quote(p)} {shlex.quote(log)} 2>/dev/null | head -n 20",
                           check=False)
            trace[f"{h}:{p}"] = {"owner": m["owner"], "mtime": m["mtime"], "ctime": m["ctime"],
                                 "access_log_lines": proc.stdout.decode("utf-8", "replace").splitlines()}
    ctx.facts["trace"] = {k: {"owner": v["owner"], "mtime": v["mtime"], "requests": len(v["access_log_lines"])}
                          for k, v in trace.items()}
    return {"trace": trace}


def steps(cfg, params: dict[str, Any]) -> list[Step]:
    return [Step("locate", _locate), Step("keep logs", _keep_logs), Step("quarantine digests", _quarantine),
            Step("sweep", _sweep), Step("remove", _remove), Step("verify gone", _verify), Step("trace", _trace)]


def describe(ctx: Context, outcome: str) -> dict[str, Any]:
    loc, sweep = ctx.results.get("locate", {}), ctx.results.get("sweep", {})
    found = loc.get("found", {})
    return {
        "title": f"illegal content on site {ctx.params['site']}",
        "scope": f"site {ctx.params['site']}: " + "; ".join(f"{h}: {len(f)} file(s)" for h, f in found.items())
                 + (f"; further copies found by digest: {sweep.get('more_copies')}" if sweep.get("more_copies") else ""),
        "nature": "illegal/harmful information published on the site (违法有害信息)",
        "trend": "contained: every copy removed from every member, digests quarantined against restores"
                 if outcome == "ok" else None,
        "findings": {"digests": ", ".join(loc.get("digests", [])) or "n/a",
                     "origin (owner, mtime, requests naming it)": ctx.facts.get("trace") or "n/a"},
    }


RUNBOOK = Runbook(KIND, steps, validate, describe)
