"""Verify a repository: structure always, data on request.

Structure: every index file opens; every indexed pack exists with a plausible size; every
snapshot opens; every tree of every snapshot opens; every blob a file needs is indexed in a
pack that exists. ``read_data`` (all packs, or a random fraction) also downloads packs, checks
each against its name (sha256), compares its header with the index, and decrypts every blob
and re-computes its id — so any flipped bit or truncation is found.

Damage is reported per snapshot with the files it affects.
"""

from __future__ import annotations

import hashlib
import math
import random
from dataclasses import dataclass, field
from typing import Any

from ..errors import DamagedError
from .blob import TREE, open_blob
from .crypto import DecryptError
from .pack import pack_name, parse_header
from .repo import Repository
from .snapshot import Snapshot
from .store import NotFound
from .tree import DIR, FILE, content_ids, node_name


@dataclass
class VerifyReport:
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    snapshots: int = 0
    packs: int = 0
    packs_read: int = 0
    blobs_read: int = 0
    bytes_read: int = 0
    damaged: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.errors and not self.damaged

    def as_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "errors": self.errors, "warnings": self.warnings, "snapshots": self.snapshots,
                "packs": self.packs, "packs_read": self.packs_read, "blobs_read": self.blobs_read,
                "bytes_read": self.bytes_read, "damaged_snapshots": self.damaged}


def verify(repo: Repository, *, read_data: float = 0.0, rng: random.Random | None = None,
           progress=None) -> VerifyReport:
    """Check the repository; ``read_data`` is the fraction of packs to read fully (0 … 1)."""
    rep = VerifyReport()
    rep.errors.extend(repo.load_index())
    stored = {name.rsplit("/", 1)[-1]: size for name, size in repo.store.list("data")}
    rep.packs = len(repo.index.packs)
    bad_blobs: dict[bytes, str] = {}

    for pack_id in repo.index.packs:
        entries = list(repo.index.pack_entries(pack_id))
        if pack_id not in stored:
            rep.errors.append(f"pack {pack_id[:16]} is missing")
            for bid, _ in entries:
                bad_blobs[bid] = f"its pack {pack_id[:16]} is missing"
            continue
        end = max((loc.offset + loc.length for _, loc in entries), default=0)
        if end + 4 > stored[pack_id]:
            rep.errors.append(f"pack {pack_id[:16]} is truncated ({stored[pack_id]} bytes)")
            for bid, loc in entries:
                if loc.offset + loc.length > stored[pack_id]:
                    bad_blobs[bid] = f"its pack {pack_id[:16]} is truncated"
    orphans = [p for p in stored if p not in repo.index.packs]
    if orphans:
        rep.warnings.append(f"{len(orphans)} pack(s) are in no index (an interrupted backup); "
                            "the next backup adopts them, prune removes unused ones")

    if read_data > 0:
        present = sorted(p for p in repo.index.packs if p in stored)
        count = len(present) if read_data >= 1 else math.ceil(len(present) * read_data)
        chosen = present if read_data >= 1 else (rng or random.Random()).sample(present, min(count, len(present)))

        def check_pack(pack_id: str) -> tuple[str, list[str], dict[bytes, str], int, int]:
            errs: list[str] = []
            bad: dict[bytes, str] = {}
            try:
                data = repo.store.get(pack_name(pack_id))
            except NotFound:
                return pack_id, [f"pack {pack_id[:16]} vanished"], {}, 0, 0
            n = 0
            if hashlib.sha256(data).hexdigest() != pack_id:
                errs.append(f"pack {pack_id[:16]}: content does not match its name (damaged)")
            try:
                header = {e.id: e for e in parse_header(repo.key, data, len(data))}
            except (DecryptError, ValueError) as exc:
                errs.append(f"pack {pack_id[:16]}: header unreadable: {exc}")
                header = {}
            for bid, loc in repo.index.pack_entries(pack_id):
                h = header.get(bid)
                if header and (h is None or (h.offset, h.length) != (loc.offset, loc.length)):
                    errs.append(f"pack {pack_id[:16]}: header disagrees with the index for blob {bid.hex()[:16]}")
                sealed = memoryview(data)[loc.offset:loc.offset + loc.length]
                try:
                    plain = open_blob(repo.key, loc.kind, bid, sealed, loc.raw_length)
                    if repo.key.blob_id(plain) != bid:
                        raise ValueError("content does not match its id")
                    n += 1
                except (DecryptError, ValueError) as exc:
                    bad[bid] = f"blob {bid.hex()[:16]} in pack {pack_id[:16]} is damaged ({exc})"
            return pack_id, errs, bad, n, len(data)

        for _pid, errs, bad, n, nbytes in repo.pool.map(check_pack, chosen):
            rep.errors.extend(errs)
            bad_blobs.update(bad)
            rep.packs_read += 1
            rep.blobs_read += n
            rep.bytes_read += nbytes
            if progress is not None:
                progress.add(1, nbytes)

    snap_errors: list[str] = []
    snaps = repo.snapshots(errors=snap_errors)
    rep.errors.extend(snap_errors)
    rep.snapshots = len(snaps) + len(snap_errors)
    memo: dict[str, list[tuple[str, str]]] = {}
    for snap in snaps:
        problems = _check_tree(repo, snap.tree, "", memo, bad_blobs)
        if problems:
            rep.damaged[snap.id] = _describe(snap, problems)
    if bad_blobs and not rep.damaged:
        rep.warnings.append(f"{len(bad_blobs)} damaged blob(s) are used by no snapshot")
        rep.errors.extend(sorted(set(bad_blobs.values()))[:20])
    return rep


def _describe(snap: Snapshot, problems: list[tuple[str, str]]) -> dict[str, Any]:
    return {"site": snap.site, "time": snap.time, "short_id": snap.short_id,
            "files": sorted({p for p, _ in problems}), "problems": [f"{p}: {why}" for p, why in problems[:200]]}


def _check_tree(repo: Repository, tree_id: str, prefix: str, memo: dict[str, list[tuple[str, str]]],
                bad: dict[bytes, str]) -> list[tuple[str, str]]:
    """Problems below ``tree_id`` as (path relative to the tree, reason); memoised per tree."""
    if tree_id in memo:
        return [(prefix + p, why) for p, why in memo[tree_id]]
    found: list[tuple[str, str]] = []
    try:
        bid = bytes.fromhex(tree_id)
        if bid in bad:
            raise DamagedError(bad[bid])
        loc = repo.index.get(bid)
        if loc is not None and loc.kind != TREE:
            raise DamagedError("not a tree")
        nodes = repo.tree(tree_id)
    except (DamagedError, ValueError) as exc:
        found.append((".", f"folder listing unreadable: {exc}"))
        memo[tree_id] = found
        return [(prefix + p, why) for p, why in found]
    for node in nodes:
        name = node_name(node).decode("utf-8", "backslashreplace")
        if node["type"] == DIR and node.get("subtree"):
            found.extend((f"{name}/{p}" if p != "." else name, why)
                         for p, why in _check_tree(repo, node["subtree"], "", memo, bad))
        elif node["type"] == FILE:
            for cid in content_ids(node):
                if cid in bad:
                    found.append((name, bad[cid]))
                    break
                if cid not in repo.index:
                    found.append((name, f"blob {cid.hex()[:16]} is not in any index"))
                    break
    memo[tree_id] = found
    return [(prefix + p, why) for p, why in found]
