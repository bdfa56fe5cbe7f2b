"""Blob encoding: compress (zstd, skipped when it does not pay), then encrypt.

A stored blob is ``flag(1) ‖ nonce(12) ‖ AES-256-GCM(payload) ‖ tag(16)`` with flag 0 = stored
as is, 1 = zstd, and additional data ``type ‖ id ‖ flag``. Binding id, type and flag into the
AEAD means a blob that is moved, swapped, retyped or re-flagged fails to open. The flag sits
outside the ciphertext so the payload never has to be copied to prepend it: a 1 MiB image
goes from the read buffer through AES-GCM into the pack with no intermediate copies.
"""

from __future__ import annotations

import os
import threading

import zstandard

from .crypto import NONCE, OVERHEAD, DecryptError, MasterKey

DATA, TREE = 0, 1
RAW, ZSTD = 0, 1
HEAD = 1 + NONCE
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


def compress(data: bytes | memoryview, level: int) -> tuple[int, bytes | memoryview]:
    """(flag, payload): zstd when it saves space, else the data itself (not copied).
    Incompressible data (images, archives) is detected on a sample first so it does not pay
    for a full compression pass."""
    comp = _compressor(level)
    n = len(data)
    if n >= 4 * _SAMPLE and len(comp.compress(memoryview(data)[:_SAMPLE])) > _SAMPLE * 0.97:
        return RAW, data
    if n >= 64:
        packed = comp.compress(data)
        if len(packed) < n:
            return ZSTD, packed
    return RAW, data


def decompress(flag: int, payload: bytes | memoryview, raw_len: int) -> bytes | memoryview:
    """Undo :func:`compress`; ValueError on an unknown flag or a length mismatch."""
    if flag == RAW:
        out = payload
    elif flag == ZSTD:
        out = _decompressor().decompress(payload, max_output_size=max(raw_len, 1))
    else:
        raise ValueError(f"unknown compression flag {flag}")
    if len(out) != raw_len:
        raise ValueError(f"blob length {len(out)} != {raw_len}")
    return out


def aad(kind: int, blob_id: bytes, flag: int) -> bytes:
    return bytes((kind,)) + blob_id + bytes((flag,))


def seal_blob(key: MasterKey, kind: int, blob_id: bytes, data: bytes | memoryview, level: int) -> tuple[bytes, bytes]:
    """Compress and encrypt one blob; returns (head, body) whose concatenation is stored."""
    flag, payload = compress(data, level)
    nonce = os.urandom(NONCE)
    body = key.aead.encrypt(nonce, payload, aad(kind, blob_id, flag))
    return bytes((flag,)) + nonce, body


def sealed_length(head_body: tuple[bytes, bytes]) -> int:
    return len(head_body[0]) + len(head_body[1])


def open_blob(key: MasterKey, kind: int, blob_id: bytes, sealed: bytes | memoryview, raw_len: int) -> bytes | memoryview:
    """Decrypt and decompress one stored blob (DecryptError / ValueError if damaged)."""
    if len(sealed) < 1 + OVERHEAD:
        raise DecryptError("blob too short")
    mv = memoryview(sealed)
    flag = mv[0]
    try:
        plain = key.aead.decrypt(mv[1:HEAD], mv[HEAD:], aad(kind, blob_id, flag))
    except Exception as exc:  # InvalidTag, or a malformed buffer
        raise DecryptError("authentication failed") from exc
    return decompress(flag, plain, raw_len)
