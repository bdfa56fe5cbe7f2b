"""``resilience integrity check``: is each member's site tree exactly the latest files snapshot?

The snapshot *is* the baseline: there is no second database of digests to protect. A
member's tree is listed (``find``) and compared with the snapshot by
:func:`resilience.targets.files.plan_member` (stat key, else sha256 computed on the member).
What differs is then classified from the member's point of view:

- ``modified``: in the snapshot and on the member, but with other content, another type, or
  another link target;
- ``added``: on the member, not in the snapshot (a planted web shell);
- ``removed``: in the snapshot, missing on the member;
- ``attributes``: same content, but another mode or owner (counted as a finding: nobody but
  a publish or a restore should change them);
- ``touched``: same content, mode and owner, only the mtime moved (``touch``, an rsync that
  rewrote identical bytes): reported, **not** a finding.

Paths matching the site's ``files.exclude`` (caches) are ignored: they are not backed up, so
they have no baseline.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any

from ..config import Config
from ..control.ssh import SSH, Target, raise_for, target_for
from ..errors import UsageError
from ..evidence import Ledger
from ..repository.repo import Repository, iter_tree
from ..repository.snapshot import Snapshot
from ..repository.tree import DIR, FILE, SYMLINK, get_bytes
from ..sources.patterns import Matcher
from ..sources.remote import listing_command, parse_listing
from ..targets.files import hash_on_member, plan_member
from .repository import opened

#: the categories that make a member differ (``touched`` does not)
KINDS_FOUND = ("modified", "added", "removed", "attributes")
#: paths shown per category in the ledger (the JSON output carries them all)
LEDGER_PATHS = 50


@dataclass
class MemberIntegrity:
    """How one member's tree compares with the snapshot (paths relative to the site root)."""

    host: str
    snapshot: str
    modified: list[str] = field(default_factory=list)
    added: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    attributes: list[str] = field(default_factory=list)
    touched: list[str] = field(default_factory=list)
    compared: int = 0
    hashed: int = 0
    seconds: float = 0.0
    error: str | None = None

    @property
    def clean(self) -> bool:
        """True when nothing but mtimes differs (and the member could be compared)."""
        return self.error is None and not (self.modified or self.added or self.removed or self.attributes)

    def paths(self) -> list[str]:
        """Every path that makes this member differ, sorted."""
        return sorted(set(self.modified + self.added + self.removed + self.attributes))

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["clean"] = self.clean
        return d


def _text(p: bytes) -> str:
    return p.decode("utf-8", "backslashreplace")


def classify(items: list, current: dict[bytes, dict[str, Any]], send: list[bytes], exclude: list[str],
             digests: dict[bytes, str]) -> dict[str, list[bytes]]:
    """Sort what differs into modified/added/removed/attributes/touched. Pure (unit-tested).

    ``items``: the snapshot's (path, node) entries; ``current``: the member's listing;
    ``send``: the paths :func:`plan_member` found different (or missing); ``digests``: the
    member's sha256 of the files in ``send`` that exist there with the snapshot's size."""
    skip = Matcher(exclude or [])
    want = dict(items)
    out: dict[str, list[bytes]] = {k: [] for k in ("modified", "added", "removed", "attributes", "touched")}
    for rel in dict.fromkeys(send):
        node, cur = want.get(rel), current.get(rel)
        if node is None:
            continue
        if cur is None:
            out["removed"].append(rel)
            continue
        kind = node["type"]
        if cur["type"] != kind:
            same = False
        elif kind == FILE:
            sha = node.get("sha256")
            same = cur["size"] == node.get("size") and sha is not None and digests.get(rel) == sha
        elif kind == SYMLINK:
            same = cur["target"] == get_bytes(node, "target")
        else:
            same = True  # a special file: only its metadata can differ
        if not same:
            out["modified"].append(rel)
        elif (kind != SYMLINK and cur["mode"] != node.get("mode")) or (cur["uid"], cur["gid"]) != (
                node.get("uid"), node.get("gid")):
            out["attributes"].append(rel)
        else:
            out["touched"].append(rel)
    for rel, cur in current.items():
        if rel and rel not in want and not (skip and skip.match(rel, cur["type"] == DIR)):
            if cur["type"] != DIR:
                out["added"].append(rel)
            elif not any(p.startswith(rel + b"/") for p in current):
                out["added"].append(rel + b"/")  # an empty folder someone made
    for k in out:
        out[k].sort()
    return out


def compare_member(repo: Repository, snap: Snapshot, items: list, ssh: SSH, t: Target, path: str,
                   exclude: list[str]) -> MemberIntegrity:
    """Compare one member with the snapshot (``items`` = its entries, from :func:`iter_tree`).
    Reads only; raises ResilienceError/TemporaryError when the member cannot be listed."""
    t0 = time.monotonic()
    res = MemberIntegrity(t.name, snap.id)
    proc = ssh.run(t, listing_command(path), check=False, timeout=900)
    if proc.returncode == 3:
        listing = b""
    elif proc.returncode not in (0, 1):
        raise_for(t, proc.returncode, proc.stderr)
        listing = b""
    else:
        listing = proc.stdout
    current = dict(parse_listing(listing)) if listing else {}
    plan, _ = plan_member(repo, snap, ssh, t, path, exclude, items=items, listing=listing)
    want = dict(items)
    # Files whose content plan_member could not prove by stat key and that differ in metadata
    # only: hash them to tell a touch from a rewrite.
    maybe = [r for r in plan.send if r in current and r in want and current[r]["type"] == FILE
             and want[r]["type"] == FILE and current[r]["size"] == want[r].get("size")]
    digests = hash_on_member(ssh, t, path, maybe)
    found = classify(items, current, plan.send, exclude, digests)
    for k, paths in found.items():
        setattr(res, k, [_text(p) for p in paths])
    res.compared = len(items)
    res.hashed = plan.hashed + len(maybe)
    res.seconds = round(time.monotonic() - t0, 3)
    return res


def snapshot_items(repo: Repository, snap: Snapshot) -> list:
    """The snapshot's (path, node) entries, the root ``b""`` left out."""
    return [(rel, node) for rel, node in iter_tree(repo, snap.tree) if rel]


def integrity_check(cfg: Config, ledger: Ledger, site_name: str, *, hosts: list[str] | None = None,
                    snapshot: str = "latest") -> dict[str, Any]:
    """Compare each member of ``site_name`` (or ``hosts``) with the site's latest files snapshot
    (or ``snapshot``). Returns ``{site, snapshot, clean, members: {host: MemberIntegrity dict}}``;
    records one run (a step per member, outcome ``failed`` for a member that differs or could
    not be compared). Raises UsageError for an unknown site/host or a site without files."""
    site = cfg.site(site_name)
    if site.files is None:
        raise UsageError(f"site {site_name!r} has no files section: nothing to check")
    members = list(hosts or site.files.hosts)
    unknown = [h for h in members if h not in site.files.hosts]
    if unknown:
        raise UsageError(f"{', '.join(unknown)}: not a member of site {site_name!r} "
                         f"(members: {', '.join(site.files.hosts)})")
    if "localhost" in members:
        raise UsageError("integrity check compares remote members; site files on localhost are not supported")
    result: dict[str, Any] = {"site": site_name, "members": {}}
    run = ledger.start_run("integrity-check", {"site": site_name, "hosts": members, "snapshot": snapshot})
    result["run"] = run.id
    with run, opened(cfg) as repo, SSH() as ssh:
        repo.load_index()
        snap = repo.find_snapshot(snapshot, site=site_name, kind="files")
        items = snapshot_items(repo, snap)
        result.update(snapshot=snap.id, short_id=snap.short_id, snapshot_time=snap.time)
        for host in members:
            t = target_for(cfg, host)
            with run.step("compare with snapshot", host=host) as step:
                try:
                    res = compare_member(repo, snap, items, ssh, t, site.files.path, site.files.exclude)
                except Exception as exc:  # noqa: BLE001 - one unreachable member does not hide the others
                    res = MemberIntegrity(host, snap.id, error=str(exc))
                result["members"][host] = res.as_dict()
                step.details.update(record_details(res))
                if not res.clean:
                    step.outcome = "failed"
        result["clean"] = all(m["clean"] for m in result["members"].values())
        run.details.update(snapshot=snap.id, clean=result["clean"],
                           differing=[h for h, m in result["members"].items() if not m["clean"]])
    return result


def record_details(res: MemberIntegrity) -> dict[str, Any]:
    """What the ledger keeps of a comparison: counts, and the first paths of each kind."""
    d: dict[str, Any] = {"snapshot": res.snapshot, "clean": res.clean, "compared": res.compared,
                         "hashed": res.hashed, "seconds": res.seconds}
    for k in ("modified", "added", "removed", "attributes", "touched"):
        paths = getattr(res, k)
        d[f"{k}_count"] = len(paths)
        if paths:
            d[k] = paths[:LEDGER_PATHS]
    if res.error:
        d["error"] = res.error
    return d
