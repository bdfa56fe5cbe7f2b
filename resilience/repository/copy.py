"""Copy snapshots into a second repository (the offsite copy), sending only what it lacks.

The destination shares the source's blob-id key and chunker parameters (it is created with
``Repository.init(..., like=source)``), so a blob has the same id in both and "what it lacks"
is a set difference on ids; its encryption key and password are its own. Blobs are decrypted
from the source and sealed again for the destination. Each copied snapshot records the id it
was copied from, so running copy again sends nothing.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from ..errors import UsageError
from .blob import DATA, TREE
from .repo import Repository
from .restore import PackFetcher
from .snapshot import Snapshot
from .tree import DIR, FILE, content_ids


@dataclass
class CopyStats:
    snapshots_copied: int = 0
    snapshots_present: int = 0
    blobs_sent: int = 0
    bytes_sent: int = 0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def check_compatible(src: Repository, dst: Repository) -> None:
    if src.key.mac != dst.key.mac or src.chunker_params != dst.chunker_params:
        raise UsageError(
            f"{dst.store.url} was not created as a copy of {src.store.url}: copy needs a destination "
            "that 'resilience copy' initialised itself (or an empty location)"
        )


def copy_snapshots(src: Repository, dst: Repository, snapshots: list[Snapshot], progress=None) -> CopyStats:
    """Copy ``snapshots`` that ``dst`` does not have yet. The caller holds shared locks on both."""
    check_compatible(src, dst)
    stats = CopyStats()
    if not src.index_loaded:
        src.load_index(strict=True)
    if not dst.index_loaded:
        dst.load_index()
    present = {s.meta.get("copied_from") or s.id for s in dst.snapshots()}
    fetcher = PackFetcher.for_repo(src)
    writer = dst.writer()
    todo = []
    try:
        for snap in snapshots:
            if snap.id in present:
                stats.snapshots_present += 1
                continue
            todo.append(snap)
            stack, seen = [snap.tree], set()
            while stack:
                tid = stack.pop()
                if tid in seen:
                    continue
                seen.add(tid)
                tbid = bytes.fromhex(tid)
                nodes = src.tree(tid)
                for node in nodes:
                    if node["type"] == DIR and node.get("subtree"):
                        stack.append(node["subtree"])
                    elif node["type"] == FILE:
                        for bid in content_ids(node):
                            if writer.claim(bid):
                                data = fetcher.fetch(bid, src.index.get(bid))
                                writer.add(DATA, bid, data)
                                stats.blobs_sent += 1
                                stats.bytes_sent += len(data)
                                if progress is not None:
                                    progress.add(0, len(data))
                if writer.claim(tbid):
                    data = src.read_blob(tbid, TREE)
                    writer.add(TREE, tbid, data)
                    stats.blobs_sent += 1
                    stats.bytes_sent += len(data)
        writer.flush()
    except BaseException:
        writer.abort()
        raise
    finally:
        fetcher.close()
    dst.save_index(writer.new_packs)
    for snap in todo:
        clone = Snapshot(**{k: v for k, v in asdict(snap).items() if k != "id"})
        clone.meta = dict(snap.meta, copied_from=snap.id)
        dst.save_snapshot(clone)
        stats.snapshots_copied += 1
    return stats
