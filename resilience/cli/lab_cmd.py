"""``resilience lab``: parse, call :mod:`resilience.lab`, render."""

from __future__ import annotations

import click

from ..errors import ExitCode
from .context import common, emit, info


@click.group()
def lab() -> None:
    """The network-namespace test lab (needs root). See docs/lab.md."""


@lab.command("up", epilog="""\b
Examples:
  sudo resilience lab up
  sudo resilience lab up --json""")
@common
def up_cmd() -> int:
    """Bring the lab up (idempotent) and wait until every service answers."""
    from ..lab import lifecycle

    result = lifecycle.up(progress=lambda m: info(f"lab up: {m}"))

    def human() -> None:
        for line in result["changed"]:
            click.echo(f"  {line}")
        what = "no changes" if not result["changed"] else f"{len(result['changed'])} change(s)"
        click.echo(f"lab up: all hosts healthy ({what}) in {result['elapsed_s']:.1f}s")
        click.echo(f"  vip {result['status']['vip']}  public {result['status']['public_url']}  "
                   f"s3 {result['status']['s3_endpoint']}")

    emit({"ok": True, **result}, human)
    return ExitCode.OK


@lab.command("down", epilog="""\b
Examples:
  sudo resilience lab down
  sudo resilience lab down --purge     # also delete /var/lib/resilience-lab""")
@click.option("--purge", is_flag=True, help="Also delete the lab folder (keys, secrets, data).")
@common
def down_cmd(purge: bool) -> int:
    """Stop every lab process; remove namespaces, rsl-* links and mounts."""
    from ..lab import lifecycle

    result = lifecycle.down(purge=purge, progress=lambda m: info(f"lab down: {m}"))

    def human() -> None:
        for line in result["removed"]:
            click.echo(f"  {line}")
        extra = " and the lab folder" if purge else ""
        click.echo(f"lab down: nothing of the lab is left{extra} ({result['elapsed_s']:.1f}s)")

    emit({"ok": True, **result}, human)
    return ExitCode.OK


@lab.command("status", epilog="""\b
Exit status: 0 when every host is healthy, 1 otherwise.
Examples:
  sudo resilience lab status
  sudo resilience lab status --json""")
@common
def status_cmd() -> int:
    """Show every host, its services and whether they answer."""
    from ..lab import status as lab_status

    st = lab_status()

    def human() -> None:
        for name, h in st["hosts"].items():
            state = "healthy" if h["healthy"] else ("DOWN" if not h["anchor_pid"] else "UNHEALTHY")
            svcs = " ".join(f"{k}:{'ok' if v else 'FAIL'}" for k, v in h["services"].items())
            click.echo(f"{name:<9} {h['netns']:<9} {h['address'] or '-':<14} {state:<9} {svcs}")
        click.echo(f"active line: {st['active_line'] or 'none'}   vip {st['vip']}   "
                   f"public {st['public_url']}   s3 {st['s3_endpoint']}")

    emit(st, human)
    return ExitCode.OK if st["ok"] else ExitCode.FAILED



@lab.command("upstream", epilog="""\b
The lab's stand-in for the DNS/BGP change of a failover (lines.upstream_command).
Examples:
  sudo resilience lab upstream            # print the line the upstream uses
  sudo resilience lab upstream standby""")
@click.argument("line", required=False)
@common
def upstream_cmd(line: str | None) -> int:
    """Point the internet's route to the site's public prefix at LINE's ISP (or show it)."""
    from ..lab import line_state, set_upstream_line
    from ..lab.system import require_root

    require_root("upstream")
    if line is not None:
        set_upstream_line(line)
    state = line_state()
    emit({"ok": True, "upstream": state["upstream"], "gateway": state["gateway"]},
         state["upstream"] or "none")
    return ExitCode.OK

@lab.group("fault")
def fault() -> None:
    """Inject a fault into the lab (and undo it)."""


def _render_fault(result: dict) -> int:
    def human() -> None:
        if not result["actions"]:
            click.echo(f"{result['fault']} {result['target']}: nothing to do")
        for line in result["actions"]:
            click.echo(f"{result['fault']} {result['target']}: {line}")

    emit({"ok": True, **result}, human)
    return ExitCode.OK


@fault.command("tamper")
@click.argument("host")
@common
def tamper_cmd(host: str) -> int:
    """Deface HOST's portal (home page, a few articles) and plant uploads/shell.php."""
    from ..lab import faults

    return _render_fault(faults.tamper(host))


@fault.command("untamper")
@click.argument("host")
@common
def untamper_cmd(host: str) -> int:
    """Put the pristine generated portal back on HOST (a lab reset, not a restore)."""
    from ..lab import faults

    return _render_fault(faults.untamper(host))


@fault.command("line-down")
@click.argument("line")
@common
def line_down_cmd(line: str) -> int:
    """Make LINE (primary|standby) drop every packet at gw1 and at its ISP."""
    from ..lab import faults

    return _render_fault(faults.line_down(line))



@fault.command("line-lossy")
@click.argument("line")
@common
def line_lossy_cmd(line: str) -> int:
    """Make LINE drop every other probe (ICMP echo request) at gw1; undo with line-up."""
    from ..lab import faults

    return _render_fault(faults.line_lossy(line))

@fault.command("line-up")
@click.argument("line")
@common
def line_up_cmd(line: str) -> int:
    """Undo line-down for LINE (primary|standby)."""
    from ..lab import faults

    return _render_fault(faults.line_up(line))


@fault.command("stop")
@click.argument("host")
@click.argument("service")
@common
def stop_cmd(host: str, service: str) -> int:
    """Stop SERVICE (sshd, nginx, haproxy, postgresql, s3) on HOST."""
    from ..lab import faults

    return _render_fault(faults.stop_service(host, service))


@fault.command("start")
@click.argument("host")
@click.argument("service")
@common
def start_cmd(host: str, service: str) -> int:
    """Start SERVICE on HOST again and wait until it answers."""
    from ..lab import faults

    return _render_fault(faults.start_service(host, service))
