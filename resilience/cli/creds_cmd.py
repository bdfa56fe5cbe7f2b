"""``resilience creds``: audit, rotate and show admin passwords. Parse, call one action, render."""

from __future__ import annotations

import sys

import click

from ..actions import creds as actions
from ..config import parse_duration
from ..errors import ExitCode, UsageError
from .context import app, common, emit


@click.group("creds")
def creds() -> None:
    """Admin account passwords: audit, rotate, show (docs/credentials.md)."""


def _days(text: str | None) -> int | None:
    if text is None:
        return None
    try:
        return int(text) if text.strip().isdigit() else parse_duration(text) // 86400
    except ValueError as exc:
        raise UsageError(f"--max-age: {exc}") from None


@creds.command("audit", epilog="""\b
Examples:
  resilience creds audit
  resilience creds audit --max-age 90d --host web1 --json
Admin accounts = uid 0 and members of credentials.admin_groups (root, sudo, wheel, admin).
Findings: old (password older than the policy), weak (in the weak list), empty, must-change,
no-date. Exit 1 when there are findings, 3 when some host could not be audited.""")
@click.option("--max-age", metavar="AGE", help="Policy age, e.g. 60d (default: credentials.max_age, 60d).")
@click.option("--host", "hosts", multiple=True, metavar="H", help="Only this host (repeatable).")
@click.option("--user", "users", multiple=True, metavar="U", help="Also report this account (repeatable).")
@common
def audit(max_age: str | None, hosts: tuple[str, ...], users: tuple[str, ...]) -> int:
    """List admin accounts whose password is too old, empty or weak, on every host."""
    a = app()
    res = actions.audit(a.config(), a.ledger(), max_age_days=_days(max_age), hosts=list(hosts) or None,
                        users=list(users), quiet=a.json)

    def human() -> None:
        click.echo(f"admin accounts on {len(res['hosts'])} host(s), policy {res['max_age_days']} days, "
                   f"weak list {res['weak_list_words']} words (run {res['run']})")
        if res["findings"]:
            click.echo(f"  {'HOST':<8}{'USER':<18}{'AGE':>6}  FINDINGS")
            for f in res["findings"]:
                age = "-" if f["age_days"] is None else f"{f['age_days']}d"
                click.echo(f"  {f['host']:<8}{f['user']:<18}{age:>6}  {', '.join(f['findings'])}")
        else:
            click.echo("  no findings")
        for host, why in res["failed_hosts"].items():
            click.echo(f"  {host}: not audited: {why}")

    emit(res, human)
    if res["findings"]:
        return ExitCode.FAILED
    return ExitCode.PARTIAL if res["failed_hosts"] else ExitCode.OK


@creds.command("rotate", epilog="""\b
Examples:
  resilience creds rotate --host web1 --user opsadmin
  resilience creds rotate --host web1 --user opsadmin --dry-run
Generates a strong password, keeps it encrypted for the operator, sets it with
playbooks/rotate_password.yml. The password is never printed: read it with `creds show`.""")
@click.option("--host", required=True, metavar="H", help="Inventory host.")
@click.option("--user", required=True, metavar="U", help="Account on that host.")
@click.option("--dry-run", is_flag=True, help="Check the host and account; change nothing.")
@common
def rotate(host: str, user: str, dry_run: bool) -> None:
    """Set a new strong password for USER on HOST and store it encrypted."""
    a = app()
    res = actions.rotate(a.config(), a.ledger(), host, user, dry_run=dry_run, quiet=a.json)
    if dry_run:
        human = f"would rotate the password of {user}@{host} (account found; run {res['run']})"
    else:
        human = (f"rotated the password of {user}@{host} at {res['rotated_at']} (run {res['run']})\n"
                 f"  stored encrypted in {res['stored']}; read it with: resilience creds show --host {host} --user {user}")
    emit(res, human)


@creds.command("show", epilog="""\b
Examples:
  resilience creds show --host web1 --user opsadmin
  resilience creds show --host web1 --user opsadmin --yes | xclip   # not a terminal: --yes
Prints the stored password (only the password, one line) on a terminal, or with --yes.
Each reading is recorded in the evidence (who, which account; never the password).""")
@click.option("--host", required=True, metavar="H", help="Inventory host.")
@click.option("--user", required=True, metavar="U", help="Account on that host.")
@click.option("--pending", is_flag=True, help="The copy of a rotation that did not confirm.")
@click.option("--yes", is_flag=True, help="Print even when stdout is not a terminal.")
def show(host: str, user: str, pending: bool, yes: bool) -> None:
    """Decrypt and print the stored password of USER on HOST."""
    a = app()
    if a.json:
        raise UsageError("creds show prints the password only as plain text (no --json)")
    if not yes and not sys.stdout.isatty():
        raise UsageError("stdout is not a terminal: add --yes to print the password anyway")
    actions.check_user(user, [])
    click.echo(actions.show(a.config(), a.ledger(), host, user, pending=pending))
