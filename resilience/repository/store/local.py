"""A repository in a local folder (or any mounted filesystem).

Writes go to a temporary file in the destination folder, are fsynced, then renamed into place
and the folder is fsynced: a crash leaves the old state or the new one, never half an object.
Temporary files start with ``.tmp-`` and are ignored by ``list``.
"""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Iterator
from pathlib import Path

from ...errors import ResilienceError, UsageError
from .base import NotFound, Store

TMP_PREFIX = ".tmp-"


class LocalStore(Store):
    concurrency = 2

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        self.url = str(self.root)
        self._made: set[Path] = set()

    def spec(self) -> tuple:
        return ("local", {"root": str(self.root)})

    def _path(self, name: str) -> Path:
        if name.startswith("/") or ".." in name.split("/"):
            raise ValueError(f"bad object name {name!r}")
        return self.root / name

    def create(self) -> None:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UsageError(f"{self.root}: cannot create repository folder: {exc.strerror}") from None

    def get(self, name: str) -> bytes:
        try:
            with open(self._path(name), "rb") as f:
                return f.read()
        except FileNotFoundError:
            raise NotFound(name) from None
        except OSError as exc:
            raise ResilienceError(f"{self.root}: cannot read {name}: {exc.strerror}") from None

    def get_range(self, name: str, offset: int, length: int) -> bytes:
        try:
            fd = os.open(self._path(name), os.O_RDONLY)
        except FileNotFoundError:
            raise NotFound(name) from None
        try:
            if offset < 0:
                offset = max(0, os.fstat(fd).st_size + offset)
            return os.pread(fd, length, offset)
        finally:
            os.close(fd)

    def put(self, name: str, data: bytes | memoryview) -> None:
        path = self._path(name)
        folder = path.parent
        if folder not in self._made:
            folder.mkdir(parents=True, exist_ok=True)
            self._made.add(folder)
        tmp = folder / f"{TMP_PREFIX}{os.getpid()}-{os.urandom(6).hex()}"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                view = memoryview(data)
                while view:
                    n = os.write(fd, view)
                    view = view[n:]
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, path)
            dfd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            if exc.errno == errno.ENOSPC:
                raise ResilienceError(f"{self.root}: no space left on the repository disk") from None
            raise ResilienceError(f"{self.root}: cannot write {name}: {exc.strerror}") from None

    def exists(self, name: str) -> bool:
        return self._path(name).exists()

    def size(self, name: str) -> int:
        try:
            return self._path(name).stat().st_size
        except FileNotFoundError:
            raise NotFound(name) from None

    def delete(self, name: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._path(name))

    def list(self, folder: str) -> Iterator[tuple[str, int]]:
        base = self._path(folder) if folder else self.root
        prefix = f"{folder}/" if folder else ""
        try:
            entries = list(os.scandir(base))
        except (FileNotFoundError, NotADirectoryError):
            return
        for e in sorted(entries, key=lambda e: e.name):
            if e.name.startswith(TMP_PREFIX):
                continue
            if e.is_dir(follow_symlinks=False):
                yield from self.list(prefix + e.name)
            elif e.is_file(follow_symlinks=False):
                yield prefix + e.name, e.stat(follow_symlinks=False).st_size

    def temporary_files(self) -> Iterator[Path]:
        """Leftovers of interrupted writes (for prune to clean)."""
        for dirpath, _dirs, files in os.walk(self.root):
            for f in files:
                if f.startswith(TMP_PREFIX):
                    yield Path(dirpath) / f
