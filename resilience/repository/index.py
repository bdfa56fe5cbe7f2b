"""The index: which pack holds each blob, at what offset and length.

Stored as ``index/<sha256>`` objects (sealed, zstd-compressed JSON)::

    {"packs": [{"id": PACK, "blobs": [[ID_HEX, TYPE, OFFSET, LENGTH, RAW_LENGTH], …]}, …],
     "supersedes": [INDEX_ID, …]}

Many index files may exist (one per backup, plus periodic ones during a long backup); the
in-memory index is their union. ``supersedes`` lets prune replace index files atomically: an
index listed there is ignored once the superseding one exists.
"""

from __future__ import annotations

import json
import sys
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from .pack import PackedBlob


@dataclass(frozen=True, slots=True)
class Location:
    pack: str
    kind: int
    offset: int
    length: int
    raw_length: int


class Index:
    """The union of index files, plus packs added by this process. Thread-safe for add/lookup."""

    def __init__(self) -> None:
        self.blobs: dict[bytes, Location] = {}
        self.packs: dict[str, list[bytes]] = {}
        self.files: set[str] = set()
        self._lock = threading.Lock()

    def __contains__(self, blob_id: bytes) -> bool:
        return blob_id in self.blobs

    def __len__(self) -> int:
        return len(self.blobs)

    def get(self, blob_id: bytes) -> Location | None:
        return self.blobs.get(blob_id)

    def add_pack(self, pack_id: str, entries: Iterable[PackedBlob]) -> None:
        pack_id = sys.intern(pack_id)
        ids = []
        with self._lock:
            for e in entries:
                # First location wins: a blob stored twice (two concurrent backups) is read
                # from whichever pack was indexed first; prune removes the spare copy.
                self.blobs.setdefault(e.id, Location(pack_id, e.kind, e.offset, e.length, e.raw_length))
                ids.append(e.id)
            self.packs.setdefault(pack_id, []).extend(ids)

    def pack_entries(self, pack_id: str) -> Iterator[tuple[bytes, Location]]:
        for bid in self.packs.get(pack_id, []):
            loc = self.blobs.get(bid)
            if loc is not None and loc.pack == pack_id:
                yield bid, loc


def encode(packs: dict[str, list[PackedBlob]], supersedes: Iterable[str] = ()) -> bytes:
    """JSON of an index file for ``packs``."""
    doc = {
        "packs": [
            {"id": pid, "blobs": [[e.id.hex(), e.kind, e.offset, e.length, e.raw_length] for e in entries]}
            for pid, entries in packs.items()
        ],
        "supersedes": sorted(supersedes),
    }
    return json.dumps(doc, separators=(",", ":")).encode()


def decode(raw: bytes) -> tuple[dict[str, list[PackedBlob]], list[str]]:
    """Parse an index file; ValueError if it is malformed."""
    try:
        doc = json.loads(raw)
        packs = {
            p["id"]: [PackedBlob(int(t), bytes.fromhex(i), int(o), int(ln), int(r)) for i, t, o, ln, r in p["blobs"]]
            for p in doc["packs"]
        }
        return packs, list(doc.get("supersedes", []))
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"malformed index: {exc}") from None
