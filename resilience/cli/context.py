"""Shared CLI state and output helpers: every command renders through :func:`emit`."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path
from typing import Any

import click

from ..evidence.redact import redact


@dataclass
class AppContext:
    """What the top-level options decided; reached with ``click.get_current_context().obj``."""

    config_path: str | None = None
    json: bool = False
    verbose: int = 0
    _config: Any = field(default=None, repr=False)

    def config(self):
        """The validated config (loaded once). Raises ConfigError on any problem."""
        if self._config is None:
            from ..config import load_config

            self._config = load_config(self.config_path)
        return self._config

    def ledger(self):
        """The evidence ledger for the current config."""
        from ..evidence import Ledger
        from ..state import evidence_dir

        return Ledger(evidence_dir(self.config()))


def app() -> AppContext:
    """The AppContext of the running command (a default one outside click)."""
    ctx = click.get_current_context(silent=True)
    if ctx is None:
        return AppContext()
    obj = ctx.find_object(AppContext)
    if obj is None:
        obj = ctx.ensure_object(AppContext)
    return obj


def _set_json(ctx: click.Context, _param: click.Parameter, value: bool) -> bool:
    if value:
        ctx.ensure_object(AppContext).json = True
    return value


def _add_verbose(ctx: click.Context, _param: click.Parameter, value: int) -> int:
    if value:
        ctx.ensure_object(AppContext).verbose += value
    return value


def json_option(f: Callable) -> Callable:
    """``--json`` accepted after any subcommand as well as before it."""
    return click.option(
        "--json", "json_", is_flag=True, expose_value=False, callback=_set_json,
        is_eager=True, help="Print machine-readable JSON on stdout.",
    )(f)


def verbose_option(f: Callable) -> Callable:
    """``-v`` accepted after any subcommand as well as before it."""
    return click.option(
        "-v", "--verbose", count=True, expose_value=False, callback=_add_verbose,
        help="More output (repeat for more).",
    )(f)


def common(f: Callable) -> Callable:
    """Decorate a command with the options every command takes."""
    return json_option(verbose_option(f))


def _default(o: Any) -> Any:
    if isinstance(o, (datetime, date)):
        return o.isoformat()
    if isinstance(o, Path):
        return str(o)
    if isinstance(o, (set, frozenset)):
        return sorted(o)
    if isinstance(o, bytes):
        return o.decode("utf-8", "backslashreplace")
    if hasattr(o, "model_dump"):
        return o.model_dump(mode="json")
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def dumps(data: Any) -> str:
    """JSON text for ``--json`` output, with secrets redacted."""
    return json.dumps(redact(data), default=_default, ensure_ascii=False, indent=2)


def emit(data: Any, human: Callable[[], None] | str | None = None) -> None:
    """Print ``data`` as JSON when ``--json`` is on, otherwise call/print ``human``."""
    if app().json:
        click.echo(dumps(data))
    elif callable(human):
        human()
    elif human is not None:
        click.echo(human)


def info(message: str, level: int = 1) -> None:
    """Print a progress line on stderr when ``-v`` was given at least ``level`` times."""
    if app().verbose >= level and not app().json:
        click.echo(message, err=True)
