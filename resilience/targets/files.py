"""Restore a site's files onto a cluster member: delta, staged, swapped in atomically.

1. List the member's current tree (``find``) and compare it with the snapshot. A file is
   unchanged when its stat key still equals the snapshot's (only possible on the member the
   snapshot was taken from: ctime cannot be faked); otherwise, when the size matches, the
   member computes its sha256 and it is compared with the snapshot's. What differs is sent,
   what should not be there is removed (a planted web shell, say).
2. ``cp -al`` makes a staging copy beside the live folder (hard links: no data copied), the
   removals are applied there and the changed entries are extracted into it from one tar
   stream (``--unlink-first``: a hard-linked live file is replaced, never written through).
   Every folder's metadata comes from the snapshot.
3. The staging folder and the live one are exchanged with ``renameat2(RENAME_EXCHANGE)`` —
   one atomic step, so nginx never serves a mix of old and new — and the old tree is deleted.
   Any failure before the exchange deletes the staging copy: the live tree stays as it was.
4. The member is listed again and must match the snapshot.
"""

from __future__ import annotations

import contextlib
import secrets
import subprocess
import threading
import time
from dataclasses import dataclass, field, fields
from typing import Any

from ..control.ssh import SSH, Target, quote, raise_for
from ..errors import ResilienceError
from ..repository.repo import Repository, iter_tree
from ..repository.snapshot import Snapshot
from ..repository.tree import DIR, FILE, SYMLINK, get_bytes
from ..sources.patterns import Matcher
from ..sources.remote import listing_command, parse_listing
from . import memberstate
from .tarwrite import write_tar

SAMPLE_BYTES = 128 << 20

# Exchanges two paths atomically (Linux renameat2 RENAME_EXCHANGE). Python is on every
# Ansible-managed host; coreutils 9.1 (Debian 12) has no `mv --exchange` yet.
EXCHANGE_PY = r"""
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
AT_FDCWD, RENAME_EXCHANGE = -100, 2
a, b = (os.fsencode(x) for x in sys.argv[1:3])
if libc.renameat2(AT_FDCWD, a, AT_FDCWD, b, RENAME_EXCHANGE) != 0:
    e = ctypes.get_errno()
    sys.exit("renameat2: " + os.strerror(e))
"""


@dataclass
class MemberPlan:
    """What restoring a member changes."""

    host: str
    send: list[bytes] = field(default_factory=list)     # files/links/specials to (re)create
    remove: list[bytes] = field(default_factory=list)   # paths that must not be there
    added: int = 0
    changed: int = 0
    removed: int = 0
    hashed: int = 0
    checked_by_metadata: int = 0
    unchanged: int = 0
    #: files found equal to the snapshot: path -> (inode, size, mtime ns)
    proven: dict[bytes, tuple] = field(default_factory=dict, repr=False)

    @property
    def in_sync(self) -> bool:
        return not self.send and not self.remove

    def as_dict(self) -> dict[str, Any]:
        # Not dataclasses.asdict: it deep-copies ``proven`` (one tuple per file) to drop it.
        d = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("proven", "send", "remove")}
        d["send"] = [p.decode("utf-8", "backslashreplace") for p in self.send[:200]]
        d["remove"] = [p.decode("utf-8", "backslashreplace") for p in self.remove[:200]]
        return d


def list_member(ssh: SSH, t: Target, path: str) -> dict[bytes, dict[str, Any]]:
    """The member's current tree at ``path`` as {relative path: listing fields} ({} when the
    folder does not exist)."""
    proc = ssh.run(t, listing_command(path), check=False, timeout=900)
    if proc.returncode == 3:
        return {}
    if proc.returncode not in (0, 1):
        raise_for(t, proc.returncode, proc.stderr)
    return _parsed(t, proc.stdout)


def _parsed(t: Target, listing: bytes) -> dict[bytes, dict[str, Any]]:
    try:
        return dict(parse_listing(listing))
    except ValueError as exc:
        raise ResilienceError(f"{t.name}: unreadable listing: {exc}") from None


def hash_on_member(ssh: SSH, t: Target, path: str, rels: list[bytes]) -> dict[bytes, str]:
    """sha256 of the given files (relative to ``path``), computed on the member; files that
    vanished meanwhile are absent from the result. One sha256sum at a time: parallel ones
    would interleave their output records."""
    if not rels:
        return {}
    cmd = f"cd {quote(path)} && xargs -0 -r sha256sum -z --"
    proc = ssh.run(t, cmd, input=b"".join(r + b"\0" for r in rels), check=False, timeout=1800)
    if proc.returncode not in (0, 123):
        raise_for(t, proc.returncode, proc.stderr)
    out = {}
    for rec in proc.stdout.split(b"\0"):
        if len(rec) > 66 and rec[64:66] == b"  ":
            out[rec[66:]] = rec[:64].decode()
    return out


def _same_meta(cur: dict[str, Any], node: dict[str, Any]) -> bool:
    if cur["type"] == SYMLINK:
        return cur["target"] == get_bytes(node, "target") and (cur["uid"], cur["gid"]) == (node.get("uid"), node.get("gid"))
    return (cur["mode"], cur["uid"], cur["gid"], cur["mtime_ns"]) == (
        node.get("mode"), node.get("uid"), node.get("gid"), node.get("mtime_ns"))


def plan_member(repo: Repository, snap: Snapshot, ssh: SSH, t: Target, path: str,
                exclude: list[str] | None = None, trusted: dict[bytes, tuple] | None = None,
                items: list | None = None, listing: bytes | None = None, sent: set[bytes] | None = None,
                current: dict[bytes, dict[str, Any]] | None = None) -> tuple[MemberPlan, list]:
    """Compare the member's tree with the snapshot. Returns (plan, the snapshot's entries).
    Paths matching ``exclude`` (not backed up, e.g. caches) are left alone. ``trusted`` maps
    files proven equal earlier in the same operation to their (inode, size, mtime ns): the
    staging copy's hard links move ctimes, and these need no second sha256. ``items`` (the
    snapshot's entries from an earlier call) and ``listing`` (the member's listing, taken
    already) or ``current`` (the same, parsed: :func:`list_member`) save reading them again.

    ``sent`` names the files a restore has just written (verification after the restore):
    when they add up to more than SAMPLE_BYTES, only a random sample of them (that much) is
    hashed; the others must match the snapshot in type, size, mtime, mode and owner, are
    counted in ``plan.checked_by_metadata`` and are not remembered as proven. Hashing a
    whole full restore again would cost as much as the restore (1.4 GB of sha256 on the
    member), and what tar just wrote from an authenticated stream is unlikely to differ."""
    skip = Matcher(exclude or [])
    trusted = trusted or {}
    if items is None:
        items = list(iter_tree(repo, snap.tree))
    # Hook: quarantined content (illegal-content runbook) never comes back with a restore.
    from ..runbooks.quarantine import filter_items

    items = filter_items(items)
    if current is None:
        current = list_member(ssh, t, path) if listing is None else _parsed(t, listing)
    known = memberstate.load(repo, t.name, path)
    proofs: dict[bytes, memberstate.Proof] = {}
    plan = MemberPlan(t.name)
    want: dict[bytes, dict[str, Any]] = dict(items)
    to_hash: list[bytes] = []
    just_sent: list[bytes] = []
    for rel, node in items:
        cur = current.get(rel)
        kind = node["type"]
        if cur is None:
            plan.added += kind != DIR
            if kind != DIR:
                plan.send.append(rel)
            continue
        if cur["type"] != kind:
            plan.remove.append(rel)
            plan.changed += 1
            if kind != DIR:
                plan.send.append(rel)
            continue
        if kind == DIR:
            continue
        if kind == FILE:
            same_stat = (cur["size"], cur["mtime_ns"], cur["ctime_ns"], cur["inode"]) == (
                node.get("size"), node.get("mtime_ns"), node.get("ctime_ns"), node.get("inode"))
            if not same_stat and node.get("sha256"):
                same_stat = node["sha256"] == memberstate.proven_sha256(
                    known, rel, cur["inode"], cur["size"], cur["mtime_ns"], cur["ctime_ns"])
            if (same_stat or trusted.get(rel) == (cur["inode"], cur["size"], cur["mtime_ns"])) \
                    and _same_meta(cur, node):
                plan.unchanged += 1
                plan.proven[rel] = (cur["inode"], cur["size"], cur["mtime_ns"])
                if node.get("sha256"):
                    proofs[rel] = (cur["inode"], cur["size"], cur["mtime_ns"], cur["ctime_ns"], node["sha256"])
                continue
            if cur["size"] == node.get("size") and node.get("sha256"):
                if sent is not None and rel in sent and _same_meta(cur, node):
                    just_sent.append(rel)
                else:
                    to_hash.append(rel)
                continue
            plan.changed += 1
            plan.send.append(rel)
        elif not _same_meta(cur, node):
            plan.changed += 1
            plan.send.append(rel)
        else:
            plan.unchanged += 1
    if sum(want[r].get("size", 0) for r in just_sent) > SAMPLE_BYTES:
        # Unpredictable to anyone on the member: it cannot tell which files will be read.
        secrets.SystemRandom().shuffle(just_sent)
        budget = SAMPLE_BYTES
        for rel in just_sent:
            size = want[rel].get("size", 0)
            if size <= budget:
                to_hash.append(rel)
                budget -= size
            else:
                plan.unchanged += 1
                plan.checked_by_metadata += 1
    else:
        to_hash += just_sent
    digests = hash_on_member(ssh, t, path, to_hash)
    plan.hashed = len(to_hash)
    for rel in to_hash:
        node, cur = want[rel], current[rel]
        if digests.get(rel) == node["sha256"] and _same_meta(cur, node):
            plan.unchanged += 1
            plan.proven[rel] = (cur["inode"], cur["size"], cur["mtime_ns"])
            proofs[rel] = (cur["inode"], cur["size"], cur["mtime_ns"], cur["ctime_ns"], node["sha256"])
        else:
            plan.changed += 1
            plan.send.append(rel)
    # Whatever is on the member but not in the snapshot goes (deepest last is fine: rm -rf).
    extra = sorted(p for p in current if p and p not in want
                   and not (skip and skip.match(p, current[p]["type"] == DIR)))
    top = []
    for p in extra:
        if not any(p.startswith(x + b"/") for x in top[-1:]):
            top.append(p)
    plan.remove.extend(top)
    plan.removed = len(extra)
    if proofs != known:
        memberstate.save(repo, t.name, path, proofs)
    return plan, items


def content_digest(items) -> str:
    """sha256 over the snapshot's (path, type, file sha256, link target) list: one digest
    naming exactly the tree a member holds once it matches the snapshot (for the evidence)."""
    import hashlib

    h = hashlib.sha256()
    for rel, node in items:
        extra = node.get("sha256") or (get_bytes(node, "target") or b"").hex()
        h.update(rel + b"\0" + node["type"].encode() + b"\0" + extra.encode() + b"\n")
    return h.hexdigest()


def apply_member(repo: Repository, snap: Snapshot, ssh: SSH, t: Target, path: str, plan: MemberPlan,
                 items) -> tuple[dict[str, Any], bytes]:
    """Build the staging copy, swap it in, delete the old tree. Returns (timings, the
    member's listing right after the swap, for :func:`plan_member`). Raises on failure,
    after removing the staging copy (the live tree is then untouched)."""
    parent, _, name = path.rstrip("/").rpartition("/")
    parent = parent or "/"
    stamp = time.strftime("%Y%m%dT%H%M%S")
    stage = f"{parent}/.{name}.resilience-stage-{stamp}"
    t0 = time.monotonic()
    q = quote
    # Staging copy: hard links, so only the changed files take space. Entries to be replaced
    # are removed from it at once: each is then a new inode, never written through a hard
    # link shared with the live tree.
    prep = (f"set -e; rm -rf {q(stage)}; if [ -d {q(path)} ]; then cp -al {q(path)} {q(stage)}; "
            f"else mkdir -p {q(stage)}; fi; cd {q(stage)} && xargs -0 -r rm -rf --")
    doomed = plan.remove + plan.send
    try:
        ssh.run(t, prep, input=b"".join(p + b"\0" for p in doomed), timeout=1800)
        xattrs = any(node.get("xattrs") for _, node in items)
        extract = (f"cd {q(stage)} && tar -xpf - --numeric-owner --delay-directory-restore"
                   + (" --xattrs --xattrs-include='user.*'" if xattrs else ""))
        proc = ssh.popen(t, extract, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        err: list[bytes] = []
        drain = threading.Thread(target=lambda: err.append(proc.stderr.read()), daemon=True)
        drain.start()
        # A tar that died early closes the pipe; its exit status below tells why.
        with contextlib.suppress(BrokenPipeError):
            write_tar(repo, [(b"", dict(snap.source.get("root") or {"type": DIR}, type=DIR))] + items,
                      set(plan.send), proc.stdin)
        code = proc.wait()
        drain.join(5)
        if code != 0:
            raise_for(t, code, b"".join(err) or b"tar failed")
        # One round trip: swap (exit 90 if that fails: nothing changed), delete the previous
        # tree (now under the staging name), list the result for the verification.
        swap = (f"if [ -d {q(path)} ]; then python3 -c {q(EXCHANGE_PY)} {q(stage)} {q(path)} || exit 90; "
                f"else mv -T {q(stage)} {q(path)} || exit 90; fi; rm -rf {q(stage)}; {listing_command(path)}")
        done = ssh.run(t, swap, check=False, timeout=1800)
        if done.returncode == 90 or done.returncode == 255:
            raise_for(t, done.returncode, done.stderr)
    except BaseException:
        ssh.run(t, f"rm -rf {q(stage)}", check=False, timeout=900)
        raise
    return {"staged_and_swapped_s": round(time.monotonic() - t0, 3)}, done.stdout
