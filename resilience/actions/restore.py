"""``resilience restore --to DIR``: a site's files from a snapshot into a local folder."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..config import Config
from ..errors import UsageError
from ..evidence import Ledger
from ..repository.backup import Progress
from ..repository.restore import plan, restore_to
from ..sources.patterns import Matcher
from .repository import opened


def restore_to_dir(cfg: Config, ledger: Ledger, site: str, dest: Path, *, snapshot: str = "latest",
                   include: list[str] | None = None, dry_run: bool = False,
                   progress: Callable[[Progress], Any] | None = None) -> dict[str, Any]:
    """Restore ``site``'s files from ``snapshot`` into ``dest`` (new or empty folder).
    ``dest`` receives the tree of the site's files.path."""
    cfg.site(site)
    try:
        matcher = Matcher(include or [])
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    run = ledger.start_run("restore", {"site": site, "snapshot": snapshot, "to": str(dest), "include": include or []},
                           dry_run=dry_run)
    with run, opened(cfg) as repo:
        repo.load_index(strict=False)
        snap = repo.find_snapshot(snapshot, site=site, kind="files")
        result: dict[str, Any] = {"site": site, "snapshot": snap.id, "short_id": snap.short_id,
                                  "snapshot_time": snap.time, "to": str(dest), "dry_run": dry_run}
        with run.step("restore files", host="localhost") as step:
            if dry_run:
                items = plan(repo, snap, matcher or None)
                result.update(entries=len(items),
                              bytes=sum(int(n.get("size", 0)) for _, n in items if n["type"] == "file"))
            else:
                prog = Progress()
                prog.phase = "restoring"
                items = plan(repo, snap, matcher or None)
                prog.files_total = sum(1 for _, n in items if n["type"] == "file")
                prog.bytes_total = sum(int(n.get("size", 0)) for _, n in items if n["type"] == "file")
                ui = progress(prog) if progress else None
                try:
                    stats = restore_to(repo, snap, dest, include=matcher or None, progress=prog)
                finally:
                    if ui is not None:
                        ui.close()
                result.update(stats.as_dict())
            step.details.update({k: v for k, v in result.items() if k != "warnings"})
    return result
