"""Helpers for tests: describe a folder tree completely, to compare a restore with its source."""

from __future__ import annotations

import hashlib
import os
import stat
from typing import Any


def describe(root: str | bytes, *, owners: bool = True, atime: bool = False) -> dict[bytes, dict[str, Any]]:
    """Every entry below ``root`` (relative byte paths) with type, mode, owner, mtime ns, size,
    content digest, link target, user xattrs and a hardlink group label."""
    root = os.fsencode(root)
    out: dict[bytes, dict[str, Any]] = {}
    inodes: dict[tuple[int, int], bytes] = {}

    def visit(rel: bytes) -> None:
        full = root + (b"/" + rel if rel else b"")
        st = os.lstat(full)
        d: dict[str, Any] = {"mode": stat.S_IMODE(st.st_mode), "fmt": stat.S_IFMT(st.st_mode)}
        if not stat.S_ISLNK(st.st_mode):
            d["mtime_ns"] = st.st_mtime_ns
        if owners:
            d["uid"], d["gid"] = st.st_uid, st.st_gid
        if stat.S_ISREG(st.st_mode):
            d["size"] = st.st_size
            with open(full, "rb") as f:
                d["sha256"] = hashlib.sha256(f.read()).hexdigest()
            if st.st_nlink > 1:
                d["link_group"] = inodes.setdefault((st.st_dev, st.st_ino), rel)
        elif stat.S_ISLNK(st.st_mode):
            d["target"] = os.readlink(full)
            d.pop("mode")  # symlink permission bits are meaningless on Linux
        if not stat.S_ISLNK(st.st_mode):
            try:
                d["xattrs"] = {n: os.getxattr(full, n) for n in sorted(os.listxattr(full)) if n.startswith("user.")}
            except OSError:
                d["xattrs"] = {}
        if rel:
            out[rel] = d
        if stat.S_ISDIR(st.st_mode):
            for name in sorted(os.listdir(full)):
                visit(rel + b"/" + name if rel else name)

    visit(b"")
    out[b"."] = {k: v for k, v in describe_root(root).items()}
    return out


def describe_root(root: bytes) -> dict[str, Any]:
    st = os.lstat(root)
    return {"mode": stat.S_IMODE(st.st_mode), "mtime_ns": st.st_mtime_ns}


def allocated(path: str | bytes) -> int:
    """Bytes actually allocated on disk (to check that sparse files stay sparse)."""
    return os.lstat(path).st_blocks * 512
