"""The engine's input contract.

A :class:`Source` lists entries (:meth:`Source.entries`: the root first as path ``b""``, then
every entry after its parent folder) and, for the regular files the engine decides to read,
hands out content (:meth:`Source.open`). Listing and content are separate so that a remote
source can list cheaply, let the engine compare with the parent snapshot, and then send only
new or changed files in one stream.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, BinaryIO

from ..repository.tree import set_bytes

Opener = Callable[[], BinaryIO]
#: folder -> {name: stat key (type, size, mtime_ns, ctime_ns, inode, dev)} of the parent snapshot
Previous = Callable[[bytes], dict[bytes, tuple]]


@dataclass(slots=True)
class Entry:
    """One filesystem entry, relative to the source root (``b""`` is the root itself)."""

    path: bytes
    type: str
    mode: int = 0o644
    uid: int = 0
    gid: int = 0
    user: str | None = None
    group: str | None = None
    mtime_ns: int = 0
    ctime_ns: int = 0
    inode: int = 0
    dev: int = 0
    nlink: int = 1
    size: int = 0
    target: bytes | None = None
    rdev: int | None = None
    xattrs: dict[str, bytes] | None = None
    #: set when the source found the entry's stat key equal to the parent's (see Source.entries)
    reuse: bool = False

    @property
    def name(self) -> bytes:
        return self.path.rsplit(b"/", 1)[-1]

    @property
    def parent(self) -> bytes:
        return self.path.rsplit(b"/", 1)[0] if b"/" in self.path else b""

    def node(self) -> dict[str, Any]:
        """The tree node for this entry, without content or subtree."""
        import base64

        n: dict[str, Any] = {"type": self.type, "mode": self.mode, "uid": self.uid, "gid": self.gid,
                             "mtime_ns": self.mtime_ns, "ctime_ns": self.ctime_ns, "inode": self.inode,
                             "dev": self.dev, "nlink": self.nlink}
        set_bytes(n, "name", self.name)
        if self.user is not None:
            n["user"] = self.user
        if self.group is not None:
            n["group"] = self.group
        if self.type == "file":
            n["size"] = self.size
        if self.target is not None:
            set_bytes(n, "target", self.target)
        if self.rdev is not None:
            n["rdev"] = self.rdev
        if self.xattrs:
            n["xattrs"] = {k: base64.b64encode(v).decode() for k, v in sorted(self.xattrs.items())}
        return n


@dataclass
class SourceReport:
    """What went wrong without stopping the backup: vanished, changed or unreadable entries."""

    warnings: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


class Source(ABC):
    """A producer of entries for one snapshot."""

    report: SourceReport

    @abstractmethod
    def describe(self) -> dict[str, Any]:
        """What the snapshot records about the source: kind, host, path, listed_at…"""

    @abstractmethod
    def entries(self, previous: Previous | None = None) -> Iterator[Entry]:
        """Every entry, root (``b""``) first, each folder before its contents.

        ``previous(folder)`` returns the parent snapshot's stat keys of a folder by name
        (:func:`resilience.repository.parent.stat_key`); it is answerable for a folder once
        that folder's own entry has been yielded. A source may use it to skip work for entries
        whose stat key is unchanged (ctime moves on any chmod, chown, xattr or link change) by
        yielding ``Entry(path, type, size=…, inode=…, dev=…, nlink=…, reuse=True)``."""

    def batch_reader(self) -> tuple | None:
        """How a worker process reads this source's files by itself (a picklable spec that
        :func:`resilience.repository.workers.read_batch` understands), or None when only
        :meth:`open` can. Files are then named by :meth:`batch_key`."""
        return None

    def batch_key(self, e: Entry) -> bytes:
        """The name under which a worker reads ``e`` (see :meth:`batch_reader`)."""
        return e.path

    @abstractmethod
    def open(self, files: list[Entry]) -> Iterator[tuple[Entry, Opener | None]]:
        """Content for ``files`` (regular files, in the given order). The opener may be called
        from another thread; None means the file vanished (already noted in the report)."""
