"""``resilience drill run|list|show``: recovery drills (docs/drills.md). Parse, call, render."""

from __future__ import annotations

import click

from ..errors import ResilienceError
from .context import app, common, emit


def _fmt(v) -> str:
    return "-" if v is None else f"{v:.2f} s"


@click.group("drill", epilog="""\b
Examples:
  resilience drill list
  resilience drill run drills/quarterly-tamper.yml
  resilience drill run drills/database-scratch.yml --dry-run --json
  resilience drill show 20261127T060000Z-drill-ab12cd
Exit codes: 0 passed · 1 a step, a check or a target failed (rollbacks ran) ·
2 bad plan or usage (nothing recorded).""")
def drill() -> None:
    """Recovery drills: run a plan, measure RTO/RPO against its targets, keep the record."""


@drill.command("run")
@click.argument("plan_path", metavar="PLAN")
@click.option("--dry-run", is_flag=True, help="Every action in dry-run/check mode; lab faults not applied.")
@common
def run_cmd(plan_path: str, dry_run: bool) -> None:
    """Run the drill plan PLAN (a drills/*.yml file) as one recorded run."""
    from ..drills import load_plan, run_drill

    plan = load_plan(plan_path)
    a = app()
    cfg, ledger = a.config(), a.ledger()
    if not a.json:
        click.echo(f"{'dry run of ' if dry_run else ''}drill {plan.title!r} ({plan.mode} mode, site {plan.site})")
    res = run_drill(cfg, ledger, plan, dry_run=dry_run, progress=None if a.json else click.echo)

    def human() -> None:
        t = res["targets"]
        met = res["targets_met"]
        click.echo(f"  RTO {_fmt(res['rto_s'])} (target {t['rto_s']} s{_mark(met['rto_s'])})  "
                   f"RPO {_fmt(res['rpo_s'])} (target {t['rpo_s'] if t['rpo_s'] is not None else '-'}"
                   f"{' s' if t['rpo_s'] is not None else ''}{_mark(met['rpo_s'])})")
        click.echo(f"  {'PASSED' if res['passed'] else 'FAILED'}: run {res['run']}"
                   + (" (rollbacks ran)" if res["rollbacks_run"] else ""))

    if not res["passed"]:
        if not a.json:
            human()
        why = f"step '{res['failed_step']}' failed: {res['error']}" if res["failed_step"] else res["error"]
        raise ResilienceError(f"drill {plan.title!r} failed: {why} (run {res['run']})", details=res)
    emit(res, human)


def _mark(v) -> str:
    return "" if v is None else (", met" if v else ", MISSED")


@drill.command("list")
@click.option("--dir", "folder", default="drills", show_default=True, help="Folder of drill plans.")
@click.option("--recent", default=20, show_default=True, type=click.IntRange(0, 10000), help="Runs shown.")
@common
def list_cmd(folder: str, recent: int) -> None:
    """Drill plans in the folder and the latest drill runs from the ledger."""
    from ..drills import list_drills

    res = list_drills(app().ledger(), folder, recent)

    def human() -> None:
        click.echo(f"plans in {folder}/:")
        for p in res["plans"]:
            if p["valid"]:
                click.echo(f"  {p['path']:<36} {p['mode']:<10} RTO<={p['targets']['rto_s']} s  {p['title']}")
            else:
                click.echo(f"  {p['path']:<36} INVALID: {p['error']}")
        click.echo("recent drill runs:")
        for r in res["runs"]:
            verdict = "dry run" if r["dry_run"] else ("passed" if r["passed"] else "FAILED")
            click.echo(f"  {r['run']:<40} {verdict:<7} RTO {_fmt(r['rto_s'])}  RPO {_fmt(r['rpo_s'])}  {r['title']}")
        if not res["runs"]:
            click.echo("  (none)")

    emit(res, human)


@drill.command("show")
@click.argument("run_id")
@common
def show_cmd(run_id: str) -> None:
    """One drill run: steps with outcomes and durations, RTO/RPO against the targets."""
    from ..drills import show_drill

    res = show_drill(app().ledger(), run_id)

    def human() -> None:
        p = res["params"] or {}
        click.echo(f"drill {p.get('title')!r} run {res['run']} ({p.get('mode')} mode"
                   f"{', dry run' if res['dry_run'] else ''}): {'PASSED' if res['passed'] else 'FAILED'}")
        t = res["targets"] or {}
        met = res["targets_met"] or {}
        click.echo(f"  RTO {_fmt(res['rto_s'])} (target {t.get('rto_s')}{_mark(met.get('rto_s'))})  "
                   f"RPO {_fmt(res['rpo_s'])} (target {t.get('rpo_s')}{_mark(met.get('rpo_s'))})")
        for s in res["steps"]:
            extra = f": {s['error']}" if s.get("error") else ""
            click.echo(f"  {s['outcome']:<8} {s['step']:<40} {s['host'] or '':<6} {s['duration_s'] or 0:8.2f} s{extra}")

    emit(res, human)
