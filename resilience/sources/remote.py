"""Files on a cluster member, over SSH, needing only sh, find and tar on the member.

Listing: one ``find -printf`` with NUL-separated fields (type, mode, owner, size, nanosecond
mtime and ctime, inode, device, link count, path, link target) — any byte string is a valid
name. The engine compares each entry's stat key with the parent snapshot, so only new or
changed files are asked for, by name, in one ``tar --null -T -`` stream; unchanged files never
cross the wire. Extended attributes are not read from members (no standard tool for them).
"""

from __future__ import annotations

import io
import os
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

from ..control.ssh import SSH, Target, quote, raise_for
from ..errors import ResilienceError, UsageError
from ..repository.parent import stat_key
from .base import Entry, Opener, Previous, Source, SourceReport
from .patterns import Matcher

_TYPES = {b"f": "file", b"d": "dir", b"l": "symlink", b"p": "fifo", b"c": "chardev", b"b": "blockdev",
          b"s": "socket"}
_FIELDS = 14
FIND_FORMAT = r"%y\0%m\0%U\0%G\0%u\0%g\0%s\0%T@\0%C@\0%i\0%D\0%n\0%P\0%l\0"
SPOOL = 32 << 20  # members larger than this are spooled to a temporary file, not kept in memory


def _ns(stamp: bytes) -> int:
    """``1700000000.1234567890`` (find's %T@) as integer nanoseconds, exactly."""
    sec, _, frac = stamp.partition(b".")
    return int(sec) * 1_000_000_000 + int((frac + b"000000000")[:9] or b"0")


def parse_listing(data: bytes) -> Iterator[tuple[bytes, dict[str, Any]]]:
    """Parse find output into (relative path, fields). Raises ValueError if malformed."""
    parts = data.split(b"\0")
    if parts and parts[-1] == b"":
        parts.pop()
    if len(parts) % _FIELDS:
        raise ValueError("listing truncated")
    for i in range(0, len(parts), _FIELDS):
        y, m, uid, gid, user, group, size, mtime, ctime, ino, dev, nlink, path, target = parts[i:i + _FIELDS]
        kind = _TYPES.get(y)
        if kind is None:
            continue
        yield path, {
            "type": kind, "mode": int(m, 8) & 0o7777, "uid": int(uid), "gid": int(gid),
            "user": user.decode("utf-8", "replace"), "group": group.decode("utf-8", "replace"),
            "size": int(size), "mtime_ns": _ns(mtime), "ctime_ns": _ns(ctime), "inode": int(ino),
            "dev": int(dev), "nlink": int(nlink), "target": target if kind == "symlink" else None,
        }


class RemoteSource(Source):
    """The folder ``path`` on member ``target``, minus ``exclude`` patterns."""

    def __init__(self, ssh: SSH, target: Target, path: str, exclude: list[str] | None = None):
        self.ssh, self.target, self.path = ssh, target, path.rstrip("/") or "/"
        self.exclude = Matcher(exclude or [])
        self.report = SourceReport()
        self.listed_at: str | None = None
        self.bytes_received = 0

    def describe(self) -> dict[str, Any]:
        return {"kind": "files", "host": self.target.name, "address": self.target.address, "path": self.path,
                "listed_at": self.listed_at, "exclude": self.exclude.patterns}

    def _listing(self) -> bytes:
        cmd = (f"LC_ALL=C; export LC_ALL; if [ ! -d {quote(self.path)} ]; then echo 'not a folder' >&2; exit 3; fi; "
               f"find {quote(self.path)} -printf {quote(FIND_FORMAT)}")
        proc = self.ssh.run(self.target, cmd, check=False, timeout=900)
        if proc.returncode == 3:
            raise UsageError(f"{self.target.name}:{self.path}: the site folder does not exist")
        if proc.returncode not in (0, 1):
            raise_for(self.target, proc.returncode, proc.stderr)
        for line in proc.stderr.decode("utf-8", "replace").splitlines():
            if line.strip():
                # find reports unreadable folders and keeps going: an error, not a failure.
                self.report.errors.append(f"{self.target.name}: {line.strip()}")
        self.bytes_received += len(proc.stdout)
        return proc.stdout

    def entries(self, previous: Previous | None = None) -> Iterator[Entry]:
        self.listed_at = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        data = self._listing()
        try:
            rows = parse_listing(data)
            excluded: list[bytes] = []
            olds: dict[bytes, dict[bytes, tuple]] = {}
            first = True
            for rel, f in rows:
                if first:
                    first = False
                    if rel != b"" or f["type"] != "dir":
                        raise ValueError("listing does not start with the site folder")
                    yield self._entry(b"", f)
                    continue
                if excluded and any(rel.startswith(x + b"/") for x in excluded):
                    continue
                is_dir = f["type"] == "dir"
                if self.exclude and self.exclude.match_exact(rel, is_dir):
                    if is_dir:
                        excluded.append(rel)
                    continue
                parent, _, name = rel.rpartition(b"/")
                if previous is not None:
                    if parent not in olds:
                        olds[parent] = previous(parent)
                    old = olds[parent].get(name)
                    if old is not None and old == stat_key(f["type"], f["size"], f["mtime_ns"], f["ctime_ns"],
                                                           f["inode"], f["dev"]):
                        yield Entry(rel, f["type"], size=f["size"] if f["type"] == "file" else 0,
                                    inode=f["inode"], dev=f["dev"], nlink=f["nlink"], reuse=True)
                        continue
                yield self._entry(rel, f)
        except ValueError as exc:
            raise ResilienceError(f"{self.target.name}: unreadable listing of {self.path}: {exc}") from None

    @staticmethod
    def _entry(rel: bytes, f: dict[str, Any]) -> Entry:
        return Entry(path=rel, type=f["type"], mode=f["mode"], uid=f["uid"], gid=f["gid"], user=f["user"],
                     group=f["group"], mtime_ns=f["mtime_ns"], ctime_ns=f["ctime_ns"], inode=f["inode"],
                     dev=f["dev"], nlink=f["nlink"], size=f["size"] if f["type"] == "file" else 0,
                     target=f["target"])

    def open(self, files: list[Entry]) -> Iterator[tuple[Entry, Opener | None]]:
        """One tar stream with exactly the requested files, in order; files missing from it
        vanished in the meantime (tar reports them and carries on)."""
        if not files:
            return
        import tarfile

        names = b"".join(e.path + b"\0" for e in files)
        cmd = (f"LC_ALL=C; export LC_ALL; cd {quote(self.path)} && "
               "exec tar --null --no-recursion --verbatim-files-from -T - -cf - --format=gnu")
        proc = self.ssh.popen(self.target, cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE)
        feeder = threading.Thread(target=_feed, args=(proc.stdin, names), daemon=True)
        feeder.start()
        errbuf: list[bytes] = []
        drain = threading.Thread(target=lambda: errbuf.append(proc.stderr.read()), daemon=True)
        drain.start()
        counting = _Counting(proc.stdout)
        pending = iter(files)
        try:
            with tarfile.open(fileobj=counting, mode="r|", errorlevel=1) as tar:
                for member in tar:
                    name = os.fsencode(member.name)
                    for e in pending:
                        if e.path == name:
                            break
                        self.report.warnings.append(f"{_show(e.path)}: vanished during the backup")
                        yield e, None
                    else:
                        raise ResilienceError(f"{self.target.name}: tar sent an unexpected member {member.name!r}")
                    if not member.isfile():
                        # Replaced by something else since the listing: back up as vanished.
                        self.report.warnings.append(f"{_show(e.path)}: changed type during the backup")
                        yield e, None
                        continue
                    data = _take(tar.extractfile(member), member.size)
                    if member.size != e.size or int(member.mtime) != e.mtime_ns // 1_000_000_000:
                        self.report.warnings.append(f"{_show(e.path)}: changed during the backup (stored as read)")
                    yield e, data
            for e in pending:
                self.report.warnings.append(f"{_show(e.path)}: vanished during the backup")
                yield e, None
        finally:
            self.bytes_received += counting.count
            proc.stdout.close()
            code = proc.wait()
            drain.join(5)
        # GNU tar exits 1 when files changed or vanished while it read them: reported above.
        if code not in (0, 1):
            raise_for(self.target, code, b"".join(errbuf))


def _feed(pipe, data: bytes) -> None:
    try:
        pipe.write(data)
        pipe.close()
    except (BrokenPipeError, OSError):
        pass


class _Counting(io.RawIOBase):
    """Counts the bytes received from the member (for the transfer figures)."""

    def __init__(self, raw):
        self.raw, self.count = raw, 0

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        n = self.raw.readinto(b)
        self.count += n or 0
        return n


def _take(f, size: int) -> Opener:
    """Read one member out of the stream now (the stream moves on); small ones stay in memory."""
    if size <= SPOOL:
        data = f.read()
        return lambda: io.BytesIO(data)
    tmp = tempfile.TemporaryFile(prefix="resilience-member-")  # noqa: SIM115 - closed by its reader
    while True:
        chunk = f.read(1 << 20)
        if not chunk:
            break
        tmp.write(chunk)
    tmp.seek(0)

    def opener():
        tmp.seek(0)
        return tmp

    return opener


def _show(path: bytes) -> str:
    return path.decode("utf-8", "backslashreplace")
