"""Repository commands: init, backup, snapshots, ls, diff, restore, verify, forget, unlock, copy.

Each command parses its options, calls one action, and renders the result (text or --json).
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import click

from ..actions import backup as backup_action
from ..actions import browse, maintenance
from ..actions.copy import copy_to
from ..actions.repository import opened
from ..actions.restore import restore_to_dir
from ..actions.restore_site import restore_site
from ..config import RepositoryCopy
from ..errors import ExitCode, UsageError
from ..repository.retention import Policy
from .context import app, common, emit
from .progress import progress_factory


def _size(n: int | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


@click.command("init", epilog="""\b
Examples:
  resilience init
  RESILIENCE_PASSWORD=… resilience --config /etc/resilience/resilience.yml init --json""")
@common
def init() -> None:
    """Create the repository at repository.url (refuses an existing one)."""
    a = app()
    res = maintenance.init(a.config(), a.ledger())
    emit(res, f"created repository {res['id'][:8]} at {res['repository']}")


@click.command("backup", epilog="""\b
Examples:
  resilience backup --site portal
  resilience backup --all --json          # from cron
  resilience backup --site portal --dry-run
Exit 3 when some files or sites could not be backed up (the rest was).""")
@click.option("--site", "sites", multiple=True, metavar="NAME", help="Site to back up (repeatable).")
@click.option("--all", "all_", is_flag=True, help="Back up every configured site.")
@click.option("--files-only", is_flag=True, help="Only the sites' files.")
@click.option("--database-only", is_flag=True, help="Only the sites' databases.")
@click.option("--dry-run", is_flag=True, help="Read and count, store nothing.")
@common
def backup(sites: tuple[str, ...], all_: bool, files_only: bool, database_only: bool, dry_run: bool) -> int:
    """Back up sites (files and database, as one recorded run) into the repository."""
    a = app()
    cfg = a.config()
    if all_ == bool(sites):
        raise UsageError("give --site NAME or --all")
    names = sorted(cfg.sites) if all_ else list(sites)
    if not names:
        raise UsageError("no sites configured")
    if files_only and database_only:
        raise UsageError("give --files-only or --database-only, not both")
    results, code = backup_action.backup(cfg, a.ledger(), names, dry_run=dry_run, files=not database_only,
                                         database=not files_only, progress=progress_factory("backup"))

    # Under cron (no terminal) a successful backup prints nothing unless -v: cron mails output.
    chatty = a.verbose > 0 or sys.stdout.isatty()

    def human() -> None:
        for r in results:
            if r.get("skipped"):
                if chatty:
                    click.echo(f"{r['site']}: skipped ({r['skipped']})")
                continue
            if "error" in r:
                click.echo(f"{r['site']}: FAILED: {r['error']}", err=True)
            for w in r.get("warnings", [])[:20]:
                click.echo(f"{r['site']}: warning: {w}", err=True)
            for e in r.get("errors", [])[:20]:
                click.echo(f"{r['site']}: error: {e}", err=True)
            for c in r.get("copies", []):
                if not c["ok"]:
                    click.echo(f"{r['site']}: copy to {c['to']} FAILED: {c.get('error')}", err=True)
            if not chatty:
                continue
            if "files_new" in r:
                head = "would add" if dry_run else f"snapshot {r.get('short_id')} saved;"
                click.echo(f"{r['site']}: {head} files new {r['files_new']}, changed {r['files_changed']}, "
                           f"unchanged {r['files_unchanged']}; read {_size(r['bytes_read'])}, added {_size(r['bytes_added'])}, "
                           f"stored {_size(r['bytes_stored'])} in {r['duration_s']:.1f} s")
            d = r.get("database")
            if d and d.get("dry_run"):
                click.echo(f"{r['site']}: database {d['database']}: would dump {d['tables']} tables, {d['rows']} rows")
            elif d and "bytes_read" in d:
                head = "would add" if dry_run else f"snapshot {d.get('short_id')} saved;"
                click.echo(f"{r['site']}: database {d['database']}: {head} {d['tables']} tables, {d['rows']} rows; "
                           f"dump {_size(d['bytes_read'])}, stored {_size(d['bytes_stored'])} in {d['duration_s']:.1f} s")
            for c in r.get("copies", []):
                if c["ok"]:
                    click.echo(f"  copy to {c['to']}: {c['snapshots_copied']} snapshot(s), {_size(c['bytes_sent'])} sent")

    emit({"ok": code == 0, "dry_run": dry_run, "results": results}, human)
    return code


@click.command("snapshots", epilog="""\b
Examples:
  resilience snapshots
  resilience snapshots --site portal --json""")
@click.option("--site", metavar="NAME", help="Only this site.")
@common
def snapshots(site: str | None) -> None:
    """List snapshots, oldest first."""
    a = app()
    cfg = a.config()
    if site:
        cfg.site(site)
    with opened(cfg) as repo:
        snaps = repo.snapshots(site=site)

    def human() -> None:
        if not snaps:
            click.echo("no snapshots")
            return
        click.echo(f"{'ID':<10}{'TIME (UTC)':<21}{'SITE':<12}{'KIND':<10}{'SOURCE':<32}{'SIZE':>12}")
        for s in snaps:
            src = f"{s.source.get('host', '')}:{s.source.get('path', '')}"
            click.echo(f"{s.short_id:<10}{s.time[:19].replace('T', ' '):<21}{s.site:<12}{s.kind:<10}"
                       f"{src[:31]:<32}{_size(s.summary.get('bytes_total')):>12}")

    emit({"snapshots": [s.public() for s in snaps]}, human)


@click.command("ls", epilog="""\b
Examples:
  resilience ls latest
  resilience ls 3fa2c1d0 news/ --json""")
@click.argument("snapshot")
@click.argument("path", required=False)
@click.option("--site", metavar="NAME", help="Resolve 'latest' within this site.")
@common
def ls(snapshot: str, path: str | None, site: str | None) -> None:
    """List the entries of SNAPSHOT (under PATH)."""
    a = app()
    with opened(a.config()) as repo:
        repo.load_index()
        snap = repo.find_snapshot(snapshot, site=site)
        entries = browse.ls(repo, snap, path)

    def human() -> None:
        for e in entries:
            t = {"dir": "d", "symlink": "l", "fifo": "p", "chardev": "c", "blockdev": "b", "socket": "s"}.get(e["type"], "-")
            owner = f"{e['user'] or e['uid']}/{e['group'] or e['gid']}"
            link = f" -> {e['target']}" if "target" in e else ""
            click.echo(f"{t}{e['mode'][2:]:>5} {owner:<18} {e['size'] if e['size'] is not None else '':>10}  {e['path']}{link}")

    emit({"snapshot": snap.id, "entries": entries}, human)


@click.command("diff", epilog="""\b
Examples:
  resilience diff 3fa2c1d0 latest
  resilience diff 3fa2c1d0 9b1e77aa --json""")
@click.argument("snapshot_a")
@click.argument("snapshot_b")
@click.option("--site", metavar="NAME", help="Resolve 'latest' within this site.")
@common
def diff(snapshot_a: str, snapshot_b: str, site: str | None) -> None:
    """Show paths added (+), removed (-), changed (M) and with changed metadata (U)."""
    a = app()
    with opened(a.config()) as repo:
        repo.load_index()
        sa = repo.find_snapshot(snapshot_a, site=site)
        sb = repo.find_snapshot(snapshot_b, site=site)
        changes = browse.diff(repo, sa, sb)

    def human() -> None:
        for mark, key in (("+", "added"), ("-", "removed"), ("M", "changed"), ("U", "metadata")):
            for p in changes[key]:
                click.echo(f"{mark} {p}")
        click.echo(f"{len(changes['added'])} added, {len(changes['removed'])} removed, "
                   f"{len(changes['changed'])} changed, {len(changes['metadata'])} metadata only")

    emit({"a": sa.id, "b": sb.id, **changes}, human)


@click.command("restore", epilog="""\b
Examples:
  resilience restore --site portal --host web1 --files-only --yes     # after a tamper
  resilience restore --site portal --all-members --dry-run            # what would change
  resilience restore --site portal --database-only                    # prove the dump (scratch)
  resilience restore --site portal --database-only --target live --yes
  resilience restore --site portal --snapshot 3fa2c1d0 --to /tmp/p --include 'news/**'
Onto members: only what differs is sent, extra files are removed, the new tree is staged
beside the live one and swapped in atomically, then the site is checked through the
balancer. With --to DIR the site's files go into a new or empty local folder instead.""")
@click.option("--site", required=True, metavar="NAME", help="The site to restore.")
@click.option("--snapshot", default="latest", show_default=True, metavar="ID|latest")
@click.option("--host", "hosts", multiple=True, metavar="HOST", help="Restore this member (repeatable).")
@click.option("--all-members", is_flag=True, help="Restore every member of the site (the default).")
@click.option("--files-only", is_flag=True, help="Only the files.")
@click.option("--database-only", is_flag=True, help="Only the database.")
@click.option("--target", type=click.Choice(["scratch", "live"]), default="scratch", show_default=True,
              help="Database: prove the dump in a scratch database, or replace the live one.")
@click.option("--to", "dest", type=click.Path(path_type=Path), metavar="DIR",
              help="Restore the files into this new or empty local folder instead.")
@click.option("--include", multiple=True, metavar="PATTERN", help="With --to: only matching paths.")
@click.option("--dry-run", is_flag=True, help="Show exactly what would change; change nothing.")
@click.option("--yes", is_flag=True, help="Do not ask before changing live members or the live database.")
@common
def restore(site: str, snapshot: str, hosts: tuple[str, ...], all_members: bool, files_only: bool,
            database_only: bool, target: str, dest: Path | None, include: tuple[str, ...], dry_run: bool,
            yes: bool) -> None:
    """Restore a site from a snapshot: onto its members, its database, or into a folder."""
    a = app()
    if files_only and database_only:
        raise UsageError("give --files-only or --database-only, not both")
    if hosts and all_members:
        raise UsageError("give --host or --all-members, not both")
    if dest is not None:
        if hosts or all_members or database_only:
            raise UsageError("--to restores files into a folder; it does not take --host, --all-members "
                             "or --database-only")
        return _restore_to_folder(a, site, snapshot, dest, include, dry_run)
    if include:
        raise UsageError("--include needs --to DIR")
    res = restore_site(a.config(), a.ledger(), site, snapshot=snapshot, hosts=list(hosts) or None,
                       files=not database_only, database=not files_only, target=target, dry_run=dry_run,
                       confirm=None if yes else _confirm)

    def human() -> None:
        verb = "would" if dry_run else "did"
        if res.get("short_id"):
            click.echo(f"snapshot {res['short_id']} of {site} ({res['snapshot_time'][:19]})")
        for host, m in res["members"].items():
            state = "in sync" if not m["send"] and not m["remove"] else (
                f"{verb} add {m['added']}, change {m['changed']}, remove {m['removed']}")
            click.echo(f"  {host}: {state}; {m['unchanged']} unchanged ({m['hashed']} compared by sha256)")
            if dry_run:
                for p in m["send"]:
                    click.echo(f"    send   {p}")
                for p in m["remove"]:
                    click.echo(f"    remove {p}")
        if "database" in res:
            d = res["database"]
            counts = d.get("expected_counts") or {}
            if dry_run:
                click.echo(f"  database {d['database']}: would restore snapshot {d['snapshot'][:8]} to {d['target']} "
                           f"({len(counts)} tables, {sum(counts.values())} rows)")
            else:
                where = (f"live (previous database kept as {d['kept_database']})" if d["target"] == "live"
                         else f"scratch {d['scratch']}" + (" (kept)" if d.get("scratch_kept") else " (dropped)"))
                click.echo(f"  database {d['database']}: snapshot {d['snapshot'][:8]} restored to {where}; "
                           f"{len(counts)} tables, {sum(counts.values())} rows, counts verified")
        for where, results in res.get("checks", {}).items():
            bad = [r for r in results if not r["ok"]]
            click.echo(f"  check {where}: {'ok' if not bad else '; '.join(r['url'] + ': ' + r['error'] for r in bad)}")

    emit(res, human)


def _confirm(question: str) -> bool:
    if not sys.stdin.isatty():
        raise UsageError("this changes live hosts: confirm with --yes (no terminal to ask on)")
    return click.confirm(question, default=False, err=True)


def _restore_to_folder(a, site: str, snapshot: str, dest: Path, include: tuple[str, ...], dry_run: bool) -> None:
    res = restore_to_dir(a.config(), a.ledger(), site, dest, snapshot=snapshot, include=list(include),
                         dry_run=dry_run, progress=progress_factory("restore"))

    def human() -> None:
        if dry_run:
            click.echo(f"would restore {res['entries']} entries ({_size(res['bytes'])}) of snapshot "
                       f"{res['short_id']} into {dest}")
            return
        click.echo(f"restored snapshot {res['short_id']} of {site} into {dest}: {res['files']} files, "
                   f"{res['dirs']} folders, {res['symlinks']} symlinks, {res['hardlinks']} hardlinks, {_size(res['bytes'])}")
        for w in res.get("warnings", [])[:20]:
            click.echo(f"  warning: {w}", err=True)

    emit(res, human)


def _fraction(value: str | None) -> float:
    if value is None:
        return 0.0
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*%\s*", value)
    if not m or not 0 < float(m.group(1)) <= 100:
        raise UsageError(f"--read-data-subset: expected a percentage such as 10%, got {value!r}")
    return float(m.group(1)) / 100


@click.command("verify", epilog="""\b
Examples:
  resilience verify                        # structure only, fast
  resilience verify --read-data-subset 10% # plus a random tenth of the data
  resilience verify --read-data --json     # everything
Exit 0 clean, 4 damaged (naming every affected snapshot and file).""")
@click.option("--read-data", is_flag=True, help="Download, decrypt and re-hash every blob.")
@click.option("--read-data-subset", metavar="N%", help="Read a random N% of the packs.")
@click.option("--seed", type=int, hidden=True)
@common
def verify(read_data: bool, read_data_subset: str | None, seed: int | None) -> int:
    """Check the repository's structure (and data)."""
    a = app()
    if read_data and read_data_subset:
        raise UsageError("give --read-data or --read-data-subset, not both")
    fraction = 1.0 if read_data else _fraction(read_data_subset)
    report, code = maintenance.verify(a.config(), a.ledger(), read_data=fraction, seed=seed)

    def human() -> None:
        for w in report["warnings"]:
            click.echo(f"warning: {w}", err=True)
        for e in report["errors"]:
            click.echo(f"error: {e}")
        for d in report["damaged_snapshots"].values():
            click.echo(f"damaged: snapshot {d['short_id']} ({d['site']}, {d['time'][:19]}): {len(d['files'])} file(s)")
            for p in d["problems"]:
                click.echo(f"  {p}")
        state = "no errors" if report["ok"] else "REPOSITORY DAMAGED"
        click.echo(f"{report['snapshots']} snapshot(s), {report['packs']} pack(s), read {report['packs_read']} "
                   f"pack(s) / {report['blobs_read']} blob(s): {state}")

    emit(report, human)
    return code


@click.command("forget", epilog="""\b
Examples:
  resilience forget --dry-run                       # the config's retention
  resilience forget --site portal --keep-daily 7 --keep-weekly 4 --prune
Policies follow restic's: newest snapshot per hour/day/ISO week/month/year.""")
@click.option("--site", metavar="NAME", help="Only this site.")
@click.option("--keep-last", type=click.IntRange(min=0))
@click.option("--keep-hourly", type=click.IntRange(min=0))
@click.option("--keep-daily", type=click.IntRange(min=0))
@click.option("--keep-weekly", type=click.IntRange(min=0))
@click.option("--keep-monthly", type=click.IntRange(min=0))
@click.option("--keep-yearly", type=click.IntRange(min=0))
@click.option("--keep-within", metavar="DURATION", help="e.g. 30d, 12h.")
@click.option("--prune", "do_prune", is_flag=True, help="Also delete data no snapshot uses.")
@click.option("--dry-run", is_flag=True, help="Show what would be removed.")
@common
def forget(site, keep_last, keep_hourly, keep_daily, keep_weekly, keep_monthly, keep_yearly, keep_within,
           do_prune, dry_run) -> None:
    """Remove snapshots by retention policy (default: the config's), optionally prune."""
    a = app()
    cfg = a.config()
    given = {"keep_last": keep_last, "keep_hourly": keep_hourly, "keep_daily": keep_daily,
             "keep_weekly": keep_weekly, "keep_monthly": keep_monthly, "keep_yearly": keep_yearly,
             "keep_within": keep_within}
    if keep_within is not None:
        from ..config import parse_duration

        try:
            parse_duration(keep_within)
        except ValueError as exc:
            raise UsageError(f"--keep-within: {exc}") from None
    data = given if any(v is not None for v in given.values()) else cfg.retention.model_dump()
    policy = Policy.from_mapping(data)
    res = maintenance.forget(cfg, a.ledger(), policy, site=site, do_prune=do_prune, dry_run=dry_run)

    def human() -> None:
        verb = "would remove" if dry_run else "removed"
        for g in res["groups"]:
            click.echo(f"{g['site']} ({g['kind']}): keep {len(g['keep'])}, {verb} {len(g['remove'])}")
            for s in g["keep"]:
                click.echo(f"  keep   {s['short_id']}  {s['time'][:19]}  {', '.join(s['reasons'])}")
            for s in g["remove"]:
                click.echo(f"  {'remove' if not dry_run else 'would remove'} {s['short_id']}  {s['time'][:19]}")
        if "prune" in res:
            p = res["prune"]
            click.echo(f"prune: {p['packs_deleted']} pack(s) deleted, {p['packs_repacked']} repacked, "
                       f"{_size(p['bytes_freed'])} freed")

    emit(res, human)


@click.command("unlock", epilog="""\b
Examples:
  resilience unlock
Removes only locks that are provably stale (holder gone); never a live one.""")
@common
def unlock() -> None:
    """Remove stale repository locks."""
    a = app()
    res = maintenance.unlock(a.config(), a.ledger())

    def human() -> None:
        for lk in res["removed"]:
            click.echo(f"removed stale lock of {lk['user']}@{lk['hostname']} pid {lk['pid']} ({lk['stale']})")
        for lk in res["kept"]:
            click.echo(f"kept live lock of {lk['user']}@{lk['hostname']} pid {lk['pid']}")
        if not res["removed"] and not res["kept"]:
            click.echo("no locks")

    emit(res, human)


@click.command("copy", epilog="""\b
Examples:
  resilience copy --to s3://offsite/portal --endpoint https://s3.example.gov.cn
  resilience copy --to /mnt/usb/portal-repo --site portal
The destination is created on first use (same password unless --password-file).""")
@click.option("--to", "url", required=True, metavar="URL", help="Destination repository (path or s3://…).")
@click.option("--site", metavar="NAME", help="Only this site's snapshots.")
@click.option("--endpoint", metavar="URL", help="S3 endpoint of the destination.")
@click.option("--password-file", type=click.Path(dir_okay=False, path_type=Path),
              help="Destination password (default: the source's).")
@common
def copy(url: str, site: str | None, endpoint: str | None, password_file: Path | None) -> int:
    """Copy snapshots into a second repository, sending only what it lacks."""
    a = app()
    cfg = a.config()
    if site:
        cfg.site(site)
    known = {c.url: c for c in (cfg.repository.copies if cfg.repository else [])}
    try:
        rc = known.get(url) or RepositoryCopy.model_validate(
            {"url": url, "endpoint": endpoint, "password_file": str(password_file) if password_file else None},
            context={"base": Path.cwd()})
    except Exception as exc:  # noqa: BLE001 - pydantic's message, made one line
        raise UsageError(f"--to: {str(exc).splitlines()[-1].strip()}") from None
    ledger = a.ledger()
    with ledger.start_run("copy", {"to": rc.url, "site": site}) as run, opened(cfg) as repo:
        repo.load_index(strict=True)
        snaps = repo.snapshots(site=site)
        with run.step(f"copy to {rc.url}") as step:
            res = copy_to(cfg, repo, rc, snaps)
            step.details.update(res)
    emit(res, f"copied {res['snapshots_copied']} snapshot(s) to {res['to']} "
              f"({res['snapshots_present']} already there), sent {res['blobs_sent']} blob(s), {_size(res['bytes_sent'])}")
    return ExitCode.OK
