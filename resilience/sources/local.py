"""Files on the ops host itself (``files.hosts: [localhost]``).

Walks the tree with lstat only (symlinks are recorded, never followed), reads ``user.*``
extended attributes, and records owner and group by number and by name. Names are raw bytes
throughout, so any name the filesystem allows survives.
"""

from __future__ import annotations

import errno
import grp
import os
import pwd
import stat
from collections.abc import Iterator
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

from ..errors import UsageError
from ..repository.parent import stat_key
from .base import Entry, Opener, Previous, Source, SourceReport
from .patterns import Matcher


@lru_cache(maxsize=1024)
def user_name(uid: int) -> str | None:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return None


@lru_cache(maxsize=1024)
def group_name(gid: int) -> str | None:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return None


def _type(mode: int) -> str | None:
    if stat.S_ISREG(mode):
        return "file"
    if stat.S_ISDIR(mode):
        return "dir"
    if stat.S_ISLNK(mode):
        return "symlink"
    if stat.S_ISFIFO(mode):
        return "fifo"
    if stat.S_ISCHR(mode):
        return "chardev"
    if stat.S_ISBLK(mode):
        return "blockdev"
    if stat.S_ISSOCK(mode):
        return "socket"
    return None


def read_xattrs(path: bytes) -> dict[str, bytes] | None:
    """The ``user.*`` extended attributes of ``path`` (not following symlinks), or None."""
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError:
        return None
    out = {}
    for name in names:
        if name.startswith("user."):
            try:
                out[name] = os.getxattr(path, name, follow_symlinks=False)
            except OSError:
                continue
    return out or None


def entry_from_stat(rel: bytes, full: bytes, st: os.stat_result) -> Entry | None:
    """An Entry from an lstat result (None for file types we do not know)."""
    kind = _type(st.st_mode)
    if kind is None:
        return None
    e = Entry(
        path=rel, type=kind, mode=stat.S_IMODE(st.st_mode), uid=st.st_uid, gid=st.st_gid,
        user=user_name(st.st_uid), group=group_name(st.st_gid), mtime_ns=st.st_mtime_ns,
        ctime_ns=st.st_ctime_ns, inode=st.st_ino, dev=st.st_dev, nlink=st.st_nlink,
        size=st.st_size if kind == "file" else 0,
    )
    if kind == "symlink":
        e.target = os.readlink(full)
    elif kind in ("chardev", "blockdev"):
        e.rdev = st.st_rdev
    if kind != "symlink":
        e.xattrs = read_xattrs(full)
    return e


def open_nofollow(path: bytes) -> int:
    """A read descriptor for the file at ``path``, never through a symlink (one that replaced
    the file since listing reads as vanished), without touching its atime when allowed."""
    try:
        return os.open(path, os.O_RDONLY | os.O_NOFOLLOW | getattr(os, "O_NOATIME", 0))
    except PermissionError:
        # O_NOATIME needs ownership of the file; fall back without it.
        return os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise FileNotFoundError(errno.ENOENT, "replaced by a symlink") from None
        raise


class LocalSource(Source):
    """The folder ``root`` on this machine, minus ``exclude`` patterns."""

    def __init__(self, root: str | os.PathLike, exclude: list[str] | None = None):
        self.root = os.fsencode(os.fspath(root)).rstrip(b"/") or b"/"
        self.exclude = Matcher(exclude or [])
        self.report = SourceReport()
        self.listed_at: str | None = None
        self._previous: Previous | None = None

    def describe(self) -> dict[str, Any]:
        return {"kind": "files", "host": "localhost", "path": os.fsdecode(self.root),
                "listed_at": self.listed_at, "exclude": self.exclude.patterns}

    def _full(self, rel: bytes) -> bytes:
        return self.root + b"/" + rel if rel else self.root

    def entries(self, previous: Previous | None = None) -> Iterator[Entry]:
        self._previous = previous
        self.listed_at = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        try:
            st = os.lstat(self.root)
        except FileNotFoundError:
            raise UsageError(f"{os.fsdecode(self.root)}: the site folder does not exist") from None
        except PermissionError:
            raise UsageError(f"{os.fsdecode(self.root)}: permission denied") from None
        if not stat.S_ISDIR(st.st_mode):
            raise UsageError(f"{os.fsdecode(self.root)}: not a folder")
        root = entry_from_stat(b"", self.root, st)
        assert root is not None
        yield root
        yield from self._walk()

    def _listing(self, rel: bytes) -> tuple[bytes, bytes, list[bytes], dict[bytes, tuple]] | None:
        full = self._full(rel)
        try:
            with os.scandir(full) as it:
                names = sorted(e.name for e in it)
        except FileNotFoundError:
            self.report.warnings.append(f"{os.fsdecode(rel) or '.'}: folder vanished during the backup")
            return None
        except OSError as exc:
            self.report.errors.append(f"{os.fsdecode(rel) or '.'}: cannot list: {exc.strerror}")
            return None
        olds = self._previous(rel) if self._previous else {}
        return rel, full, names, olds

    def _walk(self) -> Iterator[Entry]:
        # Depth-first with an explicit stack (one generator frame, not one per level): each
        # folder's entry is yielded before its contents, which are listed only afterwards, so
        # the engine can answer previous(folder) by then.
        first = self._listing(b"")
        stack = [(first, iter(first[2]))] if first else []
        exclude = self.exclude if self.exclude else None
        lstat, S_ISDIR = os.lstat, stat.S_ISDIR
        while stack:
            (rel, full, _names, olds), names = stack[-1]
            name = next(names, None)
            if name is None:
                stack.pop()
                continue
            child = rel + b"/" + name if rel else name
            cfull = full + b"/" + name
            try:
                st = lstat(cfull)
            except FileNotFoundError:
                self.report.warnings.append(f"{os.fsdecode(child)}: vanished during the backup")
                continue
            except OSError as exc:
                self.report.errors.append(f"{os.fsdecode(child)}: cannot stat: {exc.strerror}")
                continue
            is_dir = S_ISDIR(st.st_mode)
            if exclude is not None and exclude.match_exact(child, is_dir):
                continue
            old = olds.get(name)
            kind = _type(st.st_mode)
            if old is not None and kind is not None and old == stat_key(
                    kind, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev):
                # Unchanged since the parent snapshot: skip readlink/xattrs/name lookups.
                yield Entry(child, kind, size=st.st_size if kind == "file" else 0, inode=st.st_ino,
                            dev=st.st_dev, nlink=st.st_nlink, reuse=True)
            else:
                try:
                    e = entry_from_stat(child, cfull, st)
                except OSError as exc:
                    self.report.errors.append(f"{os.fsdecode(child)}: {exc.strerror}")
                    continue
                if e is None:
                    continue
                yield e
            if is_dir:
                listing = self._listing(child)
                if listing:
                    stack.append((listing, iter(listing[2])))

    def local_path(self, e: Entry) -> bytes:
        """Where the entry's content can be read on this machine (for worker processes)."""
        return self._full(e.path)

    def batch_reader(self) -> tuple:
        return ("local",)

    def batch_key(self, e: Entry) -> bytes:
        return self._full(e.path)

    def open(self, files: list[Entry]) -> Iterator[tuple[Entry, Opener | None]]:
        for e in files:
            yield e, self._opener(e)

    def _opener(self, e: Entry) -> Opener:
        full = self._full(e.path)

        return lambda: os.fdopen(open_nofollow(full), "rb", buffering=0)
