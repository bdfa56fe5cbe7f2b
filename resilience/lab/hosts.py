"""Running commands on lab hosts, from Python (tests and the lab's own faults use this)."""

from __future__ import annotations

import subprocess
from collections.abc import Sequence

from ..errors import ResilienceError
from . import topology as T
from .netns import enter_argv
from .system import HOST_ENV


def run_in(host: str, argv: Sequence[str], *, check: bool = True, input: str | bytes | None = None,
           timeout: float = 60, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run ``argv`` inside lab host ``host`` (its network, mount and UTS namespaces).

    Output is captured (text unless ``input`` is bytes). With ``check``, a non-zero exit
    raises ResilienceError quoting stderr's last line. Raises UsageError for an unknown host
    and ResilienceError when the host is not running.
    """
    T.host(host)
    text = not isinstance(input, bytes)
    try:
        proc = subprocess.run([*enter_argv(host), *argv], capture_output=True, text=text,
                              input=input, timeout=timeout, env={**HOST_ENV, **(env or {})},
                              check=False, cwd="/")
    except subprocess.TimeoutExpired:
        raise ResilienceError(f"{host}: {argv[0]}: timed out after {timeout:.0f}s") from None
    if check and proc.returncode != 0:
        err = proc.stderr if text else proc.stderr.decode("utf-8", "replace")
        last = next((ln.strip() for ln in reversed(err.splitlines()) if ln.strip()), "")
        raise ResilienceError(f"{host}: {argv[0]}: exit {proc.returncode}"
                              + (f": {last}" if last else ""))
    return proc


def hostname_of(host: str) -> str:
    """The hostname the host itself reports (its UTS namespace)."""
    return run_in(host, ["hostname"]).stdout.strip()
