"""Read a GNU tar stream member by member, fast.

The standard library's ``tarfile`` in stream mode (``r|``) copies every byte through several
buffers: measured on a 1.4 GB site stream it cost 4.5 CPU-seconds where reading the pipe
costs 1. This reader is for the streams resilience itself asks members for (``tar
--format=gnu`` of named files): it parses each header with ``tarfile.TarInfo.frombuf`` (the
library's own header parser, checksum included), follows GNU long names and long link
names, and hands out each member's bytes straight from the pipe. Anything else in the
stream (pax headers, sparse members, multi-volume) is refused as an error, never guessed.
"""

from __future__ import annotations

import tarfile
from collections.abc import Iterator
from typing import BinaryIO

BLOCK = 512
_SKIPPED_TYPES = {tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK}
_REFUSED_TYPES = {tarfile.GNUTYPE_SPARSE, tarfile.XHDTYPE, tarfile.XGLTYPE, tarfile.SOLARIS_XHDTYPE,
                  b"M", b"V"}


class TarFormatError(ValueError):
    """The stream is not a tar stream this reader understands."""


class Member:
    """One member: ``name`` (bytes, as in the archive), ``size``, ``mtime`` (seconds),
    ``isfile()``, and its content from :meth:`read` / :meth:`reader` (once, before the next
    member is asked for)."""

    __slots__ = ("name", "size", "mtime", "type", "_stream", "_left")

    def __init__(self, name: bytes, info: tarfile.TarInfo, stream: BinaryIO):
        self.name, self.size, self.mtime, self.type = name, info.size, info.mtime, info.type
        self._stream = stream
        self._left = info.size if info.type in tarfile.REGULAR_TYPES else 0

    def isfile(self) -> bool:
        return self.type in tarfile.REGULAR_TYPES

    def read(self, n: int = -1) -> bytes:
        """Up to ``n`` bytes of the content (all that is left when ``n`` < 0)."""
        want = self._left if n < 0 else min(n, self._left)
        if want <= 0:
            return b""
        data = _exact(self._stream, want)
        self._left -= len(data)
        return data

    def readinto(self, b) -> int:
        data = self.read(len(b))
        b[:len(data)] = data
        return len(data)

    def _finish(self) -> None:
        while self._left:
            self.read(min(self._left, 1 << 20))
        _exact(self._stream, -self.size % BLOCK if self.size else 0)


def _exact(stream: BinaryIO, n: int) -> bytes:
    if n == 0:
        return b""
    data = stream.read(n)
    if len(data) != n:
        raise TarFormatError("tar stream ended in the middle of a member")
    return data


def members(stream: BinaryIO) -> Iterator[Member]:
    """The members of the tar stream ``stream`` (a buffered binary reader), in order.

    Raises :class:`TarFormatError` on a damaged or unsupported stream. A member's unread
    content is skipped when the next one is asked for."""
    long_name: bytes | None = None
    zeros = 0
    while True:
        block = stream.read(BLOCK)
        if not block:
            # tar always ends with zero blocks: a stream cut short (a dropped connection) is
            # an error even when it stops between members.
            raise TarFormatError("tar stream ended without its end-of-archive marker")
        if len(block) != BLOCK:
            raise TarFormatError("tar stream ended in the middle of a header")
        if block == bytes(BLOCK):
            zeros += 1
            if zeros == 2:
                return
            continue
        zeros = 0
        try:
            info = tarfile.TarInfo.frombuf(block, "utf-8", "surrogateescape")
        except tarfile.HeaderError as exc:
            raise TarFormatError(f"bad tar header: {exc}") from None
        if info.type in _REFUSED_TYPES:
            raise TarFormatError(f"unsupported tar member type {info.type!r}")
        if info.type in _SKIPPED_TYPES:
            data = _exact(stream, info.size + (-info.size % BLOCK))[:info.size]
            if info.type == tarfile.GNUTYPE_LONGNAME:
                long_name = data.split(b"\0", 1)[0]
            continue
        name = long_name if long_name is not None else block[:100].split(b"\0", 1)[0]
        long_name = None
        if info.isdir() and name.endswith(b"/"):
            name = name.rstrip(b"/")
        member = Member(name, info, stream)
        yield member
        member._finish()
