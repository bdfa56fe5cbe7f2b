"""``resilience metrics``: Prometheus textfile metrics computed from the evidence ledger."""

from __future__ import annotations

from pathlib import Path

import click

from .. import metrics as metrics_api
from ..errors import UsageError
from .context import app, common, emit
from .evidence_cmd import _ledger

evidence_option = click.option("--evidence", "evidence", type=click.Path(file_okay=False, path_type=Path),
                               help="Evidence folder (default: from the config, else the state folder).")


@click.group()
def metrics() -> None:
    """Prometheus textfile metrics (for node_exporter's textfile collector)."""


@metrics.command("write", epilog="""\b
Examples:
  resilience metrics write                       # to metrics.dir of the config
  resilience metrics write --dir /var/lib/prometheus/node-exporter
Writes DIR/resilience.prom atomically (temporary file + rename).""")
@click.option("--dir", "directory", type=click.Path(file_okay=False, path_type=Path),
              help="The textfile collector's folder (default: metrics.dir of the config).")
@evidence_option
@common
def write(directory: Path | None, evidence: Path | None) -> None:
    """Compute the metrics from the ledger and write DIR/resilience.prom."""
    if directory is None:
        directory = app().config().metrics.dir
        if directory is None:
            raise UsageError("no metrics folder: give --dir or set metrics.dir in the config")
    try:
        path = metrics_api.write(_ledger(evidence), directory)
    except OSError as exc:
        raise UsageError(f"{directory}: cannot write metrics: {exc.strerror}") from None
    emit({"path": str(path)}, f"wrote {path}")


@metrics.command("show", epilog="""\b
Examples:
  resilience metrics show
  resilience metrics show --evidence /srv/evidence-copy""")
@evidence_option
@common
def show(evidence: Path | None) -> None:
    """Print the metrics (Prometheus text format) without writing them."""
    families = metrics_api.collect(_ledger(evidence))
    emit({name: [{"labels": lab, "value": v} for lab, v in samples] for name, samples in families.items()},
         metrics_api.render(families).rstrip("\n"))
