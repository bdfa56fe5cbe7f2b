"""Pack files: many sealed blobs in one stored object, so S3 sees few large requests.

Layout::

    blob_0 ‖ blob_1 ‖ … ‖ blob_n-1 ‖ sealed_header ‖ uint32_le(len(sealed_header))

header (sealed with aad ``b"pack-header"``) = n × (type u8 ‖ length u32 ‖ raw_length u32 ‖ id 32B);
blob offsets follow from the lengths. The pack's name is the sha256 of all its bytes, so
storage damage is found without the key, and a pack is written once and never changed.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass

from .crypto import MasterKey

_ENTRY = struct.Struct("<BII32s")
HEADER_AAD = b"pack-header"


@dataclass(frozen=True)
class PackedBlob:
    kind: int
    id: bytes
    offset: int
    length: int
    raw_length: int


def pack_name(pack_id: str) -> str:
    return f"data/{pack_id[:2]}/{pack_id}"


class PackBuilder:
    """Accumulates sealed blobs; :meth:`finish` returns (pack id, bytes, entries)."""

    def __init__(self) -> None:
        self.parts: list[bytes] = []
        self.entries: list[PackedBlob] = []
        self.size = 0

    def add(self, kind: int, blob_id: bytes, sealed: bytes | memoryview | tuple[bytes, ...], raw_length: int) -> None:
        """Append a sealed blob, given whole or as parts to be stored back to back."""
        parts = sealed if isinstance(sealed, tuple) else (sealed,)
        length = sum(len(p) for p in parts)
        self.entries.append(PackedBlob(kind, blob_id, self.size, length, raw_length))
        self.parts.extend(parts)
        self.size += length

    def __len__(self) -> int:
        return len(self.entries)

    def finish(self, key: MasterKey) -> tuple[str, bytes, list[PackedBlob]]:
        header = b"".join(_ENTRY.pack(e.kind, e.length, e.raw_length, e.id) for e in self.entries)
        sealed = key.seal(header, HEADER_AAD)
        self.parts += [sealed, struct.pack("<I", len(sealed))]
        data = b"".join(self.parts)
        self.parts = []
        return hashlib.sha256(data).hexdigest(), data, self.entries


def parse_header(key: MasterKey, tail: bytes, pack_size: int) -> list[PackedBlob]:
    """Read the blob list from the last bytes of a pack (``tail`` must hold the whole header).

    Raises ValueError when the header is damaged or does not describe a pack of ``pack_size``."""
    if len(tail) < 4:
        raise ValueError("pack too short")
    (hlen,) = struct.unpack("<I", tail[-4:])
    if hlen + 4 > len(tail) or hlen + 4 > pack_size:
        raise ValueError("pack header length out of range")
    header = key.open(tail[-4 - hlen:-4], HEADER_AAD)
    if len(header) % _ENTRY.size:
        raise ValueError("pack header has a partial entry")
    out, offset = [], 0
    for kind, length, raw, bid in _ENTRY.iter_unpack(header):
        out.append(PackedBlob(kind, bid, offset, length, raw))
        offset += length
    if offset + hlen + 4 != pack_size:
        raise ValueError("pack header does not match the pack size")
    return out
