"""Reading secrets from files: one place, one set of messages, never the secret itself."""

from __future__ import annotations

import os

from .errors import UsageError


def read_secret_file(path: str | os.PathLike, what: str) -> bytes:
    """The secret in ``path`` without its trailing newline. UsageError (exit 2) naming the file
    and ``what`` it should hold when it cannot be read or is empty."""
    try:
        with open(path, "rb") as f:
            secret = f.read().rstrip(b"\r\n")
    except OSError as exc:
        raise UsageError(f"{path}: cannot read the {what}: {exc.strerror}") from None
    if not secret:
        raise UsageError(f"{path}: the {what} file is empty")
    return secret
