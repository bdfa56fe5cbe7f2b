"""Tamper watch commands: ``integrity check`` and ``watch``. Parse, call one action, render."""

from __future__ import annotations

import json
import sys

import click

from ..evidence.redact import redact
from .context import app, common, emit

KINDS = ("modified", "added", "removed", "attributes")


@click.group("integrity")
def integrity() -> None:
    """Compare site members with the latest snapshot (the baseline)."""


@integrity.command("check", epilog="""\b
Examples:
  resilience integrity check --site portal
  resilience integrity check --site portal --host web1 --json
Exit 0: every member matches the site's latest files snapshot; 1: a member differs (the
files are listed) or could not be compared; 2: bad usage. A file whose mtime alone moved
(`touch`, same bytes) is listed as touched, not as a difference. Excluded paths (the
site's files.exclude, e.g. cache/**) are ignored.""")
@click.option("--site", required=True, metavar="NAME", help="Site to check.")
@click.option("--host", "hosts", multiple=True, metavar="HOST", help="Only this member (repeatable).")
@click.option("--snapshot", default="latest", show_default=True, metavar="ID",
              help="Compare with this files snapshot instead of the latest.")
@common
def check(site: str, hosts: tuple[str, ...], snapshot: str) -> None:
    """Compare each member's files with the site's latest files snapshot."""
    from ..actions.integrity import integrity_check

    a = app()
    res = integrity_check(a.config(), a.ledger(), site, hosts=list(hosts) or None, snapshot=snapshot)

    def human() -> None:
        click.echo(f"site {site}: snapshot {res['short_id']} ({str(res['snapshot_time'])[:19].replace('T', ' ')}) "
                   f"run {res['run']}")
        for host, m in res["members"].items():
            if m["error"]:
                click.echo(f"  {host}: NOT COMPARED: {m['error']}")
                continue
            counts = ", ".join(f"{len(m[k])} {k}" for k in KINDS if m[k])
            state = "clean" if m["clean"] else f"DIFFERS ({counts})"
            extra = f", {len(m['touched'])} touched (same content)" if m["touched"] else ""
            click.echo(f"  {host}: {state}  [{m['compared']} entries, {m['hashed']} hashed, {m['seconds']} s{extra}]")
            for k in KINDS:
                for p in m[k]:
                    click.echo(f"    {k:<10} {p}")

    emit(res, human)
    if not res["clean"]:
        raise click.exceptions.Exit(1)


@click.command("watch", epilog="""\b
Examples:
  resilience watch --site portal                      # alarm only
  resilience watch --site portal --auto-respond       # take out, restore, rejoin
  resilience watch --site portal --once --json        # one round (cron)
Watches every member's site tree live (inotifywait over SSH); an event is a suspicion,
confirmed against the latest files snapshot before anything happens. Every --interval
seconds: a full comparison of each member with the snapshot, the check pages through the
site URL and directly from each member (digests compared), and availability. A finding is
recorded in the evidence and notified; with --auto-respond the member is set to MAINT on the
balancer at once, then isolated, restored from the snapshot and rejoined. The last serving
member is never taken out (alarm only). --once exits 0 when clean, 1 on a finding.""")
@click.option("--site", required=True, metavar="NAME", help="Site to watch.")
@click.option("--auto-respond", is_flag=True, help="Take a tampered member out, restore it, rejoin it.")
@click.option("--interval", type=click.FloatRange(1, 86400), default=None, metavar="S",
              help="Seconds between full rounds (default: watch.interval of the config, 60).")
@click.option("--once", is_flag=True, help="One full round, then exit (0 clean, 1 finding).")
@common
def watch(site: str, auto_respond: bool, interval: float | None, once: bool) -> None:
    """Watch a site for tampering: files live, pages and availability every interval."""
    from ..actions import watch as watch_api

    a = app()
    cfg = a.config()

    def report(event: dict) -> None:
        # One JSON object per line (a stream), flushed at once: a supervisor or a test reads
        # each event as it happens.
        click.echo(json.dumps(redact(event), ensure_ascii=False) if a.json else watch_api.describe(event))
        sys.stdout.flush()

    if once:
        res = watch_api.watch_once(cfg, a.ledger(), site, auto_respond=auto_respond)
        emit(res, lambda: [click.echo(watch_api.describe(e)) for e in res["events"]])
        if res["findings"]:
            raise click.exceptions.Exit(1)
        return
    w = watch_api.Watcher(cfg, a.ledger(), site, auto_respond=auto_respond, interval=interval, report=report)
    w.run_forever()
