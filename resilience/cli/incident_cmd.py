"""``resilience incident KIND``: run an incident runbook. Parse, call, render."""

from __future__ import annotations

from collections.abc import Callable

import click

from ..errors import ResilienceError
from .context import app, common, emit


def _runbook_options(f: Callable) -> Callable:
    f = click.option("--report", "report_path", metavar="PATH",
                     help="Write the report here (PATH and PATH.json); default: the evidence folder's reports/.")(f)
    f = click.option("--resume", metavar="RUN_ID",
                     help="Continue this failed run from its first step that did not succeed.")(f)
    f = click.option("--dry-run", is_flag=True, help="Run every step in dry-run/check mode; change nothing.")(f)
    f = click.option("--site", metavar="NAME", help="The site (taken from the earlier run with --resume).")(f)
    return common(f)


def _go(kind: str, params: dict, dry_run: bool, resume: str | None, report_path: str | None) -> None:
    from .. import runbooks

    a = app()
    res = runbooks.run(a.config(), a.ledger(), kind, params, dry_run=dry_run, resume=resume,
                       report_path=report_path)
    rep = res["report"]

    def human() -> None:
        verb = "dry run of" if dry_run else "ran"
        click.echo(f"{verb} runbook {kind} (run {res['run']}{', resumes ' + res['resumes'] if res['resumes'] else ''})")
        for s in res["steps"]:
            extra = f": {s['error']}" if s.get("error") else ""
            click.echo(f"  {s['outcome']:<8} {s['step']:<28} {s['host'] or '':<8} {s['duration_s'] or 0:7.2f} s{extra}")
        click.echo(f"  severity {rep['severity']} ({rep['severity_reason']}); report upward: "
                   f"{'YES' if rep['report_upward'] else 'no'}")
        click.echo(f"  report {rep['paths']['markdown']} (+ .json)")

    if res["outcome"] != "ok":
        raise ResilienceError(f"runbook {kind} stopped at step '{res['failed_step']}': {res['error']} "
                              f"(report {rep['paths']['markdown']}; after fixing, resume with "
                              f"--resume {res['run']})", details=res)
    emit(res, human)


@click.group("incident", epilog="""\b
Examples:
  resilience incident tamper --site portal --host web1
  resilience incident illegal-content --site portal --path uploads/x.html
  resilience incident attack --site portal --json
  resilience incident db-failure --site portal --dry-run
  resilience incident network --site portal --no-wait
  resilience incident tamper --resume 20261127T060000Z-incident-tamper-ab12cd
Each runbook is one recorded run; it ends with an incident report (Markdown + JSON).
Exit 1 when a step failed (the run stops there; fix the cause and --resume).""")
def incident() -> None:
    """Incident runbooks: tamper, illegal-content, attack, db-failure, network."""


@incident.command("tamper")
@click.option("--host", metavar="HOST", help="The tampered member.")
@_runbook_options
def tamper(site, host, dry_run, resume, report_path) -> None:
    """Isolate, restore, update, rotate passwords, analyse logs, rejoin a tampered member."""
    _go("tamper", {"site": site, "host": host, "source": "operator"}, dry_run, resume, report_path)


@incident.command("illegal-content")
@click.option("--path", "paths", multiple=True, metavar="P", help="A path under the site root (repeatable).")
@click.option("--match", "match", metavar="REGEX", help="Regular expression over paths under the site root.")
@_runbook_options
def illegal_content(site, paths, match, dry_run, resume, report_path) -> None:
    """Remove content from every member, sweep for copies, quarantine its digests, trace it."""
    _go("illegal-content", {"site": site, "paths": list(paths), "match": match, "source": "operator"},
        dry_run, resume, report_path)


@incident.command("attack")
@click.option("--since", metavar="DURATION", help="Access-log window to analyse (default: runbooks.log_window).")
@click.option("--ttl", default="1h", show_default=True, help="How long the blocks last.")
@click.option("--exclude", multiple=True, metavar="CIDR", help="Never block this (repeatable).")
@_runbook_options
def attack(site, since, ttl, exclude, dry_run, resume, report_path) -> None:
    """Find the attacking ranges in the logs, block them, confirm the site, restart, alert."""
    _go("attack", {"site": site, "since": since, "ttl": ttl, "exclude": list(exclude), "source": "operator"},
        dry_run, resume, report_path)


@incident.command("db-failure")
@click.option("--force-restore", is_flag=True, help="Replace the live database even when it looks intact.")
@_runbook_options
def db_failure(site, force_restore, dry_run, resume, report_path) -> None:
    """Restore the database (scratch proof, then live), restart services, verify, keep logs."""
    _go("db-failure", {"site": site, "force_restore": force_restore, "source": "operator"},
        dry_run, resume, report_path)


@incident.command("network")
@click.option("--no-wait", is_flag=True, help="Only fail over; do not wait for the repair to fail back.")
@click.option("--wait", type=click.FloatRange(0, 86400), metavar="S",
              help="Longest wait for the repair (default: runbooks.repair_wait).")
@_runbook_options
def network(site, no_wait, wait, dry_run, resume, report_path) -> None:
    """Check both lines, fail over, and fail back once the primary is repaired."""
    _go("network", {"site": site, "wait": 0 if no_wait else wait, "source": "operator"}, dry_run, resume, report_path)
