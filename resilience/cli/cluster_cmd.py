"""Cluster commands: isolate, rejoin, cluster status. Parse, call one action, render."""

from __future__ import annotations

import click

from ..actions import isolate as actions
from ..control import cluster as cluster_api
from .context import app, common, emit


@click.command("isolate", epilog="""\b
Examples:
  resilience isolate web1 --reason "defaced home page, ticket 4711"
  resilience isolate web1 --reason "check" --dry-run
  resilience isolate web2 --reason "tampering" --force --json   # even the last member
Collects the host's logs into the evidence first, then DRAIN → MAINT on its balancer
(saved in the server-state file), then an nftables quarantine: only the ops host's SSH in.
Refuses (exit 2) to take out the last serving member without --force.""")
@click.argument("host")
@click.option("--reason", required=True, metavar="TEXT", help="Why (recorded in the evidence).")
@click.option("--dry-run", is_flag=True, help="Check mode: show what would change, change nothing.")
@click.option("--force", is_flag=True, help="Isolate even the last serving member of a site.")
@click.option("--drain-timeout", default=30, show_default=True, type=click.IntRange(0, 3600), metavar="S",
              help="Seconds to wait for sessions to end before MAINT.")
@common
def isolate(host: str, reason: str, dry_run: bool, force: bool, drain_timeout: int) -> None:
    """Take HOST out of its site: keep its logs, drain it, quarantine it."""
    a = app()
    res = actions.isolate(a.config(), a.ledger(), host, reason, dry_run=dry_run, force=force,
                          drain_timeout=drain_timeout, quiet=a.json)

    def human() -> None:
        verb = "would isolate" if dry_run else "isolated"
        click.echo(f"{verb} {host} (run {res['run']})")
        logs = res["logs"]
        if dry_run:
            click.echo(f"  logs: would collect {len(logs)} file(s): {', '.join(x['path'] for x in logs)}")
        else:
            for x in logs:
                click.echo(f"  log {x['path']}  {x['size']} bytes  sha256 {x['sha256'][:16]}…")
        for b in res["balancer"].values():
            after = "MAINT" if dry_run else b["after"]
            click.echo(f"  balancer {b['balancer']} {b['backend']}/{host}: {b['before']} -> {after}")
        was = "on" if res["quarantined_before"] else "off"
        now = "on" if res["quarantined"] else "off"
        click.echo(f"  quarantine {host}: {was} -> {'on (would be)' if dry_run else now}")
        if not dry_run and not res["changed"]:
            click.echo("  nothing changed (already isolated)")

    emit(res, human)


@click.command("rejoin", epilog="""\b
Examples:
  resilience rejoin web1
  resilience rejoin web1 --dry-run
  resilience rejoin web1 --json
Lifts the quarantine, checks from the balancer that HOST serves the site's checks (if not, the quarantine
goes back on and the command fails), sets it READY, then checks the site through its URL.
Running it again changes nothing.""")
@click.argument("host")
@click.option("--dry-run", is_flag=True, help="Check mode: show what would change, change nothing.")
@common
def rejoin(host: str, dry_run: bool) -> None:
    """Put an isolated HOST back into its site."""
    a = app()
    res = actions.rejoin(a.config(), a.ledger(), host, dry_run=dry_run, quiet=a.json)

    def human() -> None:
        verb = "would rejoin" if dry_run else "rejoined"
        click.echo(f"{verb} {host} (run {res['run']})")
        was = "on" if res["quarantined_before"] else "off"
        click.echo(f"  quarantine {host}: {was} -> {'off (would be)' if dry_run else 'off'}")
        for b in res["balancer"].values():
            after = b["after"] if not dry_run else ("UP" if b["before"] != "UP" else b["before"])
            click.echo(f"  balancer {b['balancer']} {b['backend']}/{host}: {b['before']} -> {after}")
        for where, checks in res["checks"].items():
            bad = [c for c in checks if not c["ok"]]
            click.echo(f"  check {where}: " + ("ok" if not bad else "; ".join(f"{c['url']}: {c['error']}" for c in bad)))
        if not dry_run and not res["changed"]:
            click.echo("  nothing changed (already serving)")

    emit(res, human)


@click.group("cluster")
def cluster() -> None:
    """The members of balanced sites."""


@cluster.command("status", epilog="""\b
Examples:
  resilience cluster status
  resilience cluster status --site portal --json""")
@click.option("--site", "sites", multiple=True, metavar="NAME", help="Only this site (repeatable).")
@common
def status(sites: tuple[str, ...]) -> None:
    """Show each member's balancer state and whether it is quarantined."""
    cfg = app().config()
    names = list(sites) or [n for n, s in sorted(cfg.sites.items()) if s.balancer and s.files]
    data = {name: cluster_api.members(cfg, name) for name in names}

    def human() -> None:
        for name, members in data.items():
            click.echo(f"site {name}")
            click.echo(f"  {'HOST':<10}{'BALANCER':<18}{'STATE':<14}{'SESSIONS':>9}  QUARANTINE")
            for m in members:
                q = {True: "yes", False: "no", None: "unknown"}[m["quarantined"]]
                click.echo(f"  {m['host']:<10}{m['balancer'] + '/' + m['backend']:<18}{m['balancer_state']:<14}"
                           f"{m['sessions']:>9}  {q}")

    emit({"sites": data}, human)
