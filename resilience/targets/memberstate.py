"""What resilience last proved about a member's files, so that the next comparison does not
hash them again.

A restore swaps in a staging copy made with hard links: every file keeps its content and
inode but its ctime moves (the link count changed). Without a record of that, the next
restore, integrity check or backup of the member would see 23k "possibly changed" files and
hash or re-read all of them. So whenever a file is proven equal to a snapshot's content (by
its stat key or by its sha256), its full stat key on the member is remembered: (inode, size,
mtime ns, ctime ns) → sha256. The kernel moves ctime on any change and nobody can set it
back (short of root moving the clock — the same trust the snapshot's own stat keys rely on),
so a file whose stat key still matches holds the content proven then.

Kept per (repository, host, path) in the state folder, authenticated with the repository's
MAC key (a record nobody else can forge); a missing, stale or damaged record only costs
hashing time.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from pathlib import Path
from typing import Any

from ..fsutil import atomic_write
from ..state import state_dir

Proof = tuple[int, int, int, int, str]  # inode, size, mtime ns, ctime ns, sha256


def _file(repo_id: str, host: str, path: str) -> Path:
    name = hashlib.sha256(f"{repo_id}\0{host}\0{path}".encode()).hexdigest()[:32]
    return state_dir() / "members" / f"{name}.json"


def _mac(key: bytes, body: bytes) -> str:
    return hmac.new(key, b"resilience member state\0" + body, hashlib.sha256).hexdigest()


def load(repo, host: str, path: str) -> dict[bytes, Proof]:
    """The proofs recorded for ``host:path`` (empty when there are none or they do not verify)."""
    try:
        data = json.loads(_file(repo.id, host, path).read_bytes())
        body = data["body"].encode()
        if not hmac.compare_digest(data["mac"], _mac(repo.key.mac, body)):
            return {}
        rows = json.loads(body)
        if rows.get("host") != host or rows.get("path") != path:
            return {}
        paths = base64.b64decode(rows["paths"]).split(b"\0") if rows["paths"] else []
        if len(paths) != len(rows["proofs"]):
            return {}
        return dict(zip(paths, map(tuple, rows["proofs"]), strict=True))
    except (OSError, ValueError, KeyError, TypeError):
        return {}


def save(repo, host: str, path: str, proofs: dict[bytes, Proof]) -> None:
    """Record ``proofs`` for ``host:path``, replacing what was there (atomically)."""
    # Paths as one NUL-separated blob (no path holds a NUL): one decode instead of 23k.
    rows: dict[str, Any] = {"host": host, "path": path, "paths": base64.b64encode(b"\0".join(proofs)).decode(),
                            "proofs": list(proofs.values())}
    body = json.dumps(rows, separators=(",", ":"))
    target = _file(repo.id, host, path)
    try:
        target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        atomic_write(target, json.dumps({"mac": _mac(repo.key.mac, body.encode()), "body": body}).encode())
    except OSError:
        pass  # only a cache: the next comparison hashes instead


def proven_sha256(proofs: dict[bytes, Proof], rel: bytes, inode: int, size: int, mtime_ns: int,
                  ctime_ns: int) -> str | None:
    """The sha256 proven for ``rel`` when its stat key is still the one recorded, else None."""
    p = proofs.get(rel)
    if p is not None and p[:4] == (inode, size, mtime_ns, ctime_ns):
        return p[4]
    return None
