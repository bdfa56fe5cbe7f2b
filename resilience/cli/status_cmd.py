"""``resilience status``: each site at a glance; exit 1 when something needs attention."""

from __future__ import annotations

import click

from ..errors import ExitCode
from ..status import collect, human_age
from .context import app, common, emit


def _when(item: dict | None) -> str:
    if not item:
        return "none recorded"
    t = (item.get("time") or "?").replace("T", " ")[:16]
    return f"{t} UTC ({human_age(item.get('age_s'))} ago)"


def _render(res: dict) -> None:
    head = "ok" if res["ok"] else f"ATTENTION ({len(res['attention'])})"
    click.echo(f"resilience status {res['time'].replace('T', ' ')[:16]} UTC: {head}")
    for name, s in res["sites"].items():
        click.echo(f"{name}")
        b = s["backup"]
        good = b["last_good"]
        if good:
            ids = "  ".join(f"{p} {good[p]['snapshot'][:8]}" for p in b["parts"] if good.get(p))
            click.echo(f"  backup   {_when(good)}  {ids}")
        else:
            click.echo("  backup   no good backup recorded")
        last = b["last_run"]
        if last and last["outcome"] != "ok":
            click.echo(f"           last run {last['outcome']} {_when(last)}: {last.get('error') or ''}")
        v = s["verify"]
        if v:
            data = f", read {v['read_data'] * 100:g}% of data" if v.get("read_data") else ""
            click.echo(f"  verify   {'ok' if v['ok'] else v['outcome'].upper()}  {_when(v)}{data}")
        else:
            click.echo("  verify   none recorded")
        d = s["drill"]
        if d:
            rto = f"RTO {d['rto_s']:.0f}s" if isinstance(d.get("rto_s"), (int, float)) else "RTO not measured"
            target = (d.get("targets") or {}).get("rto_s")
            rto += f" (target {target:g}s)" if isinstance(target, (int, float)) else ""
            click.echo(f"  drill    {'ok' if d['ok'] else d['outcome'].upper()}  {_when(d)}  {rto}  "
                       f"{d.get('title') or d.get('plan') or ''}")
        else:
            click.echo("  drill    none recorded")
        m = s["members"]
        if isinstance(m, dict):
            click.echo(f"  members  unknown: {m['unknown']}")
        elif m:
            parts = []
            for x in m:
                q = {True: ", quarantined", None: ", quarantine unknown"}.get(x["quarantined"], "")
                parts.append(f"{x['host']} {x['balancer_state']}{q}")
            click.echo("  members  " + " · ".join(parts))
    line = res["line"]
    if line is not None:
        if "unknown" in line:
            click.echo(f"line       unknown: {line['unknown']}")
        else:
            role = "primary" if line["active"] == line["primary"] else ("none" if line["active"] is None else "standby")
            click.echo(f"line       {line['active'] or 'none'} ({role}; gateway {line['gateway']}, "
                       f"upstream {line['upstream']})")
    lv = res["ledger"]
    if lv.get("ok"):
        click.echo(f"ledger     verifies: {lv.get('records')} records, {lv.get('runs')} runs")
    else:
        click.echo(f"ledger     DOES NOT VERIFY: {lv.get('reason')}")
    for reason in res["attention"]:
        click.echo(f"  ! {reason}")


@click.command("status", epilog="""\b
Examples:
  resilience status
  resilience status --json
Exit 0 when every site is fresh and healthy; 1 when something needs attention (each reason
is listed): a backup older than status.max_backup_age, a verify or drill too old or failed,
a failed last backup, an isolated or unknown member, the standby line (or none) active, an
evidence ledger that does not verify. Thresholds: the config's `status:` (docs/schedule.md).""")
@common
def status() -> int:
    """Each site at a glance: last backup, verify, drill, members, line, ledger."""
    a = app()
    res = collect(a.config(), a.ledger())
    emit(res, lambda: _render(res))
    return ExitCode.OK if res["ok"] else ExitCode.FAILED
