"""``resilience block``: add, remove, list, from-logs. Parse → call :mod:`resilience.actions.block`
→ render. A bad or protected CIDR is one line on stderr and exit 2, before anything runs."""

from __future__ import annotations

import click

from ..actions import block as actions
from ..control.accesslog import Thresholds
from ..control.blocking import DEFAULT_TTL
from .context import app, common, emit


def _duration(seconds: int | None) -> str:
    if seconds is None:
        return "-"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}{_duration(seconds % size) if seconds % size else ''}"
    return f"{seconds}s"


def _host_lines(per_host: dict[str, dict], dry_run: bool) -> None:
    would = "would " if dry_run else ""
    for host, r in per_host.items():
        parts = []
        for key, label in (("added", "block"), ("removed", "unblock"), ("unchanged", "already blocked")):
            if r.get(key):
                verb = label if key == "unchanged" else f"{would}{label}"
                parts.append(f"{verb} {', '.join(r[key])}")
        parts += [f"{would}replace {x['cidr']} by {x['by']}" for x in r.get("replaced") or []]
        parts += [f"{x['cidr']} stays blocked by {x['by']}" for x in r.get("still_covered") or []]
        if r.get("absent"):
            parts.append(f"not blocked: {', '.join(r['absent'])}")
        click.echo(f"{host}: {'; '.join(parts) or 'no change'}")


@click.group("block", epilog="""\b
Examples:
  resilience block add 203.0.113.7 198.51.100.0/24 --ttl 6h --reason "credential stuffing"
  resilience block list
  resilience block remove 203.0.113.7
  resilience block from-logs --site portal --since 1h --top 5
  resilience block from-logs --site portal --apply --ttl 24h
Never blocks the ops host, control.protected, inventory hosts or special networks (exit 2).""")
def block() -> None:
    """Block attack sources on the balancers (nftables sets with timeouts)."""


@block.command("add")
@click.argument("cidrs", nargs=-1, required=True, metavar="CIDR...")
@click.option("--ttl", default=DEFAULT_TTL, show_default=True, help="How long the block lasts (1s to 365d).")
@click.option("--reason", required=True, help="Why (recorded with the block and in the evidence).")
@click.option("--site", metavar="NAME", help="Only this site's balancer (default: every site's).")
@click.option("--dry-run", is_flag=True, help="Check mode: show what would change.")
@common
def add(cidrs: tuple[str, ...], ttl: str, reason: str, site: str | None, dry_run: bool) -> None:
    """Block addresses or networks for --ttl."""
    a = app()
    res = actions.add(a.config(), a.ledger(), list(cidrs), ttl=ttl, reason=reason, site=site, dry_run=dry_run)

    def human() -> None:
        _host_lines(res["hosts"], dry_run)
        click.echo(f"ttl {_duration(res['ttl_s'])}, reason: {res['reason']} (run {res['run']})")

    emit(res, human)


@block.command("remove")
@click.argument("cidrs", nargs=-1, metavar="CIDR...")
@click.option("--all", "all_", is_flag=True, help="Remove every block.")
@click.option("--site", metavar="NAME", help="Only this site's balancer (default: every site's).")
@click.option("--dry-run", is_flag=True, help="Check mode: show what would change.")
@common
def remove(cidrs: tuple[str, ...], all_: bool, site: str | None, dry_run: bool) -> None:
    """Unblock addresses or networks (every block inside each CIDR)."""
    a = app()
    res = actions.remove(a.config(), a.ledger(), list(cidrs), all_=all_, site=site, dry_run=dry_run)
    emit(res, lambda: _host_lines(res["hosts"], dry_run))


@block.command("list")
@click.option("--site", metavar="NAME", help="Only this site's balancer (default: every site's).")
@common
def list_(site: str | None) -> None:
    """Show the current blocks, their remaining time, reason and dropped packets."""
    a = app()
    res = actions.listing(a.config(), site)

    def human() -> None:
        for host, h in res["hosts"].items():
            if not h["elements"]:
                click.echo(f"{host}: no blocks" + ("" if h["table"] else f" (no table {res['table']} yet)"))
                continue
            click.echo(f"{host}: {len(h['elements'])} block(s) in {res['table']}")
            click.echo(f"  {'CIDR':<20} {'EXPIRES':>9} {'TTL':>7} {'DROPPED':>8}  REASON")
            for e in h["elements"]:
                click.echo(f"  {e['cidr']:<20} {_duration(e['expires']):>9} {_duration(e['timeout']):>7} "
                           f"{e['packets']:>8}  {e['comment']}")

    emit(res, human)


@block.command("from-logs")
@click.option("--site", required=True, metavar="NAME", help="Site whose web hosts' access logs are read.")
@click.option("--since", default="1h", show_default=True, help="Window to analyse (e.g. 15m, 1h, 1d).")
@click.option("--top", default=10, show_default=True, type=int, help="Propose at most N blocks.")
@click.option("--apply", is_flag=True, help="Block the proposals.")
@click.option("--ttl", default=DEFAULT_TTL, show_default=True, help="How long applied blocks last.")
@click.option("--reason", help="Reason recorded with applied blocks (default: from-logs SITE).")
@click.option("--min-rate", default=Thresholds.rate, show_default=True, type=click.IntRange(min=1),
              help="Peak requests per minute that flag a source.")
@click.option("--min-probes", default=Thresholds.probes, show_default=True, type=click.IntRange(min=1),
              help="Probe requests (wp-login.php, .env, traversal, ...) that flag a source.")
@click.option("--exclude", multiple=True, metavar="CIDR", help="Never propose sources in CIDR (repeatable).")
@click.option("--dry-run", is_flag=True, help="With --apply: check mode.")
@common
def from_logs(site: str, since: str, top: int, apply: bool, ttl: str, reason: str | None, min_rate: int,
              min_probes: int, exclude: tuple[str, ...], dry_run: bool) -> None:
    """Rank sources in the access logs and propose (or --apply) blocks."""
    a = app()
    t = Thresholds(rate=min_rate, probes=min_probes)
    res = actions.from_logs(a.config(), a.ledger(), site, since=since, top=top, apply=apply, ttl=ttl,
                            reason=reason, thresholds=t, dry_run=dry_run, exclude=list(exclude))

    def human() -> None:
        for host, info in res["logs"].items():
            click.echo(f"{host}: {info['entries']} request(s) in the window from {info['path']} "
                       f"({info['malformed']} malformed line(s) skipped)")
        if not res["proposals"]:
            click.echo(f"no source to block among {res['sources']} since {res['since'][:19]}")
        for p in res["proposals"]:
            ev = p["evidence"]
            click.echo(f"propose {p['cidr']:<18} score {p['score']:<7} {'; '.join(p['reasons'])}")
            if "sample_paths" in ev:
                click.echo(f"    {ev['requests']} requests, {ev['error_ratio']:.0%} errors, "
                           f"e.g. {', '.join(ev['sample_paths'][:3])}")
        if res["more"]:
            click.echo(f"... and {res['more']} more (raise --top)")
        for s in res["skipped_protected"]:
            click.echo(f"not proposed: {s['addr']}, protected by {s['protected']}: {'; '.join(s['reasons'])}")
        if res["applied"] is not None:
            _host_lines(res["applied"], dry_run)
        elif res["proposals"]:
            click.echo("(proposals only; --apply blocks them)")
        click.echo(f"run {res['run']}")

    emit(res, human)
