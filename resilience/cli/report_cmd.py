"""``resilience report``: a run's or a period's report from the evidence ledger (HTML/Markdown, zh/en)."""

from __future__ import annotations

from pathlib import Path

import click

from ..errors import UsageError
from ..evidence import report as reports
from .context import app, common, emit
from .evidence_cmd import _ledger, dir_option


@click.command("report", epilog="""\b
Examples:
  resilience report 20261127T0230 -o drill.html          # one run (id prefix ok)
  resilience report 20261127T0230 --format md --lang zh
  resilience report --period 2026Q4 --lang zh -o 2026Q4.html   # also 2026-11, 2026
  resilience report --period 2026Q4 --json                 # the figures as JSON
The format follows -o's extension (.html/.md) unless --format is given; Markdown on stdout.
Every figure comes from the evidence ledger, and the ledger's verification is included.""")
@click.argument("run_id", required=False, metavar="[RUN_ID]")
@click.option("--period", metavar="PERIOD", help="A quarter (2026Q4), month (2026-11) or year (2026).")
@click.option("--format", "fmt", type=click.Choice(reports.FORMATS), help="html or md.")
@click.option("--lang", type=click.Choice(reports.LANGS), default="en", show_default=True,
              envvar="RESILIENCE_LANG", help="Language of the labels ($RESILIENCE_LANG).")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), help="Write to FILE.")
@dir_option
@common
def report(run_id: str | None, period: str | None, fmt: str | None, lang: str, output: Path | None,
           directory: Path | None) -> None:
    """Report on one run (RUN_ID) or on a period (--period) from the evidence ledger."""
    if bool(run_id) == bool(period):
        raise UsageError("give either a RUN_ID or --period (not both)")
    if fmt is None:
        fmt = "html" if output is not None and output.suffix.lower() in (".html", ".htm") else "md"
    ledger = _ledger(directory)
    model = reports.run_report(ledger, run_id) if run_id else reports.period_report(ledger, period)
    text = reports.render(model, fmt, lang)
    if output is not None:
        try:
            output.write_text(text, encoding="utf-8")
        except OSError as exc:
            raise UsageError(f"{output}: cannot write: {exc.strerror}") from None
    if app().json:
        emit(model | ({"output": str(output)} if output else {}))
    elif output is not None:
        ok = "ledger verifies" if model["verification"]["ok"] else "LEDGER DOES NOT VERIFY"
        click.echo(f"wrote {output} ({fmt}, {lang}; {ok})")
    else:
        click.echo(text, nl=False)
