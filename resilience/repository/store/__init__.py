"""Storage backends and the factory that picks one from a repository URL."""

from __future__ import annotations

from pathlib import Path

from ...errors import UsageError
from .base import NotFound, Store
from .local import LocalStore

__all__ = ["NotFound", "Store", "LocalStore", "open_store", "store_from_spec"]


def open_store(url: str, *, endpoint: str | None = None, region: str | None = None,
               access_key_id: str | None = None, secret_access_key_file: str | Path | None = None) -> Store:
    """Return the backend for ``url``: ``s3://bucket/prefix`` or a local path."""
    if url.startswith("s3://"):
        from ...secrets import read_secret_file
        from .s3 import S3Store

        secret = None
        if secret_access_key_file:
            secret = read_secret_file(secret_access_key_file, "S3 secret key").decode().strip()
        return S3Store(url, endpoint=endpoint, region=region, access_key_id=access_key_id,
                       secret_access_key=secret)
    if "://" in url:
        raise UsageError(f"unsupported repository URL {url!r} (use a local path or s3://bucket/prefix)")
    return LocalStore(url)


def store_from_spec(spec: tuple) -> Store:
    """Recreate a store in another process from :meth:`Store.spec`."""
    kind, args = spec[0], spec[1]
    if kind == "local":
        return LocalStore(args["root"])
    if kind == "s3":
        from .s3 import S3Store

        return S3Store(**args)
    raise ValueError(f"unknown store kind {kind!r}")
