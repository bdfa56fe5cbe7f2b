"""Trees: the metadata of one directory, stored as a blob of canonical JSON.

A tree is ``{"nodes": [NODE, …]}`` sorted by the raw bytes of the names. A NODE holds:

- ``name`` (UTF-8 text) or ``name_b64`` (any other byte string);
- ``type``: file, dir, symlink, fifo, chardev, blockdev, socket;
- ``mode`` (permission bits incl. setuid/setgid/sticky), ``uid``, ``gid``, ``user``, ``group``;
- ``mtime_ns``, ``ctime_ns``, ``inode``, ``dev``, ``nlink`` (for change detection and hardlinks);
- files: ``size`` and ``content``: a list of blob ids (hex) or ``{"zero": N}`` for a run of N
  zero bytes (restored as a hole: sparse files stay sparse);
- dirs: ``subtree`` (the tree blob id, hex); symlinks: ``target`` / ``target_b64``;
- devices: ``rdev``; any: ``xattrs`` {name: base64 value} (``user.*`` only).

Equal directories give equal tree blobs, so an unchanged subtree is stored once.
"""

from __future__ import annotations

import base64
import json
from typing import Any

FILE, DIR, SYMLINK, FIFO, CHARDEV, BLOCKDEV, SOCKET = (
    "file", "dir", "symlink", "fifo", "chardev", "blockdev", "socket")
TYPES = {FILE, DIR, SYMLINK, FIFO, CHARDEV, BLOCKDEV, SOCKET}


def set_bytes(node: dict[str, Any], key: str, value: bytes) -> None:
    """Store a byte string as text when it is valid UTF-8, else base64 under ``key_b64``."""
    try:
        node[key] = value.decode("utf-8")
    except UnicodeDecodeError:
        node[key + "_b64"] = base64.b64encode(value).decode()


def get_bytes(node: dict[str, Any], key: str) -> bytes | None:
    """Inverse of :func:`set_bytes`; None when the node has neither form."""
    if key in node:
        return node[key].encode("utf-8")
    if key + "_b64" in node:
        return base64.b64decode(node[key + "_b64"])
    return None


def node_name(node: dict[str, Any]) -> bytes:
    name = get_bytes(node, "name")
    if name is None:
        raise ValueError("node without a name")
    return name


def valid_name(name: bytes) -> bool:
    """A name that can only ever mean one entry inside its folder (restore relies on this)."""
    return bool(name) and name not in (b".", b"..") and b"/" not in name and b"\x00" not in name


def encode_tree(nodes: list[dict[str, Any]]) -> bytes:
    """Canonical JSON of a directory's nodes, sorted by raw name."""
    nodes = sorted(nodes, key=node_name)
    return json.dumps({"nodes": nodes}, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def decode_tree(raw: bytes) -> list[dict[str, Any]]:
    """Parse a tree blob; ValueError if it is malformed or holds an unsafe name."""
    try:
        doc = json.loads(raw)
        nodes = doc["nodes"]
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"malformed tree: {exc}") from None
    seen: set[bytes] = set()
    for n in nodes:
        if not isinstance(n, dict) or n.get("type") not in TYPES:
            raise ValueError("tree holds an invalid node")
        name = node_name(n)
        if not valid_name(name) or name in seen:
            raise ValueError("tree holds an invalid or duplicate name")
        seen.add(name)
    return nodes


def content_ids(node: dict[str, Any]) -> list[bytes]:
    """Blob ids of a file node's content (zero runs excluded)."""
    return [bytes.fromhex(c) for c in node.get("content", []) if isinstance(c, str)]
