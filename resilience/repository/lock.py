"""Repository locks: who is using the repository, so prune never deletes what a backup needs.

A lock is a small JSON object ``locks/<random>``: ``exclusive``, ``hostname``, ``pid``,
``pid_start`` (the process start time from /proc, so a recycled pid is not mistaken for the
holder), ``user``, ``created``, ``refreshed``. Backups, restores and verify take shared locks
(any number at once); forget --prune and unlock-free maintenance take an exclusive one.

A lock is *provably stale* when it was taken on this host and its process is gone (or the pid
now belongs to a process started at another time), or when it has not been refreshed for
STALE_AFTER seconds (holders refresh every REFRESH_EVERY seconds). Stale locks never block;
``unlock`` deletes them and nothing else.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import socket
import threading
import time
from dataclasses import dataclass
from typing import Any

from ..errors import TemporaryError
from .store import NotFound, Store

REFRESH_EVERY = 300
STALE_AFTER = 1800


def process_start(pid: int) -> int | None:
    """Start time of ``pid`` in clock ticks since boot, or None if there is no such process."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    # The command name may contain spaces and parentheses: split after the last ')'.
    fields = stat[stat.rfind(b")") + 2:].split()
    return int(fields[19])


@dataclass
class LockInfo:
    name: str
    exclusive: bool
    hostname: str
    pid: int
    pid_start: int | None
    user: str
    created: float
    refreshed: float

    @classmethod
    def parse(cls, name: str, raw: bytes) -> LockInfo:
        d = json.loads(raw)
        return cls(name, bool(d["exclusive"]), str(d["hostname"]), int(d["pid"]), d.get("pid_start"),
                   str(d.get("user", "")), float(d["created"]), float(d.get("refreshed", d["created"])))

    def stale_reason(self, now: float | None = None) -> str | None:
        """Why this lock is provably stale, or None if its holder may still be alive."""
        now = time.time() if now is None else now
        if self.hostname == socket.gethostname():
            start = process_start(self.pid)
            if start is None:
                return f"process {self.pid} on this host is gone"
            if self.pid_start is not None and start != self.pid_start:
                return f"pid {self.pid} now belongs to another process"
            return None
        if now - self.refreshed > STALE_AFTER:
            return f"not refreshed for {int(now - self.refreshed)} s"
        return None

    def describe(self) -> str:
        kind = "exclusive" if self.exclusive else "shared"
        age = int(time.time() - self.created)
        return f"{kind} lock by {self.user}@{self.hostname} pid {self.pid}, {age} s old"

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "exclusive": self.exclusive, "hostname": self.hostname, "pid": self.pid,
                "user": self.user, "created": self.created, "refreshed": self.refreshed,
                "stale": self.stale_reason()}


def list_locks(store: Store) -> list[LockInfo]:
    """Every readable lock in the repository (unreadable ones are reported as stale-by-host)."""
    out = []
    for name, _size in store.list("locks"):
        try:
            out.append(LockInfo.parse(name, store.get(name)))
        except (NotFound, ValueError, KeyError, TypeError):
            continue
    return out


class RepoLock:
    """A held lock. Use as a context manager; refreshes itself in a daemon thread."""

    def __init__(self, store: Store, exclusive: bool):
        self.store, self.exclusive = store, exclusive
        self.name = f"locks/{secrets.token_hex(16)}"
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.created = time.time()

    def _doc(self) -> bytes:
        import getpass

        try:
            user = getpass.getuser()
        except (KeyError, OSError):
            user = str(os.getuid())
        return json.dumps({
            "exclusive": self.exclusive, "hostname": socket.gethostname(), "pid": os.getpid(),
            "pid_start": process_start(os.getpid()), "user": user,
            "created": self.created, "refreshed": time.time(),
        }).encode()

    def _conflicts(self) -> list[LockInfo]:
        others = [lk for lk in list_locks(self.store) if lk.name != self.name and not lk.stale_reason()]
        return others if self.exclusive else [lk for lk in others if lk.exclusive]

    def acquire(self) -> RepoLock:
        """Take the lock or raise TemporaryError (exit 75) naming the holder."""
        conflicts = self._conflicts()
        if not conflicts:
            self.store.put(self.name, self._doc())
            # Two processes may have checked at the same moment: look again now that ours is
            # visible; if there is a conflict, both back off rather than both proceed.
            conflicts = self._conflicts()
            if conflicts:
                self.store.delete(self.name)
        if conflicts:
            raise TemporaryError(f"repository is locked: {conflicts[0].describe()} "
                                 "(retry later; 'resilience unlock' removes only stale locks)")
        self._thread = threading.Thread(target=self._refresh, name="lock-refresh", daemon=True)
        self._thread.start()
        return self

    def _refresh(self) -> None:
        while not self._stop.wait(REFRESH_EVERY):
            try:
                self.store.put(self.name, self._doc())
            except Exception:  # noqa: BLE001 - a failed refresh is retried next round
                continue

    def release(self) -> None:
        self._stop.set()
        # A lock we cannot delete goes stale on its own.
        with contextlib.suppress(Exception):
            self.store.delete(self.name)

    def __enter__(self) -> RepoLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def remove_stale(store: Store) -> tuple[list[LockInfo], list[LockInfo]]:
    """Delete provably stale locks; return (removed, kept)."""
    removed, kept = [], []
    for lk in list_locks(store):
        if lk.stale_reason():
            store.delete(lk.name)
            removed.append(lk)
        else:
            kept.append(lk)
    return removed, kept
