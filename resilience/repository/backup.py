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
import stat
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any

from .. import __version__
from ..errors import ResilienceError, TemporaryError
from ..sources.base import Entry, Opener, Source
from ..sources.stream import UNKNOWN_SIZE
from . import blob as blobs
from . import statcache
from .chunker import Chunker
from .content import content_of, read_all
from .parent import ParentView, node_key, stat_key
from .repo import BlobWriter, Repository
from .snapshot import Snapshot, now_time
from .tree import DIR, FILE, encode_tree

WHOLE_READ = 16 << 20  # files up to this size are read in one call and cut in memory
# Worker processes pay ~0.3 s to start; below this much to read, threads are as fast.
PROCESS_THRESHOLD = 64 << 20
BATCH_BYTES, BATCH_FILES = 8 << 20, 64
REMOTE_BATCH = 96 << 20, 2048


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

    def add_sealed(self, kind: int, blob_id: bytes, sealed, raw_length: int) -> None:
        with self._lock:
            self.added_blobs += 1
            self.added_raw_bytes += raw_length

    def flush(self) -> None:
        return None


class Backup:
    """One backup run. ``run()`` returns (snapshot or None for dry runs, stats)."""

    def __init__(self, repo: Repository, source: Source, *, site: str, parent: Snapshot | None = None,
                 kind: str = "files", tags: list[str] | None = None, meta: dict[str, Any] | None = None,
                 dry_run: bool = False, workers: int | None = None, progress: Progress | None = None):
        self.repo, self.source, self.site, self.parent = repo, source, site, parent
        self.kind, self.tags, self.meta, self.dry_run = kind, tags or [], meta or {}, dry_run
        self.workers = workers or int(os.environ.get("RESILIENCE_WORKERS", "0")) or max(2, min(4, os.cpu_count() or 2))
        self.progress = progress or Progress()
        self.stats = BackupStats()
        self.writer: BlobWriter = _DryWriter(repo) if dry_run else repo.writer()
        self._local = threading.local()
        self._errors_lock = threading.Lock()

    # -- file content -----------------------------------------------------------------------------

    def _chunker(self) -> Chunker:
        ch = getattr(self._local, "chunker", None)
        if ch is None:
            ch = self._local.chunker = Chunker(self.repo.chunker_params)
        return ch

    def _store_file(self, e: Entry, opener: Opener) -> tuple[list[Any], int, str]:
        writer = self.writer

        def store(bid: bytes, piece) -> None:
            if writer.claim(bid):
                writer.add(blobs.DATA, bid, piece)

        def progress(n: int) -> None:
            self.progress.add(0, n)

        with opener() as f:
            if e.size <= WHOLE_READ:
                pieces = self._chunker().cut(read_all(f.read, e.size))
            else:
                pieces = self._chunker().cut_stream(f)
            content, size, sha = content_of(pieces, self.repo.key, store, progress)
            try:
                if not hasattr(self.source, "local_path"):
                    raise ValueError("not reading the live file")
                st = os.fstat(f.fileno())
                # Only a regular file can change under us; a pipe has no size to compare.
                if stat.S_ISREG(st.st_mode) and (st.st_size != size or st.st_mtime_ns != e.mtime_ns):
                    self._warn(f"{_show(e.path)}: changed during the backup (stored as read)")
                    e.size, e.mtime_ns, e.ctime_ns = size, st.st_mtime_ns, st.st_ctime_ns
            except (OSError, AttributeError, ValueError):
                pass  # not a real file (a stream from a remote source)
        e.size = size
        return content, size, sha

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

        def prepare_index() -> None:
            # Only when something has to be stored: an unchanged tree never reads the index.
            if not self.repo.index_loaded:
                self.repo.load_index()
            if not self.dry_run:
                adopted.update(self.repo.adopt_orphans())
                stats.orphan_packs_adopted = len(adopted)

        self.writer.prepare = prepare_index
        source_path = str(self.source.describe().get("path", ""))
        cache = statcache.load(self.repo, self.site, source_path, self.parent.id) if self.parent else None
        view = self.view = ParentView(self.repo, self.parent, cache, before_read=self.writer.ensure_prepared)

        nodes: dict[bytes, dict[str, Any]] = {}
        kinds: dict[bytes, str] = {}
        children: dict[bytes, list[bytes]] = {b"": []}
        reused: set[bytes] = set()
        to_read: list[Entry] = []
        hardlinks: dict[tuple[int, int], bytes] = {}
        links_later: list[tuple[bytes, bytes]] = []
        streamed: list[bytes] = []
        self.progress.phase = "scanning"

        entries = self.source.entries(view.stats)
        root_entry = next(entries)
        proofs = self._member_proofs()
        for e in entries:
            path, parent = e.path, e.parent
            kinds[path] = e.type
            children[parent].append(path)
            if e.type == DIR:
                children[path] = []
            if e.reuse:
                reused.add(path)
            else:
                nodes[path] = e.node()
            if e.type == DIR:
                stats.dirs += 1
            elif e.type == FILE:
                if e.size >= UNKNOWN_SIZE:
                    streamed.append(path)  # its size is known once read (a pg_dump stream)
                else:
                    stats.bytes_total += e.size
                first = hardlinks.get((e.dev, e.inode)) if e.nlink > 1 else None
                if first is not None and not e.reuse:
                    links_later.append((path, first))
                    continue
                if e.nlink > 1:
                    hardlinks.setdefault((e.dev, e.inode), path)
                if e.reuse:
                    stats.files_unchanged += 1
                    continue
                old_key = view.stats(parent).get(e.name)
                if old_key is not None and (
                        old_key == stat_key(FILE, e.size, e.mtime_ns, e.ctime_ns, e.inode, e.dev)
                        or self._proven_as_before(proofs, e, view.nodes(parent).get(e.name))):
                    old = view.nodes(parent).get(e.name)
                    if old is not None and "content" in old:
                        nodes[path]["content"] = old["content"]
                        if "sha256" in old:
                            nodes[path]["sha256"] = old["sha256"]
                        stats.files_unchanged += 1
                        continue
                to_read.append(e)
                if old_key is None or old_key[0] != FILE:
                    stats.files_new += 1
                else:
                    stats.files_changed += 1
            else:
                stats.other += 1

        self.progress.files_total = len(to_read)
        self.progress.bytes_total = sum(e.size for e in to_read if e.size < UNKNOWN_SIZE)
        self.progress.phase = "reading"
        vanished: set[bytes] = set()
        try:
            self._read_files(to_read, nodes, vanished)
            for path, first in links_later:
                if first in vanished:
                    vanished.add(path)
                    continue
                src = nodes[first] if first in nodes else view.nodes(first.rpartition(b"/")[0])[first.rpartition(b"/")[2]]
                for k in ("content", "size", "sha256"):
                    if k in src:
                        nodes[path][k] = src[k]
            for path in vanished:
                nodes.pop(path, None)
                siblings = children[path.rpartition(b"/")[0]]
                if path in siblings:
                    siblings.remove(path)
            self.progress.phase = "trees"
            subtrees = self._save_trees(children, nodes, kinds, reused)
            self.progress.phase = "finishing"
            self.writer.flush()
        except BaseException:
            self.writer.abort()
            raise
        stats.warnings.extend(self.source.report.warnings)
        stats.errors.extend(self.source.report.errors)
        stats.bytes_read = self.progress.bytes_done
        stats.bytes_total += sum(int(nodes[p].get("size", 0)) for p in streamed if p in nodes)
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
            time=now_time(), tree=subtrees[b""], site=self.site, kind=self.kind, source=source,
            hostname=socket.gethostname(), username=_username(), parent=self.parent.id if self.parent else None,
            tags=self.tags, meta=self.meta, program_version=__version__,
            summary={k: v for k, v in stats.as_dict().items() if k not in ("warnings", "errors")}
            | {"warnings": len(stats.warnings), "errors": len(stats.errors)},
        )
        self.repo.save_snapshot(snap)
        statcache.save(self.repo, self.site, source_path, snap.id,
                       self._cache(children, nodes, reused, subtrees))
        return snap, stats

    def _cache(self, children: dict[bytes, list[bytes]], nodes: dict[bytes, dict[str, Any]], reused: set[bytes],
               subtrees: dict[bytes, str]) -> dict:
        """The stat cache of the snapshot just written: folder -> (tree id, {name: stat key})."""
        view = self.view
        out = {}
        for folder, kids in children.items():
            old = view.stats(folder) if any(k in reused for k in kids) else {}
            keys = {}
            for k in kids:
                name = k.rpartition(b"/")[2]
                keys[name] = old[name] if k in reused else node_key(nodes[k])
            out[folder] = (subtrees[folder], keys)
        return out

    def _member_proofs(self) -> dict:
        """Files of a member that a restore proved to hold a snapshot's content (see
        targets/memberstate.py): a restore's hard-link staging moves every ctime, and without
        these the first backup after a restore would read the whole member again."""
        desc = self.source.describe()
        if self.parent is None or not desc.get("host") or not desc.get("path"):
            return {}
        from ..targets import memberstate

        return memberstate.load(self.repo, desc["host"], desc["path"])

    @staticmethod
    def _proven_as_before(proofs: dict, e: Entry, old: dict[str, Any] | None) -> bool:
        if not proofs or old is None or not old.get("sha256") or old.get("size") != e.size:
            return False
        from ..targets.memberstate import proven_sha256

        return proven_sha256(proofs, e.path, e.inode, e.size, e.mtime_ns, e.ctime_ns) == old["sha256"]

    def _use_processes(self, files: list[Entry]) -> bool:
        setting = os.environ.get("RESILIENCE_PROCESSES", "auto")
        # Workers store their packs themselves, so a dry run stays with threads.
        if setting == "0" or self.dry_run or (os.cpu_count() or 1) < 2 or self.source.batch_reader() is None:
            return False
        return setting == "1" or (len(files) >= 32 and sum(e.size for e in files) >= PROCESS_THRESHOLD)

    def _read_files(self, files: list[Entry], nodes: dict[bytes, dict[str, Any]], vanished: set[bytes]) -> None:
        if not files:
            return
        if self._use_processes(files):
            self._read_files_in_processes(files, nodes, vanished)
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
                    content, size, sha = self._store_file(e, opener)
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
                node["sha256"] = sha
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

    def _read_files_in_processes(self, files: list[Entry], nodes: dict[bytes, dict[str, Any]],
                                 vanished: set[bytes]) -> None:
        """Read, chunk, hash, compress, encrypt and store in worker processes (workers.py)."""
        import multiprocessing
        import queue

        from . import workers

        self.writer.ensure_prepared()
        key = self.repo.key
        reader = self.source.batch_reader()
        # A remote batch is one tar stream (an ssh session): fewer, larger batches.
        batch_bytes, batch_files = (BATCH_BYTES, BATCH_FILES) if reader[0] == "local" else REMOTE_BATCH
        # One more process than cores: a worker blocked on a read or an upload leaves the
        # core to another instead of idling it.
        n = int(os.environ.get("RESILIENCE_WORKERS", "0")) or (os.cpu_count() or 2) + 1
        # Route by size: identical files meet in the same worker and are stored once.
        per_worker: list[list[list[tuple[bytes, int, int]]]] = [[[]] for _ in range(n)]
        fill = [0] * n
        by_path = {}
        for e in files:
            full = self.source.batch_key(e)
            by_path[full] = e
            w = hash(e.size) % n
            per_worker[w][-1].append((full, e.size, e.mtime_ns))
            fill[w] += e.size
            if fill[w] >= batch_bytes or len(per_worker[w][-1]) >= batch_files:
                per_worker[w].append([])
                fill[w] = 0
        ctx = multiprocessing.get_context("spawn")
        results = ctx.Queue()
        tasks = [ctx.Queue() for _ in range(n)]
        args = (key.enc, key.mac, self.repo.chunker_params, self.repo.compression,
                b"".join(self.repo.index.blobs), self.repo.store.spec(), self.repo.pack_size)
        procs = [ctx.Process(target=workers.worker_main, args=(tasks[i], results, os.getpid(), reader, *args),
                             daemon=True)
                 for i in range(n)]
        for p in procs:
            p.start()
        # Two batches queued per worker at a time: enough to keep it busy, bounded in memory.
        cursors = [iter([b for b in batches if b]) for batches in per_worker]
        outstanding = [0] * n

        def feed(i: int) -> None:
            while outstanding[i] < 2:
                b = next(cursors[i], None)
                if b is None:
                    tasks[i].put(None)
                    outstanding[i] = -1
                    return
                tasks[i].put(b)
                outstanding[i] += 1

        owner: dict[bytes, int] = {}
        for i in range(n):
            for b in per_worker[i]:
                for item in b:
                    owner[item[0]] = i
            feed(i)
        done = 0
        try:
            while done < n:
                try:
                    msg = results.get(timeout=5)
                except queue.Empty:
                    dead = [p for p in procs if not p.is_alive() and p.exitcode not in (0, None)]
                    if dead:
                        raise ResilienceError(f"a backup worker died (exit {dead[0].exitcode})") from None
                    continue
                kind = msg[0]
                if kind == "files":
                    results_list = msg[1]
                    for res in results_list:
                        self._take_result(by_path[res.path], res, nodes, vanished)
                    i = owner[results_list[0].path] if results_list else 0
                    if outstanding[i] > 0:
                        outstanding[i] -= 1
                        feed(i)
                elif kind == "pack":
                    self.writer.record_pack(msg[1], msg[2])
                elif kind == "done":
                    done += 1
                elif kind == "error":
                    # A member that went away mid-stream is worth a retry, like in the parent.
                    cls = TemporaryError if msg[2] == "TemporaryError" else ResilienceError
                    raise cls(f"backup worker failed: {msg[1]}")
        finally:
            for p in procs:
                if p.is_alive() and done < n:
                    p.kill()
                p.join(5)

    def _take_result(self, e: Entry, res, nodes, vanished: set[bytes]) -> None:
        if res.vanished:
            self._warn(f"{_show(e.path)}: vanished during the backup")
            vanished.add(e.path)
            return
        if res.error:
            self._error(f"{_show(e.path)}: {res.error}")
            vanished.add(e.path)
            return
        if res.changed:
            self._warn(f"{_show(e.path)}: changed during the backup (stored as read)")
        node = nodes[e.path]
        node.update(content=res.content, size=res.size, sha256=res.sha256)
        if res.mtime_ns is not None:  # read locally: the times of what was read
            node.update(mtime_ns=res.mtime_ns, ctime_ns=res.ctime_ns)
        self.writer.count_added(res.new_bytes)
        self.progress.add(1, res.size)

    def _save_trees(self, children: dict[bytes, list[bytes]], nodes: dict[bytes, dict[str, Any]],
                    kinds: dict[bytes, str], reused: set[bytes]) -> dict[bytes, str]:
        """Store a tree per folder, deepest first, and return ``{folder: tree id}``.

        A folder whose entries are exactly the parent's (all reused, none added or removed,
        sub-folders unchanged) keeps the parent's tree id without decoding or encoding
        anything: an unchanged tree costs a walk, not a rewrite."""
        view = self.view
        subtrees: dict[bytes, str] = {}
        for path in sorted(children, key=lambda p: -p.count(b"/") if p else 1):
            kids = children[path]
            old = view.subtree(path)
            clean = (
                old is not None
                and len(kids) == len(view.stats(path))
                and all(k in reused and (kinds[k] != DIR or subtrees[k] == view.subtree(k)) for k in kids)
            )
            if clean:
                subtrees[path] = old
                continue
            listing = []
            old_nodes = view.nodes(path) if any(k in reused for k in kids) else {}
            for k in kids:
                node = nodes.get(k)
                if node is None:  # reused: the parent's node, copied if it gets a new subtree
                    node = old_nodes[k.rpartition(b"/")[2]]
                    if kinds[k] == DIR:
                        node = dict(node)
                if kinds[k] == DIR:
                    node["subtree"] = subtrees[k]
                listing.append(node)
            subtrees[path] = self.writer.store(blobs.TREE, encode_tree(listing)).hex()
        return subtrees


def _show(path: bytes) -> str:
    return os.fsdecode(path).encode("utf-8", "backslashreplace").decode("utf-8")


def _username() -> str:
    import getpass

    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return str(os.getuid())
