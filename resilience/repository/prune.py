"""Prune: remove data no snapshot uses any more. Runs under an exclusive lock.

1. Mark every blob reachable from a snapshot (trees and file content).
2. Packs with no used blob are deleted; packs whose unused part exceeds ``repack_ratio``
   have their used blobs copied (still sealed: no decryption needed) into new packs.
3. One new index file lists every remaining pack and *supersedes* all previous index files;
   only after it is stored are the old index files and the obsolete packs deleted.
A crash at any point leaves a valid repository: before step 3 the old index still rules;
after it, leftover obsolete packs are merely unreferenced and the next prune removes them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from .pack import PackBuilder, PackedBlob, pack_name
from .repo import Repository
from .store import LocalStore, NotFound
from .tree import DIR, FILE, content_ids


@dataclass
class PruneStats:
    packs_deleted: int = 0
    packs_repacked: int = 0
    packs_written: int = 0
    blobs_removed: int = 0
    bytes_freed: int = 0
    index_files_replaced: int = 0
    dry_run: bool = False

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def used_blobs(repo: Repository) -> set[bytes]:
    """Every blob id reachable from any snapshot."""
    used: set[bytes] = set()
    seen_trees: set[str] = set()
    stack = [s.tree for s in repo.snapshots()]
    while stack:
        tid = stack.pop()
        if tid in seen_trees:
            continue
        seen_trees.add(tid)
        used.add(bytes.fromhex(tid))
        for node in repo.tree(tid):
            if node["type"] == DIR and node.get("subtree"):
                stack.append(node["subtree"])
            elif node["type"] == FILE:
                used.update(content_ids(node))
    return used


def prune(repo: Repository, *, repack_ratio: float = 0.2, dry_run: bool = False) -> PruneStats:
    """Remove unused data. The caller holds an exclusive lock."""
    stats = PruneStats(dry_run=dry_run)
    repo.load_index(strict=True)
    used = used_blobs(repo)
    sizes = {name.rsplit("/", 1)[-1]: size for name, size in repo.store.list("data")}
    keep: dict[str, list[PackedBlob]] = {}
    delete: list[str] = []
    repack: list[str] = []
    for pack_id in list(repo.index.packs):
        entries = list(repo.index.pack_entries(pack_id))
        live = [(bid, loc) for bid, loc in entries if bid in used]
        total = sizes.get(pack_id, 0)
        live_bytes = sum(loc.length for _, loc in live)
        if not live:
            delete.append(pack_id)
            stats.blobs_removed += len(entries)
            stats.bytes_freed += total
        elif total and (total - live_bytes) / total > repack_ratio:
            repack.append(pack_id)
            stats.blobs_removed += len(entries) - len(live)
        else:
            keep[pack_id] = [PackedBlob(loc.kind, bid, loc.offset, loc.length, loc.raw_length) for bid, loc in live]
    # Packs on storage that no index knows (interrupted backups) are unused by definition.
    orphans = [p for p in sizes if p not in repo.index.packs]
    delete.extend(orphans)
    stats.bytes_freed += sum(sizes[p] for p in orphans)
    stats.packs_deleted = len(delete)
    stats.packs_repacked = len(repack)
    if dry_run:
        return stats

    builder = PackBuilder()
    moved: set[bytes] = set()

    def flush() -> None:
        if len(builder):
            pid, data, entries = builder.finish(repo.key)
            repo.store.put(pack_name(pid), data)
            keep[pid] = entries
            stats.packs_written += 1

    for pack_id in repack:
        data = repo.store.get(pack_name(pack_id))
        for bid, loc in repo.index.pack_entries(pack_id):
            if bid in used and bid not in moved:
                builder.add(loc.kind, bid, data[loc.offset:loc.offset + loc.length], loc.raw_length)
                moved.add(bid)
                if builder.size >= repo.pack_size:
                    flush()
                    builder = PackBuilder()
    flush()
    old_index = sorted(repo.index.files)
    repo.save_index(keep, supersedes=old_index)
    for oid in old_index:
        repo.store.delete(f"index/{oid}")
    stats.index_files_replaced = len(old_index)
    for pack_id in delete + repack:
        try:
            stats.bytes_freed += sizes.get(pack_id, 0) if pack_id in repack else 0
            repo.store.delete(pack_name(pack_id))
        except NotFound:
            pass
    if isinstance(repo.store, LocalStore):
        for tmp in repo.store.temporary_files():
            tmp.unlink(missing_ok=True)
    return stats
