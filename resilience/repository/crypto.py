"""Keys and authenticated encryption for repository objects.

- The *master key* holds two independent 256-bit secrets: ``enc`` (AES-256-GCM for every stored
  byte) and ``mac`` (HMAC-SHA256 that names blobs: ``blob id = HMAC(mac, plaintext)``, so equal
  content is stored once, and ids reveal nothing to someone without the key).
- The master key is stored in ``keys/<id>`` sealed under a key derived from the password with
  scrypt; several key files (passwords) may open one repository.
- ``seal(plaintext, aad)`` returns ``nonce(12) ‖ ciphertext ‖ tag(16)``; ``aad`` binds the
  ciphertext to its role (a blob id, or the object kind), so objects cannot be swapped.

Hashing, AES-GCM and scrypt run in C with the GIL released, so worker threads use both cores.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import secrets
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

NONCE = 12
TAG = 16
OVERHEAD = NONCE + TAG
# scrypt cost: 2^15 × 8 × 128 B = 32 MiB of memory, ~0.1 s here. Stored per key file, so it
# can be raised for new keys without breaking old ones.
SCRYPT_N, SCRYPT_R, SCRYPT_P = 1 << 15, 8, 1


class DecryptError(Exception):
    """Authentication failed: wrong key, or the object was altered."""


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def unb64(text: str) -> bytes:
    return base64.b64decode(text, validate=True)


@dataclass(frozen=True)
class MasterKey:
    """The repository's secrets. ``aead`` is created once and is safe to share across threads."""

    enc: bytes
    mac: bytes

    @classmethod
    def generate(cls) -> MasterKey:
        return cls(secrets.token_bytes(32), secrets.token_bytes(32))

    @property
    def aead(self) -> AESGCM:
        cached = self.__dict__.get("_aead")
        if cached is None:
            cached = AESGCM(self.enc)
            object.__setattr__(self, "_aead", cached)
        return cached

    def blob_id(self, data: bytes | memoryview) -> bytes:
        """The 32-byte id of a blob: HMAC-SHA256 of its plaintext under the repository's mac key."""
        return hmac.digest(self.mac, data, "sha256")

    def seal(self, plaintext: bytes | memoryview, aad: bytes) -> bytes:
        """Encrypt and authenticate; returns nonce ‖ ciphertext ‖ tag."""
        nonce = os.urandom(NONCE)
        return nonce + self.aead.encrypt(nonce, plaintext, aad)

    def open(self, sealed: bytes | memoryview, aad: bytes) -> bytes:
        """Decrypt what :meth:`seal` made with the same ``aad``; DecryptError if altered."""
        if len(sealed) < OVERHEAD:
            raise DecryptError("object too short")
        mv = memoryview(sealed)
        try:
            return self.aead.decrypt(bytes(mv[:NONCE]), mv[NONCE:], aad)
        except InvalidTag:
            raise DecryptError("authentication failed") from None

    def to_json(self) -> dict[str, str]:
        return {"enc": b64(self.enc), "mac": b64(self.mac)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> MasterKey:
        return cls(unb64(data["enc"]), unb64(data["mac"]))


def derive(password: bytes, salt: bytes, n: int, r: int, p: int) -> bytes:
    """A 32-byte key-encryption key from the password (scrypt)."""
    return Scrypt(salt=salt, length=32, n=n, r=r, p=p).derive(password)


def make_key_file(master: MasterKey, password: bytes, meta: dict[str, Any]) -> bytes:
    """Serialise a key file that opens ``master`` with ``password``."""
    salt = secrets.token_bytes(32)
    kek = derive(password, salt, SCRYPT_N, SCRYPT_R, SCRYPT_P)
    nonce = os.urandom(NONCE)
    sealed = nonce + AESGCM(kek).encrypt(nonce, json.dumps(master.to_json()).encode(), b"resilience-key")
    doc = dict(meta)
    doc.update(kdf="scrypt", n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P, salt=b64(salt), data=b64(sealed))
    return json.dumps(doc, indent=1, sort_keys=True).encode()


def open_key_file(raw: bytes, password: bytes) -> MasterKey:
    """Return the master key sealed in a key file; DecryptError for a wrong password."""
    try:
        doc = json.loads(raw)
        if doc.get("kdf") != "scrypt":
            raise DecryptError(f"unsupported key derivation {doc.get('kdf')!r}")
        kek = derive(password, unb64(doc["salt"]), int(doc["n"]), int(doc["r"]), int(doc["p"]))
        sealed = unb64(doc["data"])
    except (ValueError, KeyError, TypeError) as exc:
        raise DecryptError(f"malformed key file: {exc}") from None
    try:
        plain = AESGCM(kek).decrypt(sealed[:NONCE], sealed[NONCE:], b"resilience-key")
    except InvalidTag:
        raise DecryptError("wrong password") from None
    return MasterKey.from_json(json.loads(plain))


def sha256_hex(data: bytes | memoryview) -> str:
    return hashlib.sha256(data).hexdigest()
