"""``resilience schedule install|show|remove``: the ops host's cron file. Parse, call, render."""

from __future__ import annotations

import click

from .. import schedule as api
from ..errors import ExitCode
from .context import app, common, emit

_FILE = click.option("--file", "file_", metavar="PATH",
                     help="Cron file to manage (default: schedule.cron_file, /etc/cron.d/resilience).")
_DRY = click.option("--dry-run", is_flag=True, help="Show what would change, change nothing.")


@click.group("schedule", epilog="""\b
Examples:
  resilience schedule install --dry-run    # print the cron file, write nothing
  sudo resilience schedule install         # /etc/cron.d/resilience
  resilience schedule show                 # installed? matches the config? (exit 1 if not)
  sudo resilience schedule remove
Jobs and times come from the config's `schedule:` section (docs/schedule.md).""")
def schedule() -> None:
    """Cron jobs on the ops host: backup, verify, prune, drills."""


def _warn(res: dict) -> None:
    for w in res.get("warnings", []):
        click.echo(f"resilience: warning: {w}", err=True)


@schedule.command("install")
@_FILE
@_DRY
@common
def install(file_: str | None, dry_run: bool) -> None:
    """Write the managed cron file (atomically; running it again changes nothing)."""
    res = api.install(app().config(), file_, dry_run=dry_run)

    def human() -> None:
        if dry_run:
            click.echo(f"would write {res['file']}:" if res["changed"] else f"{res['file']} is up to date:")
            click.echo(res["content"], nl=False)
            return
        click.echo(f"{'installed' if res['changed'] else 'unchanged'} {res['file']} ({len(res['jobs'])} job(s))")
        for j in res["jobs"]:
            click.echo(f"  {j['schedule']:<18} {j['name']:<28} log {j['log']}")

    _warn(res)
    emit(res, human)


@schedule.command("show")
@_FILE
@common
def show(file_: str | None) -> int:
    """Print the installed cron file and whether it matches the config (exit 1 if not)."""
    res = api.show(app().config(), file_)

    def human() -> None:
        if not res["installed"]:
            click.echo(f"{res['file']}: not installed (resilience schedule install)")
            return
        state = "matches the config" if res["matches"] else (
            "DIFFERS from the config (resilience schedule install)" if res["managed"]
            else "not managed by resilience")
        click.echo(f"{res['file']}: {state}")
        if res.get("error"):
            click.echo(f"  cron would reject it: {res['error']}")
        for j in res["jobs"]:
            click.echo(f"  {j['schedule']:<18} {j['user']:<6} {j['command']}")

    _warn(res)
    emit(res, human)
    return ExitCode.OK if res["matches"] else ExitCode.FAILED


@schedule.command("remove")
@_FILE
@_DRY
@common
def remove(file_: str | None, dry_run: bool) -> None:
    """Delete the managed cron file (nothing to do when there is none)."""
    res = api.remove(app().config(), file_, dry_run=dry_run)
    verb = ("would remove" if dry_run else "removed") if res["changed"] else "nothing to remove:"
    emit(res, f"{verb} {res['file']}")
