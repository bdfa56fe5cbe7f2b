"""``resilience restore --site NAME`` onto the live site: members' files, then the checks.

Every member restore is a recorded step with its counts and durations; the run ends with
the site checks through the balancer (and directly on each restored member).
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from ..checks import run_checks
from ..config import Config
from ..control.ssh import SSH, target_for
from ..errors import PartialFailure, ResilienceError, UsageError
from ..evidence import Ledger
from ..repository.repo import iter_tree
from ..targets.files import apply_member, content_digest, list_member, plan_member
from .repository import opened


def restore_site(cfg: Config, ledger: Ledger, site_name: str, *, snapshot: str = "latest",
                 hosts: list[str] | None = None, files: bool = True, database: bool = True,
                 target: str = "scratch", dry_run: bool = False,
                 confirm: Callable[[str], bool] | None = None, check_members: bool = True) -> dict[str, Any]:
    """Restore ``site_name`` from ``snapshot``: files onto ``hosts`` (default: every member),
    the database into scratch or live. ``confirm(question)`` is asked before anything live
    changes (not in dry runs); it returning False aborts with nothing changed.
    ``check_members=False`` skips the direct HTTP checks of the restored members (for a
    quarantined member, which only the ops host's SSH reaches; its rejoin checks it)."""
    site = cfg.site(site_name)
    if files and site.files is None:
        files = False
    if database and site.database is None:
        database = False
    if not files and not database:
        raise UsageError(f"site {site_name!r}: nothing to restore (no files or database section)")
    members = hosts or (site.files.hosts if site.files else [])
    if files:
        unknown = [h for h in members if h not in site.files.hosts]
        if unknown:
            raise UsageError(f"{', '.join(unknown)}: not a member of site {site_name!r} "
                             f"(members: {', '.join(site.files.hosts)})")
        if "localhost" in members:
            raise UsageError("a localhost site is restored with --to DIR")
    result: dict[str, Any] = {"site": site_name, "dry_run": dry_run, "members": {}, "checks": {}}
    run = ledger.start_run("restore-site", {"site": site_name, "snapshot": snapshot, "hosts": members,
                                            "files": files, "database": database, "target": target},
                           dry_run=dry_run)
    result["run"] = run.id  # callers (runbooks, drills) link to this run
    with run, opened(cfg) as repo, SSH() as ssh, ThreadPoolExecutor(len(members) + 1) as pool:
        chosen = resolve_snapshots(repo, site_name, snapshot, kinds=[k for k, on in (("files", files),
                                                                                   ("database", database)) if on])
        if files:
            snap = chosen["files"]
            result.update(snapshot=snap.id, short_id=snap.short_id, snapshot_time=snap.time)
            plans = {}
            targets = {host: target_for(cfg, host) for host in members}
            # The index and the snapshot's trees are read while the members are listed (the
            # listings wait on the network and the members).
            listings = {host: pool.submit(list_member, ssh, t, site.files.path) for host, t in targets.items()}
            repo.load_index()
            items = list(iter_tree(repo, snap.tree))
            for host in members:
                t = targets[host]
                with run.step("plan files", host=host) as step:
                    plan, items = plan_member(repo, snap, ssh, t, site.files.path, site.files.exclude,
                                              items=items, current=listings[host].result())
                    plans[host] = (t, plan, items)
                    shown = plan.as_dict()
                    step.details.update({k: v for k, v in shown.items() if k not in ("send", "remove")})
                    step.details.update(remove=shown["remove"][:50], send=shown["send"][:50])
                result["members"][host] = shown
            if not dry_run:
                changing = [h for h, (_t, p, _i) in plans.items() if not p.in_sync]
                if changing and confirm is not None and not confirm(
                        f"restore snapshot {snap.short_id} onto {', '.join(changing)}:{site.files.path}?"):
                    raise UsageError("restore cancelled; nothing was changed")
                failed = []
                for host, (t, plan, items) in plans.items():
                    if plan.in_sync:
                        result["members"][host]["applied"] = False
                        continue
                    try:
                        with run.step("restore files", host=host) as step:
                            timing, listing = apply_member(repo, snap, ssh, t, site.files.path, plan, items)
                            # Files proven equal before keep their inodes through the staging
                            # copy: only what was sent is hashed again.
                            after, _ = plan_member(repo, snap, ssh, t, site.files.path, site.files.exclude,
                                                   trusted=plan.proven, items=items, listing=listing,
                                                   sent=set(plan.send))
                            step.details.update(added=plan.added, changed=plan.changed, removed=plan.removed,
                                                verified=after.in_sync, verified_by_sha256=after.hashed,
                                                verified_by_metadata=after.checked_by_metadata, snapshot=snap.id,
                                                content_sha256=content_digest(items), **timing)
                            if not after.in_sync:
                                raise ResilienceError(f"{host}: still differs from the snapshot after the restore "
                                                      f"({len(after.send)} to send, {len(after.remove)} to remove)")
                        result["members"][host].update(applied=True, verified=True,
                                                       content_sha256=content_digest(items), **timing)
                    except ResilienceError as exc:
                        result["members"][host].update(applied=False, error=exc.message)
                        failed.append(host)
                if failed and len(failed) == len(plans):
                    raise ResilienceError("; ".join(f"{h}: {result['members'][h]['error']}" for h in failed),
                                          details=result)
                result["failed_members"] = failed
        if not repo.index_loaded:
            repo.load_index()
        if database:
            result["database"] = _restore_database(cfg, repo, site, chosen["database"], target, dry_run, run,
                                                   confirm)
        if not dry_run:
            result["checks"] = check_site(cfg, site, members if files and check_members else [], run)
    failed_checks = [r for rs in result["checks"].values() for r in rs if not r["ok"]]
    if result.get("failed_members") or failed_checks:
        raise PartialFailure(
            "restore finished with problems: "
            + "; ".join([f"{h}: failed" for h in result.get("failed_members", [])]
                        + [f"check {r['url']}: {r['error']}" for r in failed_checks]),
            details=result)
    return result


def check_site(cfg: Config, site, members: list[str], run, checks=None) -> dict[str, list[dict[str, Any]]]:
    """Run ``checks`` (default: the site's own) through the balancer and directly on each of
    ``members``, each as a recorded step; returns {"balancer" | host: [check results]}."""
    checks = site.checks if checks is None else checks
    out: dict[str, list[dict[str, Any]]] = {}
    if site.url:
        with run.step("check site through the balancer") as step:
            res = [r.as_dict() for r in run_checks(site.url, checks, retries=6, delay=0.5)]
            step.details["results"] = res
            step.outcome = "ok" if all(r["ok"] for r in res) else "failed"
        out["balancer"] = res
    for host in members:
        t = target_for(cfg, host)
        with run.step("check member", host=host) as step:
            res = [r.as_dict() for r in run_checks(f"http://{t.address}", checks, retries=2)]
            step.details["results"] = res
            step.outcome = "ok" if all(r["ok"] for r in res) else "failed"
        out[host] = res
    return out


def resolve_snapshots(repo, site_name: str, ref: str, kinds: list[str]) -> dict[str, Any]:
    """The snapshot of each kind to restore. ``latest`` is the newest of each kind; an id
    names one snapshot, and the other kinds come from the same backup run."""
    if ref == "latest":
        return {k: repo.find_snapshot("latest", site=site_name, kind=k) for k in kinds}
    named = repo.find_snapshot(ref, site=site_name)
    out = {named.kind: named}
    run_id = named.meta.get("backup_run")
    for k in kinds:
        if k in out:
            continue
        mates = [s for s in repo.snapshots(site=site_name) if s.kind == k and run_id and s.meta.get("backup_run") == run_id]
        if not mates:
            raise UsageError(f"snapshot {named.short_id} is a {named.kind} snapshot and its backup run has no {k} "
                             f"snapshot; give the {k} snapshot's id, or --{'database' if k == 'files' else 'files'}-only")
        out[k] = mates[-1]
    return {k: out[k] for k in kinds}


def _restore_database(cfg: Config, repo, site, snap, target: str, dry_run: bool, run, confirm) -> dict[str, Any]:
    from ..inventory import load_inventory
    from ..targets.postgres import restore_database

    address = load_inventory(cfg.inventory).address(site.database.host) if cfg.inventory else site.database.host
    if target == "live" and not dry_run and confirm is not None and not confirm(
            f"replace the live database {site.database.name!r} on {site.database.host} with snapshot {snap.short_id}?"):
        raise UsageError("database restore cancelled; nothing was changed")
    return restore_database(repo, snap, site.database, address, target=target, dry_run=dry_run, run=run)
