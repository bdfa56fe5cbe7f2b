"""Helpers of the lab tests: the real CLI and ssh with the lab's strict options."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def resilience_argv() -> list[str]:
    """The installed `resilience` console script next to this Python, else `python -m`."""
    script = Path(sys.executable).parent / "resilience"
    return [str(script)] if script.exists() else [sys.executable, "-m", "resilience"]


def run_cli(*args: str, timeout: float = 180, prefix: list[str] | None = None,
        env: dict | None = None) -> subprocess.CompletedProcess:
    """Run the real CLI and capture its output."""
    return subprocess.run([*(prefix or []), *resilience_argv(), *args], capture_output=True,
                          text=True, timeout=timeout, cwd=REPO, env=env, check=False)


def ssh(host: str, command: str, *, known_hosts: Path | None = None,
        timeout: float = 20) -> subprocess.CompletedProcess:
    """ssh to a lab host as root with strict host-key checking (the lab's own options)."""
    from resilience.lab.keys import ssh_argv

    return subprocess.run([*ssh_argv(host, known_hosts=known_hosts), command],
                          capture_output=True, text=True, timeout=timeout, check=False)


def rejoin_members(config: str, site: str = "portal") -> None:
    """Rejoin the members of ``site`` that are quarantined or not serving (``cluster status``
    first: an idempotent rejoin of a serving member still costs a playbook run)."""
    import json

    status = json.loads(run_cli("--config", config, "cluster", "status", "--site", site, "--json").stdout)
    for m in status["sites"][site]:
        if m["quarantined"] or not m["serving"]:
            r = run_cli("--config", config, "rejoin", m["host"], timeout=300)
            assert r.returncode == 0, r.stderr
