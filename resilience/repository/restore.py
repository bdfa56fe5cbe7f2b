"""Restore a snapshot tree into a folder, with full fidelity.

Reproduces: content (sparse files stay sparse), empty files, folders (empty ones too),
symlinks as links (never followed), hardlinks as hardlinks, fifos, device nodes (as root),
permission bits including setuid/setgid/sticky, numeric owner and group (as root), mtimes to
the nanosecond, ``user.*`` extended attributes, and any byte string as a name.

Safety: everything is created inside a staging folder this process made (mode 0700); names
were validated when the tree was decoded (no ``/``, ``.``, ``..``, NUL, no duplicates), files
are created with O_EXCL|O_NOFOLLOW, and no path component can be a symlink because a symlink
node has no children. :func:`restore_to` then moves the staging folder into place, so a failed
restore leaves the destination as it was.
"""

from __future__ import annotations

import base64
import contextlib
import errno
import os
import shutil
import stat
import tempfile
import threading
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ResilienceError, UsageError
from ..sources.patterns import Matcher
from .index import Location
from .pack import pack_name
from .repo import Repository, iter_tree
from .snapshot import Snapshot
from .store import LocalStore
from .tree import BLOCKDEV, CHARDEV, DIR, FIFO, FILE, SOCKET, SYMLINK, get_bytes

_ROOT = os.geteuid() == 0


@dataclass
class RestoreStats:
    files: int = 0
    dirs: int = 0
    symlinks: int = 0
    hardlinks: int = 0
    special: int = 0
    bytes: int = 0
    warnings: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class PackFetcher:
    """Fetches and opens blobs. Local stores are read with one pread per blob on cached pack
    descriptors; remote ones download each needed pack once into a temporary folder (a
    bounded LRU on disk), because one request per small file would be far slower than one
    per pack. Thread-safe; usable in a worker process (it needs only the store and the key)."""

    def __init__(self, store, key, cache_bytes: int = 2 << 30):
        self.store, self.key = store, key
        self.local = isinstance(store, LocalStore)
        self._dir: tempfile.TemporaryDirectory | None = None
        self._cached: OrderedDict[str, int] = OrderedDict()
        self._fds: OrderedDict[str, int] = OrderedDict()
        self._locks: dict[str, threading.Lock] = {}
        self._lock = threading.Lock()
        self._budget = cache_bytes

    @classmethod
    def for_repo(cls, repo: Repository) -> PackFetcher:
        return cls(repo.store, repo.key)

    def fetch(self, blob_id: bytes, loc: Location) -> bytes:
        """The plaintext of a blob at ``loc``; DamagedError if it does not open."""
        from ..errors import DamagedError
        from .blob import open_blob
        from .crypto import DecryptError

        if self.local:
            data = os.pread(self._fd(self.store._path(pack_name(loc.pack))), loc.length, loc.offset)
        else:
            data = os.pread(self._fd(self._pack_file(loc.pack)), loc.length, loc.offset)
        if len(data) != loc.length:
            raise DamagedError(f"pack {loc.pack[:16]} is truncated")
        try:
            return open_blob(self.key, loc.kind, blob_id, data, loc.raw_length)
        except (DecryptError, ValueError) as exc:
            raise DamagedError(f"blob {blob_id.hex()[:16]} in pack {loc.pack[:16]}: {exc}") from None

    def _fd(self, path) -> int:
        key = os.fspath(path)
        with self._lock:
            fd = self._fds.get(key)
            if fd is not None:
                self._fds.move_to_end(key)
                return fd
        try:
            fd = os.open(key, os.O_RDONLY)
        except FileNotFoundError:
            from ..errors import DamagedError

            raise DamagedError(f"pack {os.path.basename(key)[:16]} is missing") from None
        with self._lock:
            other = self._fds.get(key)
            if other is not None:
                os.close(fd)
                return other
            self._fds[key] = fd
            while len(self._fds) > 64:
                _old, ofd = self._fds.popitem(last=False)
                os.close(ofd)
        return fd

    def _pack_file(self, pack: str) -> str:
        with self._lock:
            if self._dir is None:
                self._dir = tempfile.TemporaryDirectory(prefix="resilience-packs-")
            lock = self._locks.setdefault(pack, threading.Lock())
        path = os.path.join(self._dir.name, pack)
        with lock:
            with self._lock:
                if pack in self._cached:
                    self._cached.move_to_end(pack)
                    return path
            data = self.store.get(pack_name(pack))
            with open(path, "wb") as f:
                f.write(data)
            with self._lock:
                self._cached[pack] = len(data)
                while sum(self._cached.values()) > self._budget and len(self._cached) > 4:
                    old, _ = self._cached.popitem(last=False)
                    ofd = self._fds.pop(os.path.join(self._dir.name, old), None)
                    if ofd is not None:
                        os.close(ofd)
                    with contextlib.suppress(OSError):
                        os.unlink(os.path.join(self._dir.name, old))
        return path

    def close(self) -> None:
        with self._lock:
            for fd in self._fds.values():
                os.close(fd)
            self._fds.clear()
        if self._dir is not None:
            self._dir.cleanup()


def plan(repo: Repository, snap: Snapshot, include: Matcher | None = None) -> list[tuple[bytes, dict[str, Any]]]:
    """The (path, node) pairs a restore creates, parents first; ``include`` keeps matching
    paths, everything below them, and the folders leading to them."""
    items = list(iter_tree(repo, snap.tree))
    if not include:
        return items
    keep: set[bytes] = set()
    for path, node in items:
        if include.match(path, node["type"] == DIR):
            keep.add(path)
            parts = path.split(b"/")
            keep.update(b"/".join(parts[:i]) for i in range(1, len(parts)))
    return [(p, n) for p, n in items if p in keep]


def restore_tree(repo: Repository, snap: Snapshot, dest: str | os.PathLike, *, include: Matcher | None = None,
                 workers: int = 3, progress=None) -> RestoreStats:
    """Create the snapshot's entries inside ``dest`` (an existing, empty folder this caller
    controls) and apply their metadata. Applies the snapshot root's metadata to ``dest``."""
    root = os.fsencode(os.fspath(dest))
    stats = RestoreStats()
    items = plan(repo, snap, include)
    fetcher = PackFetcher.for_repo(repo)
    links: dict[tuple[int, int], bytes] = {}
    later_links: list[tuple[bytes, bytes]] = []
    files: list[tuple[bytes, dict[str, Any]]] = []
    try:
        for rel, node in items:
            full = root + b"/" + rel
            kind = node["type"]
            if kind == DIR:
                os.mkdir(full, 0o700)
                stats.dirs += 1
            elif kind == FILE:
                key = (node.get("dev", 0), node.get("inode", 0))
                if node.get("nlink", 1) > 1 and key in links:
                    later_links.append((links[key], full))
                    node["_linked"] = True
                    continue
                if node.get("nlink", 1) > 1:
                    links[key] = full
                files.append((full, node))
            elif kind == SYMLINK:
                os.symlink(get_bytes(node, "target") or b"", full)
                stats.symlinks += 1
            elif kind == FIFO:
                os.mkfifo(full, 0o600)
                stats.special += 1
            elif kind in (CHARDEV, BLOCKDEV):
                if not _ROOT:
                    stats.warnings.append(f"{_show(rel)}: device node not restored (needs root)")
                    node["_skipped"] = True
                    continue
                os.mknod(full, 0o600 | (stat.S_IFCHR if kind == CHARDEV else stat.S_IFBLK), node.get("rdev", 0))
                stats.special += 1
            elif kind == SOCKET:
                stats.warnings.append(f"{_show(rel)}: socket not restored (sockets belong to a running program)")
                node["_skipped"] = True

        # Threads suffice here: measured, restore time is kernel time (creating files and
        # filling the page cache: `cp -a` of the same tree takes longer), and worker
        # processes were no faster.
        def write(item: tuple[bytes, dict[str, Any]]) -> int:
            full, node = item
            return write_file(fetcher, repo.index.get, full, node, progress, stats.warnings)

        # Bounded hand-off (Executor.map would queue every file at once).
        slots = threading.BoundedSemaphore(workers * 4)

        def job(item: tuple[bytes, dict[str, Any]]) -> int:
            try:
                return write(item)
            finally:
                slots.release()

        futures = []
        with ThreadPoolExecutor(max(1, workers), thread_name_prefix="restore") as pool:
            for item in files:
                slots.acquire()
                futures.append(pool.submit(job, item))
                if len(futures) >= 256:
                    stats.bytes += sum(f.result() for f in futures[:128])
                    stats.files += 128
                    del futures[:128]
            stats.bytes += sum(f.result() for f in futures)
            stats.files += len(futures)
        for first, full in later_links:
            os.link(first, full)
            stats.hardlinks += 1
    finally:
        fetcher.close()

    # Files got their metadata through their descriptor when written. The rest comes last:
    # creating entries in a folder changes its mtime, so folders go deepest first at the end.
    for rel, node in items:
        if node["type"] not in (DIR, FILE) and not node.get("_skipped"):
            _apply_meta(root + b"/" + rel, node, stats.warnings)
    for rel, node in reversed(items):
        if node["type"] == DIR:
            _apply_meta(root + b"/" + rel, node, stats.warnings)
    root_meta = snap.source.get("root")
    if root_meta:
        _apply_meta(root, dict(root_meta, type=DIR), stats.warnings)
    return stats


_BLOCK = 4096
_ZERO_BLOCK = bytes(_BLOCK)


def _write_at(fd: int, data: bytes, pos: int) -> None:
    """Write ``data`` at ``pos``, skipping whole zero blocks so they stay holes (the file is
    new, so anything not written reads as zeros)."""
    n = len(data)
    if n < 2 * _BLOCK or data.find(_ZERO_BLOCK) < 0:
        _pwrite_all(fd, memoryview(data), pos)
        return
    view = memoryview(data)
    seg = 0  # start of the pending non-zero segment
    for off in range(0, n - _BLOCK + 1, _BLOCK):
        if view[off:off + _BLOCK] == _ZERO_BLOCK:
            if seg < off:
                _pwrite_all(fd, view[seg:off], pos + seg)
            seg = off + _BLOCK
    if seg < n:
        _pwrite_all(fd, view[seg:], pos + seg)


def _pwrite_all(fd: int, view: memoryview, pos: int) -> None:
    while view:
        k = os.pwrite(fd, view, pos)
        view, pos = view[k:], pos + k


def write_file(fetcher: PackFetcher, locate, full: bytes, node: dict[str, Any], progress,
               warnings: list[str]) -> int:
    """Create ``full`` with the node's content and metadata; returns its size. ``locate``
    maps a blob id to its Location."""
    size = int(node.get("size", 0))
    fd = os.open(full, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        pos = 0
        for item in node.get("content", []):
            if isinstance(item, dict):
                pos += int(item["zero"])
                continue
            bid = bytes.fromhex(item)
            loc = locate(bid)
            if loc is None:
                raise ResilienceError(f"{_show(full)}: blob {item[:16]} is missing from the repository (run verify)")
            data = fetcher.fetch(bid, loc)
            _write_at(fd, data, pos)
            pos += len(data)
            if progress is not None:
                progress.add(0, len(data))
        # Extends over trailing holes; a no-op when everything was written.
        os.ftruncate(fd, size)
        _apply_meta(fd, node, warnings, name=full)
    finally:
        os.close(fd)
    if progress is not None:
        progress.add(1, 0)
    return size


def _apply_meta(full: bytes | int, node: dict[str, Any], warnings: list[str], name: bytes | None = None) -> None:
    """Owner, mode, xattrs and mtime of ``full`` (a path, or an open descriptor named ``name``)."""
    is_link = node["type"] == SYMLINK
    by_fd = isinstance(full, int)
    nofollow = {} if by_fd else {"follow_symlinks": False}
    if name is None:
        name = full if not by_fd else b"?"
    if _ROOT:
        try:
            os.chown(full, node.get("uid", 0), node.get("gid", 0), **nofollow)
        except OSError as exc:
            warnings.append(f"{_show(name)}: cannot set owner: {exc.strerror}")
    if not is_link:
        try:
            os.chmod(full, node.get("mode", 0o644))
        except OSError as exc:
            warnings.append(f"{_show(name)}: cannot set mode: {exc.strerror}")
    for attr, value in (node.get("xattrs") or {}).items():
        try:
            os.setxattr(full, attr, base64.b64decode(value), **nofollow)
        except OSError as exc:
            if exc.errno not in (errno.ENOTSUP, errno.EPERM):
                warnings.append(f"{_show(name)}: cannot set {attr}: {exc.strerror}")
    mtime = int(node.get("mtime_ns", 0))
    try:
        os.utime(full, ns=(mtime, mtime), **nofollow)
    except OSError as exc:
        warnings.append(f"{_show(name)}: cannot set mtime: {exc.strerror}")


def restore_to(repo: Repository, snap: Snapshot, dest: str | os.PathLike, *, include: Matcher | None = None,
               progress=None) -> RestoreStats:
    """Restore into ``dest``, which must not exist or be an empty folder. Works in a staging
    folder beside it and renames it into place at the end: on failure ``dest`` is untouched."""
    dest = Path(dest)
    if dest.is_symlink():
        raise UsageError(f"{dest}: is a symlink; restore into a real folder")
    if dest.exists():
        if not dest.is_dir():
            raise UsageError(f"{dest}: exists and is not a folder")
        if any(dest.iterdir()):
            raise UsageError(f"{dest}: folder is not empty; restore into a new or empty folder")
    parent = dest.parent if str(dest.parent) else Path(".")
    try:
        parent.mkdir(parents=True, exist_ok=True)
        stage = Path(tempfile.mkdtemp(prefix=f".{dest.name}.restore-", dir=parent))
    except OSError as exc:
        raise UsageError(f"{dest}: cannot create a staging folder beside it: {exc.strerror}") from None
    try:
        stats = restore_tree(repo, snap, stage, include=include, progress=progress)
        if dest.exists():
            dest.rmdir()
        os.rename(stage, dest)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    return stats


def _show(path: bytes) -> str:
    return os.fsdecode(path).encode("utf-8", "backslashreplace").decode("utf-8")


def find_node(repo: Repository, snap: Snapshot, path: str) -> dict[str, Any]:
    """The node at ``path`` (``a/b/c``) in a snapshot; UsageError if there is none."""
    from .tree import node_name

    tree = snap.tree
    parts = [p for p in os.fsencode(path).split(b"/") if p]
    node: dict[str, Any] | None = None
    for i, part in enumerate(parts):
        nodes = {node_name(n): n for n in repo.tree(tree)}
        node = nodes.get(part)
        if node is None or (i < len(parts) - 1 and node["type"] != DIR):
            raise UsageError(f"{path}: not in snapshot {snap.short_id}")
        tree = node.get("subtree", "")
    if node is None:
        raise UsageError(f"{path}: not in snapshot {snap.short_id}")
    return node


def stream_file(repo: Repository, snap: Snapshot, path: str, chunk_zeros: int = 1 << 20):
    """Yield the content of the file at ``path`` in ``snap`` as bytes chunks (for piping a
    dump into pg_restore without a temporary copy). The index must be loaded."""
    node = find_node(repo, snap, path)
    if node["type"] != FILE:
        raise UsageError(f"{path}: not a file in snapshot {snap.short_id}")
    fetcher = PackFetcher.for_repo(repo)
    try:
        yield from node_chunks(repo, fetcher, node, chunk_zeros)
    finally:
        fetcher.close()


def node_chunks(repo: Repository, fetcher: PackFetcher, node: dict[str, Any], chunk_zeros: int = 1 << 20):
    """Yield a file node's content as bytes chunks, zero runs included (as zero bytes)."""
    for item in node.get("content", []):
        if isinstance(item, dict):
            left = int(item["zero"])
            while left:
                n = min(left, chunk_zeros)
                yield bytes(n)
                left -= n
            continue
        bid = bytes.fromhex(item)
        loc = repo.index.get(bid)
        if loc is None:
            raise ResilienceError(f"blob {item[:16]} is missing from the repository (run verify)")
        yield fetcher.fetch(bid, loc)
