"""Worker processes for the CPU-heavy part of a large backup.

Python threads share one interpreter lock; measured on 2 cores, the per-file Python work of a
backup held it ~70 % of the time, so threads could not use the second core. For large
backups the engine therefore hands batches of files to worker *processes*. Each reads,
chunks, hashes, compresses and encrypts its files, packs the new blobs and stores the packs
itself, and reports back only small things: per file the content list, size and sha256, and
per stored pack its blob list. (Sending the sealed data back to the parent instead cost more
than it saved: pipes moved every byte twice.)

Deduplication: every worker starts with the ids already in the repository, and remembers the
ones it stores. Files are routed to workers by size, so identical files meet in one worker;
only different files sharing chunks can, rarely, be stored by two workers in one run — prune
removes the spare copy.
"""

from __future__ import annotations

import ctypes
import os
import signal
from dataclasses import dataclass, field
from typing import Any

from ..sources.local import open_nofollow
from . import blob as blobs
from .chunker import Chunker
from .content import content_of, read_all
from .crypto import MasterKey

_state: dict[str, Any] = {}


@dataclass
class FileResult:
    path: bytes
    content: list[Any] = field(default_factory=list)
    size: int = 0
    sha256: str = ""
    #: (blob id, sealed head, sealed body, raw length) for blobs the worker had not seen before
    blobs: list[tuple[bytes, bytes, bytes, int]] = field(default_factory=list)
    mtime_ns: int | None = None
    ctime_ns: int | None = None
    changed: bool = False
    new_bytes: int = 0
    vanished: bool = False
    error: str | None = None


def _die_with_parent(parent: int) -> None:
    # A parent killed with SIGKILL cannot tell its workers; the kernel can (PR_SET_PDEATHSIG).
    # If the parent died before this line ran, the signal will never come: check by hand.
    try:
        libc = ctypes.CDLL(None)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent:
        os._exit(1)


def worker_main(tasks, results, parent: int, reader: tuple, enc: bytes, mac: bytes, chunker: dict[str, int],
                level: int, known: bytes, store_spec: tuple, pack_size: int) -> None:
    """Process batches from ``tasks`` until None, reading files as ``reader`` says (see
    :func:`read_batch`); report ("files", [FileResult…]), ("pack", pack id, entries), then
    ("done", None) — or ("error", message, error class name)."""
    from ..runtime import tune_malloc
    from .pack import PackBuilder, pack_name
    from .store import store_from_spec

    _die_with_parent(parent)
    tune_malloc()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    key = MasterKey(enc, mac)
    _state.update(key=key, chunker=Chunker(chunker), level=level,
                  known={known[i:i + 32] for i in range(0, len(known), 32)})
    import threading
    from concurrent.futures import ThreadPoolExecutor

    # One upload thread: the pack write (fsync, or an S3 PUT) overlaps the next pack's CPU
    # work; at most two packs are held while it runs.
    uploads = ThreadPoolExecutor(1, thread_name_prefix="pack-upload")
    slots = threading.Semaphore(2)
    failures: list[BaseException] = []
    try:
        store = store_from_spec(store_spec)
        builder = PackBuilder()

        def put(pack_id: str, data: bytes, entries) -> None:
            try:
                store.put(pack_name(pack_id), data)
                results.put(("pack", pack_id, entries))
            except BaseException as exc:  # noqa: BLE001 - re-raised in the worker loop
                failures.append(exc)
            finally:
                slots.release()

        def flush() -> None:
            nonlocal builder
            if failures:
                raise failures[0]
            if len(builder):
                pack_id, data, entries = builder.finish(key)
                slots.acquire()
                uploads.submit(put, pack_id, data, entries)
            builder = PackBuilder()

        import queue

        while True:
            try:
                batch = tasks.get(timeout=2)
            except queue.Empty:
                if os.getppid() != parent:
                    os._exit(1)
                continue
            if batch is None:
                break
            out = []
            for res in read_batch(reader, batch):
                for bid, head, body, raw in res.blobs:
                    builder.add(blobs.DATA, bid, (head, body), raw)
                    res.new_bytes += raw
                    if builder.size >= pack_size:
                        flush()
                res.blobs = []
                out.append(res)
            results.put(("files", out))
        flush()
        uploads.shutdown(wait=True)
        if failures:
            raise failures[0]
        results.put(("done", None))
    except BaseException as exc:  # noqa: BLE001 - reported to the parent, which raises
        results.put(("error", str(exc) or type(exc).__name__, type(exc).__name__))


def read_batch(reader: tuple, batch: list[tuple[bytes, int, int]]):
    """FileResults for ``batch`` [(name, listed size, listed mtime_ns)…], in order.

    ``reader`` is a source's :meth:`~resilience.sources.base.Source.batch_reader`:
    ``("local",)`` opens each name on this machine; ``("ssh", argv, folder, host)`` reads the
    whole batch through one tar stream from the member (names relative to ``folder``)."""
    if reader[0] == "local":
        for path, size, mtime in batch:
            yield _process(path, size, mtime)
        return
    from ..sources.remote import TarStream, changed_since_listing

    _, argv, folder, host = reader
    stream = TarStream(argv, folder, [item[0] for item in batch], host)
    try:
        for i, member, f in stream.members():
            path, size, mtime = batch[i]
            res = FileResult(path)
            if f is None:  # vanished, or no longer a regular file
                res.vanished = True
            else:
                chunker: Chunker = _state["chunker"]
                pieces = chunker.cut(f.read()) if member.size <= (16 << 20) else chunker.cut_stream(f)
                _digest(res, pieces)
                res.changed = changed_since_listing(member, size, mtime)
            yield res
    finally:
        stream.close()
    stream.raise_for_exit()


def _digest(res: FileResult, pieces) -> None:
    """Fill ``res`` with the content of ``pieces``, sealing the blobs this worker has not seen."""
    key: MasterKey = _state["key"]
    known: set[bytes] = _state["known"]
    level: int = _state["level"]

    def store(bid: bytes, piece) -> None:
        if bid not in known:
            known.add(bid)
            head, body = blobs.seal_blob(key, blobs.DATA, bid, piece, level)
            res.blobs.append((bid, head, body, len(piece)))

    res.content, res.size, res.sha256 = content_of(pieces, key, store)


def _process(path: bytes, listed_size: int, listed_mtime: int) -> FileResult:
    chunker: Chunker = _state["chunker"]
    res = FileResult(path)
    try:
        fd = open_nofollow(path)
    except OSError as exc:
        return _failed(res, exc)
    try:
        if listed_size <= (16 << 20):
            pieces = chunker.cut(read_all(lambda n: os.read(fd, n), listed_size))
        else:
            pieces = chunker.cut_stream(os.fdopen(os.dup(fd), "rb", buffering=0))
        _digest(res, pieces)
        st = os.fstat(fd)
        if st.st_size != res.size or st.st_mtime_ns != listed_mtime:
            res.changed = True
        res.mtime_ns, res.ctime_ns = st.st_mtime_ns, st.st_ctime_ns
    except OSError as exc:
        return _failed(res, exc)
    finally:
        os.close(fd)
    return res


def _failed(res: FileResult, exc: OSError) -> FileResult:
    import errno

    if isinstance(exc, FileNotFoundError) or exc.errno == errno.ELOOP:
        res.vanished = True
    else:
        res.error = "permission denied" if isinstance(exc, PermissionError) else (exc.strerror or str(exc))
    return res
