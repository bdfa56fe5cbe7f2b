"""Repository care: init, verify, forget (+prune), unlock — each a recorded run."""

from __future__ import annotations

import random
from collections import defaultdict
from typing import Any

from ..config import Config
from ..errors import ExitCode
from ..evidence import Ledger
from ..repository.check import verify as verify_repo
from ..repository.lock import remove_stale
from ..repository.prune import prune
from ..repository.retention import Policy, select
from .repository import init_repository, opened, repository_config, store_for


def init(cfg: Config, ledger: Ledger) -> dict[str, Any]:
    """Create the configured repository; refuses an existing one."""
    rc = repository_config(cfg)
    with ledger.start_run("init", {"repository": rc.url}) as run, run.step("create repository") as step:
        repo = init_repository(cfg)
        step.details.update(repository_id=repo.id, url=rc.url)
        repo.close()
    return {"repository": rc.url, "id": repo.id}


def verify(cfg: Config, ledger: Ledger, *, read_data: float = 0.0, seed: int | None = None) -> tuple[dict[str, Any], int]:
    """Verify; returns (report, exit code 0 or 4)."""
    run = ledger.start_run("verify", {"read_data": read_data})
    with run, opened(cfg) as repo:
        with run.step("verify repository") as step:
            rep = verify_repo(repo, read_data=read_data, rng=random.Random(seed) if seed is not None else None)
            data = rep.as_dict() | {"repository": repo.store.url, "read_data": read_data}
            step.details.update({k: v for k, v in data.items() if k != "damaged_snapshots"})
            step.details["damaged_snapshots"] = sorted(rep.damaged)
            if not rep.ok:
                step.outcome = "failed"
        run.outcome = "ok" if rep.ok else "failed"
    return data, ExitCode.OK if rep.ok else ExitCode.DAMAGED


def forget(cfg: Config, ledger: Ledger, policy: Policy, *, site: str | None = None, do_prune: bool = False,
           dry_run: bool = False) -> dict[str, Any]:
    """Apply ``policy`` per (site, kind) group; optionally prune. Exclusive lock unless dry run."""
    if site is not None:
        cfg.site(site)
    run = ledger.start_run("forget", {"site": site, "policy": policy.as_dict(), "prune": do_prune}, dry_run=dry_run)
    with run, opened(cfg, lock="shared" if dry_run else "exclusive") as repo:
        groups: dict[tuple[str, str], list] = defaultdict(list)
        for snap in repo.snapshots(site=site):
            groups[(snap.site, snap.kind)].append(snap)
        out: dict[str, Any] = {"dry_run": dry_run, "groups": []}
        removed_total = 0
        for (gsite, kind), snaps in sorted(groups.items()):
            keep, remove, reasons = select(snaps, policy)
            with run.step(f"forget {gsite} {kind}") as step:
                if not dry_run:
                    for s in remove:
                        repo.store.delete(f"snapshots/{s.id}")
                step.details.update(kept=[s.id for s in keep], removed=[s.id for s in remove])
            removed_total += len(remove)
            out["groups"].append({
                "site": gsite, "kind": kind,
                "keep": [{"id": s.id, "short_id": s.short_id, "time": s.time, "reasons": reasons[s.id]} for s in keep],
                "remove": [{"id": s.id, "short_id": s.short_id, "time": s.time} for s in remove],
            })
        out["removed"] = removed_total
        if do_prune:
            with run.step("prune") as step:
                stats = prune(repo, dry_run=dry_run)
                step.details.update(stats.as_dict())
                out["prune"] = stats.as_dict()
    return out


def unlock(cfg: Config, ledger: Ledger) -> dict[str, Any]:
    """Remove provably stale locks only."""
    store = store_for(repository_config(cfg))
    with ledger.start_run("unlock", {"repository": store.url}) as run, run.step("remove stale locks") as step:
        removed, kept = remove_stale(store)
        step.details.update(removed=[lk.as_dict() for lk in removed], kept=[lk.as_dict() for lk in kept])
    return {"removed": [lk.as_dict() for lk in removed], "kept": [lk.as_dict() for lk in kept]}
