"""``resilience evidence``: verify, show and export the key of the evidence ledger."""

from __future__ import annotations

from pathlib import Path

import click

from ..errors import ExitCode
from ..evidence import Ledger
from ..evidence.ledger import load_public_key
from ..evidence.query import list_runs, run_records
from ..state import evidence_dir
from .context import app, common, emit


def _ledger(directory: Path | None) -> Ledger:
    if directory is not None:
        return Ledger(directory)
    # The ledger can be inspected without a config (e.g. on a copy of the evidence folder).
    try:
        return app().ledger()
    except Exception:  # noqa: BLE001 - no usable config: fall back to the default folder
        return Ledger(evidence_dir(None))


dir_option = click.option("--dir", "directory", type=click.Path(file_okay=False, path_type=Path),
                          help="Evidence folder (default: from the config, else the state folder).")


@click.group()
def evidence() -> None:
    """The signed, hash-chained evidence ledger of every action."""


@evidence.command("verify", epilog="""\b
Examples:
  resilience evidence verify
  resilience evidence verify --key /secure/resilience-evidence.pub --json
Exit 0 when intact; 4 naming the first bad record otherwise.""")
@dir_option
@click.option("--key", "key_file", type=click.Path(dir_okay=False, path_type=Path),
              help="Verify against this exported public key instead of the ledger's own.")
@common
def verify(directory: Path | None, key_file: Path | None) -> int:
    """Check every record's hash link and signature, and that nothing was cut off the end."""
    ledger = _ledger(directory)
    pub = load_public_key(key_file) if key_file else None
    result = ledger.verify(pub)
    data = result.as_dict() | {"ledger": str(ledger.path)}
    if result.ok:
        emit(data, f"ledger intact: {result.records} record(s), {result.runs} run(s), key {result.key or '-'}")
        return ExitCode.OK
    where = f"record {result.bad_seq}" if result.bad_seq is not None else "ledger"
    msg = f"ledger damaged: {where}: {result.reason}"
    if app().json:
        emit(data)
    click.echo(f"resilience: error: {msg}", err=True)
    return ExitCode.DAMAGED


@evidence.command("show", epilog="""\b
Examples:
  resilience evidence show                 # one line per run
  resilience evidence show --run 20261127T0230   # the steps of one run (id prefix ok)
  resilience evidence show --run ID --json""")
@dir_option
@click.option("--run", "run_id", metavar="ID", help="Show the records of one run.")
@click.option("--last", type=click.IntRange(min=1), help="Only the last N runs.")
@common
def show(directory: Path | None, run_id: str | None, last: int | None) -> None:
    """List runs, or the steps of one run."""
    ledger = _ledger(directory)
    if run_id:
        records = run_records(ledger, run_id)

        def human() -> None:
            for r in records:
                kind = r.get("type")
                if kind == "run-start":
                    click.echo(f"{r['time']}  run {r['run']}  {r.get('action')}  {'(dry run) ' if r.get('dry_run') else ''}by {r.get('user')}@{r.get('hostname')}")
                elif kind == "step":
                    host = f" [{r['host']}]" if r.get("host") else ""
                    err = f"  — {r['error']}" if r.get("error") else ""
                    click.echo(f"{r['start']}  {r['outcome']:<9} {r['step']}{host}  {r.get('duration_s', 0):.3f}s{err}")
                    for a in r.get("artifacts", []):
                        click.echo(f"{'':32}artifact {a['name']}  sha256:{a['sha256']}  {a['size']} B")
                elif kind == "run-end":
                    click.echo(f"{r['time']}  end {r['outcome']}  ({r.get('steps', 0)} step(s), {r.get('duration_s', 0):.3f}s)")

        emit({"run": records[0]["run"], "records": records}, human)
        return
    runs = list_runs(ledger)
    if last:
        runs = runs[-last:]

    def human_runs() -> None:
        if not runs:
            click.echo("no runs recorded")
        for r in runs:
            dry = " (dry run)" if r["dry_run"] else ""
            click.echo(f"{r['run']:<45} {r['action'] or '-':<16} {r['outcome']:<10} {r['steps']:>3} step(s){dry}")

    emit({"runs": runs}, human_runs)


@evidence.command("key", epilog="""\b
Examples:
  resilience evidence key > /secure/resilience-evidence.pub
  resilience evidence key -o /mnt/usb/evidence.pub""")
@dir_option
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), help="Write to a file.")
@common
def key(directory: Path | None, output: Path | None) -> None:
    """Print the ledger's public key (OpenSSH format) for safekeeping elsewhere."""
    ledger = _ledger(directory)
    text = ledger.public_key_openssh()
    if output:
        output.write_text(text)
    from ..evidence.ledger import fingerprint

    fp = fingerprint(ledger.public_key())
    emit({"public_key": text.strip(), "fingerprint": fp}, None if output else text.rstrip("\n"))
