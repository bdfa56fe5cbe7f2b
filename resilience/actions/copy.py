"""``resilience copy`` and the copies made after every backup (``repository.copies``)."""

from __future__ import annotations

from typing import Any

from ..config import Config, RepositoryCopy
from ..errors import ResilienceError, UsageError
from ..evidence.run import Run
from ..repository.copy import copy_snapshots
from ..repository.repo import Repository
from ..repository.snapshot import Snapshot
from .repository import init_repository, open_repository, password_for, store_for


def open_or_create_copy(cfg: Config, src: Repository, rc: RepositoryCopy) -> tuple[Repository, bool]:
    """Open the copy destination, creating it (sharing the source's blob ids) when the
    location is empty. Returns (repository, created)."""
    store = store_for(rc)
    try:
        store.create()
        exists = store.exists("config")
    except UsageError:
        raise
    if exists:
        return open_repository(cfg, rc), False
    password_for(cfg, rc)  # fail on a missing password before creating anything
    return init_repository(cfg, rc, like=src), True


def copy_to(cfg: Config, src: Repository, rc: RepositoryCopy, snapshots: list[Snapshot]) -> dict[str, Any]:
    """Copy ``snapshots`` to one destination under shared locks on both sides."""
    dst, created = open_or_create_copy(cfg, src, rc)
    try:
        with dst.lock():
            stats = copy_snapshots(src, dst, snapshots)
    finally:
        dst.close()
    return {"to": rc.url, "created": created, **stats.as_dict()}


def copy_to_all(cfg: Config, src: Repository, snapshots: list[Snapshot], run: Run) -> list[dict[str, Any]]:
    """Copy to every ``repository.copies`` entry, one recorded step each; failures are
    reported in the result (the backup itself stands)."""
    out = []
    for rc in cfg.repository.copies if cfg.repository else []:
        try:
            with run.step(f"copy to {rc.url}") as step:
                res = copy_to(cfg, src, rc, snapshots)
                step.details.update(res)
                out.append({"ok": True, **res})
        except ResilienceError as exc:
            out.append({"ok": False, "to": rc.url, "error": exc.message})
    return out
