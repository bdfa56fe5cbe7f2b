"""One lab changer at a time: `up`, `down` and faults hold an exclusive lock on the lab folder."""

from __future__ import annotations

import fcntl
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager

from ..errors import TemporaryError
from . import layout as L

LOCK_WAIT = 120.0


@contextmanager
def lab_lock(timeout: float = LOCK_WAIT) -> Iterator[None]:
    """Serialise up/down/faults: one lab changer at a time (TemporaryError if it stays busy)."""
    L.lab_dir().mkdir(parents=True, exist_ok=True)
    os.chmod(L.lab_dir(), 0o755)
    fd = os.open(L.lab_dir() / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise TemporaryError("another lab command is running (lock "
                                         f"{L.lab_dir() / '.lock'} held); retry later") from None
                time.sleep(0.2)
        yield
    finally:
        os.close(fd)
