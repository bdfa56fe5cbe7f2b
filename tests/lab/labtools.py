"""Helpers of the lab tests: the real CLI and ssh with the lab's strict options, the lab-wide
lock of tests that change members, HTTP probes from the internet namespace, polling."""

from __future__ import annotations

import contextlib
import fcntl
import subprocess
import sys
import time
from collections.abc import Iterator
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


@contextlib.contextmanager
def member_tests_lock() -> Iterator[None]:
    """Hold the lab-wide lock of tests that take members out, tamper with a site or change
    its content (any module, any concurrent session). flock locks of one process through two
    descriptors exclude each other too: never take it while already holding it (the ``lab``
    fixture takes it for its reset, so fixtures ask for ``lab`` first)."""
    from resilience.lab import layout as L

    path = L.lab_dir() / "member-tests.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def http_status(source: str | None, url: str | None = None, timeout: float = 2) -> int:
    """HTTP status of GET ``url`` (default: the public address) from the internet namespace
    with source address ``source``, or from the ops host when ``source`` is None; 0 when
    nothing answered."""
    from resilience.lab import run_in
    from resilience.lab import topology as T

    argv = ["curl", "-s", "-o", "/dev/null", "-m", str(timeout), "-w", "%{http_code}", url or T.PUBLIC_URL]
    if source is None:
        proc = subprocess.run(argv, capture_output=True, text=True, check=False)
    else:
        proc = run_in("internet", [*argv[:-1], "--interface", source, argv[-1]], check=False)
    out = proc.stdout.decode() if isinstance(proc.stdout, bytes) else proc.stdout
    return int(out.strip() or 0)


def answered(source: str | None, url: str | None = None, within: float = 15) -> bool:
    """True once GET ``url`` from ``source`` answers 200 (polling: another test may be
    switching lines, which leaves the public address dead for a moment)."""
    deadline = time.monotonic() + within
    while http_status(source, url, timeout=1) != 200:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.3)
    return True


def wait_for(pred, timeout: float, step: float = 0.05):
    """Poll ``pred`` until it returns something true or ``timeout`` seconds pass; returns
    its last value."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = pred()
        if value:
            return value
        time.sleep(step)
    return pred()
