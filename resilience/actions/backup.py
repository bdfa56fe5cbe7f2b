"""``resilience backup``: back up sites into the repository, recorded in the evidence ledger."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..config import Config, SiteConfig
from ..errors import ExitCode, PartialFailure, ResilienceError, UsageError
from ..evidence import Ledger
from ..repository.backup import Backup, Progress
from ..repository.repo import Repository
from ..repository.snapshot import Snapshot
from ..sources.base import Source
from ..sources.local import LocalSource
from .copy import copy_to_all
from .repository import opened


def files_source(site_name: str, site: SiteConfig) -> Source:
    """The Source for a site's files (local folder today; SSH members plug in here)."""
    files = site.files
    assert files is not None
    if files.hosts == ["localhost"]:
        return LocalSource(files.path, files.exclude)
    raise UsageError(f"site {site_name!r}: backing up files from remote hosts ({', '.join(files.hosts)}) "
                     "is not available yet; only 'localhost' sites can be backed up in this version")


def find_parent(repo: Repository, site: str, source: Source) -> Snapshot | None:
    """The latest snapshot of the same site, kind and source path (for change detection)."""
    desc = source.describe()
    for snap in reversed(repo.snapshots(site=site)):
        if snap.kind == desc["kind"] and snap.source.get("path") == desc.get("path"):
            return snap
    return None


def backup(cfg: Config, ledger: Ledger, sites: list[str], *, dry_run: bool = False,
           progress: Callable[[Progress], Any] | None = None) -> tuple[list[dict[str, Any]], int]:
    """Back up ``sites``; returns (one result per site, exit code). Exit 3 when some sites or
    files failed while others succeeded; raises when the repository cannot be used at all."""
    for name in sites:
        cfg.site(name)
    results: list[dict[str, Any]] = []
    run = ledger.start_run("backup", {"sites": sites, "repository": cfg.repository.url if cfg.repository else None},
                           dry_run=dry_run)
    with run, opened(cfg) as repo:
        run.details["repository_id"] = repo.id
        new: list[Snapshot] = []
        for name in sites:
            site = cfg.site(name)
            result: dict[str, Any] = {"site": name, "ok": False}
            results.append(result)
            if site.files is None:
                result["skipped"] = "the site has no files section"
                continue
            host = ",".join(site.files.hosts)
            try:
                with run.step(f"backup files of {name}", host=host) as step:
                    source = files_source(name, site)
                    parent = find_parent(repo, name, source)
                    prog = Progress()
                    engine = Backup(repo, source, site=name, parent=parent, dry_run=dry_run, progress=prog)
                    ui = progress(prog) if progress else None
                    try:
                        snap, stats = engine.run()
                    finally:
                        if ui is not None:
                            ui.close()
                    summary = stats.as_dict()
                    result.update(summary)
                    result["parent"] = parent.id if parent else None
                    if snap is not None:
                        result.update(snapshot=snap.id, short_id=snap.short_id)
                        new.append(snap)
                    step.details.update({k: v for k, v in summary.items() if k not in ("warnings", "errors")})
                    step.details.update(snapshot=result.get("snapshot"), parent=result["parent"],
                                        warnings=stats.warnings[:50], errors=stats.errors[:50])
                    result["ok"] = not stats.errors
                    if stats.errors:
                        step.outcome = "partial"
            except ResilienceError as exc:
                result["error"] = exc.message
                if len(sites) == 1:
                    raise
        if new and not dry_run and cfg.repository and cfg.repository.copies:
            copies = copy_to_all(cfg, repo, new, run)
            for r in results:
                r["copies"] = copies
    failed = [r for r in results if not r["ok"] and "skipped" not in r]
    copy_failed = any(not c["ok"] for r in results for c in r.get("copies", []))
    if failed and len(failed) == len([r for r in results if "skipped" not in r]) and len(sites) > 1:
        raise PartialFailure("every site failed: " + "; ".join(f"{r['site']}: {r.get('error', 'errors')}" for r in failed),
                             details={"results": results})
    code = ExitCode.PARTIAL if failed or copy_failed else ExitCode.OK
    return results, code
