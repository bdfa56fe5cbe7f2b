"""``resilience publish``: the one path by which content legitimately changes on a site.

``--from DIR`` is the *complete* new site tree, the way a CMS's static export or build step
produces it (like an rsync source): what is in DIR is what the site serves afterwards, and
what is not in DIR is removed from the members — except paths matching the site's
``files.exclude`` (caches), which are left alone on the members as a restore does.

A publish:

1. refuses fewer distinct reviewers than ``publish.reviewers_required`` (default 3), and a
   tree a web server should never serve (unreadable entries, world-writable or set-id files,
   devices/fifos/sockets, symlinks leaving the tree) — before anything is stored or changed;
2. snapshots DIR into the repository as a ``files`` snapshot of the site, tagged ``publish``
   with the reviewers, message and publisher in ``meta.publish``: this is the new baseline the
   tamper watch and ``integrity check`` compare the members with;
3. deploys exactly that snapshot onto every member the way a restore does
   (:func:`resilience.targets.files.plan_member` / :func:`apply_member`: hard-link staging copy,
   one tar stream, atomic ``renameat2`` swap, verified afterwards): a member that fails keeps
   its old tree and the publish ends partial (exit 3);
4. verifies through the balancer and on each member that the published pages are served
   (the configured checks, with the digest of each checked page taken from the new tree, plus
   up to ten of the changed pages);
5. records every step in the evidence ledger (one ``publish`` run).
"""

from __future__ import annotations

import hashlib
import os
import pwd
import stat
from pathlib import Path
from typing import Any

from ..config import CheckConfig, Config
from ..control.ssh import SSH, target_for
from ..errors import PartialFailure, ResilienceError, UsageError
from ..evidence import Ledger
from ..repository.backup import Backup
from ..repository.repo import iter_tree
from ..repository.tree import FILE
from ..sources.local import LocalSource
from ..sources.patterns import Matcher
from ..targets.files import apply_member, content_digest, plan_member
from .backup import find_parent
from .repository import opened
from .restore_site import check_site

MAX_PAGE_CHECKS = 10
MAX_PROBLEMS = 20


# -- pure helpers ----------------------------------------------------------------------------

def distinct_reviewers(names: list[str] | tuple[str, ...]) -> list[str]:
    """The reviewers as recorded: blanks stripped, empty names dropped, duplicates (ignoring
    case and surrounding space) removed, first spelling kept, order kept."""
    seen: set[str] = set()
    out = []
    for raw in names:
        name = " ".join(str(raw).split())
        key = name.casefold()
        if name and key not in seen:
            seen.add(key)
            out.append(name)
    return out


def require_reviewers(names: list[str], required: int) -> None:
    """UsageError unless ``names`` (already distinct) holds at least ``required`` reviewers."""
    if len(names) < required:
        got = f" ({', '.join(names)})" if names else ""
        raise UsageError(f"publishing needs {required} distinct reviewers, got {len(names)}{got}: "
                         "add --reviewer NAME for each review level")


def lint_tree(root: str | os.PathLike, exclude: list[str] | None = None) -> list[str]:
    """Problems that make ``root`` unfit to be served (empty list: fine). Checks every entry
    (``lstat``, symlinks never followed): readable by the web server's user (files o+r,
    folders o+rx), not world-writable, no setuid/setgid, no devices, fifos or sockets, and
    symlinks that stay inside the tree (relative, never escaping with ``..``)."""
    root = Path(root)
    problems: list[str] = []
    skip = Matcher(exclude or [])
    try:
        st = os.lstat(root)
    except OSError as exc:
        return [f"{root}: {exc.strerror}"]
    if not stat.S_ISDIR(st.st_mode):
        return [f"{root}: not a folder"]

    def check(rel: str, st: os.stat_result) -> None:
        mode, name = st.st_mode, rel or "."
        if stat.S_ISLNK(mode):
            target = os.readlink(root / rel)
            resolved = os.path.normpath(os.path.join(os.path.dirname(rel), target))
            if os.path.isabs(target) or resolved == ".." or resolved.startswith("../"):
                problems.append(f"{name}: symlink leaves the site ({target})")
            return
        if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
            problems.append(f"{name}: not a file, folder or symlink")
            return
        need = stat.S_IROTH | (stat.S_IXOTH if stat.S_ISDIR(mode) else 0)
        if mode & need != need:
            problems.append(f"{name}: not readable by the web server (mode {stat.S_IMODE(mode):o})")
        if mode & stat.S_IWOTH:
            problems.append(f"{name}: world-writable (mode {stat.S_IMODE(mode):o})")
        if mode & (stat.S_ISUID | stat.S_ISGID) and not stat.S_ISDIR(mode):
            problems.append(f"{name}: setuid/setgid (mode {stat.S_IMODE(mode):o})")

    check("", st)
    files = 0
    for dirpath, dirnames, filenames in os.walk(root):
        base = os.path.relpath(dirpath, root)
        base = "" if base == "." else base
        for name in sorted(dirnames + filenames):
            rel = f"{base}/{name}" if base else name
            st = os.lstat(root / rel)
            if skip and skip.match(os.fsencode(rel), stat.S_ISDIR(st.st_mode)):
                if name in dirnames:
                    dirnames.remove(name)
                continue
            files += 1
            check(rel, st)
        dirnames[:] = [d for d in dirnames if not os.path.islink(os.path.join(dirpath, d))]
    if not files:
        problems.append(f"{root}: empty: refusing to publish an empty site")
    return problems


def page_file(url_path: str) -> str:
    """The file of the tree that serves ``url_path`` (``/`` → ``index.html``, ``/a/`` →
    ``a/index.html``, ``/a.html`` → ``a.html``); query strings ignored."""
    path = url_path.split("?", 1)[0].lstrip("/")
    return path + "index.html" if path == "" or path.endswith("/") else path


def publish_checks(checks: list[CheckConfig], digests: dict[str, str], changed: list[str]) -> list[CheckConfig]:
    """The checks that prove the new content is served: each configured check whose page is
    a file of the new tree gets that file's sha256 (a configured digest pins the old page);
    others stay as configured; then up to MAX_PAGE_CHECKS changed ``.html`` files, each with
    its digest. ``digests``: {relative path: sha256} of the new tree."""
    out: list[CheckConfig] = []
    seen = set()
    for c in checks or [CheckConfig()]:
        rel = page_file(c.path)
        if rel in digests:
            c = c.model_copy(update={"sha256": digests[rel]})
        out.append(c)
        seen.add(rel)
    extra = 0
    for rel in changed:
        if extra >= MAX_PAGE_CHECKS:
            break
        if rel.endswith(".html") and rel in digests and rel not in seen:
            out.append(CheckConfig(path="/" + rel, status=200, sha256=digests[rel]))
            seen.add(rel)
            extra += 1
    return out


def publisher_name() -> str:
    """Who runs the publish: the user behind sudo when there is one, else this process's user."""
    sudo = os.environ.get("SUDO_USER")
    if sudo:
        return sudo
    try:
        return pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:
        return str(os.geteuid())


def local_items(root: str | os.PathLike, exclude: list[str] | None) -> list[tuple[bytes, dict[str, Any]]]:
    """The tree at ``root`` as snapshot entries (path, node with sha256), parents first — what
    a snapshot of it would hold, without storing anything (for dry runs)."""
    source = LocalSource(root, exclude)
    items = []
    for e in source.entries():
        if not e.path:
            continue
        node = e.node()
        if e.type == FILE:
            h = hashlib.sha256()
            with open(source.local_path(e), "rb") as f:
                for block in iter(lambda f=f: f.read(1 << 20), b""):
                    h.update(block)
            node["sha256"] = h.hexdigest()
        items.append((e.path, node))
    return items


# -- the action ------------------------------------------------------------------------------

def publish(cfg: Config, ledger: Ledger, site_name: str, source_dir: str | os.PathLike, reviewers: list[str], *,
            message: str | None = None, publisher: str | None = None, dry_run: bool = False) -> dict[str, Any]:
    """Publish the complete tree ``source_dir`` as site ``site_name`` (see the module doc).
    Returns ``{site, run, dry_run, reviewers, snapshot, members: {host: plan + outcome},
    checks}``. UsageError (nothing stored or changed) for too few reviewers or an unfit tree;
    PartialFailure (exit 3) when some member or check failed, the failed members keeping
    their old tree; ResilienceError when every member failed."""
    site = cfg.site(site_name)
    if site.files is None:
        raise UsageError(f"site {site_name!r} has no files section: nothing to publish to")
    members = list(site.files.hosts)
    if "localhost" in members:
        raise UsageError("publish deploys onto remote members; a localhost site is not supported")
    src = Path(source_dir).resolve()
    names = distinct_reviewers(reviewers)
    publisher = publisher or publisher_name()
    required = cfg.publish.reviewers_required
    result: dict[str, Any] = {"site": site_name, "from": str(src), "dry_run": dry_run, "reviewers": names,
                              "reviewers_required": required, "publisher": publisher, "message": message,
                              "members": {}, "checks": {}}
    run = ledger.start_run("publish", {"site": site_name, "from": str(src), "reviewers": names,
                                       "reviewers_required": required, "publisher": publisher,
                                       "message": message}, dry_run=dry_run)
    with run:
        result["run"] = run.id
        with run.step("check reviews") as step:
            step.details.update(reviewers=names, required=required, given=len(reviewers))
            require_reviewers(names, required)
        with run.step("check the new tree") as step:
            problems = lint_tree(src, site.files.exclude)
            step.details.update(problems=problems[:MAX_PROBLEMS])
            if problems:
                more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
                raise UsageError(f"{src}: not publishable: {problems[0]}{more}")
        with opened(cfg) as repo, SSH() as ssh:
            snap = None
            if dry_run:
                items = local_items(src, site.files.exclude)
            else:
                snap, items = _snapshot(repo, run, site_name, site, src, names, message, publisher)
                result.update(snapshot=snap.id, short_id=snap.short_id, snapshot_time=snap.time,
                              content_sha256=content_digest(items))
            plans = {}
            for host in members:
                t = target_for(cfg, host)
                with run.step("plan files", host=host) as step:
                    plan, _ = plan_member(repo, snap, ssh, t, site.files.path, site.files.exclude, items=items)
                    shown = plan.as_dict()
                    step.details.update({k: v for k, v in shown.items() if k not in ("send", "remove")})
                    step.details.update(remove=shown["remove"][:50], send=shown["send"][:50])
                plans[host] = (t, plan)
                result["members"][host] = shown
            if dry_run:
                return result
            failed = _deploy(repo, ssh, run, site, snap, items, plans, result)
            changed = sorted({p.decode("utf-8", "surrogateescape") for _t, p in plans.values() for p in p.send})
        digests = {rel.decode("utf-8", "surrogateescape"): node["sha256"] for rel, node in items
                   if node.get("type") == FILE and node.get("sha256")}
        checks = publish_checks(site.checks, digests, changed)
        result["checks"] = check_site(cfg, site, [h for h in members if h not in failed], run, checks)
        failed_checks = [r for rs in result["checks"].values() for r in rs if not r["ok"]]
        result["failed_members"] = failed
        run.details.update(snapshot=result["snapshot"], failed_members=failed, failed_checks=len(failed_checks))
        if failed or failed_checks:
            run.outcome = "partial"
    if failed or failed_checks:
        raise PartialFailure("publish finished with problems: "
                             + "; ".join([f"{h}: {result['members'][h]['error']}" for h in failed]
                                         + [f"check {r['url']}: {r['error']}" for r in failed_checks]),
                             details=result)
    return result


def _snapshot(repo, run, site_name: str, site, src: Path, reviewers: list[str], message: str | None,
              publisher: str):
    with run.step("snapshot the new content") as step:
        source = LocalSource(src, site.files.exclude)
        parent = find_parent(repo, site_name, source)
        meta = {"publish": {"reviewers": reviewers, "message": message, "publisher": publisher,
                            "run": run.id, "from": str(src)}}
        snap, stats = Backup(repo, source, site=site_name, parent=parent, tags=["publish"], meta=meta).run()
        if stats.errors:
            raise ResilienceError(f"{src}: could not read the new content: {stats.errors[0]}")
        if not repo.index_loaded:
            # An unchanged tree never loads the index; reading the trees back needs it.
            repo.load_index()
        items = list(iter_tree(repo, snap.tree))
        step.details.update(snapshot=snap.id, parent=parent.id if parent else None, files_new=stats.files_new,
                            files_changed=stats.files_changed, bytes_added=stats.bytes_added,
                            content_sha256=content_digest(items))
    return snap, items


def _deploy(repo, ssh, run, site, snap, items, plans, result) -> list[str]:
    """Apply the snapshot to every member that differs; returns the members that failed
    (each keeps its old tree: apply_member removes its staging copy on failure)."""
    failed = []
    for host, (t, plan) in plans.items():
        if plan.in_sync:
            result["members"][host].update(applied=False, verified=True)
            continue
        try:
            with run.step("deploy files", host=host) as step:
                timing, listing = apply_member(repo, snap, ssh, t, site.files.path, plan, items)
                after, _ = plan_member(repo, snap, ssh, t, site.files.path, site.files.exclude,
                                       trusted=plan.proven, items=items, listing=listing, sent=set(plan.send))
                step.details.update(added=plan.added, changed=plan.changed, removed=plan.removed,
                                    verified=after.in_sync, snapshot=snap.id, **timing)
                if not after.in_sync:
                    raise ResilienceError(f"{host}: still differs from the published snapshot after the deploy")
            result["members"][host].update(applied=True, verified=True, **timing)
        except ResilienceError as exc:
            result["members"][host].update(applied=False, error=exc.message)
            failed.append(host)
    if failed and len(failed) == len(plans):
        raise ResilienceError("publish failed on every member: "
                              + "; ".join(f"{h}: {result['members'][h]['error']}" for h in failed), details=result)
    return failed


