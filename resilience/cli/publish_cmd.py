"""``resilience publish``: deploy reviewed content to a site. Parse, call one action, render."""

from __future__ import annotations

import click

from ..actions import publish as actions
from .context import app, common, emit


@click.command("publish", epilog="""\b
Examples:
  resilience publish --site portal --from /srv/cms/export \\
      --reviewer "Li Wei" --reviewer "Zhang Min" --reviewer "Wang Fang" \\
      --message "notice 2024-117: flood season schedule"
  resilience publish --site portal --from /srv/cms/export --reviewer A --reviewer B --reviewer C --dry-run
DIR is the complete new site (a CMS's static export): what is not in it is removed from the
members (except the site's files.exclude, e.g. cache/**). Needs publish.reviewers_required
distinct reviewers (default 3). The snapshot taken becomes the baseline the tamper watch
compares with. Exit 2 = refused (nothing changed), 3 = some member failed (it keeps its old
tree) or a check failed.""")
@click.option("--site", "site_name", required=True, metavar="NAME", help="The site to publish to.")
@click.option("--from", "source_dir", required=True, metavar="DIR",
              type=click.Path(exists=True, file_okay=False, resolve_path=True), help="The complete new site tree.")
@click.option("--reviewer", "reviewers", multiple=True, metavar="NAME", help="A reviewer (repeat, one per level).")
@click.option("-m", "--message", metavar="TEXT", help="What is published (recorded with the snapshot).")
@click.option("--publisher", metavar="NAME", help="Who publishes (default: the sudo user, else this user).")
@click.option("--dry-run", is_flag=True, help="Show what would change on each member; store and change nothing.")
@common
def publish(site_name: str, source_dir: str, reviewers: tuple[str, ...], message: str | None,
            publisher: str | None, dry_run: bool) -> None:
    """Publish reviewed content: snapshot DIR, deploy it atomically to every member, verify."""
    a = app()
    res = actions.publish(a.config(), a.ledger(), site_name, source_dir, list(reviewers), message=message,
                          publisher=publisher, dry_run=dry_run)

    def human() -> None:
        verb = "would publish" if dry_run else "published"
        snap = f" as snapshot {res['short_id']}" if res.get("short_id") else ""
        click.echo(f"{verb} {res['from']} to site {res['site']}{snap} (run {res['run']})")
        click.echo(f"  reviewers: {', '.join(res['reviewers'])}; publisher: {res['publisher']}")
        for host, m in res["members"].items():
            counts = f"+{m['added']} ~{m['changed']} -{m['removed']}"
            if dry_run:
                state = "in sync" if not m["send"] and not m["remove"] else f"would change {counts}"
            elif m.get("error"):
                state = f"FAILED ({m['error']}); old tree kept"
            else:
                state = f"deployed {counts}" if m.get("applied") else "already in sync"
            click.echo(f"  {host}: {state}")
            if dry_run:
                for p in m["send"][:20]:
                    click.echo(f"    send   {p}")
                for p in m["remove"][:20]:
                    click.echo(f"    remove {p}")
        for where, checks in res["checks"].items():
            bad = [c for c in checks if not c["ok"]]
            click.echo(f"  check {where}: " + (f"ok ({len(checks)} pages)" if not bad
                                                else "; ".join(f"{c['url']}: {c['error']}" for c in bad)))

    emit(res, human)
