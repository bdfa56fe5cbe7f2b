"""The stat cache: the stat keys and tree ids of a site's last snapshot, kept on the ops host.

With it, a backup of an unchanged site compares ``lstat`` results with this cache and decodes
no tree blob at all. It is only a shortcut: it names the snapshot it describes and is used only
when that snapshot is the parent; a missing, stale or damaged cache just means the parent's
trees are decoded instead. It is sealed with the repository key (AES-GCM), because file names
are information too, and written atomically under ``$STATE/cache/<repository id>/``.
"""

from __future__ import annotations

import contextlib
import hashlib
import marshal
import os
import tempfile
from pathlib import Path

from ..state import state_dir
from .crypto import DecryptError
from .parent import Cache
from .repo import Repository

VERSION = 1
AAD = b"stat-cache"


def cache_path(repo: Repository, site: str, source: str) -> Path:
    tag = hashlib.sha256(f"{site}\0{source}".encode()).hexdigest()[:24]
    return state_dir() / "cache" / repo.id[:32] / f"{tag}.stat"


def load(repo: Repository, site: str, source: str, snapshot_id: str) -> Cache | None:
    """The cache for ``snapshot_id``, or None when there is none that matches."""
    path = cache_path(repo, site, source)
    try:
        sealed = path.read_bytes()
        version, snap, data = marshal.loads(repo.key.open(sealed, AAD))
    except (OSError, DecryptError, ValueError, EOFError, TypeError):
        return None
    if version != VERSION or snap != snapshot_id or not isinstance(data, dict):
        return None
    return data


def save(repo: Repository, site: str, source: str, snapshot_id: str, data: Cache) -> None:
    """Replace the cache; failures are ignored (the cache is an optimisation only)."""
    path = cache_path(repo, site, source)
    with contextlib.suppress(OSError):
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        sealed = repo.key.seal(marshal.dumps((VERSION, snapshot_id, data)), AAD)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".stat-")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(sealed)
            os.replace(tmp, path)
        except OSError:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
