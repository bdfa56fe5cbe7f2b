"""Read-only views of snapshots: list, ls, diff."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

from ..errors import UsageError
from ..repository.repo import Repository, iter_tree
from ..repository.snapshot import Snapshot
from ..repository.tree import DIR, get_bytes, node_name


def show_path(path: bytes) -> str:
    """A path for display: UTF-8 where possible, ``\\xNN`` escapes for other bytes."""
    return path.decode("utf-8", "backslashreplace")


def node_info(path: bytes, node: dict[str, Any]) -> dict[str, Any]:
    info = {"path": show_path(path), "type": node["type"], "mode": oct(node.get("mode", 0)),
            "uid": node.get("uid"), "gid": node.get("gid"), "user": node.get("user"), "group": node.get("group"),
            "size": node.get("size"), "mtime_ns": node.get("mtime_ns")}
    target = get_bytes(node, "target")
    if target is not None:
        info["target"] = show_path(target)
    return info


def ls(repo: Repository, snap: Snapshot, path: str | None = None) -> list[dict[str, Any]]:
    """Every entry at or below ``path`` (all entries when None)."""
    want = os.fsencode(path.strip("/")) if path and path.strip("/") else b""
    out = []
    for p, node in iter_tree(repo, snap.tree):
        if not want or p == want or p.startswith(want + b"/"):
            out.append(node_info(p, node))
    if want and not out:
        raise UsageError(f"{path}: not in snapshot {snap.short_id}")
    return out


_META = ("mode", "uid", "gid", "mtime_ns", "xattrs", "target", "target_b64", "rdev")


def _walk_pair(repo: Repository, a: str | None, b: str | None, prefix: bytes) -> Iterator[tuple[str, bytes]]:
    if a == b:
        return
    na = {node_name(n): n for n in repo.tree(a)} if a else {}
    nb = {node_name(n): n for n in repo.tree(b)} if b else {}
    for name in sorted(set(na) | set(nb)):
        path = prefix + name
        x, y = na.get(name), nb.get(name)
        if x is None:
            yield "+", path
            if y["type"] == DIR:
                yield from _walk_pair(repo, None, y.get("subtree"), path + b"/")
        elif y is None:
            yield "-", path
            if x["type"] == DIR:
                yield from _walk_pair(repo, x.get("subtree"), None, path + b"/")
        elif x["type"] != y["type"]:
            yield "T", path
            yield from _walk_pair(repo, x.get("subtree") if x["type"] == DIR else None,
                                  y.get("subtree") if y["type"] == DIR else None, path + b"/")
        elif x["type"] == DIR:
            if any(x.get(k) != y.get(k) for k in _META):
                yield "U", path
            yield from _walk_pair(repo, x.get("subtree"), y.get("subtree"), path + b"/")
        elif x.get("content") != y.get("content") or x.get("size") != y.get("size"):
            yield "M", path
        elif any(x.get(k) != y.get(k) for k in _META):
            yield "U", path


def diff(repo: Repository, a: Snapshot, b: Snapshot) -> dict[str, list[str]]:
    """Paths added, removed, changed (content or type) and with only metadata changed."""
    out: dict[str, list[str]] = {"added": [], "removed": [], "changed": [], "metadata": []}
    names = {"+": "added", "-": "removed", "M": "changed", "T": "changed", "U": "metadata"}
    for mark, path in _walk_pair(repo, a.tree, b.tree, b""):
        out[names[mark]].append(show_path(path))
    return out
