"""What the parent snapshot held, folder by folder — decoded only where something changed.

Change detection compares each entry's *stat key* ``(type, size, mtime ns, ctime ns, inode,
device)`` with the parent's. The keys come from the local stat cache (one small encrypted file
per site on the ops host, see statcache.py) when it matches the parent snapshot, so an
unchanged tree is compared without decoding a single tree blob; otherwise, and for folders
that did change, the parent's tree blobs are decoded as needed.
"""

from __future__ import annotations

from typing import Any

from ..errors import ResilienceError
from .repo import Repository
from .snapshot import Snapshot
from .tree import DIR, FILE, node_name

StatKey = tuple  # (type, size, mtime_ns, ctime_ns, inode, dev)
Cache = dict[bytes, tuple[str, dict[bytes, StatKey]]]


def stat_key(kind: str, size: int, mtime_ns: int, ctime_ns: int, inode: int, dev: int) -> StatKey:
    """The comparison key; size counts for files only (a folder's st_size is noise)."""
    return (kind, size if kind == FILE else 0, mtime_ns, ctime_ns, inode, dev)


def node_key(node: dict[str, Any]) -> StatKey:
    return stat_key(node["type"], node.get("size", 0), node.get("mtime_ns", 0), node.get("ctime_ns", 0),
                    node.get("inode", 0), node.get("dev", 0))


class ParentDamaged(ResilienceError):
    """The parent snapshot cannot be read; the backup must run without it."""


class ParentView:
    """Read-only access to the parent snapshot. A parent tree that cannot be read raises
    ParentDamaged; the caller then backs up without a parent (everything is read again)."""

    def __init__(self, repo: Repository, parent: Snapshot | None, cache: Cache | None = None,
                 before_read=None):
        self.repo = repo
        #: called before the first tree is read (the index may not be loaded yet)
        self.before_read = before_read
        self.parent = parent
        self.cache = cache
        self._nodes: dict[bytes, dict[bytes, dict[str, Any]]] = {}
        self._subtrees: dict[bytes, str | None] = {b"": parent.tree if parent else None}
        self.trees_decoded = 0

    def subtree(self, folder: bytes) -> str | None:
        """The parent's tree id of ``folder`` (None if it was not a folder there)."""
        if self.parent is None:
            return None
        if self.cache is not None:
            hit = self.cache.get(folder)
            return hit[0] if hit else None
        if folder not in self._subtrees:
            up, _, name = folder.rpartition(b"/")
            old = self.nodes(up).get(name)
            self._subtrees[folder] = old.get("subtree") if old and old.get("type") == DIR else None
        return self._subtrees[folder]

    def stats(self, folder: bytes) -> dict[bytes, StatKey]:
        """``{name: stat key}`` of the parent's entries in ``folder``."""
        if self.cache is not None:
            hit = self.cache.get(folder)
            return hit[1] if hit else {}
        return {name: node_key(n) for name, n in self.nodes(folder).items()}

    def nodes(self, folder: bytes) -> dict[bytes, dict[str, Any]]:
        """``{name: node}`` of the parent's entries in ``folder`` (decodes one tree blob)."""
        hit = self._nodes.get(folder)
        if hit is not None:
            return hit
        tid = self.subtree(folder)
        out: dict[bytes, dict[str, Any]] = {}
        if tid:
            if self.before_read is not None:
                self.before_read()
                self.before_read = None
            try:
                out = {node_name(n): n for n in self.repo.tree(tid)}
            except ResilienceError as exc:
                raise ParentDamaged(f"the parent snapshot {self.parent.short_id} is unreadable: {exc}") from None
            self.trees_decoded += 1
        self._nodes[folder] = out
        return out
