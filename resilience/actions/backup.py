"""``resilience backup``: back up sites into the repository, recorded in the evidence ledger."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..config import Config, SiteConfig
from ..control.ssh import SSH, target_for
from ..errors import ExitCode, PartialFailure, ResilienceError, TemporaryError
from ..evidence import Ledger
from ..repository.backup import Backup, Progress
from ..repository.parent import ParentDamaged
from ..repository.repo import Repository
from ..repository.snapshot import Snapshot
from ..sources.base import Source
from ..sources.local import LocalSource
from ..sources.remote import RemoteSource
from .copy import copy_to_all
from .repository import opened


def files_source(cfg: Config, site_name: str, site: SiteConfig, ssh: SSH) -> tuple[Source, list[dict[str, Any]]]:
    """The Source for a site's files: the first member that answers, in the order of
    ``files.hosts`` (``localhost`` = this machine). Returns (source, members tried)."""
    files = site.files
    assert files is not None
    tried: list[dict[str, Any]] = []
    for host in files.hosts:
        if host == "localhost":
            return LocalSource(files.path, files.exclude), tried
        target = target_for(cfg, host)
        reason = ssh.reachable(target)
        if reason is None:
            return RemoteSource(ssh, target, files.path, files.exclude), tried
        tried.append({"host": host, "error": reason})
        if reason.startswith("host key"):
            # A changed host key may mean an impostor: never silently move on to the next.
            raise ResilienceError(f"site {site_name!r}: {host}: {reason}")
    raise TemporaryError(f"site {site_name!r}: no member reachable: "
                         + "; ".join(f"{t['host']}: {t['error']}" for t in tried))


def find_parent(repo: Repository, site: str, source: Source) -> Snapshot | None:
    """The latest snapshot of the same site, kind and source path, preferring one taken from
    the same host (inode numbers only match there), for change detection."""
    desc = source.describe()
    same = [s for s in repo.snapshots(site=site)
            if s.kind == desc["kind"] and s.source.get("path") == desc.get("path")]
    for snap in reversed(same):
        if snap.source.get("host") == desc.get("host"):
            return snap
    return same[-1] if same else None


def backup(cfg: Config, ledger: Ledger, sites: list[str], *, dry_run: bool = False,
           progress: Callable[[Progress], Any] | None = None) -> tuple[list[dict[str, Any]], int]:
    """Back up ``sites``; returns (one result per site, exit code). Exit 3 when some sites or
    files failed while others succeeded; raises when the repository cannot be used at all."""
    for name in sites:
        cfg.site(name)
    results: list[dict[str, Any]] = []
    run = ledger.start_run("backup", {"sites": sites, "repository": cfg.repository.url if cfg.repository else None},
                           dry_run=dry_run)
    with run, opened(cfg) as repo, SSH() as ssh:
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
                    source, tried = files_source(cfg, name, site, ssh)
                    if tried:
                        step.details["members_unreachable"] = tried
                        result["members_unreachable"] = tried
                    parent = find_parent(repo, name, source)
                    prog = Progress()
                    engine = Backup(repo, source, site=name, parent=parent, dry_run=dry_run, progress=prog)
                    ui = progress(prog) if progress else None
                    try:
                        try:
                            snap, stats = engine.run()
                        except ParentDamaged as exc:
                            # Never let a damaged old snapshot block new backups: read everything.
                            step.details["parent_unreadable"] = exc.message
                            source, _ = files_source(cfg, name, site, ssh)
                            parent = None
                            engine = Backup(repo, source, site=name, dry_run=dry_run, progress=prog)
                            snap, stats = engine.run()
                            stats.warnings.append(exc.message + "; backed up without it")
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
                    member = source.describe().get("host")
                    result["member"] = member
                    if hasattr(source, "bytes_received"):
                        result["bytes_transferred"] = source.bytes_received
                    step.details.update(snapshot=result.get("snapshot"), parent=result["parent"], member=member,
                                        bytes_transferred=result.get("bytes_transferred"),
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
