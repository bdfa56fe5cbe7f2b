"""``resilience config``: check and initialise the config file."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import click

from ..config import find_config_path, load_config
from ..config_check import check_config
from ..errors import ConfigError, ExitCode, UsageError
from .context import app, common, emit


@click.group()
def config() -> None:
    """Check or create the config file (resilience.yml)."""


@config.command("check", epilog="""\b
Examples:
  resilience config check
  resilience --config /etc/resilience/resilience.yml config check --json""")
@common
def check() -> int:
    """Validate the config: syntax, schema, referenced files, inventory hosts.

    Prints each problem as `file: key: reason` and exits 2 when there is any."""
    path = find_config_path(app().config_path)
    try:
        cfg = load_config(path)
        problems = check_config(cfg)
    except ConfigError as exc:
        problems = exc.problems
        cfg = None
    if problems:
        emit({"ok": False, "config": str(path), "problems": problems}, "\n".join(problems))
        return ExitCode.USAGE
    summary = {
        "ok": True,
        "config": str(cfg.source),
        "sites": sorted(cfg.sites),
        "repository": cfg.repository.url if cfg.repository else None,
    }
    emit(summary, f"{cfg.source}: ok ({len(cfg.sites)} site(s): {', '.join(sorted(cfg.sites)) or 'none'})")
    return ExitCode.OK


@config.command("init", epilog="""\b
Examples:
  resilience config init                      # print the sample
  resilience config init -o resilience.yml    # write it (refuses to overwrite)""")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path),
              help="Write to this file instead of stdout.")
@click.option("--force", is_flag=True, help="Overwrite an existing file.")
def init(output: Path | None, force: bool) -> None:
    """Write a commented sample config that passes `config check`."""
    text = resources.files("resilience").joinpath("data/sample-config.yml").read_text("utf-8")
    if output is None:
        click.echo(text, nl=False)
        return
    if output.exists() and not force:
        raise UsageError(f"{output}: already exists (use --force to overwrite)")
    try:
        output.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"{output}: cannot write: {exc.strerror}") from None
    click.echo(f"wrote {output}", err=True)
