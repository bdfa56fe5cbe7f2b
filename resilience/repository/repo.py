"""The repository: open/init, the index, snapshots, reading and writing blobs.

Object layout in the store (see docs/repository-format.md)::

    config              sealed JSON: format version, repository id, chunker parameters
    keys/<id>           scrypt-protected master key (one file per password)
    data/<xx>/<id>      packs of sealed blobs
    index/<id>          sealed index files
    snapshots/<id>      sealed snapshots
    locks/<id>          plain JSON locks

Write order for a backup is packs → index → snapshot: an interrupted backup never leaves a
visible snapshot that points at missing data, and packs it already stored are found again by
:meth:`Repository.adopt_orphans` on the next run.
"""

from __future__ import annotations

import contextlib
import getpass
import hashlib
import json
import os
import secrets
import socket
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from ..errors import DamagedError, ResilienceError, UsageError
from ..secrets import read_secret_file
from . import blob as blobs
from . import index as index_mod
from .crypto import DecryptError, MasterKey, make_key_file, open_key_file
from .index import Index, Location
from .lock import RepoLock
from .pack import PackBuilder, PackedBlob, pack_name, parse_header
from .snapshot import Snapshot, now_time
from .store import NotFound, Store
from .tree import decode_tree

FORMAT_VERSION = 1
CONFIG_AAD = b"config"
INDEX_AAD = b"index"
SNAPSHOT_AAD = b"snapshot"
# Content-defined chunking: cut points every ~1.25 MiB on average (pyfastcdc's effective
# average is avg + min), never below 256 KiB or above 8 MiB.
CHUNK_MIN, CHUNK_AVG, CHUNK_MAX = 256 << 10, 1 << 20, 8 << 20


def read_password(password_file: str | os.PathLike | None) -> bytes:
    """The repository password: from ``password_file``, else ``$RESILIENCE_PASSWORD``.

    UsageError (exit 2) when neither is set or the file cannot be read; the password itself
    never appears in a message."""
    if password_file:
        return read_secret_file(password_file, "repository password")
    env = os.environ.get("RESILIENCE_PASSWORD")
    if env:
        return env.encode()
    raise UsageError("no repository password: set repository.password_file or $RESILIENCE_PASSWORD")


def _zc(data: bytes) -> bytes:
    """Compress a sealed JSON object (config, index, snapshot): a zstd frame."""
    import zstandard

    return zstandard.ZstdCompressor(level=3).compress(data)


def _zd(payload: bytes) -> bytes:
    import zstandard

    try:
        return zstandard.ZstdDecompressor().decompress(payload, max_output_size=1 << 31)
    except zstandard.ZstdError as exc:
        raise ValueError(f"bad compressed data: {exc}") from None


class Repository:
    """An open repository. Create with :meth:`init` or :meth:`open`."""

    def __init__(self, store: Store, key: MasterKey, config: dict[str, Any], *, compression: int = 1,
                 pack_size: int = 16 << 20):
        self.store = store
        self.key = key
        self.config = config
        self.id: str = config["id"]
        self.chunker_params: dict[str, int] = config["chunker"]
        self.compression = compression
        self.pack_size = pack_size
        self.index = Index()
        self.index_loaded = False
        self._tree_cache: OrderedDict[bytes, list[dict[str, Any]]] = OrderedDict()
        self._tree_lock = threading.Lock()
        self._pool: ThreadPoolExecutor | None = None

    # -- creation and opening -------------------------------------------------------------

    @classmethod
    def init(cls, store: Store, password: bytes, *, like: Repository | None = None, **kw) -> Repository:
        """Create a new repository in an empty location. ``like`` copies the blob-id key and
        chunker parameters of another repository so that ``copy`` needs no re-chunking."""
        store.create()
        if store.exists("config"):
            raise UsageError(f"a repository already exists at {store.url}")
        if not store.is_empty():
            raise UsageError(f"{store.url} is not empty and holds no repository; refusing to init there")
        if like is not None:
            key = MasterKey(secrets.token_bytes(32), like.key.mac)
            chunker = dict(like.chunker_params)
        else:
            key = MasterKey.generate()
            chunker = {"min": CHUNK_MIN, "avg": CHUNK_AVG, "max": CHUNK_MAX,
                       "seed": secrets.randbits(62) | 1}
        config = {"version": FORMAT_VERSION, "id": secrets.token_hex(32), "chunker": chunker,
                  "created": now_time()}
        key_doc = make_key_file(key, password, _key_meta())
        store.put(f"keys/{hashlib.sha256(key_doc).hexdigest()}", key_doc)
        # The config goes last: a location with a config is a complete repository.
        store.put("config", key.seal(json.dumps(config).encode(), CONFIG_AAD))
        return cls(store, key, config, **kw)

    @classmethod
    def open(cls, store: Store, password: bytes, **kw) -> Repository:
        """Open an existing repository; UsageError for a missing repository or a wrong password."""
        try:
            sealed_config = store.get("config")
        except NotFound:
            raise UsageError(f"no repository at {store.url} (run 'resilience init' first)") from None
        key = None
        for name, _size in store.list("keys"):
            try:
                key = open_key_file(store.get(name), password)
                break
            except DecryptError:
                continue
        if key is None:
            raise UsageError(f"wrong password for the repository at {store.url}")
        try:
            config = json.loads(key.open(sealed_config, CONFIG_AAD))
        except (DecryptError, ValueError):
            raise DamagedError(f"{store.url}: the repository config is damaged") from None
        if config.get("version") != FORMAT_VERSION:
            raise UsageError(f"{store.url}: unsupported repository format {config.get('version')}")
        return cls(store, key, config, **kw)

    def add_key(self, password: bytes) -> str:
        """Add another password that opens this repository; returns the key file name."""
        doc = make_key_file(self.key, password, _key_meta())
        name = f"keys/{hashlib.sha256(doc).hexdigest()}"
        self.store.put(name, doc)
        return name

    def lock(self, exclusive: bool = False) -> RepoLock:
        return RepoLock(self.store, exclusive)

    @property
    def pool(self) -> ThreadPoolExecutor:
        """A shared thread pool for store requests (sized to the backend's useful concurrency)."""
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max(2, self.store.concurrency), thread_name_prefix="store")
        return self._pool

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
        self.store.close()

    # -- sealed JSON objects ------------------------------------------------------------------

    def save_object(self, folder: str, payload: bytes, aad: bytes) -> str:
        """Seal ``payload`` and store it as ``folder/<sha256 of stored bytes>``; returns the id."""
        sealed = self.key.seal(_zc(payload), aad)
        oid = hashlib.sha256(sealed).hexdigest()
        self.store.put(f"{folder}/{oid}", sealed)
        return oid

    def load_object(self, folder: str, oid: str, aad: bytes) -> bytes:
        """Fetch, check and open ``folder/oid``; DamagedError if it fails any check."""
        name = f"{folder}/{oid}"
        raw = self.store.get(name)
        if hashlib.sha256(raw).hexdigest() != oid:
            raise DamagedError(f"{name}: content does not match its name (damaged)")
        try:
            return _zd(self.key.open(raw, aad))
        except (DecryptError, ValueError) as exc:
            raise DamagedError(f"{name}: {exc}") from None

    # -- index --------------------------------------------------------------------------------

    def list_ids(self, folder: str) -> list[str]:
        return [name.rsplit("/", 1)[-1] for name, _ in self.store.list(folder)]

    def load_index(self, *, strict: bool = False) -> list[str]:
        """Load every index file into :attr:`index`; returns problems (damaged index files).
        With ``strict`` a damaged index raises DamagedError instead."""
        problems: list[str] = []
        ids = self.list_ids("index")

        def fetch(oid: str) -> tuple[str, Any]:
            try:
                return oid, index_mod.decode(self.load_object("index", oid, INDEX_AAD))
            except (DamagedError, NotFound, ValueError) as exc:
                return oid, exc

        results = dict(self.pool.map(fetch, ids))
        superseded: set[str] = set()
        for res in results.values():
            if not isinstance(res, BaseException):
                superseded.update(res[1])
        for oid in ids:
            res = results[oid]
            if isinstance(res, BaseException):
                problems.append(f"index/{oid}: {res}")
                continue
            if oid in superseded:
                continue
            self.index.files.add(oid)
            for pack_id, entries in res[0].items():
                self.index.add_pack(pack_id, entries)
        self.index_loaded = True
        if strict and problems:
            raise DamagedError(problems[0])
        return problems

    def save_index(self, packs: dict[str, list[PackedBlob]], supersedes: Iterable[str] = ()) -> str | None:
        """Write one index file listing ``packs``; returns its id (None when there is nothing)."""
        if not packs and not supersedes:
            return None
        oid = self.save_object("index", index_mod.encode(packs, supersedes), INDEX_AAD)
        self.index.files.add(oid)
        return oid

    def adopt_orphans(self) -> dict[str, list[PackedBlob]]:
        """Find packs that are stored but in no index (left by an interrupted backup), read their
        headers and add them to the in-memory index. Returns what it adopted so the caller can
        write it into the next index file; unreadable packs are left for prune."""
        stored = {name.rsplit("/", 1)[-1]: size for name, size in self.store.list("data")}
        orphans = [pid for pid in stored if pid not in self.index.packs]

        def header(pid: str) -> tuple[str, list[PackedBlob] | None]:
            try:
                return pid, self.read_pack_header(pid, stored[pid])
            except (NotFound, DecryptError, ValueError, ResilienceError):
                return pid, None

        adopted: dict[str, list[PackedBlob]] = {}
        for pid, entries in self.pool.map(header, orphans):
            if entries:
                self.index.add_pack(pid, entries)
                adopted[pid] = entries
        return adopted

    def read_pack_header(self, pack_id: str, size: int) -> list[PackedBlob]:
        """The blob list of a stored pack, read from its tail with one or two range requests."""
        name = pack_name(pack_id)
        want = min(size, 64 << 10)
        tail = self.store.get_range(name, size - want, want)
        hlen = int.from_bytes(tail[-4:], "little")
        if hlen + 4 > want and hlen + 4 <= size:
            tail = self.store.get_range(name, size - hlen - 4, hlen + 4)
        return parse_header(self.key, tail, size)

    # -- blobs --------------------------------------------------------------------------------

    def has_blob(self, blob_id: bytes) -> bool:
        return blob_id in self.index

    def read_blob(self, blob_id: bytes, kind: int | None = None) -> bytes:
        """The plaintext of a blob. DamagedError if it is missing from the index or damaged."""
        loc = self.index.get(blob_id)
        if loc is None:
            raise DamagedError(f"blob {blob_id.hex()[:16]} is not in the index")
        if kind is not None and loc.kind != kind:
            raise DamagedError(f"blob {blob_id.hex()[:16]} has the wrong type")
        try:
            sealed = self.store.get_range(pack_name(loc.pack), loc.offset, loc.length)
        except NotFound:
            raise DamagedError(f"pack {loc.pack[:16]} is missing") from None
        return self.open_located(blob_id, loc, sealed)

    def open_located(self, blob_id: bytes, loc: Location, sealed: bytes | memoryview) -> bytes:
        """Decrypt a blob already fetched from its pack."""
        if len(sealed) != loc.length:
            raise DamagedError(f"pack {loc.pack[:16]} is truncated")
        try:
            return blobs.open_blob(self.key, loc.kind, blob_id, sealed, loc.raw_length)
        except (DecryptError, ValueError) as exc:
            raise DamagedError(f"blob {blob_id.hex()[:16]} in pack {loc.pack[:16]}: {exc}") from None

    def tree(self, tree_id: str | bytes) -> list[dict[str, Any]]:
        """The nodes of a tree (cached)."""
        bid = bytes.fromhex(tree_id) if isinstance(tree_id, str) else tree_id
        with self._tree_lock:
            hit = self._tree_cache.get(bid)
            if hit is not None:
                self._tree_cache.move_to_end(bid)
                return hit
        try:
            nodes = decode_tree(self.read_blob(bid, blobs.TREE))
        except ValueError as exc:
            raise DamagedError(f"tree {bid.hex()[:16]}: {exc}") from None
        with self._tree_lock:
            self._tree_cache[bid] = nodes
            if len(self._tree_cache) > 4096:
                self._tree_cache.popitem(last=False)
        return nodes

    def writer(self) -> BlobWriter:
        return BlobWriter(self)

    # -- snapshots ------------------------------------------------------------------------------

    def save_snapshot(self, snap: Snapshot) -> str:
        snap.id = self.save_object("snapshots", snap.to_json(), SNAPSHOT_AAD)
        return snap.id

    def load_snapshot(self, snap_id: str) -> Snapshot:
        try:
            return Snapshot.from_json(self.load_object("snapshots", snap_id, SNAPSHOT_AAD), snap_id)
        except ValueError as exc:
            raise DamagedError(f"snapshots/{snap_id}: {exc}") from None

    def snapshots(self, *, site: str | None = None, errors: list[str] | None = None) -> list[Snapshot]:
        """All snapshots, oldest first (optionally of one site). Damaged ones are skipped and
        described in ``errors`` when given, else raise DamagedError."""
        ids = self.list_ids("snapshots")

        def load(oid: str) -> Snapshot | Exception:
            try:
                return self.load_snapshot(oid)
            except (DamagedError, NotFound) as exc:
                return exc

        out = []
        for oid, res in zip(ids, self.pool.map(load, ids), strict=True):
            if isinstance(res, Exception):
                if errors is None:
                    raise DamagedError(f"snapshots/{oid}: {res}") if not isinstance(res, DamagedError) else res
                errors.append(f"snapshots/{oid}: {res}")
                continue
            if site is None or res.site == site:
                out.append(res)
        out.sort(key=lambda s: (s.time, s.id))
        return out

    def find_snapshot(self, ref: str, *, site: str | None = None, kind: str | None = None) -> Snapshot:
        """``latest`` (of ``site``/``kind``) or a unique id prefix; UsageError otherwise."""
        snaps = [s for s in self.snapshots(site=site) if kind is None or s.kind == kind]
        if ref == "latest":
            if not snaps:
                what = f" of site {site!r}" if site else ""
                raise UsageError(f"no snapshot{what} in the repository yet")
            return snaps[-1]
        if not ref or any(c not in "0123456789abcdef" for c in ref.lower()):
            raise UsageError(f"invalid snapshot id {ref!r} (use 'latest' or a hex id prefix)")
        matches = [s for s in snaps if s.id.startswith(ref.lower())]
        if not matches:
            raise UsageError(f"no snapshot {ref!r}" + (f" of site {site!r}" if site else ""))
        if len(matches) > 1:
            raise UsageError(f"snapshot id {ref!r} is ambiguous ({len(matches)} match)")
        return matches[0]


class BlobWriter:
    """Packs sealed blobs and uploads full packs in the background.

    ``add`` is thread-safe. Blobs become visible in the repository's index only after their
    pack is stored; ``flush`` stores the last partial packs and waits for every upload, then
    ``new_packs`` lists what this writer stored (for the index file)."""

    def __init__(self, repo: Repository):
        self.repo = repo
        self._builders = {blobs.DATA: PackBuilder(), blobs.TREE: PackBuilder()}
        self._lock = threading.Lock()
        self._pending: set[bytes] = set()
        self._uploads: list[Future] = []
        self._slots = threading.Semaphore(max(2, repo.store.concurrency))
        self.new_packs: dict[str, list[PackedBlob]] = {}
        #: called once, before the first claim, e.g. to load the index only when it is needed
        self.prepare: Callable[[], None] | None = None
        self._prepared = threading.Lock()
        self.stored_bytes = 0
        self.added_blobs = 0
        self.added_raw_bytes = 0

    def claim(self, blob_id: bytes) -> bool:
        """True if the caller should store ``blob_id``: it is neither indexed nor claimed yet."""
        if self.prepare is not None:
            self.ensure_prepared()
        with self._lock:
            if blob_id in self.repo.index or blob_id in self._pending:
                return False
            self._pending.add(blob_id)
            return True

    def add(self, kind: int, blob_id: bytes, data: bytes | memoryview) -> None:
        """Seal and queue a blob the caller has claimed."""
        # (head, body): stored back to back, never concatenated in memory
        self.add_sealed(kind, blob_id, blobs.seal_blob(self.repo.key, kind, blob_id, data, self.repo.compression),
                        len(data))

    def add_sealed(self, kind: int, blob_id: bytes, sealed: tuple[bytes, bytes], raw_length: int) -> None:
        """Queue a blob already sealed (here, or by a worker process) that the caller has claimed."""
        full = None
        with self._lock:
            b = self._builders[kind]
            b.add(kind, blob_id, sealed, raw_length)
            self.added_blobs += 1
            self.added_raw_bytes += raw_length
            if b.size >= self.repo.pack_size:
                full = b
                self._builders[kind] = PackBuilder()
        if full is not None:
            self._upload(full)

    def record_pack(self, pack_id: str, entries: list[PackedBlob]) -> None:
        """Account for a pack another process stored (its blobs become visible now)."""
        self.repo.index.add_pack(pack_id, entries)
        with self._lock:
            self.new_packs[pack_id] = entries
            self.stored_bytes += entries[-1].offset + entries[-1].length if entries else 0

    def count_added(self, raw_bytes: int) -> None:
        with self._lock:
            self.added_raw_bytes += raw_bytes

    def ensure_prepared(self) -> None:
        """Run the one-time preparation (index loading) now."""
        if self.prepare is not None:
            with self._prepared:
                if self.prepare is not None:
                    self.prepare()
                    self.prepare = None

    def store(self, kind: int, data: bytes | memoryview) -> bytes:
        """Claim-and-add in one call; returns the blob id (stored or already present)."""
        bid = self.repo.key.blob_id(data)
        if self.claim(bid):
            self.add(kind, bid, data)
        return bid

    def _upload(self, builder: PackBuilder) -> None:
        pack_id, data, entries = builder.finish(self.repo.key)
        self._slots.acquire()  # bound the packs held in memory while uploads are in flight

        def put() -> None:
            try:
                self.repo.store.put(pack_name(pack_id), data)
            finally:
                self._slots.release()
            self.repo.index.add_pack(pack_id, entries)
            with self._lock:
                self.new_packs[pack_id] = entries
                self.stored_bytes += len(data)
                for e in entries:
                    self._pending.discard(e.id)

        self._uploads.append(self.repo.pool.submit(put))

    def flush(self) -> None:
        """Store partial packs and wait for all uploads; re-raises the first upload error."""
        with self._lock:
            full = [b for b in self._builders.values() if len(b)]
            self._builders = {blobs.DATA: PackBuilder(), blobs.TREE: PackBuilder()}
        for b in full:
            self._upload(b)
        errors = []
        for f in self._uploads:
            with contextlib.suppress(Exception):
                f.result()
            if f.exception() is not None:
                errors.append(f.exception())
        self._uploads = []
        if errors:
            raise errors[0]

    def abort(self) -> None:
        """Wait for uploads in flight (their packs stay as orphans for the next run to adopt)."""
        for f in self._uploads:
            with contextlib.suppress(Exception):
                f.result()
        self._uploads = []


def _key_meta() -> dict[str, Any]:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = str(os.getuid())
    return {"created": now_time(), "hostname": socket.gethostname(), "username": user}


def iter_tree(repo: Repository, tree_id: str, prefix: bytes = b"") -> Iterator[tuple[bytes, dict[str, Any]]]:
    """Walk a snapshot tree depth-first, yielding (relative path, node) with parents first."""
    from .tree import DIR, node_name

    for node in repo.tree(tree_id):
        path = prefix + node_name(node)
        yield path, node
        if node["type"] == DIR and node.get("subtree"):
            yield from iter_tree(repo, node["subtree"], path + b"/")
