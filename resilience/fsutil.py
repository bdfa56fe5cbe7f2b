"""Small file-system helpers shared by the ledger, caches, cron files and metrics."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path


def atomic_write(path: str | os.PathLike, data: bytes, mode: int = 0o600, *, sync_dir: bool = False) -> None:
    """Replace ``path`` with ``data`` in one step. The temporary file sits beside it under a
    dot-name that never ends like the target (cron, a textfile collector or a glob never
    picks it up), is fsynced, given ``mode`` and renamed over ``path``; it is removed when
    anything fails. ``sync_dir`` also fsyncs the folder (the rename itself survives a crash)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    if sync_dir:
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
