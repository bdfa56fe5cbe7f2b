"""Write a snapshot's entries as a PAX tar stream for ``tar -x`` on a member, fast.

Headers come from the standard library (``TarInfo.tobuf``, PAX: nanosecond mtimes, any byte
names); the content does not go through ``tarfile``'s stream layer, which copied every byte
through a small buffer and decrypted blobs one after another in the writing thread
(measured: 26 s for a 1.4 GB site whose raw ``tar | ssh tar -x`` takes 13 s). Here a few
threads fetch, decrypt and decompress the next blobs while the writer sends the current ones
(AES-GCM and zstd release the GIL), and output leaves in ~1 MiB writes.
"""

from __future__ import annotations

import os
import tarfile
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from ..errors import DamagedError, ResilienceError
from ..repository.repo import Repository
from ..repository.restore import PackFetcher
from ..repository.tree import DIR, FIFO, FILE, SYMLINK, get_bytes

BLOCK = 512
FLUSH_AT = 1 << 20
DIRECT = 64 << 10
ZERO_PIECE = 1 << 20
LOOKAHEAD_BYTES = 64 << 20
FETCH_THREADS = 3
END = object()  # marks the end of one file's pieces


def tarinfo(name: bytes, node: dict[str, Any]) -> tarfile.TarInfo:
    """The tar header of a snapshot node (metadata only)."""
    ti = tarfile.TarInfo(os.fsdecode(name) if name else ".")
    ti.mode = node.get("mode", 0o755 if node["type"] == DIR else 0o644)
    ti.uid, ti.gid = node.get("uid", 0), node.get("gid", 0)
    ti.uname, ti.gname = node.get("user") or "", node.get("group") or ""
    mtime = int(node.get("mtime_ns", 0))
    ti.mtime = mtime // 1_000_000_000
    # PAX keeps the nanoseconds that the ustar header cannot hold.
    ti.pax_headers["mtime"] = f"{mtime // 1_000_000_000}.{mtime % 1_000_000_000:09d}"
    kind = node["type"]
    if kind == DIR:
        ti.type = tarfile.DIRTYPE
    elif kind == SYMLINK:
        ti.type = tarfile.SYMTYPE
        ti.linkname = os.fsdecode(get_bytes(node, "target") or b"")
    elif kind == FIFO:
        ti.type = tarfile.FIFOTYPE
    else:
        ti.type = tarfile.REGTYPE
        ti.size = int(node.get("size", 0))
    return ti


def _num(n: int, digits: int) -> bytes:
    return b"%0*o\0" % (digits - 1, n)


def _ustar(name: bytes, mode: int, uid: int, gid: int, size: int, mtime: int, kind: bytes, link: bytes,
           uname: bytes, gname: bytes) -> bytes:
    head = b"".join((
        name.ljust(100, b"\0"), _num(mode, 8), _num(uid, 8), _num(gid, 8), _num(size, 12), _num(mtime, 12),
        b"        ", kind, link.ljust(100, b"\0"), b"ustar\x0000", uname.ljust(32, b"\0"), gname.ljust(32, b"\0"),
        bytes(16 + 155 + 12)))  # no device numbers (never a device here), no prefix
    return head[:148] + b"%06o\0 " % sum(head) + head[156:]


def _fits(text: str, limit: int) -> bool:
    return len(text) < limit and text.isascii()


def _header(ti: tarfile.TarInfo) -> bytes:
    """``ti.tobuf(PAX_FORMAT)``, byte for byte; built directly in the common case (ASCII
    names that fit the ustar fields, whose only PAX record is the nanosecond mtime), which is
    ~5x cheaper than the general code. Anything unusual goes to the standard library."""
    mtime = ti.pax_headers.get("mtime")
    if (len(ti.pax_headers) != 1 or mtime is None or not _fits(ti.name, 101) or not _fits(ti.linkname, 101)
            or not _fits(ti.uname, 33) or not _fits(ti.gname, 33) or ti.size >= 8 ** 11
            or not 0 <= ti.uid < 8 ** 7 or not 0 <= ti.gid < 8 ** 7 or not 0 <= ti.mtime < 8 ** 11
            or ti.name.endswith("/") and ti.type != tarfile.DIRTYPE):
        return ti.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")
    name = ti.name.encode()
    if ti.type == tarfile.DIRTYPE and not name.endswith(b"/"):
        name += b"/"
        if len(name) > 100:
            return ti.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")
    record = b" mtime=" + mtime.encode() + b"\n"
    n = len(record)
    while len(b"%d" % n) + len(record) != n:
        n = len(b"%d" % n) + len(record)
    record = b"%d" % n + record
    pax = _ustar(b"././@PaxHeader", 0, 0, 0, len(record), 0, tarfile.XHDTYPE, b"", b"", b"")
    main = _ustar(name, ti.mode & 0o7777, ti.uid, ti.gid, ti.size if ti.type in tarfile.REGULAR_TYPES else 0,
                  ti.mtime, ti.type, ti.linkname.encode(), ti.uname.encode(), ti.gname.encode())
    return pax + record + bytes(-len(record) % BLOCK) + main


def _pieces(repo: Repository, fetcher: PackFetcher, nodes: Iterator[dict[str, Any]], pool: ThreadPoolExecutor
            ) -> Iterator[bytes]:
    """The content of ``nodes`` in pieces, one node after another, each followed by END;
    fetched ahead in order (bounded)."""
    index = repo.index
    pending: deque[tuple[Future | bytes, int]] = deque()
    ahead = 0
    for node in nodes:
        for item in node.get("content", []):
            if isinstance(item, dict):
                left = int(item["zero"])
                while left:
                    n = min(left, ZERO_PIECE)
                    pending.append((bytes(n), n))
                    left -= n
                continue
            bid = bytes.fromhex(item)
            loc = index.get(bid)
            if loc is None:
                raise ResilienceError(f"blob {item[:16]} is missing from the repository (run verify)")
            pending.append((pool.submit(fetcher.fetch, bid, loc), loc.raw_length))
            ahead += loc.raw_length
            while ahead > LOOKAHEAD_BYTES:
                got, n = pending.popleft()
                ahead -= n if isinstance(got, Future) else 0
                yield got.result() if isinstance(got, Future) else got
        pending.append((END, 0))
    while pending:
        got, _ = pending.popleft()
        yield got.result() if isinstance(got, Future) else got


def write_tar(repo: Repository, items: list, send: set[bytes], pipe) -> None:
    """Write every folder of ``items`` (for its metadata) and the entries in ``send`` to
    ``pipe`` as one PAX tar stream, then close it. A second name of a hard-linked file is sent
    as a link to the first. Raises DamagedError when a file's content does not add up to its
    recorded size."""
    links: dict[tuple[int, int], bytes] = {}
    plan: list[tuple[bytes, dict[str, Any], bytes | None]] = []
    for rel, node in items:
        kind = node["type"]
        if kind == FILE and node.get("nlink", 1) > 1:
            first = links.setdefault((node.get("dev", 0), node.get("inode", 0)), rel)
            if first != rel and rel in send:
                plan.append((rel, node, first))
                continue
        if kind == DIR or (rel in send and kind in (FILE, SYMLINK, FIFO)):
            plan.append((rel, node, None))
    fetcher = PackFetcher.for_repo(repo)
    out = bytearray()
    try:
        with ThreadPoolExecutor(FETCH_THREADS, thread_name_prefix="tar-fetch") as pool:
            content = _pieces(repo, fetcher, (n for _, n, link in plan if link is None and n["type"] == FILE), pool)
            for rel, node, link in plan:
                ti = tarinfo(rel, node)
                if link is not None:
                    ti.type, ti.size, ti.linkname = tarfile.LNKTYPE, 0, os.fsdecode(link)
                out += _header(ti)
                if ti.type == tarfile.REGTYPE:
                    left = ti.size
                    while (piece := next(content, None)) is not END:
                        if piece is None or len(piece) > left:
                            raise DamagedError(f"{os.fsdecode(rel)}: content does not match its size in the snapshot")
                        left -= len(piece)
                        if len(piece) >= DIRECT:  # large pieces go out as they are: no copy
                            pipe.write(out)
                            out.clear()
                            pipe.write(piece)
                        else:
                            out += piece
                            if len(out) >= FLUSH_AT:
                                pipe.write(out)
                                out.clear()
                    if left:
                        raise DamagedError(f"{os.fsdecode(rel)}: content does not match its size in the snapshot")
                    out += bytes(-ti.size % BLOCK)
                if len(out) >= FLUSH_AT:
                    pipe.write(out)
                    out.clear()
            if next(content, None) is not None:
                raise DamagedError("the snapshot's files hold more content than their sizes say")
            out += bytes(2 * BLOCK)  # end of archive
            pipe.write(out)
    finally:
        fetcher.close()
        pipe.close()
