"""What a file's content becomes in a snapshot: the one loop both the backup threads and the
backup worker processes run over a file's chunks."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable
from typing import Any

from .crypto import MasterKey

_ZEROS = bytes(8 << 20)


def is_zero(piece) -> bool:
    """True for a chunk of at least 4 KiB that is all zero bytes (stored as a hole)."""
    n = len(piece)
    return n >= 4096 and piece[0] == 0 and piece[n - 1] == 0 and piece == _ZEROS[:n]


def read_all(read: Callable[[int], bytes], expected: int) -> bytes:
    """Read to the end with ``read(n)``; a file that grew since listing is read to its new end."""
    chunks = []
    want = max(expected, 1 << 16)
    while True:
        data = read(want)
        if not data:
            break
        chunks.append(data)
        want = 1 << 20
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def content_of(pieces: Iterable, key: MasterKey, store: Callable[[bytes, Any], None],
               progress: Callable[[int], None] | None = None) -> tuple[list[Any], int, str]:
    """(content list, size, sha256) of a file given its chunks. ``store(blob id, chunk)`` is
    called for every non-zero chunk and decides whether it is new. Runs of zero chunks become
    one ``{"zero": N}`` entry. The whole-file sha256 lets restores and integrity checks compare
    a member's copy with nothing but sha256sum on the member."""
    content: list[Any] = []
    size = 0
    digest = hashlib.sha256()
    for piece in pieces:
        n = len(piece)
        size += n
        digest.update(piece)
        if is_zero(piece):
            if content and isinstance(content[-1], dict):
                content[-1]["zero"] += n
            else:
                content.append({"zero": n})
        else:
            bid = key.blob_id(piece)
            store(bid, piece)
            content.append(bid.hex())
        if progress is not None:
            progress(n)
    return content, size, digest.hexdigest()
