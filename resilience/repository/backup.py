"""The backup engine: turn a Source into a snapshot.

1. List the source; compare every regular file with the parent snapshot's node at the same
   path (size, mtime ns, ctime ns, inode): an unchanged file reuses the parent's content list
   without being read.
2. Read new and changed files in worker threads: content-defined chunks (FastCDC, keyed gear
   table), blob id = HMAC-SHA256, zstd, AES-256-GCM — all in C with the GIL released, so
   both cores work. Blobs already in the repository are not stored again.
3. Build trees bottom-up (equal folders give equal tree blobs), store the last packs, then
   the index file, then the snapshot: packs → index → snapshot.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any

from .. import __version__
from ..errors import ResilienceError
from ..sources.base import Entry, Opener, Source
from . import blob as blobs
from .chunker import Chunker
from .repo import BlobWriter, Repository
from .snapshot import Snapshot, now_time
from .tree import DIR, FILE, encode_tree, node_name

WHOLE_READ = 16 << 20  # files up to this size are read in one call and cut in memory
_ZEROS = bytes(8 << 20)


@dataclass
class BackupStats:
    files_new: int = 0
    files_changed: int = 0
    files_unchanged: int = 0
    dirs: int = 0
    other: int = 0
    bytes_read: int = 0
    bytes_total: int = 0
    bytes_added: int = 0
    bytes_stored: int = 0
    blobs_added: int = 0
    orphan_packs_adopted: int = 0
    duration_s: float = 0.0
    warnings: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class Progress:
    """Counters the engine updates from worker threads; a UI may poll them."""

    def __init__(self) -> None:
        self.files_total = 0
        self.bytes_total = 0
        self.files_done = 0
        self.bytes_done = 0
        self.phase = "listing"
        self._lock = threading.Lock()

    def add(self, files: int, nbytes: int) -> None:
        with self._lock:
            self.files_done += files
            self.bytes_done += nbytes


class _DryWriter(BlobWriter):
    """Counts what a backup would add without storing anything."""

    def add(self, kind: int, blob_id: bytes, data) -> None:
        with self._lock:
            self.added_blobs += 1
            self.added_raw_bytes += len(data)

    def flush(self) -> None:
        return None


def unchanged(old: dict[str, Any] | None, e: Entry) -> bool:
    """True when the parent snapshot's node describes the same file content as ``e``."""
    return (
        old is not None
        and old.get("type") == FILE
        and e.type == FILE
        and old.get("size") == e.size
        and old.get("mtime_ns") == e.mtime_ns
        and old.get("ctime_ns") == e.ctime_ns
        and old.get("inode") == e.inode
        and "content" in old
    )


def _is_zero(piece) -> bool:
    n = len(piece)
    return n >= 4096 and piece[0] == 0 and piece[n - 1] == 0 and piece == _ZEROS[:n]


class Backup:
    """One backup run. ``run()`` returns (snapshot or None for dry runs, stats)."""

    def __init__(self, repo: Repository, source: Source, *, site: str, parent: Snapshot | None = None,
                 kind: str = "files", tags: list[str] | None = None, meta: dict[str, Any] | None = None,
                 dry_run: bool = False, workers: int | None = None, progress: Progress | None = None,
                 on_index: Callable[[str], None] | None = None):
        self.repo, self.source, self.site, self.parent = repo, source, site, parent
        self.kind, self.tags, self.meta, self.dry_run = kind, tags or [], meta or {}, dry_run
        self.workers = workers or int(os.environ.get("RESILIENCE_WORKERS", "0")) or max(2, min(4, os.cpu_count() or 2))
        self.progress = progress or Progress()
        self.stats = BackupStats()
        self.writer: BlobWriter = _DryWriter(repo) if dry_run else repo.writer()
        self._local = threading.local()
        self._errors_lock = threading.Lock()

    # -- parent lookups -------------------------------------------------------------------------

    def _parent_children(self, parent_dir: dict[str, Any] | None) -> dict[bytes, dict[str, Any]]:
        if not parent_dir or not parent_dir.get("subtree"):
            return {}
        try:
            return {node_name(n): n for n in self.repo.tree(parent_dir["subtree"])}
        except ResilienceError:
            return {}  # a damaged parent only costs re-reading; it must not stop a backup

    # -- file content -----------------------------------------------------------------------------

    def _chunker(self) -> Chunker:
        ch = getattr(self._local, "chunker", None)
        if ch is None:
            ch = self._local.chunker = Chunker(self.repo.chunker_params)
        return ch

    def _store_file(self, e: Entry, opener: Opener) -> tuple[list[Any], int]:
        content: list[Any] = []
        size = 0
        key, writer = self.repo.key, self.writer

        def emit(piece) -> None:
            nonlocal size
            n = len(piece)
            size += n
            if _is_zero(piece):
                if content and isinstance(content[-1], dict):
                    content[-1]["zero"] += n
                else:
                    content.append({"zero": n})
            else:
                bid = key.blob_id(piece)
                if writer.claim(bid):
                    writer.add(blobs.DATA, bid, piece)
                content.append(bid.hex())
            self.progress.add(0, n)

        with opener() as f:
            if e.size <= WHOLE_READ:
                data = _read_all(f, e.size)
                for piece in self._chunker().cut(data):
                    emit(piece)
            else:
                for piece in self._chunker().cut_stream(f):
                    emit(piece)
            try:
                st = os.fstat(f.fileno())
                if st.st_size != size or st.st_mtime_ns != e.mtime_ns:
                    self._warn(f"{_show(e.path)}: changed during the backup (stored as read)")
                    e.size, e.mtime_ns, e.ctime_ns = size, st.st_mtime_ns, st.st_ctime_ns
            except (OSError, AttributeError, ValueError):
                pass  # not a real file (a stream from a remote source)
        e.size = size
        return content, size

    def _warn(self, msg: str) -> None:
        with self._errors_lock:
            self.stats.warnings.append(msg)

    def _error(self, msg: str) -> None:
        with self._errors_lock:
            self.stats.errors.append(msg)

    # -- the run ------------------------------------------------------------------------------------

    def run(self) -> tuple[Snapshot | None, BackupStats]:
        t0 = time.monotonic()
        stats = self.stats
        adopted: dict = {}
        if not self.repo.index_loaded:
            self.repo.load_index()
        if not self.dry_run:
            adopted = self.repo.adopt_orphans()
            stats.orphan_packs_adopted = len(adopted)

        nodes: dict[bytes, dict[str, Any]] = {}
        children: dict[bytes, list[bytes]] = {b"": []}
        parent_root = {"subtree": self.parent.tree} if self.parent else None
        old_dirs: dict[bytes, dict[bytes, dict[str, Any]]] = {b"": self._parent_children(parent_root)}
        self._old_subtrees: dict[bytes, str | None] = {b"": self.parent.tree if self.parent else None}
        self._reused: set[bytes] = set()
        to_read: list[Entry] = []
        hardlinks: dict[tuple[int, int], bytes] = {}
        links_later: list[tuple[bytes, bytes]] = []
        self.progress.phase = "scanning"

        entries = self.source.entries(lambda folder: old_dirs.get(folder, {}))
        root_entry = next(entries)
        for e in entries:
            old = e.reuse if e.reuse is not None else old_dirs.get(e.parent, {}).get(e.name)
            if e.reuse is not None:
                # Unchanged: the parent's node as is (a copy for folders, which get a subtree).
                node = dict(e.reuse) if e.type == DIR else e.reuse
                self._reused.add(e.path)
            else:
                node = e.node()
            nodes[e.path] = node
            children.setdefault(e.parent, []).append(e.path)
            if e.type == DIR:
                stats.dirs += 1
                children.setdefault(e.path, [])
                old_dir = old if old and old.get("type") == DIR else None
                old_dirs[e.path] = self._parent_children(old_dir)
                self._old_subtrees[e.path] = old_dir.get("subtree") if old_dir else None
            elif e.type == FILE:
                stats.bytes_total += e.size
                first = hardlinks.get((e.dev, e.inode)) if e.nlink > 1 else None
                if first is not None:
                    if e.reuse is None:
                        links_later.append((e.path, first))
                    else:
                        stats.files_unchanged += 1
                    continue
                if e.nlink > 1:
                    hardlinks[(e.dev, e.inode)] = e.path
                if e.reuse is not None:
                    stats.files_unchanged += 1
                elif unchanged(old, e):
                    node["content"] = old["content"]
                    stats.files_unchanged += 1
                else:
                    to_read.append(e)
                    if old is None or old.get("type") != FILE:
                        stats.files_new += 1
                    else:
                        stats.files_changed += 1
            else:
                stats.other += 1
        self._old_counts = {path: len(olds) for path, olds in old_dirs.items()}

        self.progress.files_total = len(to_read)
        self.progress.bytes_total = sum(e.size for e in to_read)
        self.progress.phase = "reading"
        vanished: set[bytes] = set()
        try:
            self._read_files(to_read, nodes, vanished)
            for path, first in links_later:
                if first in vanished:
                    vanished.add(path)
                    continue
                nodes[path]["content"] = nodes[first]["content"]
                nodes[path]["size"] = nodes[first]["size"]
            for path in vanished:
                nodes.pop(path, None)
                siblings = children.get(path.rsplit(b"/", 1)[0] if b"/" in path else b"", [])
                if path in siblings:
                    siblings.remove(path)
            self.progress.phase = "trees"
            root_tree = self._save_trees(children, nodes)
            self.progress.phase = "finishing"
            self.writer.flush()
        except BaseException:
            self.writer.abort()
            raise
        stats.warnings.extend(self.source.report.warnings)
        stats.errors.extend(self.source.report.errors)
        stats.bytes_read = self.progress.bytes_done
        stats.blobs_added = self.writer.added_blobs
        stats.bytes_added = self.writer.added_raw_bytes
        stats.bytes_stored = self.writer.stored_bytes
        stats.duration_s = round(time.monotonic() - t0, 3)
        if self.dry_run:
            return None, stats

        packs = dict(adopted)
        packs.update(self.writer.new_packs)
        self.repo.save_index(packs)
        root_node = root_entry.node()
        root_node.pop("name", None)
        source = self.source.describe()
        source["root"] = root_node
        snap = Snapshot(
            time=now_time(), tree=root_tree, site=self.site, kind=self.kind, source=source,
            hostname=socket.gethostname(), username=_username(), parent=self.parent.id if self.parent else None,
            tags=self.tags, meta=self.meta, program_version=__version__,
            summary={k: v for k, v in stats.as_dict().items() if k not in ("warnings", "errors")}
            | {"warnings": len(stats.warnings), "errors": len(stats.errors)},
        )
        self.repo.save_snapshot(snap)
        return snap, stats

    def _read_files(self, files: list[Entry], nodes: dict[bytes, dict[str, Any]], vanished: set[bytes]) -> None:
        if not files:
            return
        # Bounded hand-off: at most a few files per worker are read ahead, which bounds memory.
        slots = threading.BoundedSemaphore(self.workers * 2)
        errors: list[BaseException] = []

        def job(e: Entry, opener: Opener | None) -> None:
            try:
                if opener is None:
                    vanished.add(e.path)
                    return
                try:
                    content, size = self._store_file(e, opener)
                except FileNotFoundError:
                    self._warn(f"{_show(e.path)}: vanished during the backup")
                    vanished.add(e.path)
                    return
                except PermissionError:
                    self._error(f"{_show(e.path)}: permission denied")
                    vanished.add(e.path)
                    return
                except OSError as exc:
                    self._error(f"{_show(e.path)}: {exc.strerror or exc}")
                    vanished.add(e.path)
                    return
                node = nodes[e.path]
                node["content"] = content
                node["size"] = size
                node["mtime_ns"], node["ctime_ns"] = e.mtime_ns, e.ctime_ns
                self.progress.add(1, 0)
            except BaseException as exc:  # noqa: BLE001 - handed to the submitting thread
                errors.append(exc)
            finally:
                slots.release()

        with ThreadPoolExecutor(self.workers, thread_name_prefix="backup") as pool:
            for e, opener in self.source.open(files):
                slots.acquire()
                if errors:
                    slots.release()
                    break
                pool.submit(job, e, opener)
        if errors:
            raise errors[0]

    def _save_trees(self, children: dict[bytes, list[bytes]], nodes: dict[bytes, dict[str, Any]]) -> str:
        # Deepest folders first, so every subtree id is known before its parent is encoded.
        # A folder whose entries are exactly the parent snapshot's keeps its old subtree id
        # without being encoded again: an unchanged tree costs a walk, not a rewrite.
        root_id = ""
        for path in sorted(children, key=lambda p: -p.count(b"/") if p else 1):
            kids = children[path]
            old = self._old_subtrees.get(path)
            clean = (
                old is not None
                and len(kids) == self._old_counts.get(path, -1)
                and all(k in self._reused and (nodes[k]["type"] != DIR or nodes[k].get("subtree") == self._old_subtrees.get(k))
                        for k in kids)
            )
            if clean:
                tree_id = old
            else:
                tree_id = self.writer.store(blobs.TREE, encode_tree([nodes[c] for c in kids])).hex()
            if path == b"":
                root_id = tree_id
            else:
                nodes[path]["subtree"] = tree_id
        return root_id


def _read_all(f, expected: int) -> bytes:
    """Read a whole file; a file that grew since listing is read to its current end."""
    chunks = []
    want = max(expected, 1 << 16)
    while True:
        data = f.read(want)
        if not data:
            break
        chunks.append(data)
        want = 1 << 20
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def _show(path: bytes) -> str:
    return os.fsdecode(path).encode("utf-8", "backslashreplace").decode("utf-8")


def _username() -> str:
    import getpass

    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return str(os.getuid())
