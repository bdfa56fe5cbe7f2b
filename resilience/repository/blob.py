"""Blob encoding: compress (zstd, skipped when it does not pay), then seal with the blob id.

Sealed blob = seal(flag ‖ payload, aad = type ‖ id), flag 0 = stored, 1 = zstd. Binding the id
and type into the AEAD means a blob moved, swapped or retyped inside a pack fails to open.
"""

from __future__ import annotations

import threading

import zstandard

from .crypto import MasterKey

DATA, TREE = 0, 1
RAW, ZSTD = 0, 1
_SAMPLE = 8192
_local = threading.local()


def _compressor(level: int) -> zstandard.ZstdCompressor:
    cache = getattr(_local, "c", None)
    if cache is None:
        cache = _local.c = {}
    comp = cache.get(level)
    if comp is None:
        comp = cache[level] = zstandard.ZstdCompressor(level=level)
    return comp


def _decompressor() -> zstandard.ZstdDecompressor:
    d = getattr(_local, "d", None)
    if d is None:
        d = _local.d = zstandard.ZstdDecompressor()
    return d


def compress(data: bytes | memoryview, level: int) -> bytes:
    """``flag ‖ payload``: zstd when it saves space, else stored. Incompressible data (images,
    archives) is detected on a sample first so it does not pay for a full compression pass."""
    comp = _compressor(level)
    n = len(data)
    if n >= 4 * _SAMPLE:
        sample = memoryview(data)[:_SAMPLE]
        if len(comp.compress(sample)) > _SAMPLE * 0.97:
            return bytes((RAW,)) + bytes(data)
    if n >= 64:
        packed = comp.compress(data)
        if len(packed) < n:
            return bytes((ZSTD,)) + packed
    return bytes((RAW,)) + bytes(data)


def decompress(payload: bytes, raw_len: int) -> bytes:
    """Undo :func:`compress`; ValueError on an unknown flag or a length mismatch."""
    if not payload:
        raise ValueError("empty blob payload")
    flag = payload[0]
    if flag == RAW:
        out = payload[1:]
    elif flag == ZSTD:
        out = _decompressor().decompress(payload[1:], max_output_size=max(raw_len, 1))
    else:
        raise ValueError(f"unknown compression flag {flag}")
    if len(out) != raw_len:
        raise ValueError(f"blob length {len(out)} != {raw_len}")
    return out


def aad(kind: int, blob_id: bytes) -> bytes:
    return bytes((kind,)) + blob_id


def seal_blob(key: MasterKey, kind: int, blob_id: bytes, data: bytes | memoryview, level: int) -> bytes:
    """Compress and encrypt one blob for storage in a pack."""
    return key.seal(compress(data, level), aad(kind, blob_id))


def open_blob(key: MasterKey, kind: int, blob_id: bytes, sealed: bytes, raw_len: int) -> bytes:
    """Decrypt and decompress one stored blob (DecryptError / ValueError if damaged)."""
    return decompress(key.open(sealed, aad(kind, blob_id)), raw_len)
