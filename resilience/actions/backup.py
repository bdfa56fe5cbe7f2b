"""``resilience backup``: back up sites into the repository, recorded in the evidence ledger."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from ..config import Config, SiteConfig
from ..control.ssh import SSH, target_for
from ..errors import ExitCode, ResilienceError, TemporaryError
from ..evidence import Ledger
from ..inventory import load_inventory
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
        source = RemoteSource(ssh, target_for(cfg, host), files.path, files.exclude)
        try:
            reason = source.connect()
        except ResilienceError as exc:
            if "host key" in str(exc):
                # A changed host key may mean an impostor: never silently move on to the next.
                raise ResilienceError(f"site {site_name!r}: {exc}") from None
            raise
        if reason is None:
            return source, tried
        tried.append({"host": host, "error": reason})
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


def backup(cfg: Config, ledger: Ledger, sites: list[str], *, dry_run: bool = False, files: bool = True,
           database: bool = True, progress: Callable[[Progress], Any] | None = None
           ) -> tuple[list[dict[str, Any]], int]:
    """Back up ``sites`` (their files and/or databases) as one recorded run; returns (one
    result per site, exit code). Exit 3 when some sites, files or copies failed while others
    succeeded; raises when the repository cannot be used at all or the only site failed."""
    for name in sites:
        cfg.site(name)
    results: list[dict[str, Any]] = []
    run = ledger.start_run("backup", {"sites": sites, "files": files, "database": database,
                                      "repository": cfg.repository.url if cfg.repository else None},
                           dry_run=dry_run)
    with run, SSH() as ssh, _early_listing(cfg, sites, files, ssh) as early, opened(cfg) as repo:
        run.details["repository_id"] = repo.id
        new: list[Snapshot] = []
        for name in sites:
            site = cfg.site(name)
            result: dict[str, Any] = {"site": name, "ok": True}
            results.append(result)
            parts = [p for p, wanted, there in (("files", files, site.files), ("database", database, site.database))
                     if wanted and there is not None]
            if not parts:
                result.update(ok=False, skipped="nothing to back up (no matching files or database section)")
                continue
            for part in parts:
                try:
                    if part == "files":
                        snap = _backup_files(cfg, repo, ssh, run, name, site, dry_run, progress, result,
                                             early.pop(name, None))
                    else:
                        snap = _backup_database(cfg, repo, run, name, site, dry_run, progress, result)
                    if snap is not None:
                        new.append(snap)
                except ResilienceError as exc:
                    result["ok"] = False
                    result.setdefault("errors_by_part", {})[part] = exc.message
                    result["error"] = "; ".join(f"{k}: {v}" for k, v in result["errors_by_part"].items())
                    if len(sites) == 1 and len(parts) == 1:
                        raise
        if new and not dry_run and cfg.repository and cfg.repository.copies:
            copies = copy_to_all(cfg, repo, new, run)
            for r in results:
                r["copies"] = copies
    attempted = [r for r in results if "skipped" not in r]
    failed = [r for r in attempted if not r["ok"]]
    copy_failed = any(not c["ok"] for r in results for c in r.get("copies", []))
    saved_any = any("snapshot" in r or "snapshot" in r.get("database", {}) for r in attempted)
    if attempted and not saved_any and not dry_run:
        # Nothing at all was saved: that is a failure, not a partial success.
        raise ResilienceError(
            "backup failed: " + "; ".join(f"{r['site']}: {r.get('error', 'errors')}" for r in failed),
            details={"results": results})
    code = ExitCode.PARTIAL if failed or copy_failed else ExitCode.OK
    return results, code


@contextlib.contextmanager
def _early_listing(cfg: Config, sites: list[str], files: bool, ssh: SSH):
    """Start choosing the first site's member (its listing) while the repository opens: the
    listing waits on the network and the member, the key derivation on this CPU. Yields
    {site: future of files_source()}."""
    first = next((n for n in sites if files and cfg.site(n).files is not None), None)
    if first is None:
        yield {}
        return
    pool = ThreadPoolExecutor(1, thread_name_prefix="listing")
    early = {first: pool.submit(files_source, cfg, first, cfg.site(first), ssh)}
    try:
        yield early
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _backup_files(cfg: Config, repo: Repository, ssh: SSH, run, name: str, site: SiteConfig, dry_run: bool,
                  progress, result: dict[str, Any], early: Future | None = None) -> Snapshot | None:
    """One site's files; fills ``result`` (file figures at its top level) and returns the snapshot."""
    with run.step(f"backup files of {name}", host=",".join(site.files.hosts)) as step:
        source, tried = early.result() if early is not None else files_source(cfg, name, site, ssh)
        if tried:
            step.details["members_unreachable"] = tried
            result["members_unreachable"] = tried
        parent = find_parent(repo, name, source)
        prog = Progress()
        engine = Backup(repo, source, site=name, parent=parent, dry_run=dry_run, progress=prog,
                        meta={"backup_run": run.id})
        ui = progress(prog) if progress else None
        try:
            try:
                snap, stats = engine.run()
            except ParentDamaged as exc:
                # Never let a damaged old snapshot block new backups: read everything.
                step.details["parent_unreadable"] = exc.message
                source, _ = files_source(cfg, name, site, ssh)
                parent = None
                engine = Backup(repo, source, site=name, dry_run=dry_run, progress=prog,
                                meta={"backup_run": run.id})
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
        member = source.describe().get("host")
        result["member"] = member
        if hasattr(source, "bytes_received"):
            result["bytes_transferred"] = source.bytes_received
        step.details.update({k: v for k, v in summary.items() if k not in ("warnings", "errors")})
        step.details.update(snapshot=result.get("snapshot"), parent=result["parent"], member=member,
                            bytes_transferred=result.get("bytes_transferred"),
                            warnings=stats.warnings[:50], errors=stats.errors[:50])
        if stats.errors:
            result["ok"] = False
            step.outcome = "partial"
    return snap


def _backup_database(cfg: Config, repo: Repository, run, name: str, site: SiteConfig, dry_run: bool, progress,
                     result: dict[str, Any]) -> Snapshot | None:
    """One site's database (see resilience/sources/postgres.py); fills ``result["database"]``."""
    from ..sources.postgres import dump_source

    db = site.database
    address = load_inventory(cfg.inventory).address(db.host) if cfg.inventory else db.host
    out: dict[str, Any] = {"database": db.name, "host": db.host}
    result["database"] = out
    dump = dump_source(name, db, address, run=run)
    if dry_run:
        # A dry run connects and counts; it does not read the whole dump.
        dump.close()
        out.update(dry_run=True, tables=len(dump.meta.get("row_counts", {})),
                   rows=sum(dump.meta.get("row_counts", {}).values()))
        return None
    try:
        with run.step(f"store database {db.name} of {name}", host=db.host) as step:
            prog = Progress()
            engine = Backup(repo, dump.source, site=name, kind="database", dry_run=dry_run, progress=prog,
                            meta={**dump.meta, "backup_run": run.id})
            ui = progress(prog) if progress else None
            try:
                snap, stats = engine.run()
            finally:
                if ui is not None:
                    ui.close()
            out.update(bytes_read=stats.bytes_read, bytes_added=stats.bytes_added, bytes_stored=stats.bytes_stored,
                       duration_s=stats.duration_s, tables=len(dump.meta.get("row_counts", {})),
                       rows=sum(dump.meta.get("row_counts", {}).values()))
            if snap is not None:
                out.update(snapshot=snap.id, short_id=snap.short_id)
            step.details.update(out)
    finally:
        dump.close()
    return snap
