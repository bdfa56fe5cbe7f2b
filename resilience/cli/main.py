"""The ``resilience`` command: top-level options, command registry, error → exit code mapping."""

from __future__ import annotations

import importlib
import sys
import traceback

import click

from .. import __version__
from ..errors import ExitCode, ResilienceError
from .context import AppContext, app, dumps

# name -> "module:attribute"; modules are imported only when their command runs, so a cron
# job that runs `resilience backup` does not pay for importing Ansible.
COMMANDS: dict[str, str] = {
    "config": "resilience.cli.config_cmd:config",
    "evidence": "resilience.cli.evidence_cmd:evidence",
    "lab": "resilience.cli.lab_cmd:lab",
    "init": "resilience.cli.repo_cmd:init",
    "backup": "resilience.cli.repo_cmd:backup",
    "snapshots": "resilience.cli.repo_cmd:snapshots",
    "ls": "resilience.cli.repo_cmd:ls",
    "diff": "resilience.cli.repo_cmd:diff",
    "restore": "resilience.cli.repo_cmd:restore",
    "verify": "resilience.cli.repo_cmd:verify",
    "forget": "resilience.cli.repo_cmd:forget",
    "unlock": "resilience.cli.repo_cmd:unlock",
    "copy": "resilience.cli.repo_cmd:copy",
    "isolate": "resilience.cli.cluster_cmd:isolate",
    "rejoin": "resilience.cli.cluster_cmd:rejoin",
    "cluster": "resilience.cli.cluster_cmd:cluster",
    "line": "resilience.cli.line_cmd:line",
    "block": "resilience.cli.block_cmd:block",
    "incident": "resilience.cli.incident_cmd:incident",
    "creds": "resilience.cli.creds_cmd:creds",
    "publish": "resilience.cli.publish_cmd:publish",
    "integrity": "resilience.cli.watch_cmd:integrity",
    "watch": "resilience.cli.watch_cmd:watch",
    "report": "resilience.cli.report_cmd:report",
    "metrics": "resilience.cli.metrics_cmd:metrics",
    "drill": "resilience.cli.drill_cmd:drill",
    "schedule": "resilience.cli.schedule_cmd:schedule",
    "status": "resilience.cli.status_cmd:status",
}


class LazyGroup(click.Group):
    """A click group whose subcommands are imported on first use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(super().list_commands(ctx)) | set(COMMANDS))

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name in COMMANDS:
            module, attr = COMMANDS[name].split(":")
            return getattr(importlib.import_module(module), attr)
        return super().get_command(ctx, name)


EPILOG = """\b
Examples:
  resilience config init > resilience.yml
  resilience config check
  resilience evidence verify
  sudo resilience lab up && resilience lab status --json

\b
Exit codes: 0 ok · 1 failed · 2 bad usage or config · 3 partial ·
4 damaged (verify) · 75 temporary, retry later.
Config: --config, else $RESILIENCE_CONFIG, else ./resilience.yml."""


@click.group(cls=LazyGroup, epilog=EPILOG, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", prog_name="resilience")
@click.option("--config", "config_path", metavar="PATH", envvar="RESILIENCE_CONFIG",
              help="Config file (default: $RESILIENCE_CONFIG, else ./resilience.yml).")
@click.option("--json", "json_", is_flag=True, help="Print machine-readable JSON on stdout.")
@click.option("-v", "--verbose", count=True, help="More output on stderr (repeat for more).")
@click.pass_context
def cli(ctx: click.Context, config_path: str | None, json_: bool, verbose: int) -> None:
    """Keep a web platform recoverable, and prove it.

    Backs up site files and databases into an encrypted, deduplicated repository, restores
    them, isolates tampered servers, fails over network lines, runs drills, and records
    every action in a signed evidence ledger.
    """
    obj = ctx.ensure_object(AppContext)
    obj.config_path = config_path
    obj.json = obj.json or json_
    obj.verbose += verbose


def _report(message: str, code: int, details: dict | None = None) -> None:
    click.echo(f"resilience: error: {message}", err=True)
    if app().json:
        payload = {"ok": False, "error": message, "exit_code": int(code)}
        payload.update(details or {})
        click.echo(dumps(payload))


def main(argv: list[str] | None = None) -> None:
    """Console entry point: run the CLI and turn every error into one line and an exit code."""
    from ..runtime import tune_malloc

    tune_malloc()
    ctx_obj = AppContext()
    code: int = ExitCode.OK
    try:
        with cli.make_context("resilience", list(sys.argv[1:] if argv is None else argv), obj=ctx_obj) as ctx:
            rv = cli.invoke(ctx)
        code = rv if isinstance(rv, int) else ExitCode.OK
    except click.exceptions.Exit as exc:
        code = exc.exit_code
    except click.exceptions.Abort:
        click.echo("resilience: aborted", err=True)
        code = 130
    except click.ClickException as exc:
        exc.show()
        code = exc.exit_code
    except ResilienceError as exc:
        with click.Context(cli, obj=ctx_obj):
            _report(exc.message, exc.exit_code, exc.details)
        if isinstance(getattr(exc, "problems", None), list) and len(exc.problems) > 1:
            for line in exc.problems[1:]:
                click.echo(f"resilience: error: {line}", err=True)
        code = exc.exit_code
    except KeyboardInterrupt:
        click.echo("resilience: interrupted", err=True)
        code = 130
    except BrokenPipeError:
        code = ExitCode.FAILED
    except Exception as exc:  # noqa: BLE001 - the last line of defence against tracebacks
        if ctx_obj.verbose:
            traceback.print_exc()
        from ..evidence.redact import redact_text

        with click.Context(cli, obj=ctx_obj):
            _report(f"internal error: {type(exc).__name__}: {redact_text(str(exc))} (run with -v for details)",
                    ExitCode.FAILED)
        code = ExitCode.FAILED
    _notify_result(ctx_obj)
    sys.exit(int(code))


def _notify_result(ctx_obj: AppContext) -> None:
    """Send the result of the command's run (the first it recorded) to the config's
    notification channels, as ``notify.events`` asks: failures, incidents, drills. Long
    running commands (watch, line watch) notify by themselves. Never fails the command."""
    from ..evidence.ledger import STARTED_RUNS

    if not STARTED_RUNS or ctx_obj._config is None:
        return
    ledger, run_id, action, dry_run = STARTED_RUNS[0]
    ncfg = getattr(ctx_obj._config, "notify", None)
    if dry_run or ncfg is None or not (ncfg.webhooks or ncfg.commands or getattr(ncfg, "email", None)):
        return
    try:
        from .. import notify
        from ..evidence.report import kind_of

        for r in notify.on_result(ncfg, kind_of(action), notify.result_of(ledger, run_id)):
            if not r.get("ok", True):
                click.echo(f"resilience: warning: notification {r.get('channel', '')} failed: "
                           f"{r.get('error', '')}", err=True)
    except Exception as exc:  # noqa: BLE001 - a notification must never change the outcome
        from ..evidence.redact import redact_text

        click.echo(f"resilience: warning: notification failed: {redact_text(str(exc))}", err=True)


if __name__ == "__main__":
    main()
