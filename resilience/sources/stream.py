"""Virtual files produced by programs (a database dump, its globals): the engine's input for
anything that is not a folder on disk.

Each :class:`StreamFile` names a path inside the snapshot and an opener returning a readable
binary stream (a pipe from pg_dump, a BytesIO…). The size need not be known: streams are cut
as they are read. There is no parent to compare with: every backup reads every stream, and
deduplication makes the unchanged parts cost nothing in the repository.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from .base import Entry, Opener, Previous, Source, SourceReport

UNKNOWN_SIZE = 1 << 62  # forces streaming: the engine never tries to read it in one call


@dataclass
class StreamFile:
    path: str
    opener: Opener
    mode: int = 0o600
    size: int | None = None


class StreamSource(Source):
    """A flat set of virtual files under a virtual root folder."""

    def __init__(self, files: list[StreamFile], describe: dict[str, Any]):
        self.files = files
        self._describe = dict(describe)
        self.report = SourceReport()

    def describe(self) -> dict[str, Any]:
        return dict(self._describe)

    def entries(self, previous: Previous | None = None) -> Iterator[Entry]:
        now = time.time_ns()
        self._describe.setdefault("listed_at", datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"))
        yield Entry(b"", "dir", mode=0o700, mtime_ns=now, ctime_ns=now)
        folders: set[bytes] = set()
        for f in self.files:
            parts = f.path.strip("/").encode().split(b"/")
            for i in range(1, len(parts)):
                folder = b"/".join(parts[:i])
                if folder not in folders:
                    folders.add(folder)
                    yield Entry(folder, "dir", mode=0o700, mtime_ns=now, ctime_ns=now)
            yield Entry(b"/".join(parts), "file", mode=f.mode, mtime_ns=now, ctime_ns=now,
                        size=f.size if f.size is not None else UNKNOWN_SIZE)

    def open(self, files: list[Entry]) -> Iterator[tuple[Entry, Opener | None]]:
        by_path = {f.path.strip("/").encode(): f for f in self.files}
        for e in files:
            yield e, by_path[e.path].opener
