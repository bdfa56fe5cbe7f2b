"""The storage interface every backend implements: named, immutable objects.

Object names are ``/``-separated relative paths (``data/ab/abcdef…``, ``snapshots/…``).
Contract for every backend:
- ``put`` is atomic: readers see the whole object or nothing, never a part;
- ``get`` raises :class:`NotFound` for a missing object;
- ``list(folder)`` yields ``(name, size)`` for the objects under ``folder/`` (recursively);
- transient faults are retried inside the backend; what remains is raised as
  :class:`resilience.errors.TemporaryError` (exit 75).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator


class NotFound(Exception):
    """The object does not exist."""


class Store(ABC):
    url: str
    #: how many requests may usefully run in parallel
    concurrency: int = 1

    @abstractmethod
    def get(self, name: str) -> bytes: ...

    @abstractmethod
    def get_range(self, name: str, offset: int, length: int) -> bytes: ...

    @abstractmethod
    def put(self, name: str, data: bytes | memoryview) -> None: ...

    @abstractmethod
    def exists(self, name: str) -> bool: ...

    @abstractmethod
    def size(self, name: str) -> int: ...

    @abstractmethod
    def delete(self, name: str) -> None: ...

    @abstractmethod
    def list(self, folder: str) -> Iterator[tuple[str, int]]: ...

    def spec(self) -> tuple:
        """What another process needs to open this store again (see store_from_spec)."""
        raise NotImplementedError

    def create(self) -> None:  # noqa: B027 - optional hook, most backends need nothing
        """Prepare an empty location (folder, bucket). Idempotent."""

    def is_empty(self) -> bool:
        """True when nothing is stored at this location yet."""
        for _ in self.list(""):
            return False
        return True

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""
