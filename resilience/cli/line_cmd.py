"""``resilience line``: status, failover, failback, watch — parse, call
:mod:`resilience.control.lines`, render."""

from __future__ import annotations

import json
import signal
import sys
import time

import click

from ..errors import ExitCode, UsageError
from .context import app, common, dumps, emit


@click.group("line")
def line() -> None:
    """The gateway's network lines: probe, fail over, fail back, watch. See docs/lines.md."""


@line.command("status", epilog="""\b
Exit status: 0 when the active line is healthy, 1 otherwise (no active line, or it fails).
Examples:
  resilience line status
  resilience line status --json""")
@click.option("--rounds", type=click.IntRange(1, 100), default=1, show_default=True,
              help="Probe rounds to run (the last one decides 'healthy').")
@common
def status_cmd(rounds: int) -> int:
    """Probe every line now (from the gateway, by each line's own address) and show which
    one is active."""
    from ..control import lines

    st = lines.status(app().config(), rounds=rounds)

    def human() -> None:
        for name, ln in st["lines"].items():
            mark = "*" if ln["active"] else " "
            rtt = f"{ln['rtt_ms']:.2f} ms" if ln["rtt_ms"] is not None else "-"
            click.echo(f"{mark} {name:<9} {'healthy' if ln['healthy'] else 'DOWN':<8} "
                       f"{ln['interface']:<12} {ln['address']:<15} "
                       f"answered {ln['answered']}/{ln['sent']}  loss {ln['loss_pct']:g}%  "
                       f"rtt {rtt}")
        routes = st["routes"]
        click.echo(f"active line: {st['active'] or 'none'}   (gateway {st['gateway']} routes via "
                   f"{routes['gateway'] or 'none'}, upstream {routes['upstream'] or 'none'})")

    emit(st, human)
    act = st["active"]
    return ExitCode.OK if act and st["lines"][act]["healthy"] else ExitCode.FAILED


def _render_switch(res: dict) -> int:
    def human() -> None:
        what = "would switch" if res["dry_run"] else ("switched" if res["changed"] else
                                                      "already on")
        click.echo(f"{res['action']}: {what} {res['from'] or 'none'} -> {res['to']} "
                   f"in {res['elapsed_s']:.2f}s (run {res['run']})")

    emit({"ok": True, **res}, human)
    return ExitCode.OK


@line.command("failover", epilog="""\b
Examples:
  resilience line failover --dry-run
  resilience line failover --to standby
  resilience line failover --to standby --force   # even if it does not answer probes""")
@click.option("--to", "to", metavar="LINE", help="Line to switch to (default: the other one).")
@click.option("--dry-run", is_flag=True, help="Run the playbook in check mode; no upstream change.")
@click.option("--force", is_flag=True, help="Switch even if the line does not answer its probes.")
@common
def failover_cmd(to: str | None, dry_run: bool, force: bool) -> int:
    """Switch the gateway's default route and the upstream path to another line."""
    from ..control import lines

    a = app()
    return _render_switch(lines.failover(a.config(), a.ledger(), to=to, dry_run=dry_run,
                                         force=force))


@line.command("failback", epilog="""\b
Examples:
  resilience line failback --dry-run
  resilience line failback""")
@click.option("--dry-run", is_flag=True, help="Run the playbook in check mode; no upstream change.")
@click.option("--force", is_flag=True, help="Switch even if the primary does not answer probes.")
@common
def failback_cmd(dry_run: bool, force: bool) -> int:
    """Switch back to the primary line."""
    from ..control import lines

    a = app()
    return _render_switch(lines.failback(a.config(), a.ledger(), dry_run=dry_run, force=force))


def _seconds(_ctx, _param, value):
    if value is None:
        return None
    from ..config import _seconds as parse

    try:
        return parse(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


def _terminate(_signum, _frame) -> None:
    raise KeyboardInterrupt


@line.command("watch", epilog="""\b
Runs until Ctrl-C, printing one line per event (--json: one JSON object per line).
With --once: one probe round, counters kept in the state folder between runs (cron).
Examples:
  resilience line watch
  resilience line watch --once          # from cron, every minute
  resilience line watch --interval 0.5 --failback-hold 5m --json""")
@click.option("--once", is_flag=True, help="One round, then exit (counters kept between runs).")
@click.option("--interval", type=click.FloatRange(0.05, 60), help="Seconds between rounds.")
@click.option("--failback-hold", callback=_seconds, metavar="DURATION",
              help="How long the primary must be clean before failback (e.g. 30s).")
@click.option("--down-after", type=click.IntRange(1, 1000), help="Bad rounds to call a line down.")
@click.option("--up-after", type=click.IntRange(1, 1000), help="Good rounds to call it up.")
@click.option("--duration", type=click.FloatRange(0.1), metavar="SECONDS",
              help="Stop after this long (tests, drills).")
@click.option("--dry-run", is_flag=True, help="Decide and record, but switch in check mode only.")
@common
def watch_cmd(once: bool, interval: float | None, failback_hold: float | None,
              down_after: int | None, up_after: int | None, duration: float | None,
              dry_run: bool) -> int:
    """Probe the lines continuously; fail over, fail back after the hold, alarm when every
    line is down."""
    from ..control import lines

    a = app()
    if once and duration is not None:
        raise UsageError("give --once or --duration, not both")

    def show(ev: dict) -> None:
        if a.json:
            click.echo(json.dumps(json.loads(dumps(ev))), nl=True)
            sys.stdout.flush()
            return
        stamp = time.strftime("%H:%M:%S", time.localtime(ev.get("time", time.time())))
        kind = ev["event"]
        if kind == "watching":
            p = ev["policy"]
            text = (f"watching: active {ev['active']}; every {p['interval_s']:g}s, down after "
                    f"{p['down_after']}, up after {p['up_after']}, failback hold "
                    f"{p['failback_hold_s']:g}s")
        elif kind == "armed":
            text = "armed: the switch playbook is started and waits for a decision"
        elif kind in ("failover", "failback"):
            text = (f"{kind} {ev.get('from')} -> {ev['line']} ({ev['reason']}) in "
                    f"{ev.get('elapsed_s', 0):.2f}s")
        elif "error" in ev:
            text = f"{kind}: {ev['error']}"
        else:
            text = f"{kind} {ev.get('line') or ''} ({ev.get('reason', '')})".replace("  ", " ")
        click.echo(f"{stamp} {text}", err=not a.json)

    overrides = {"interval": interval, "failback_hold": failback_hold,
                 "down_after": down_after, "up_after": up_after}
    # systemd (and kill) stop the watcher with SIGTERM: end as cleanly as on Ctrl-C, so the
    # armed switch playbook is disarmed and the probe session closed.
    signal.signal(signal.SIGTERM, _terminate)
    try:
        res = lines.watch(a.config(), a.ledger(), once=once, dry_run=dry_run, emit=show,
                          max_seconds=duration, **overrides)
    except KeyboardInterrupt:
        return ExitCode.OK
    if once or duration is not None:
        emit({"ok": True, **res}, lambda: click.echo(
            f"active line: {res['active'] or 'none'}{'  ALARM: every line down' if res['alarm'] else ''}"))
    return ExitCode.FAILED if res.get("alarm") else ExitCode.OK
