"""Helpers the runbooks share: site checks, commands on members, service restarts."""

from __future__ import annotations

from typing import Any

from ..checks import run_checks
from ..config import Config
from ..control.ansible import run_playbook
from ..control.ssh import SSH, target_for
from ..errors import ResilienceError, UsageError


def need_site(cfg: Config, params: dict[str, Any], *, files: bool = False, database: bool = False,
              balancer: bool = False) -> None:
    """UsageError unless ``params['site']`` names a site with the sections asked for."""
    name = params.get("site")
    if not name:
        raise UsageError("give --site NAME")
    site = cfg.site(name)
    for want, attr in ((files, "files"), (database, "database"), (balancer, "balancer")):
        if want and getattr(site, attr) is None:
            raise UsageError(f"site {name!r} has no {attr} section (this runbook needs it)")
    if files and site.files.hosts == ["localhost"]:
        raise UsageError(f"site {name!r} is a localhost site: runbooks act on remote members")


def site_checks(cfg: Config, site_name: str, *, host: str | None = None, retries: int = 0,
                delay: float = 0.5) -> dict[str, Any]:
    """The site's checks through its URL (or directly on ``host``): ``{"ok", "where",
    "results"}``; ``ok`` None when the site has no URL."""
    site = cfg.site(site_name)
    base = f"http://{target_for(cfg, host).address}" if host else (str(site.url) if site.url else None)
    if base is None:
        return {"ok": None, "where": None, "results": []}
    res = [r.as_dict() for r in run_checks(base.rstrip("/"), site.checks, retries=retries, delay=delay)]
    return {"ok": all(r["ok"] for r in res), "where": host or "balancer", "results": res}


def on_host(cfg: Config, host: str, command: str, *, timeout: float = 120, check: bool = True,
            input: bytes | None = None):
    """Run a shell command on ``host`` over SSH (strict host keys); the CompletedProcess."""
    with SSH() as ssh:
        return ssh.run(target_for(cfg, host), command, timeout=timeout, check=check, input=input)


def restart_service(ctx, hosts: list[str], service: str, *, force: bool = False) -> dict[str, Any]:
    """Check ``service`` on ``hosts`` and restart it where the check fails (``force``:
    always), through playbooks/restart_services.yml with the config's commands."""
    cmds = ctx.cfg.runbooks.services.get(service)
    if cmds is None:
        raise ResilienceError(f"no commands for service {service!r} in runbooks.services of the config")
    res = run_playbook(ctx.cfg, "restart_services", check=ctx.dry_run, run=ctx.run, quiet=True, timeout=300,
                       extravars={"target": ",".join(hosts), "service": service, "service_check": cmds.check,
                                  "service_restart": cmds.restart, "force_restart": force})
    per_host = {h: res.facts.get(h, {}).get("service", {}) for h in hosts}
    return {"service": service, "hosts": per_host, "changed": res.changed}
